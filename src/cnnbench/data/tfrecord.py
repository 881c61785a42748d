"""TFRecord files and `tf.train.Example` records, read and written without TensorFlow.

Record framing (https://www.tensorflow.org/tutorials/load_data/tfrecord#tfrecords_format_details):

    uint64 length            little-endian
    uint32 masked_crc32c(length bytes)
    byte   data[length]
    uint32 masked_crc32c(data)

with masked_crc = ((crc >> 15) | (crc << 17)) + 0xa282ead8 (mod 2**32) and crc32c the Castagnoli
CRC (polynomial 0x1EDC6F41, reflected 0x82F63B78), as in tensorflow/core/lib/hash/crc32c.h.

The payload is a `tf.train.Example` protobuf (tensorflow/core/example/{example,feature}.proto):

    Example  { Features features = 1; }
    Features { map<string, Feature> feature = 1; }   a map entry is a message {key = 1, value = 2}
    Feature  { oneof { BytesList bytes_list = 1; FloatList float_list = 2; Int64List int64_list = 3; } }
    BytesList { repeated bytes value = 1; }
    FloatList { repeated float value = 1 [packed = true]; }
    Int64List { repeated int64 value = 1 [packed = true]; }

`TFRecordImages` reads ImageNet-convention shards as written by the Inception ImageNet build script
(tensorflow/models research/inception/inception/data/build_imagenet_data.py): files `train-00000-of-01024`
and `validation-00000-of-00128`, features `image/encoded` (JPEG bytes), `image/class/label` (int64, 1..1000,
0 being reserved for "background"), `image/class/text`, `image/object/bbox/*` and a few more.
"""

from __future__ import annotations

import random
import struct
from pathlib import Path
from typing import Callable, Iterable, Iterator, NamedTuple

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from cnnbench.data.codec import decode_rgb
from cnnbench.core.errors import UsageError

# --------------------------------------------------------------------------------------------------
# CRC32C
#
# google-crc32c (Google's, as used by the Cloud Storage client) computes it in C with SSE4.2 where
# the CPU has it; where its extension cannot load it falls back to its own pure-Python version (and
# warns once at import, as that is far slower than decoding the images).
# --------------------------------------------------------------------------------------------------


def crc32c(data: bytes | memoryview) -> int:
    """CRC-32C (Castagnoli) of `data`."""
    # Imported here, not with the module: image folders (and `data sample`) then still work where a bare
    # torch image lacks the package, as on the lent GPU machines (PYTHONPATH=src, nothing installable).
    try:
        import google_crc32c
    except ImportError:
        raise UsageError("TFRecord files need google-crc32c to check their records: pip install google-crc32c "
                         "(or read an image folder instead)") from None
    return google_crc32c.value(bytes(data))  # the C extension takes only read-only bytes


def masked_crc32c(data: bytes | memoryview) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# --------------------------------------------------------------------------------------------------
# Record framing
# --------------------------------------------------------------------------------------------------


def write_records(path: str | Path, records: Iterable[bytes]) -> int:
    """Write raw records to a TFRecord file; returns how many."""
    count = 0
    with open(path, "wb") as f:
        for data in records:
            length = struct.pack("<Q", len(data))
            f.write(length)
            f.write(struct.pack("<I", masked_crc32c(length)))
            f.write(data)
            f.write(struct.pack("<I", masked_crc32c(data)))
            count += 1
    return count


def iter_records(path: str | Path, verify: bool = True) -> Iterator[tuple[int, bytes]]:
    """Yield (byte offset of the record, data). Damage raises UsageError naming the file and offset."""
    with open(path, "rb") as f:
        offset = 0
        while True:
            header = f.read(12)
            if not header:
                return
            if len(header) < 12:
                raise _damaged(path, offset, f"truncated record header ({len(header)} of 12 bytes)")
            length_bytes, length_crc = header[:8], struct.unpack("<I", header[8:])[0]
            if verify and masked_crc32c(length_bytes) != length_crc:
                raise _damaged(path, offset, "length CRC mismatch")
            (length,) = struct.unpack("<Q", length_bytes)
            data = f.read(length)
            footer = f.read(4)
            if len(data) < length or len(footer) < 4:
                raise _damaged(path, offset, f"truncated record (expected {length} data bytes and a 4-byte CRC)")
            if verify and masked_crc32c(data) != struct.unpack("<I", footer)[0]:
                raise _damaged(path, offset, "data CRC mismatch")
            yield offset, data
            offset += 16 + length


def count_records(path: str | Path) -> int:
    """Number of records, reading only the length fields (seeks past the data, no CRC check)."""
    count, offset, size = 0, 0, Path(path).stat().st_size
    with open(path, "rb") as f:
        while offset < size:
            f.seek(offset)
            header = f.read(8)
            end = offset + 16 + struct.unpack("<Q", header)[0] if len(header) == 8 else size + 1
            if end > size:
                raise _damaged(path, offset, "truncated record")
            offset, count = end, count + 1
    return count


