"""Decode + preprocess images/s: ours against PIL + torchvision v1 per core; --device cuda: CPU against GPU (nvJPEG) decoding.

    python benchmarks/input_pipeline.py [--images-per-class 30] [--image-size 384] [--rounds 3]
    python benchmarks/input_pipeline.py --device cuda [--images-per-class 400] [--batch-size 128] [--workers 0,16]

Output saved under benchmarks/results/ (record.py), or under --save-to DIR.

Both modes read the same JPEG files (the scikit-learn digits written by `cnnbench data sample`, scaled to
--image-size px) and produce the same thing: a normalised float batch of 224x224 centre crops after
resizing the shorter side to 256.

--device cpu (the default), in one process with one thread ("per core"):

  ours  cnnbench.data.codec (TorchCodec, else torchvision.io; libjpeg-turbo either way) -> uint8 resize + centre crop
        (transforms.v2 functional) -> stack uint8 -> normalise the batch once
        (cnnbench.data.loader.RealDataSource on the CPU, workers=0: the code train/infer use)
  PIL   PIL.Image.open().convert("RGB") -> Resize(256) -> CenterCrop(224) -> ToTensor() -> Normalize()
        per image (the classic torchvision ImageNet recipe) -> stack

--device cuda (issue 10), the batch ending on the GPU either way:

  cpu-decode  RealDataSource on cuda, as train/infer run it: DataLoader workers decode and resize + crop on the
              host, the uint8 batch is pinned, copied to the GPU on a side stream and normalised there
              (--workers: the loader's default is one worker per usable core; 0 is one core)
  gpu-decode  file bytes read on the host -> one decode_jpeg(list of the batch's bytes, device="cuda") call
              (nvJPEG, batched: TorchCodec's where cnnbench decodes with TorchCodec and it decodes on the GPU,
              else torchvision.io's) -> the same Preprocess (resize + centre crop, transforms.v2 functional)
              and the same Normalizer, on the GPU

  Each round is one pass over every file, timed with torch.cuda.synchronize() before each clock read; the
  first round is untimed (page cache, worker start-up, nvJPEG's handles, CUDA kernels' first launch). The
  median and the min-max of the rounds are reported. The first batch of both is compared: nvJPEG and
  libjpeg-turbo round differently and the GPU resizes uint8 through float, so small differences are
  expected and reported; only a gross mismatch (mean |difference| above MISMATCH_PERCENT of the value
  range) fails the check, with exit status 1. Without CUDA one line says the comparison was skipped, exit 0.

The digits are smooth upscaled images, so JPEG decoding is cheaper than for photographs; the
figures compare the pipelines, they are not ImageNet loading rates.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from record import Recorder, add_save_option

# Mean |difference| above this share of the reference batch's value range fails the check. A pixel level
# is 1/255 = 0.4% of the range, so this allows ~13 levels on average: nvJPEG's and libjpeg-turbo's IDCT
# and rounding differ by a level or two, a wrong channel order or a missing normalisation by far more.
MISMATCH_PERCENT = 5.0
# The digits' training split holds ~143 images per class (1437 of load_digits' 1797, 80%); more per
# class repeats files, so that an epoch has many batches per loader worker (each worker builds whole
# batches, so an epoch of fewer batches than workers would leave workers idle and understate the loader).
CPU_DEFAULTS = {"images_per_class": 30, "batch_size": 32, "rounds": 3}
CUDA_DEFAULTS = {"images_per_class": 400, "batch_size": 128, "rounds": 5}

Decoder = Callable[[list[torch.Tensor], torch.device], list[torch.Tensor]]


# ---------------------------------------------------------------- --device cpu: ours against PIL


def ours(root: Path, batch_size: int) -> int:
    from cnnbench.data.loader import RealDataSource
    from cnnbench.data.preprocess import preprocess_for

    preprocess = preprocess_for("resnet50", "imagenet", 224)
    source = RealDataSource(root, "train", batch_size, preprocess, "cpu", workers=0, train=False)
    return sum(len(labels) for _, labels in source.epoch_batches())


def pil(root: Path, batch_size: int) -> int:
    from PIL import Image
    from torchvision import transforms

    from cnnbench.data.normalization import IMAGENET_MEAN, IMAGENET_STD

    transform = transforms.Compose([
        transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])
    paths = sorted((root / "train").glob("*/*.jpg"))
    count = 0
    for i in range(0, len(paths), batch_size):
        batch = []
        for path in paths[i : i + batch_size]:
            with Image.open(path) as image:
                batch.append(transform(image.convert("RGB")))
        count += len(torch.stack(batch))
    return count


def cpu_comparison(args: argparse.Namespace) -> None:
    rec = Recorder(__file__, args.save_to)

    from cnnbench.data import codec
    from cnnbench.data.sample import write_sample_dataset

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "digits"
        write_sample_dataset(root, image_size=args.image_size, image_format="jpeg", max_per_class=args.images_per_class)
        files = sorted((root / "train").glob("*/*.jpg"))
        mean_kb = sum(p.stat().st_size for p in files) / len(files) / 1024
        rec.say(f"{len(files)} JPEG files, {args.image_size}x{args.image_size}, {mean_kb:.1f} KB on average; "
              f"resize 256, centre crop 224, normalise; 1 thread, batch {args.batch_size}; ours decodes with {codec.describe()}")
        rates: dict[str, list[float]] = {"ours": [], "PIL": []}
        for _ in range(args.rounds + 1):  # the first round warms the page cache and libraries, untimed
            for name, run in (("ours", ours), ("PIL", pil)):
                start = time.perf_counter()
                n = run(root, args.batch_size)
                rates[name].append(n / (time.perf_counter() - start))
        for name, values in rates.items():
            rec.say(f"{name:5s} {statistics.median(values[1:]):8.1f} images/s per core")
            rec.row(kind="pipeline", pipeline=name, images_per_sec_median=statistics.median(values[1:]),
                    images_per_sec_rounds=values[1:], decoder=codec.describe())
        ratio = statistics.median(rates['ours'][1:]) / statistics.median(rates['PIL'][1:])
        rec.say(f"ratio ours/PIL: {ratio:.2f} ({'PASS' if ratio > 1 else 'FAIL'}: ours must be the faster)")
        rec.row(kind="verdict", ratio=ratio)
    rec.save()


# ---------------------------------------------------------------- --device cuda: CPU against GPU decoding


def read_bytes(paths: list[Path]) -> list[torch.Tensor]:
    """Each file as a 1-D uint8 tensor on the host: decode_jpeg takes its input on the CPU whatever the
    target device (torchvision.io.decode_jpeg's and torchcodec.decoders.decode_jpeg's docs)."""
    return [torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8) for path in paths]


def decode_torchvision(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """torchvision.io.decode_jpeg on a list: one batched nvJPEG call on CUDA (its docs: "passing a list of
    tensors is more efficient than repeated individual calls"). The signature is the same in torchvision
    0.25's and 0.29's docs (input, mode, device, apply_exif_orientation), so in the GPU machine's 0.26 too."""
    from torchvision.io import ImageReadMode, decode_jpeg

    from cnnbench.data import codec

    with codec._quiet_torchvision_io():  # 0.29 deprecates its decoders with a warning at every call
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)


