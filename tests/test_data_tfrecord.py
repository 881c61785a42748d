"""TFRecord framing, CRC32C, tf.train.Example encoding and the ImageNet-convention shard reader."""

from __future__ import annotations

import os
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnbench.data import codec, tfrecord
from cnnbench.data.loader import RealDataSource
from cnnbench.data.sample import convert_folder_to_tfrecord, image_example, write_sample_dataset, write_shards
from cnnbench.data.tfrecord import (
    TFRecordImages,
    count_records,
    crc32c,
    encode_example,
    iter_records,
    masked_crc32c,
    parse_example,
    write_examples,
)
from cnnbench.data.preprocess import preprocess_for
from cnnbench.core.errors import UsageError

# ---------------------------------------------------------------- CRC32C


def test_crc32c_matches_published_check_values():
    # CRC-32C check value (Castagnoli et al.; RFC 3720 section B.4 gives the vectors below).
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(bytes(32)) == 0x8A9136AA
    assert crc32c(b"\xff" * 32) == 0x62A8AB43
    assert crc32c(bytes(range(32))) == 0x46DD794E


def _crc32c_bitwise(data: bytes) -> int:
    """The textbook definition (reflected polynomial 0x82F63B78, register and result inverted), bit by bit."""
    register = 0xFFFFFFFF
    for byte in data:
        register ^= byte
        for _ in range(8):
            register = (register >> 1) ^ (0x82F63B78 if register & 1 else 0)
    return register ^ 0xFFFFFFFF


@pytest.mark.parametrize("size", [0, 1, 3, 4, 5, 511, 512, 513, 4097])
def test_crc32c_equals_the_bitwise_definition(size):
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    assert crc32c(data) == crc32c(memoryview(data)) == _crc32c_bitwise(data)


def test_masked_crc_follows_the_tfrecord_formula():
    crc = crc32c(b"abc")
    assert masked_crc32c(b"abc") == (((crc >> 15) | (crc << 17)) + 0xA282EAD8) % 2**32


# ---------------------------------------------------------------- record framing


def _write_two(path: Path) -> list[bytes]:
    payloads = [b"first record", os.urandom(700)]
    tfrecord.write_records(path, payloads)
    return payloads


def test_records_round_trip_with_offsets_and_framing(tmp_path):
    path = tmp_path / "x.tfrecord"
    payloads = _write_two(path)
    raw = path.read_bytes()
    # Framing by hand: uint64 length, masked CRC of the length bytes, data, masked CRC of the data.
    assert struct.unpack("<Q", raw[:8])[0] == len(payloads[0])
    assert struct.unpack("<I", raw[8:12])[0] == masked_crc32c(raw[:8])
    assert raw[12 : 12 + len(payloads[0])] == payloads[0]
    assert list(iter_records(path)) == [(0, payloads[0]), (16 + len(payloads[0]), payloads[1])]
    assert count_records(path) == 2


def test_flipped_byte_is_reported_with_file_and_offset(tmp_path):
    path = tmp_path / "train-00000-of-00001"
    payloads = _write_two(path)
    second = 16 + len(payloads[0])
    raw = bytearray(path.read_bytes())
    raw[second + 12 + 100] ^= 0x01  # one bit inside the second record's data
    path.write_bytes(bytes(raw))
    with pytest.raises(UsageError) as info:
        list(iter_records(path))
    message = str(info.value)
    assert str(path) in message and f"byte offset {second}" in message and "data CRC mismatch" in message
    assert "\n" not in message
    assert [offset for offset, _ in iter_records(path, verify=False)] == [0, second]


def test_damaged_length_field_is_caught(tmp_path):
    path = tmp_path / "x"
    _write_two(path)
    raw = bytearray(path.read_bytes())
    raw[0] ^= 0x40
    path.write_bytes(bytes(raw))
    with pytest.raises(UsageError, match=r"byte offset 0 \(length CRC mismatch\)"):
        list(iter_records(path))


