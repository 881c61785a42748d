"""maxbatch.py: the search finds the boundary, a probe that dies bounds it without stopping it, the host
memory limit is enforced on a real process tree, and one real probe runs end to end."""

from __future__ import annotations

import sys

import pytest

from cnnbench.tools import maxbatch
from cnnbench.tools.maxbatch import Probe
from helpers import read_jsonl


def fake_probe(fits_up_to: int, dies_at: tuple[int, ...] = ()):
    def probe(batch: int) -> Probe:
        if batch in dies_at:
            return Probe(batch, "failed", "killed by SIGSEGV")
        return Probe(batch, "ok", images_per_sec=10.0 * batch) if batch <= fits_up_to else Probe(batch, "oom", "out of memory")
    return probe


def test_doubling_then_bisection_finds_the_boundary_and_survives_a_probe_that_dies():
    found, probes = maxbatch.search(fake_probe(37, dies_at=(48,)), first=1, largest=8192)
    assert found == 37
    assert [p.batch for p in probes] == [1, 2, 4, 8, 16, 32, 64, 48, 40, 36, 38, 37]
    assert [p.status for p in probes][6:8] == ["oom", "failed"]


def test_a_first_batch_too_large_is_searched_downwards_and_nothing_that_fits_is_none():
    found, probes = maxbatch.search(fake_probe(3), first=16, largest=8192)
    assert found == 3 and [p.batch for p in probes] == [16, 8, 4, 2, 3]
    assert maxbatch.search(fake_probe(0), first=1, largest=64)[0] is None
    found, probes = maxbatch.search(fake_probe(10_000), first=3, largest=20)
    assert found == 20 and [p.batch for p in probes] == [3, 6, 12, 20]  # --largest-batch caps the doubling


def memory_probe(fits_up_to: int, base_mib: float = 500.0, per_image_mib: float = 1.0):
    """A probe whose resident memory is a line: base + batch x per image; the limit sits at `fits_up_to`."""
    def probe(batch: int) -> Probe:
        if batch > fits_up_to:
            return Probe(batch, "oom", "passed the memory limit")
        return Probe(batch, "ok", images_per_sec=10.0, host_peak_rss_mib=base_mib + per_image_mib * batch)
    return probe


def test_the_search_stops_within_tolerance_with_fewer_probes_than_exact_bisection():
    exact_found, exact = maxbatch.search(fake_probe(1000), first=1, largest=8192, tolerance=0)
    found, coarse = maxbatch.search(fake_probe(1000), first=1, largest=8192, tolerance=5)
    assert exact_found == 1000 and len(exact) == 20  # 11 doublings to 1024, 9 bisections
    assert 1000 / 1.05 <= found <= 1000 and len(coarse) == 15  # 4 bisections bring 512..1024 within 5%
    # Guided by a line through the probes' resident memory (the limit at 500 + 1000 x 1 MiB) and the memory
    # model's per image: batch 1, an eighth of the model's estimate, half a tolerance below the fit, and
    # the batch whose failure settles it: 4 probes where bisection took 15 (and 20 exact).
    limit = (500 + 1000) * 2**20
    guide = maxbatch.predictor(limit, 2**20, "host_peak_rss_mib")
    found, guided = maxbatch.search(memory_probe(1000), first=1, largest=8192, tolerance=5, predict=guide)
    assert [p.batch for p in guided] == [1, 125, 975, 1023] and found == 975
    found, guided = maxbatch.search(memory_probe(1000), first=1, largest=8192, tolerance=0, predict=guide)
    assert found == 1000 and [p.batch for p in guided] == [1, 125, 1000, 1001]


def test_below_32_the_search_is_exact_whatever_the_tolerance():
    for fits in (1, 17, 29, 31):
        assert maxbatch.search(fake_probe(fits), first=1, largest=8192, tolerance=5)[0] == fits
        assert maxbatch.search(fake_probe(fits), first=1, largest=8192, tolerance=50)[0] == fits
    assert maxbatch.gap(31, 50) == 1 and maxbatch.gap(32, 50) == 16 and maxbatch.gap(100, 5) == 5


