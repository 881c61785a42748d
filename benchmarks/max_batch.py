"""The largest ResNet-50 batch under a host memory limit on this CPU (issue 12), training and inference.

    .venv/bin/python benchmarks/max_batch.py                          # 4 GiB, both modes
    .venv/bin/python benchmarks/max_batch.py --model /tmp/tiny.json --image-size 16 --largest-batch 8 --save-to /tmp/smoke

Runs `cnnbench max-batch` (maxbatch.run, each probe its own process) and saves each probe and the result.
"""

from __future__ import annotations

import argparse
import tempfile

from cnnbench.tools import maxbatch

from cnnbench.core import store
from cnnbench.core.config import MaxBatchConfig
from record import Recorder, add_save_option


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet50")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--memory-limit-gib", type=float, default=4.0)
    p.add_argument("--modes", default="train,infer")
    p.add_argument("--largest-batch", type=int, default=8192)
    add_save_option(p)
    args = p.parse_args()
    rec = Recorder(__file__, args.save_to)
    for mode in args.modes.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            cfg = MaxBatchConfig(model=args.model, mode=mode, device="cpu", image_size=args.image_size,
                                 memory_limit_gib=args.memory_limit_gib, largest_batch=args.largest_batch,
                                 results_dir=f"{tmp}/results")
            maxbatch.run(cfg)
            records = store.read_records(f"{tmp}/results")
        for r in records[:-1]:
            rec.row(kind="probe", mode=mode, **{k: r.get(k) for k in maxbatch.probe_fields(maxbatch.Probe(0, "ok"))})
            rec.say(f"{mode} batch {r['batch_size']}: {r['status']}, "
                    f"{r['images_per_sec'] or 0:.2f} img/s, host peak {r['host_peak_rss_mib'] or 0:.0f} MiB; {r.get('reason') or ''}")
        s = records[-1]
        rec.say(f"{args.model} {mode} under {args.memory_limit_gib:g} GiB: largest batch {s['max_batch_size']} "
                f"({s['images_per_sec_at_max'] or 0:.2f} img/s); best throughput at batch {s['best_batch_size']} "
                f"({s['best_images_per_sec'] or 0:.2f} img/s); {s['probes']} probes")
        rec.row(kind="summary", mode=mode, memory_limit_gib=args.memory_limit_gib,
                **{k: s[k] for k in ("max_batch_size", "images_per_sec_at_max", "best_batch_size", "best_images_per_sec", "probes")})
    rec.save()


if __name__ == "__main__":
    main()