def test_truncated_shard_is_reported_with_file_and_offset(tmp_path):
    path = tmp_path / "x"
    payloads = _write_two(path)
    path.write_bytes(path.read_bytes()[:-10])
    second = 16 + len(payloads[0])
    with pytest.raises(UsageError, match=rf"{path}: corrupt TFRecord at byte offset {second} \(truncated record"):
        list(iter_records(path))
    with pytest.raises(UsageError, match=f"byte offset {second}"):
        count_records(path)


# ---------------------------------------------------------------- tf.train.Example


def test_example_round_trip_keeps_kinds_and_values():
    example = {"image/encoded": b"\xff\xd8jpeg", "image/class/label": [7], "big": [-3, 2**40],
               "bbox": [0.25, 0.5], "text": "chat", "names": [b"a", b"b"]}
    parsed = parse_example(encode_example(example))
    assert parsed == {"image/encoded": [b"\xff\xd8jpeg"], "image/class/label": [7], "big": [-3, 2**40],
                      "bbox": [0.25, 0.5], "text": [b"chat"], "names": [b"a", b"b"]}


def test_unpacked_repeated_fields_are_read():
    # Older writers emit one field per value instead of a packed run; protobuf parsers accept both.
    f, v = tfrecord._field, tfrecord._varint
    int64_list = v(1 << 3 | 0) + v(5) + v(1 << 3 | 0) + v(7)  # two varint fields
    float_list = (v(1 << 3 | 5) + struct.pack("<f", 1.5)) * 2  # two fixed32 fields
    entries = (f(1, f(1, b"n") + f(2, f(3, int64_list)))
               + f(1, f(1, b"x") + f(2, f(2, float_list))))
    assert parse_example(f(1, entries)) == {"n": [5, 7], "x": [1.5, 1.5]}


def _protobuf_example_class():
    descriptor_pb2 = pytest.importorskip("google.protobuf.descriptor_pb2")
    from google.protobuf import descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(name="example_test.proto", package="t", syntax="proto3")
    for name, kind in (("BytesList", F.TYPE_BYTES), ("FloatList", F.TYPE_FLOAT), ("Int64List", F.TYPE_INT64)):
        proto.message_type.add(name=name).field.add(name="value", number=1, type=kind, label=F.LABEL_REPEATED)
    feature = proto.message_type.add(name="Feature")
    feature.oneof_decl.add(name="kind")
    for number, name, type_name in ((1, "bytes_list", ".t.BytesList"), (2, "float_list", ".t.FloatList"), (3, "int64_list", ".t.Int64List")):
        feature.field.add(name=name, number=number, type=F.TYPE_MESSAGE, type_name=type_name, label=F.LABEL_OPTIONAL, oneof_index=0)
    features = proto.message_type.add(name="Features")
    entry = features.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    entry.field.add(name="value", number=2, type=F.TYPE_MESSAGE, type_name=".t.Feature", label=F.LABEL_OPTIONAL)
    features.field.add(name="feature", number=1, type=F.TYPE_MESSAGE, type_name=".t.Features.FeatureEntry", label=F.LABEL_REPEATED)
    proto.message_type.add(name="Example").field.add(name="features", number=1, type=F.TYPE_MESSAGE, type_name=".t.Features", label=F.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("t.Example"))


def test_encoding_agrees_with_protobuf_itself():
    Example = _protobuf_example_class()
    ours = encode_example({"image/encoded": b"\x00\x01", "image/class/label": [1000, -1], "xmin": [0.125]})
    theirs = Example.FromString(ours).features.feature
    assert theirs["image/encoded"].bytes_list.value == [b"\x00\x01"]
    assert list(theirs["image/class/label"].int64_list.value) == [1000, -1]
    assert list(theirs["xmin"].float_list.value) == [0.125]
    message = Example()
    message.features.feature["image/class/label"].int64_list.value.extend([3, 4])
    message.features.feature["image/class/text"].bytes_list.value.append(b"tench")
    assert parse_example(message.SerializeToString()) == {"image/class/label": [3, 4], "image/class/text": [b"tench"]}


# ---------------------------------------------------------------- ImageNet-convention shards


@pytest.fixture(scope="module")
def jpeg_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("digits") / "folder"
    write_sample_dataset(root, image_size=16, image_format="jpeg", max_per_class=2)
    return root