def _damaged(path: str | Path, offset: int, what: str) -> UsageError:
    return UsageError(f"{path}: corrupt TFRecord at byte offset {offset} ({what}); re-create or re-copy this shard")


# --------------------------------------------------------------------------------------------------
# tf.train.Example, protobuf wire format by hand (https://protobuf.dev/programming-guides/encoding/)
# --------------------------------------------------------------------------------------------------

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5

FeatureValue = bytes | str | int | float | list


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64 -> two's complement, 10 bytes on the wire
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | _LEN) + _varint(len(payload)) + payload


def _encode_feature(name: str, value: FeatureValue) -> bytes:
    if isinstance(value, np.ndarray):
        value = value.tolist()
    values = value if isinstance(value, (list, tuple)) else [value]
    if not values:
        feature = _field(3, _field(1, b""))
    elif all(isinstance(v, (bytes, bytearray, str)) for v in values):
        encoded = [v.encode() if isinstance(v, str) else bytes(v) for v in values]
        feature = _field(1, b"".join(_field(1, v) for v in encoded))
    elif all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        feature = _field(3, _field(1, b"".join(_varint(int(v)) for v in values)))
    elif all(isinstance(v, (int, float, np.floating, np.integer)) for v in values):
        feature = _field(2, _field(1, struct.pack(f"<{len(values)}f", *values)))
    else:
        raise TypeError(f"feature {name!r}: expected bytes/str, ints or floats, got {value!r:.60}")
    entry = _field(1, name.encode()) + _field(2, feature)
    return _field(1, entry)


def encode_example(features: dict[str, FeatureValue]) -> bytes:
    """Dict of name -> bytes | str | int | float | list of one of those -> serialized Example.

    A list of ints becomes an Int64List, of floats a FloatList, of bytes/str a BytesList. An empty
    list is written as an empty Int64List (TensorFlow cannot tell the kinds apart either).
    """
    return _field(1, b"".join(_encode_feature(name, value) for name, value in features.items()))


def _read_varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf: memoryview) -> Iterator[tuple[int, int, object]]:
    """(field number, wire type, value) for each field of a message; LEN values as memoryview."""
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, pos = _read_varint(buf, pos)
        elif wire == _LEN:
            length, pos = _read_varint(buf, pos)
            if pos + length > len(buf):
                raise ValueError("truncated length-delimited field")
            value, pos = buf[pos : pos + length], pos + length
        elif wire == _I32:
            value, pos = buf[pos : pos + 4], pos + 4
        elif wire == _I64:
            value, pos = buf[pos : pos + 8], pos + 8
        else:
            raise ValueError(f"unsupported wire type {wire}")
        yield number, wire, value


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _decode_feature(buf: memoryview) -> list:
    for kind, _, body in _fields(buf):
        values: list = []
        for number, wire, value in _fields(body):
            if number != 1:
                continue
            if kind == 1:  # BytesList
                values.append(bytes(value))
            elif kind == 2:  # FloatList: packed (LEN) or one float per field (I32)
                raw = bytes(value)
                values.extend(struct.unpack(f"<{len(raw) // 4}f", raw))
            elif kind == 3:  # Int64List: packed (LEN of varints) or one varint per field
                if wire == _VARINT:
                    values.append(_signed64(value))
                else:
                    pos = 0
                    while pos < len(value):
                        v, pos = _read_varint(value, pos)
                        values.append(_signed64(v))
        return values
    return []


def parse_example(data: bytes | memoryview) -> dict[str, list]:
    """Serialized Example -> {name: list of bytes | ints | floats}. Always lists, as TensorFlow's."""
    features: dict[str, list] = {}
    for number, _, body in _fields(memoryview(data)):
        if number != 1:
            continue
        for entry_number, _, entry in _fields(body):
            if entry_number != 1:
                continue
            name, feature = "", memoryview(b"")
            for n, _, v in _fields(entry):
                if n == 1:
                    name = bytes(v).decode()
                elif n == 2:
                    feature = v
            features[name] = _decode_feature(feature)
    return features


def write_examples(path: str | Path, examples: Iterable[dict[str, FeatureValue]]) -> int:
    """Write Examples (dicts as `encode_example` takes) to one TFRecord file; returns how many."""
    return write_records(path, (encode_example(example) for example in examples))


# --------------------------------------------------------------------------------------------------
# ImageNet-convention shards as a torch dataset
# --------------------------------------------------------------------------------------------------

# Split names the command line accepts -> the shard prefix of the ImageNet build script.
SHARD_PREFIX = {"train": "train", "val": "validation", "validation": "validation"}


