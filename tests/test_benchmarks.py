"""Every benchmark's `--smoke` mode runs, prints a markdown table and writes valid JSON with the machine.

The smoke runs use tiny models and one repeat: they check the code paths, not speed (no timing
assertions). All scripts start at once, each in its own process with one thread, so the whole
module costs about as long as the slowest script rather than the sum of all of them. They start as soon as
collection ends, in the background (tests/background.py).
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import background
import pytest

from helpers.paths import REPO_ROOT

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "benchmarks"
SMOKES = {
    "generation_vs_blog": [],
    "unet_cpu": [],
    "schedulers_quality": [],
    "scale_out": [],
    "gpu_ladder": [],
    "memory_cpu": [],
    "personalise": [],
    "toy_training": [],
}

pytestmark = pytest.mark.slow


def run_smokes() -> dict:
    """Start every `--smoke` run concurrently; return name -> (CompletedProcess-like dict, results folder)."""
    root = Path(tempfile.mkdtemp(prefix="sd-benchmark-smokes-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # 6 processes on 2 cores: no oversubscription
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    procs = {}
    for name, extra in SMOKES.items():
        out = root / name
        cmd = [sys.executable, str(BENCH / f"{name}.py"), "--smoke", "--threads", "1", "--out", str(out), *extra]
        log = open(root / f"{name}.log", "w+")  # noqa: SIM115  (closed below)
        procs[name] = (
            subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, text=True),
            log,
            out,
        )
    deadline = time.time() + 900
    results = {}
    for name, (proc, log, out) in procs.items():
        try:
            proc.wait(timeout=max(1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.seek(0)
        results[name] = {"returncode": proc.returncode, "output": log.read(), "out": out}
        log.close()
    return results


def start_early(items) -> None:
    """The smokes are subprocesses: they run in the background, beside the rest of the session (tests/background.py)."""
    if background.selected(items, "smoke_runs"):
        background.start("benchmark-smokes", run_smokes)


@pytest.fixture(scope="module")
def smoke_runs() -> dict:
    return background.result("benchmark-smokes", run_smokes)


def _results_file(run: dict) -> dict:
    files = sorted(Path(run["out"]).glob("*.json"))
    assert len(files) == 1, f"expected one results file, found {files}\n{run['output'][-3000:]}"
    return json.loads(files[0].read_text())


@pytest.mark.parametrize("name", list(SMOKES))
def test_smoke_prints_a_table_and_writes_json(smoke_runs, name):
    run = smoke_runs[name]
    assert run["returncode"] == 0, run["output"][-4000:]
    lines = run["output"].splitlines()
    header = next((i for i, ln in enumerate(lines) if ln.startswith("| ")), None)
    assert header is not None and lines[header + 1].startswith("|---"), "no markdown table printed"
    assert lines[header + 2].startswith("| "), "the table has no rows"
    data = _results_file(run)
    assert data["name"] == name and data["smoke"] is True
    machine = data["machine"]
    assert machine["cpu_model"] and machine["cpu_cores"] >= 1 and machine["date"]
    assert machine["versions"]["torch"] and machine["versions"]["diffusers"]
    assert "gpu" in machine and "cpu_flags" in machine
    assert isinstance(data["rows"], list) and data["rows"]
    # results get shared: no absolute project path or home folder in the JSON or in the printed notes
    notes = [ln for ln in lines if ln.startswith("- ")]
    for private in {str(REPO_ROOT.resolve()), str(Path.home())} - {"/"}:
        assert private not in json.dumps(data) and not any(private in n for n in notes), private


def test_blog_loop_and_batched_call_make_the_same_images(smoke_runs):
    data = _results_file(smoke_runs["generation_vs_blog"])
    assert data["max_pixel_diff"] <= 2, "same seeds must give the same images either way"
    assert [r["images_per_s"] > 0 for r in data["rows"]] == [True, True]


def test_toy_training_times_each_setting_against_the_recipe(smoke_runs):
    rows = _results_file(smoke_runs["toy_training"])["rows"]
    assert [r["batch"] for r in rows] == [32, 96, 32] and rows[2]["setting"] == "4 heads"
    assert all(
        r["steps_per_s"] > 0 and r["latents_per_s"] == pytest.approx(r["batch"] * r["steps_per_s"]) for r in rows
    )
    assert rows[0]["vs_recipe"] == 1.0


def test_unet_rows_agree_with_fp32(smoke_runs):
    data = _results_file(smoke_runs["unet_cpu"])
    rows = {r["key"]: r for r in data["rows"]}
    assert {"fp32", "bf16", "bf16_cl", "bf16_cl_wait", "fp32_again"} <= set(rows), sorted(rows)
    assert all(r["cosine_vs_fp32"] >= 0.99 for r in rows.values()), {k: r["cosine_vs_fp32"] for k, r in rows.items()}
    assert data["flops_per_step"]["total"] > 0 and data["peaks"]["best"]["fp32"] > 0
    start = data["peaks"]["start"]  # each peak is the better of MKL's mm and oneDNN's 1x1 conv
    for dtype in ("fp32", "bf16"):
        assert set(start["kernels"][dtype]) == {"mm", "conv1x1"}
        assert start[dtype] == max(start["kernels"][dtype].values()) > 0


def test_scheduler_table_names_a_recommendation(smoke_runs):
    data = _results_file(smoke_runs["schedulers_quality"])
    rec = data["recommended"]
    assert rec["scheduler"] in {"pndm", "ddim", "euler"} and rec["num_inference_steps"] >= 1
    assert data["rows"][0]["scheduler"] == "pndm" and len(data["rows"]) == 5


def test_scale_out_splits_between_two_processes(smoke_runs):
    data = _results_file(smoke_runs["scale_out"])
    by_procs = {r["processes"]: r for r in data["rows"]}
    assert by_procs[1]["per_process"] == [4] and sorted(by_procs[2]["per_process"]) == [2, 2]


def test_memory_rows_grow_with_the_work(smoke_runs):
    rows = _results_file(smoke_runs["memory_cpu"])["rows"]
    assert rows[0]["peak_rss_gib"] <= rows[1]["peak_rss_gib"] <= rows[-1]["peak_rss_gib"] + 0.05


def test_gpu_ladder_without_cuda_says_why_and_exits_0():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: the full ladder would run")
    proc = subprocess.run([sys.executable, str(BENCH / "gpu_ladder.py")], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0 and "no CUDA GPU" in proc.stdout


# ------------------------------------------------------------------------------- helpers.cpu_speed


def _unet_result(folder: Path, seconds: dict, cpu_model: str | None = None, smoke: bool = False) -> None:
    """A unet_cpu results file, as benchmarks/unet_cpu.py writes it (only the fields cpu_speed reads)."""
    from helpers.cpu_speed import cpu_model_name

    rows = [{"key": k, "s_per_step": s, "agrees": True} for k, s in seconds.items()]
    machine = {"cpu_model": cpu_model or cpu_model_name(), "date": "2026-01-02T03:04:05"}
    folder.mkdir(parents=True, exist_ok=True)
    stamp = f"2026010{len(list(folder.glob('*.json'))) + 1}-000000"
    data = {"name": "unet_cpu", "smoke": smoke, "machine": machine, "rows": rows}
    (folder / f"unet_cpu-{stamp}.json").write_text(json.dumps(data))


def test_cpu_speed_follows_this_cpus_benchmark(tmp_path):
    import torch

    from helpers.cpu_speed import best_cpu_dtype, best_cpu_setup, from_benchmark

    assert from_benchmark(tmp_path) is None
    _unet_result(tmp_path, {"fp32": 8.0, "bf16": 4.0, "bf16_cl": 3.5})
    choice = best_cpu_setup(results_dir=tmp_path)
    assert (choice.dtype, choice.channels_last, choice.source) == (torch.bfloat16, True, "benchmark")
    assert choice.speedup == pytest.approx(8.0 / 3.5, rel=1e-3) and "2.29x faster" in choice.reason
    dtype, reason = best_cpu_dtype(results_dir=tmp_path)
    assert dtype == torch.bfloat16 and reason.startswith("bfloat16 + channels_last: measured")
    # a newer smoke run or another CPU's file does not count
    _unet_result(tmp_path, {"fp32": 1.0, "bf16": 9.0}, smoke=True)
    _unet_result(tmp_path, {"fp32": 1.0, "bf16": 9.0}, cpu_model="Some Other CPU")
    assert best_cpu_setup(results_dir=tmp_path).dtype == torch.bfloat16


def test_cpu_speed_keeps_fp32_when_bf16_is_not_clearly_faster(tmp_path):
    import torch

    from helpers.cpu_speed import MIN_SPEEDUP, best_cpu_setup

    _unet_result(tmp_path, {"fp32": 10.0, "bf16": 10.0 / (MIN_SPEEDUP - 0.05), "bf16_cl": 12.0})
    choice = best_cpu_setup(results_dir=tmp_path)
    assert choice.dtype == torch.float32 and "exact fp32" in choice.reason


def test_cpu_speed_micro_benchmark_is_cached(tmp_path, monkeypatch):
    import functools

    import torch

    from helpers import cpu_speed

    # The real measurement code on a smaller block: SD's size took 0.4 s on one 2-core Xeon and 35-87 s on a
    # 2-core AMD EPYC (measured), and this test is about the cache, not about which dtype wins.
    monkeypatch.setattr(cpu_speed, "_block", functools.partial(cpu_speed._block, channels=32, size=8))
    first = cpu_speed.from_micro_benchmark(cache_file=tmp_path / "speed.json")
    cache = json.loads((tmp_path / "speed.json").read_text())
    (times,) = cache.values()
    assert set(times) == {"fp32", "fp32_cl", "bf16", "bf16_cl"} and all(t > 0 for t in times.values())
    assert first.dtype in (torch.float32, torch.bfloat16) and first.source == "micro-benchmark"
    again = cpu_speed.from_micro_benchmark(cache_file=tmp_path / "speed.json")
    assert again == first, "the second call reads the cache instead of measuring again"


def test_committed_results_record_the_threads_they_ran_with():
    """`machine.torch_threads` is read after `--threads` is applied (it once was read before, and said 2 for
    one-thread runs)."""
    for path in sorted((BENCH / "results").glob("*.json")):
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or "machine" not in data:
            continue
        threads = (data.get("args") or {}).get("threads")
        if threads:
            assert data["machine"].get("torch_threads") == threads, path.name