def decode_torchcodec(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """torchcodec.decoders.decode_jpeg on a list: "the whole batch is decoded in one nvJPEG call" on CUDA."""
    from torchcodec.decoders import decode_jpeg

    return decode_jpeg(list(data), mode="RGB", device=device)


def decoder_candidates() -> list[tuple[str, Decoder]]:
    """TorchCodec first where cnnbench decodes with it (codec.backend()), then torchvision.io."""
    from cnnbench.data import codec

    found = [("torchcodec", decode_torchcodec)] if codec.backend() == codec.TORCHCODEC else []
    return found + [("torchvision.io", decode_torchvision)]


def choose_decoder(sample: list[torch.Tensor], device: torch.device) -> tuple[str | None, Decoder | None, list[str]]:
    """(name, decoder, problems): the first candidate that decodes `sample` on `device` to 3-channel
    uint8 images, or (None, None, why each failed)."""
    problems = []
    for name, decode in decoder_candidates():
        try:
            images = decode(sample, device)
            if all(i.dtype == torch.uint8 and i.shape[0] == 3 and i.device.type == device.type for i in images):
                return name, decode, problems
            problems.append(f"{name}: decoded to {images[0].dtype} {tuple(images[0].shape)} on {images[0].device}")
        # A decoder built without nvJPEG, or a TorchCodec wheel whose CUDA part does not load, fails with
        # whichever exception its library raises; the next candidate may still work, so any failure means "not this one".
        except Exception as exc:
            problems.append(f"{name}: {type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:160]}")
    return None, None, problems


def wait_for_queued_work(device: torch.device) -> None:
    """Before a CUDA decode: let the work queued on the current stream finish.

    The decoders' outputs come from the caching allocator on the caller's stream, which hands out a block
    as soon as that stream's queued kernels (the previous batch's resize) have freed it. torchvision writes
    them from its own stream without waiting for the caller's (pytorch/vision PR #9606), and nvJPEG's
    hardware engine writes ahead of work queued on the stream it is given (meta-pytorch/torchcodec PR
    #1634), so the block could be overwritten before those kernels read it. The cost: the previous batch's
    resize and normalisation no longer overlap this decode's host-side work (both decoders wait for
    their own stream before returning anyway: torchvision's decode_jpegs_cuda.cpp, decode_images).
    """
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()


def preprocess_on_device(images: list[torch.Tensor], preprocess, normalizer) -> torch.Tensor:
    """Decoded uint8 CHW images on one device -> the float batch cnnbench's loader gives: the same
    Preprocess (resize + centre crop) and Normalizer, here on the images' device."""
    if len({tuple(image.shape) for image in images}) == 1:
        batch = preprocess(torch.stack(images))  # one resize of the whole batch: fewer kernel launches
    else:
        batch = torch.stack([preprocess(image) for image in images])
    return normalizer(batch).contiguous()


def device_decode_batch(paths: list[Path], decode: Decoder, device: torch.device, preprocess, normalizer) -> torch.Tensor:
    """The gpu-decode pipeline for one batch of files (any device: the tests run it on the CPU)."""
    data = read_bytes(paths)
    wait_for_queued_work(device)
    return preprocess_on_device(decode(data, device), preprocess, normalizer)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_pass(run: Callable[[], int], device: torch.device) -> float:
    """Images/s of one pass, the device synchronised before each clock read."""
    synchronize(device)
    start = time.perf_counter()
    count = run()
    synchronize(device)
    return count / (time.perf_counter() - start)


def compare_batches(reference: torch.Tensor, other: torch.Tensor) -> dict:
    """Shape, dtype and |difference| of two batches; `passed` unless they differ grossly."""
    result = {"shape": list(reference.shape), "dtype": str(reference.dtype).removeprefix("torch."),
              "same_shape_and_dtype": reference.shape == other.shape and reference.dtype == other.dtype}
    if not result["same_shape_and_dtype"]:
        return {**result, "other_shape": list(other.shape), "other_dtype": str(other.dtype), "passed": False}
    diff = (reference.float() - other.to(reference.device).float()).abs()
    span = (reference.max() - reference.min()).item() or 1.0
    percent = 100 * diff.mean().item() / span
    return {**result, "max_abs_diff": diff.max().item(), "mean_abs_diff": diff.mean().item(),
            "mean_diff_percent_of_range": percent, "passed": percent <= MISMATCH_PERCENT}


def write_files(root: Path, image_size: int, per_class: int) -> list[Path]:
    """The digits as JPEG files under root/train/<digit>/, repeated to `per_class` files where the split
    has fewer; returns the training files in ImageFolder's order (class folders, then names, sorted)."""
    from cnnbench.data.folder import ImageFolder
    from cnnbench.data.sample import write_sample_dataset

    write_sample_dataset(root, image_size=image_size, image_format="jpeg", max_per_class=per_class)
    for folder in sorted((root / "train").iterdir()):
        originals = sorted(folder.glob("*.jpg"))
        for i in range(len(originals), per_class):
            shutil.copyfile(originals[i % len(originals)], folder / f"copy{i:05d}.jpg")
    return [path for path, _ in ImageFolder(root, "train").samples]


def cpu_decode_sources(root: Path, args: argparse.Namespace, preprocess, device: torch.device) -> dict:
    """{label: RealDataSource} for each --workers count: cnnbench's loader as train/infer use it."""
    from cnnbench.data.loader import RealDataSource

    return {f"cpu-decode, {w} workers": RealDataSource(root, "train", args.batch_size, preprocess, device, workers=w, train=False)
            for w in args.workers}


def measure(passes: dict[str, Callable[[], int]], rounds: int, device: torch.device) -> dict[str, list[float]]:
    """Images/s per timed round of each pipeline; the pipelines alternate within a round (so a drift of
    the machine's speed touches them alike) and the first round is untimed."""
    rates: dict[str, list[float]] = {name: [] for name in passes}
    for round_index in range(rounds + 1):
        for name, run in passes.items():
            rate = timed_pass(run, device)
            if round_index:
                rates[name].append(rate)
    return rates


def first_batches(sources: dict, files: list[Path], args, decode: Decoder, device, preprocess, normalizer):
    """The first batch of the cpu-decode pipeline (its first source) and of the gpu-decode one."""
    reference = next(iter(next(iter(sources.values())).epoch_batches()))[0]
    synchronize(device)
    other = device_decode_batch(files[: args.batch_size], decode, device, preprocess, normalizer)
    synchronize(device)
    return reference, other


def report_rates(rec: Recorder, rates: dict[str, list[float]], decoder: str) -> None:
    rec.say(f"{'pipeline':34s} {'median img/s':>13s} {'min-max img/s':>21s}")
    for name, values in rates.items():
        median = statistics.median(values)
        rec.say(f"{name:34s} {median:13.1f} {f'{min(values):.1f}-{max(values):.1f}':>21s}")
        rec.row(kind="pipeline", pipeline=name, images_per_sec_median=median, images_per_sec_min=min(values),
                images_per_sec_max=max(values), images_per_sec_rounds=values,
                decoder=decoder if name.startswith("gpu") else None)


def report_check(rec: Recorder, check: dict) -> None:
    if not check["same_shape_and_dtype"]:
        rec.say(f"check, first batch: FAIL: cpu-decode gives {check['dtype']} {tuple(check['shape'])}, "
                f"gpu-decode {check['other_dtype']} {tuple(check['other_shape'])}")
    else:
        rec.say(f"check, first batch: both {check['dtype']} {tuple(check['shape'])}; max |diff| {check['max_abs_diff']:.4f}, "
                f"mean |diff| {check['mean_abs_diff']:.5f} ({check['mean_diff_percent_of_range']:.3f}% of the value range): "
                f"{'PASS' if check['passed'] else 'FAIL'} (fails above {MISMATCH_PERCENT:g}%)")
    rec.row(kind="check", **check)


def summarise(rec: Recorder, rates: dict[str, list[float]], check: dict, decoder: str) -> None:
    """One line and one saved row (gpu_checks.py reads the row holding "speedup"): gpu-decode's median
    over each cpu-decode's; `speedup` is against the cpu-decode with the most workers (by default the
    only one: the loader's own count)."""
    gpu = statistics.median(rates[f"gpu-decode, {decoder}"])
    cpu = {name.split(", ")[1]: statistics.median(values) for name, values in rates.items() if name.startswith("cpu")}
    ratios = {workers: gpu / rate for workers, rate in cpu.items()}
    rec.say("gpu-decode / cpu-decode: " + ", ".join(f"{r:.2f}x against {w}" for w, r in ratios.items()))
    strongest = max(cpu, key=lambda w: int(w.split()[0]))
    rec.row(kind="summary", speedup=ratios[strongest], against=strongest, gpu_decoder=decoder,
            gpu_images_per_sec=gpu, check_passed=check["passed"],
            mean_diff_percent_of_range=check.get("mean_diff_percent_of_range"))


def compare_decoding(args: argparse.Namespace, device: torch.device) -> int:
    """The --device cuda comparison on `device` (the tests run it on the CPU); 0, or 1 if the batches differ grossly."""
    from cnnbench.data.normalization import Normalizer
    from cnnbench.data.preprocess import preprocess_for

    rec = Recorder(__file__, args.save_to)
    torch.set_num_threads(1)  # the host side of both is then per core, as --device cpu measures it
    preprocess = preprocess_for("resnet50", "imagenet", 224)
    normalizer = Normalizer(preprocess.normalization, device)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "digits"
        files = write_files(root, args.image_size, args.images_per_class)
        decoder, decode, problems = choose_decoder(read_bytes(files[: args.batch_size]), device)
        if decode is None:
            rec.say(f"GPU decode comparison skipped: no decoder decodes JPEG on {device}: {'; '.join(problems)}")
            rec.row(kind="skipped", reason=problems)
            rec.save()
            return 0
        describe_setup(rec, args, files, device, decoder, problems)
        sources = cpu_decode_sources(root, args, preprocess, device)
        passes = {name: lambda s=source: sum(len(labels) for _, labels in s.epoch_batches()) for name, source in sources.items()}
        passes[f"gpu-decode, {decoder}"] = lambda: sum(
            len(device_decode_batch(files[i : i + args.batch_size], decode, device, preprocess, normalizer))
            for i in range(0, len(files), args.batch_size))
        rates = measure(passes, args.rounds, device)
        check = compare_batches(*first_batches(sources, files, args, decode, device, preprocess, normalizer))
        for source in sources.values():
            source.close()
    report_rates(rec, rates, decoder)
    report_check(rec, check)
    summarise(rec, rates, check, decoder)
    rec.save()
    return 0 if check["passed"] else 1


def describe_setup(rec: Recorder, args, files: list[Path], device: torch.device, decoder: str, problems: list[str]) -> None:
    from cnnbench.data import codec

    mean_kb = sum(p.stat().st_size for p in files) / len(files) / 1024
    where = f"{device} ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else str(device)
    package = "torchcodec" if decoder == "torchcodec" else "torchvision"
    rec.say(f"{len(files)} JPEG files, {args.image_size}x{args.image_size}, {mean_kb:.1f} KB on average; resize 256, "
            f"centre crop 224, normalise imagenet; batch {args.batch_size} on {where}; {args.rounds} rounds after 1 untimed")
    rec.say(f"cpu-decode: RealDataSource on {device}, decoding with {codec.describe()} in its loader workers")
    rec.say(f"gpu-decode: {decoder} {importlib.metadata.version(package)} decode_jpeg(list of {args.batch_size}, "
            f"device={str(device)!r}), then resize + crop + normalise on {device}"
            + (f" (not {'; '.join(problems)})" if problems else ""))
    rec.row(kind="setup", files=len(files), image_size=args.image_size, mean_kb=mean_kb, batch_size=args.batch_size,
            device=where, rounds=args.rounds, workers=args.workers, cpu_decoder=codec.describe(), gpu_decoder=decoder,
            gpu_decoder_problems=problems)


def gpu_comparison(args: argparse.Namespace) -> int:
    if not torch.cuda.is_available():
        print("input_pipeline: GPU decode comparison skipped (no CUDA: torch.cuda.is_available() is False)", flush=True)
        return 0
    return compare_decoding(args, torch.device(args.device))


# ---------------------------------------------------------------- command line


def worker_counts(text: str) -> list[int]:
    counts = [int(part) for part in text.split(",") if part.strip()]
    if not counts or min(counts) < 0:
        raise argparse.ArgumentTypeError(f"give worker counts of 0 or more separated by commas, got {text!r}")
    return counts


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from cnnbench.core.environment import usable_cores

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cpu (default): ours against PIL, per core; cuda: CPU against GPU JPEG decoding")
    parser.add_argument("--images-per-class", type=int, default=None,
                        help="10 classes (default 30, cuda 400; files repeat past the ~143 the digits hold)")
    parser.add_argument("--image-size", type=int, default=384, help="side of the JPEG files (default 384)")
    parser.add_argument("--batch-size", type=int, default=None, help="default 32, cuda 128")
    parser.add_argument("--rounds", type=int, default=None,
                        help="timed passes over the files per pipeline after an untimed one; the median is reported (default 3, cuda 5)")
    parser.add_argument("--workers", type=worker_counts, default=[usable_cores()],
                        help="cuda: loader worker counts of the cpu-decode pipeline, e.g. 0,16 "
                             f"(default: the loader's own, one per usable core: {usable_cores()})")
    add_save_option(parser)
    args = parser.parse_args(argv)
    for key, value in (CUDA_DEFAULTS if args.device == "cuda" else CPU_DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main() -> int:
    args = parse_args()
    if args.device == "cuda":
        return gpu_comparison(args)
    cpu_comparison(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