class Sample(NamedTuple):
    """One decoded item, or why it could not be had. `fatal` problems stop the run even with --skip-corrupt."""

    image: torch.Tensor | None  # uint8 CHW after the transform
    label: int
    where: str  # file (and byte offset) for messages
    error: str | None = None
    fatal: bool = False


def find_shards(data_dir: str | Path, split: str) -> list[Path]:
    prefix = SHARD_PREFIX.get(split)
    if prefix is None:
        raise UsageError(f"unknown split {split!r}; use train or val")
    return sorted(p for p in Path(data_dir).glob(f"{prefix}-*") if p.is_file())


class TFRecordImages(IterableDataset):
    """Streams (image, label) Samples from shards; shards split across ranks, then DataLoader workers.

    Shard i goes to rank i % world_size; a rank's shards then go to its workers the same way. With
    `shuffle`, each epoch visits the rank's shards in a new order and mixes records through a buffer
    (`shuffle_buffer` encoded records per worker, ~110 KB each for ImageNet).
    """

    def __init__(
        self,
        files: list[Path],
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        label_offset: int = 1,
        num_classes: int = 1000,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = False,
        seed: int = 0,
        shuffle_buffer: int = 256,
        verify: bool = True,
    ):
        if not 0 <= rank < world_size:
            raise UsageError(f"rank {rank} is outside 0..{world_size - 1}; check the distributed launch settings")
        self.files = [Path(f) for f in files]
        self.rank_files = self.files[rank::world_size]
        self.transform = transform
        self.label_offset = label_offset
        self.num_classes = num_classes
        self.shuffle = shuffle
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.verify = verify
        # The epoch lives in shared memory so that persistent DataLoader workers see set_epoch().
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        self._epoch[0] = epoch

    def count(self) -> int:
        """Images this rank reads per epoch."""
        return sum(count_records(f) for f in self.rank_files)

    def _worker_files(self) -> list[Path]:
        files = list(self.rank_files)
        if self.shuffle:
            random.Random(self.seed * 1_000_003 + int(self._epoch[0])).shuffle(files)
        info = get_worker_info()
        if info is not None:
            files = files[info.id :: info.num_workers]
        return files

    def _records(self) -> Iterator[tuple[Path, int, bytes]]:
        for path in self._worker_files():
            for offset, data in iter_records(path, verify=self.verify):
                yield path, offset, data

    def _shuffled(self, records: Iterator[tuple[Path, int, bytes]]) -> Iterator[tuple[Path, int, bytes]]:
        if not self.shuffle or self.shuffle_buffer <= 1:
            yield from records
            return
        info = get_worker_info()
        rng = random.Random(self.seed * 1_000_003 + int(self._epoch[0]) * 1009 + (info.id if info else 0))
        buffer: list = []
        for record in records:
            if len(buffer) < self.shuffle_buffer:
                buffer.append(record)
                continue
            i = rng.randrange(len(buffer))
            buffer[i], record = record, buffer[i]
            yield record
        rng.shuffle(buffer)
        yield from buffer

    def __iter__(self) -> Iterator[Sample]:
        try:
            for path, offset, data in self._shuffled(self._records()):
                yield self.sample(path, offset, data)
        except UsageError as exc:  # damaged shard: hand the message to the consumer as a fatal Sample
            yield Sample(None, -1, "", str(exc), fatal=True)

    def sample(self, path: Path, offset: int, data: bytes) -> Sample:
        """One record as a Sample, with this reader's checks and messages (tfbackend/data.py reports with them too)."""
        where = f"{path} at byte offset {offset}"
        try:
            example = parse_example(data)
        except (ValueError, UnicodeDecodeError) as exc:
            return Sample(None, -1, where, f"{path}: record at byte offset {offset} is not a tf.train.Example ({exc}); "
                          "check that the shards were written by the ImageNet build script or `cnnbench data convert`", True)
        labels, encoded = example.get("image/class/label"), example.get("image/encoded")
        if not labels or not encoded:
            return Sample(None, -1, where, f"{path}: record at byte offset {offset} lacks image/encoded or image/class/label; "
                          "the shards must follow the ImageNet build script's schema", True)
        label = int(labels[0]) - self.label_offset
        if not 0 <= label < self.num_classes:
            return Sample(None, label, where, f"{path}: label {labels[0]} at byte offset {offset} is outside 0..{self.num_classes - 1} "
                          f"after subtracting the label offset {self.label_offset}; set --label-offset (1 for ImageNet shards "
                          "whose labels run 1..1000, 0 for 0-based labels)", True)
        image, error = decode_rgb(encoded[0], where)
        if image is None:
            return Sample(None, label, where, error)
        if self.transform is not None:
            image = self.transform(image)
        return Sample(image, label, where)
