"""Image codecs: JPEG/PNG bytes <-> uint8 CHW tensors, through TorchCodec where it works, else torchvision.io.

torchvision 0.29 deprecates its image decoders and encoders in favour of TorchCodec's, which exist
from torchcodec 0.16 (https://docs.pytorch.org/vision/0.29/io.html). TorchCodec's image codecs ship
their own libjpeg-turbo, libpng and libwebp inside the wheel and load without FFmpeg, which only
its video and audio decoders need (torchcodec/_core/ops.py loads FFmpeg separately and optionally).
A TorchCodec wheel is built against one torch release (0.16 needs torch >= 2.11, its release notes
say), so the first use also round-trips one pixel through it. Where TorchCodec is not installed (there
are no macOS wheels after 0.11, so cnnbench requires it on Linux only; the GPU machines' torch 2.11
images lack it) or does not load, torchvision.io does the work, on libjpeg-turbo and libpng as well;
tests/test_data_pipeline.py checks that both give identical pixels.

Nothing here goes through PIL: decoding lands straight in a uint8 tensor.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import importlib.util
import re
import warnings
from typing import Iterator

import torch

TORCHCODEC = "torchcodec"
TORCHVISION = "torchvision.io"


@functools.cache
def torchcodec_problem() -> str | None:
    """Why TorchCodec cannot decode in this process, or None when it can."""
    if importlib.util.find_spec("torchcodec") is None:
        return "torchcodec is not installed"
    try:
        from torchcodec.decoders import decode_image
        from torchcodec.encoders import PngEncoder

        pixel = torch.tensor([10, 128, 250], dtype=torch.uint8).view(3, 1, 1)
        decoded = decode_image(PngEncoder(pixel).to_tensor(), mode="RGB")
    # A wheel built for another torch fails while loading its compiled libraries, with whichever
    # exception the mismatch produces; the fallback decodes all the same, so any failure means "not this one".
    except Exception as exc:
        return f"torchcodec does not load: {type(exc).__name__}: {str(exc).strip()[:120]}"
    if not torch.equal(decoded, pixel):
        return "torchcodec mis-decodes a test pixel"
    return None


def backend() -> str:
    """The library that decodes and encodes images in this process: TORCHCODEC or TORCHVISION."""
    return TORCHVISION if torchcodec_problem() else TORCHCODEC


def describe() -> str:
    """The decoder with its version, and why not TorchCodec when it is the fallback."""
    if backend() == TORCHCODEC:
        return f"torchcodec {importlib.metadata.version('torchcodec')}"
    return f"torchvision.io {importlib.metadata.version('torchvision')} ({torchcodec_problem()})"


@contextlib.contextmanager
def _quiet_torchvision_io() -> Iterator[None]:
    """torchvision 0.29's codecs warn DeprecationWarning on every call; the fallback is deliberate.

    Silenced around the call only, so the warning still reaches whoever calls torchvision.io elsewhere.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision are deprecated",
                                category=DeprecationWarning)
        yield


def decode_with_torchcodec(data: bytes) -> torch.Tensor:
    from torchcodec.decoders import decode_image

    return decode_image(data, mode="RGB")


def decode_with_torchvision(data: bytes) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_image

    with _quiet_torchvision_io():
        return decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)


def decode_rgb(data: bytes, where: str) -> tuple[torch.Tensor | None, str | None]:
    """JPEG/PNG bytes -> (uint8 3xHxW, None) or (None, reason). Grey and CMYK come out as RGB."""
    decode = decode_with_torchcodec if backend() == TORCHCODEC else decode_with_torchvision
    try:
        return decode(bytes(data)), None
    except (RuntimeError, ValueError) as exc:  # both libraries' way of saying "damaged or not an image"
        return None, f"cannot decode image {where}: {decoder_reason(exc)}"


# A C++ check's message starts with where it failed (TORCH_CHECK in torchcodec: "read_header_and_start,
# /__w/torchcodec/.../DecodeJpeg.cpp:208, Image is incomplete or truncated."): the function and the build
# machine's source path tell a user nothing (issue 23), the reason after them does.
_CHECK_PREFIX = re.compile(r"^[A-Za-z_][\w:]*, \S+\.(?:c|cc|cpp|cxx|h|hpp):\d+, ")
_SOURCE_PATH = re.compile(r"\s*\(?(?:at |from )?\S*/\S+\.(?:c|cc|cpp|cxx|h|hpp):\d+\)?,?")


def decoder_reason(exc: BaseException) -> str:
    """A decoder's exception as its reason alone: the first line, without C++ function names and source paths."""
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    reason = _SOURCE_PATH.sub("", _CHECK_PREFIX.sub("", text.splitlines()[0])).strip(" ,")
    return reason or type(exc).__name__


def encode_jpeg(image: torch.Tensor, quality: int = 75) -> bytes:
    """uint8 CHW (1 or 3 channels) -> JPEG bytes. 75 is both libraries' default quality."""
    if backend() == TORCHCODEC:
        from torchcodec.encoders import JpegEncoder

        return JpegEncoder(image.contiguous()).to_tensor(quality=quality).numpy().tobytes()
    from torchvision.io import encode_jpeg as torchvision_encode_jpeg

    with _quiet_torchvision_io():
        return torchvision_encode_jpeg(image, quality=quality).numpy().tobytes()


def encode_png(image: torch.Tensor) -> bytes:
    """uint8 CHW (1 or 3 channels) -> PNG bytes (lossless)."""
    if backend() == TORCHCODEC:
        from torchcodec.encoders import PngEncoder

        return PngEncoder(image.contiguous()).to_tensor().numpy().tobytes()
    from torchvision.io import encode_png as torchvision_encode_png

    with _quiet_torchvision_io():
        return torchvision_encode_png(image).numpy().tobytes()