def test_a_fit_that_misleads_falls_back_to_bisection_and_still_settles():
    # Memory grows 1 MiB per image up to 300, then the batch fails at 301 anyway (another limit): the fit
    # keeps aiming at 1000; once a guided probe fails where it said it fits, a plain step follows.
    guide = maxbatch.predictor((500 + 1000) * 2**20, None, "host_peak_rss_mib")
    found, probes = maxbatch.search(memory_probe(300), first=1, largest=8192, tolerance=5, predict=guide)
    assert 300 / 1.05 <= found <= 300 and len(probes) <= 16


# A stand-in probe: holds batch x 64 MiB resident for a moment, then writes the record a run would;
# batch 6 dies of SIGSEGV. The real limit (0.3 GiB, polled from /proc) must stop 5 and 8.
FAKE_CHILD = r"""
import json, os, signal, sys, time
from pathlib import Path
batch, folder = int(sys.argv[1]), Path(sys.argv[2])
if batch == 6:
    os.kill(os.getpid(), signal.SIGSEGV)
held = b"x" * (batch * 64 * 2**20)
time.sleep(0.4)
(folder / "results").mkdir()
(folder / "results" / "runs.jsonl").write_text(json.dumps({"status": "ok", "images_per_sec": 10.0 * batch,
                                                            "peak_memory_mib": len(held) / 2**20}) + "\n")
"""


def test_a_fake_memory_limit_is_found_on_real_processes(cli, tiny_spec, monkeypatch):
    monkeypatch.setattr(maxbatch, "probe_command", lambda cfg, batch, folder: [sys.executable, "-c", FAKE_CHILD, str(batch), str(folder)])
    # Plain doubling and bisection (no memory fit, issue 23's guide) so that the probes reach the batch
    # that dies of SIGSEGV; test_the_memory_fit_settles_the_fake_limit_in_fewer_probes runs the guided search.
    monkeypatch.setattr(maxbatch, "predictor", lambda *args: lambda probes: None)
    code, out, err = cli("max-batch", tiny_spec, "--device", "cpu", "--memory-limit-gib", "0.3")
    assert code == 0, err
    probes = read_jsonl("results_max_batch/runs.jsonl")
    search = probes.pop()
    assert [(p["batch_size"], p["status"]) for p in probes] == [(1, "ok"), (2, "ok"), (4, "ok"), (8, "oom"), (6, "failed"), (5, "oom")]
    assert probes[3]["reason"].startswith("passed the memory limit (") and "> 0.30 GiB" in probes[3]["reason"]
    assert probes[4]["reason"].startswith("killed by SIGSEGV")
    assert 256 < probes[2]["host_peak_rss_mib"] < 0.3 * 1024 and probes[2]["images_per_sec"] == 40.0
    assert search["kind"] == "max_batch" and search["max_batch_size"] == 4 and search["images_per_sec_at_max"] == 40.0
    assert search["best_batch_size"] == 4 and search["probe_statuses"] == ["ok", "ok", "ok", "oom", "failed", "oom"]
    assert search["memory_limit_gib"] == 0.3 and search["config.mode"] == "train" and "env.cpu_isa" in search
    assert "Largest batch that runs: 4, 40.0 img/s" in out
    assert "tinyNet,10.00,20.00,40.00,OOM,failed,OOM" in open("results_max_batch/results.csv").read()


def test_when_batch_one_does_not_fit_the_exit_code_is_out_of_memory(cli, tiny_spec, monkeypatch):
    monkeypatch.setattr(maxbatch, "probe_command", lambda cfg, batch, folder: [sys.executable, "-c", FAKE_CHILD, str(batch), str(folder)])
    code, out, err = cli("max-batch", tiny_spec, "--device", "cpu", "--memory-limit-gib", "0.05")
    assert code == 3 and err.count("\n") == 1 and "out of memory at batch size 1" in err
    assert read_jsonl("results_max_batch/runs.jsonl")[-1]["max_batch_size"] is None