def test_folder_to_tfrecord_round_trip_keeps_pixels_and_labels(jpeg_folder, tmp_path):
    summary = convert_folder_to_tfrecord(jpeg_folder, tmp_path / "shards", shards=3)
    assert (summary["train"], summary["validation"], summary["classes"], summary["reencoded"]) == (20, 20, 10, 0)
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == [
        "train-00000-of-00003", "train-00001-of-00003", "train-00002-of-00003", "validation-00000-of-00001"]
    from_folder = {}
    for path in sorted((jpeg_folder / "train").glob("*/*.jpg")):
        from_folder[path.name] = (path.read_bytes(), int(path.parent.name))
    seen = {}
    for shard in sorted((tmp_path / "shards").glob("train-*")):
        for _, record in iter_records(shard):
            example = parse_example(record)
            name = example["image/filename"][0].decode()
            # stored labels are 1-based (the build script's 0 = background), text is the folder name
            seen[name] = (example["image/encoded"][0], example["image/class/label"][0] - 1)
            assert example["image/class/text"] == [str(from_folder[name][1]).encode()]
    assert seen.keys() == from_folder.keys()
    for name, (encoded, label) in seen.items():
        assert encoded == from_folder[name][0]  # JPEG bytes copied, so decoded pixels are equal too
        assert label == from_folder[name][1]
    # Through the dataset: same decoded pixels and the same 0-based labels as the folder.
    dataset = TFRecordImages(sorted((tmp_path / "shards").glob("train-*")))
    samples = list(dataset)
    assert len(samples) == 20
    got = sorted((s.label, s.image.numpy().tobytes()) for s in samples)
    expected = sorted((label, codec.decode_rgb(data, "")[0].numpy().tobytes()) for data, label in from_folder.values())
    assert got == expected and samples[0].image.shape == (3, 16, 16)


def test_png_folder_is_reencoded_as_jpeg(tmp_path):
    write_sample_dataset(tmp_path / "png", image_size=16, max_per_class=1)
    summary = convert_folder_to_tfrecord(tmp_path / "png", tmp_path / "out", shards=1)
    assert summary["reencoded"] == 20
    _, record = next(iter_records(tmp_path / "out" / "train-00000-of-00001"))
    example = parse_example(record)
    assert example["image/encoded"][0][:2] == b"\xff\xd8" and example["image/format"] == [b"JPEG"]


def _shard(path: Path, labels: list[int], jpeg: bytes) -> None:
    write_examples(path, [image_example(jpeg, 8, 8, label, "c", f"{i}.jpg", label_offset=0) for i, label in enumerate(labels)])


@pytest.fixture(scope="module")
def tiny_jpeg() -> bytes:
    return codec.encode_jpeg(torch.full((3, 8, 8), 100, dtype=torch.uint8))


def test_label_offset_is_subtracted(tmp_path, tiny_jpeg):
    _shard(tmp_path / "train-00000-of-00001", [1, 1000], tiny_jpeg)
    files = [tmp_path / "train-00000-of-00001"]
    assert [s.label for s in TFRecordImages(files)] == [0, 999]
    assert [s.label for s in TFRecordImages(files, label_offset=0, num_classes=1001)] == [1, 1000]


def test_label_out_of_range_names_file_and_offset(tmp_path, tiny_jpeg):
    path = tmp_path / "validation-00000-of-00001"
    _shard(path, [5, 0], tiny_jpeg)  # 0 is "background": -1 after the default offset
    second = [offset for offset, _ in iter_records(path)][1]
    preprocess = preprocess_for("resnet50", "imagenet", 8)
    source = RealDataSource(tmp_path, "val", 4, preprocess, "cpu", workers=0)
    with pytest.raises(UsageError) as info:
        list(source.epoch_batches())
    message = str(info.value)
    assert str(path) in message and f"label 0 at byte offset {second}" in message and "--label-offset" in message


