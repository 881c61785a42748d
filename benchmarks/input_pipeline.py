"""Decode + preprocess images/s on one core: cnnbench's pipeline against plain PIL + torchvision v1.

    python benchmarks/input_pipeline.py [--images-per-class 30] [--image-size 384] [--rounds 3]

Output saved under benchmarks/results/ (record.py).

Both read the same JPEG files (the scikit-learn digits written by `cnnbench data sample`, scaled to
--image-size px) and produce the same thing: a normalised float batch of 224x224 centre crops after
resizing the shorter side to 256, in one process with one thread ("per core").

  ours  cnnbench.data.codec (TorchCodec, else torchvision.io; libjpeg-turbo either way) -> uint8 resize + centre crop
        (transforms.v2 functional) -> stack uint8 -> normalise the batch once
        (cnnbench.data.loader.RealDataSource on the CPU, workers=0: the code train/infer use)
  PIL   PIL.Image.open().convert("RGB") -> Resize(256) -> CenterCrop(224) -> ToTensor() -> Normalize()
        per image (the classic torchvision ImageNet recipe) -> stack

The digits are smooth upscaled images, so JPEG decoding is cheaper than for photographs; the
figures compare the pipelines, they are not ImageNet loading rates.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from record import Recorder, add_save_option


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images-per-class", type=int, default=30, help="10 classes (default 30: 300 images)")
    parser.add_argument("--image-size", type=int, default=384, help="side of the JPEG files (default 384)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="timed passes over the files per pipeline; the median is reported")
    add_save_option(parser)
    args = parser.parse_args()
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


if __name__ == "__main__":
    main()