@pytest.mark.parametrize("argv, message", [
    (["--engine", "onnxruntime"], "--engine onnxruntime runs inference only"),
    (["--first-batch", "0"], "--first-batch must be an integer of at least 1"),
    (["--first-batch", "64", "--largest-batch", "8"], "--first-batch 64 is above --largest-batch 8"),
    (["--mode", "infer", "--precision", "tf32", "--device", "cpu"], "--precision tf32 needs a CUDA device"),
    (["--memory-limit-gib", "-1"], "--memory-limit-gib must be a positive number"),
    (["--tolerance", "-1"], "--tolerance must be a percentage from 0 to below 100"),
])
def test_bad_input_is_one_line_and_exit_2(cli, tiny_spec, argv, message):
    code, out, err = cli("max-batch", tiny_spec, *argv)
    assert code == 2 and err.count("\n") == 1 and message in err, err


def test_one_real_probe_runs_cnnbench_in_its_own_process(cli, tiny_spec):
    code, out, err = cli("max-batch", tiny_spec, "--mode", "infer", "--first-batch", "2", "--largest-batch", "2",
                         "--device", "cpu", "--steps", "1")
    assert code == 0, err
    probe, search = read_jsonl("results_max_batch/runs.jsonl")
    assert probe["status"] == "ok" and probe["images_per_sec"] > 0 and probe["peak_memory_mib"] > 0
    assert search["max_batch_size"] == 2 and "Largest batch that runs: 2 (--largest-batch)" in out


def fake_child(monkeypatch):
    monkeypatch.setattr(maxbatch, "probe_command", lambda cfg, batch, folder: [sys.executable, "-c", FAKE_CHILD, str(batch), str(folder)])


def test_the_estimate_is_printed_before_any_probe_line(cli, tiny_spec, monkeypatch):
    fake_child(monkeypatch)
    code, out, err = cli("max-batch", tiny_spec, "--device", "cpu", "--memory-limit-gib", "0.3", "--largest-batch", "4")
    assert code == 0, err
    lines = [line for line in out.splitlines() if line.strip()]
    estimate = next(i for i, line in enumerate(lines) if line.startswith("Estimate:"))
    first_probe = next(i for i, line in enumerate(lines) if line.startswith("  batch "))
    assert estimate < first_probe and "probes" in lines[estimate] and "s of start-up" in lines[estimate]


def test_a_memory_limit_above_the_hosts_ram_is_capped_there_saying_so(cli, tiny_spec, monkeypatch):
    fake_child(monkeypatch)
    code, out, err = cli("max-batch", tiny_spec, "--device", "cpu", "--memory-limit-gib", "1e6", "--largest-batch", "2")
    assert code == 0, err
    said = [line for line in (out + err).splitlines() if "--memory-limit-gib 1e+06 is above this host's" in line]
    assert len(said) == 1 and "could never act; capped at" in said[0]
    ram_gib = maxbatch.memory.available_bytes("cpu") / 2**30
    assert abs(read_jsonl("results_max_batch/runs.jsonl")[-1]["memory_limit_gib"] - ram_gib) < 0.01


def test_a_limit_below_the_process_itself_advises_raising_it_as_the_probe_table_shows(cli, tiny_spec, monkeypatch):
    fake_child(monkeypatch)
    code, out, err = cli("max-batch", tiny_spec, "--device", "cpu", "--memory-limit-gib", "0.0001")
    assert code == 3 and err.count("\n") == 1, err
    assert "passed the memory limit" in out  # the table's reason ...
    # ... and the final line agrees: the process passes the limit before any image, so raise the limit;
    # it no longer says to shrink the image or the model.
    assert "passed the 0.0001 GiB memory limit" in err and "raise --memory-limit-gib above" in err
    assert "a smaller batch or image cannot help" in err and "reduce --image-size" not in err