def test_corrupt_shard_message_crosses_worker_processes_as_one_line(tmp_path, tiny_jpeg):
    path = tmp_path / "train-00000-of-00001"
    _shard(path, [3, 4, 5], tiny_jpeg)
    raw = bytearray(path.read_bytes())
    raw[-6] ^= 0xFF  # inside the last record's data
    path.write_bytes(bytes(raw))
    last = [offset for offset, _ in iter_records(path, verify=False)][-1]
    source = RealDataSource(tmp_path, "train", 2, preprocess_for("resnet50", "imagenet", 8), "cpu", workers=1, train=False)
    try:
        with pytest.raises(UsageError) as info:
            list(source.epoch_batches())
    finally:
        source.close()
    assert str(info.value) == (f"{path}: corrupt TFRecord at byte offset {last} (data CRC mismatch); "
                               "re-create or re-copy this shard")


def test_shards_split_across_ranks_then_workers(tmp_path, tiny_jpeg, monkeypatch):
    files = []
    for i in range(5):  # record label = shard index, so each item tells where it came from
        files.append(tmp_path / f"train-{i:05d}-of-00005")
        _shard(files[-1], [i] * 2, tiny_jpeg)

    class Info:
        def __init__(self, id, num_workers):
            self.id, self.num_workers = id, num_workers

    got = {}
    for rank in range(2):
        dataset = TFRecordImages(files, label_offset=0, rank=rank, world_size=2)
        for worker in range(2):
            monkeypatch.setattr(tfrecord, "get_worker_info", lambda: Info(worker, 2))
            got[rank, worker] = sorted({s.label for s in dataset})
    # shard i -> rank i % 2; within a rank, its j-th shard -> worker j % 2
    assert got == {(0, 0): [0, 4], (0, 1): [2], (1, 0): [1], (1, 1): [3]}
    assert TFRecordImages(files, rank=1, world_size=2).count() == 4


def test_a_rank_without_shards_is_a_usage_error(tmp_path, tiny_jpeg):
    _shard(tmp_path / "train-00000-of-00001", [1, 2], tiny_jpeg)
    with pytest.raises(UsageError) as info:
        RealDataSource(tmp_path, "train", 2, preprocess_for("resnet50", "imagenet", 8), "cpu", workers=0, rank=1, world_size=2)
    assert str(info.value) == f"rank 1 of 2 gets no train images from {tmp_path}; use fewer ranks or more shards"


def test_real_workers_read_every_record_exactly_once(tmp_path, tiny_jpeg):
    for i in range(3):
        _shard(tmp_path / f"train-{i:05d}-of-00003", [10 * i + k for k in range(3)], tiny_jpeg)
    source = RealDataSource(tmp_path, "train", 2, preprocess_for("resnet50", "imagenet", 8), "cpu",
                            workers=2, train=False, label_offset=0)
    try:
        labels = sorted(label for _, batch in source.epoch_batches() for label in batch.tolist())
    finally:
        source.close()
    assert labels == [0, 1, 2, 10, 11, 12, 20, 21, 22]


def test_training_shuffle_changes_order_per_epoch_and_keeps_the_set(tmp_path, tiny_jpeg):
    _shard(tmp_path / "train-00000-of-00001", list(range(40)), tiny_jpeg)
    dataset = TFRecordImages([tmp_path / "train-00000-of-00001"], label_offset=0, shuffle=True, shuffle_buffer=8)
    first = [s.label for s in dataset]
    dataset.set_epoch(1)
    second = [s.label for s in dataset]
    assert sorted(first) == sorted(second) == list(range(40))
    assert first != second and first != list(range(40))


def test_write_shards_balances_examples(tmp_path, tiny_jpeg):
    examples = [image_example(tiny_jpeg, 8, 8, i, "c", "f") for i in range(7)]
    paths = write_shards(tmp_path, "train", examples, 3)
    assert [count_records(p) for p in paths] == [2, 2, 3]


def test_without_google_crc32c_a_tfrecord_read_is_one_line_saying_what_to_install(monkeypatch):
    # the lent GPU machines' python has no google-crc32c (docs/torch-versions.md): image folders still work there
    monkeypatch.setitem(sys.modules, "google_crc32c", None)  # `import google_crc32c` now raises ImportError
    with pytest.raises(UsageError, match=r"^TFRecord files need google-crc32c to check their records: pip install google-crc32c"):
        tfrecord.crc32c(b"record")
