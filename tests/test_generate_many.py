"""scripts/generate_many.py: a prompt list split over 2 CPU processes with Accelerate, resumable.

Runs the real entry point under `torchrun --standalone --nproc_per_node 2` on the offline model with
2 denoising steps, and checks what a class generating hundreds of images relies on: both processes
work, every job is made exactly once, every image carries its metadata, an interrupted run resumes
without redoing or losing images, and a bad prompt list fails with a clear message.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import generate_many as gm
from helpers import saving
from helpers.generate_many import MARKERS, done_jobs, read_jobs
from helpers.pipeline import generate, offline_model_dir
from helpers.saving import TEMP_PREFIX, read_manifest, read_metadata

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "generate_many.py"
PROMPTS = [
    "a red circle on a blue background",
    "a green square on a white background",
    "a blue triangle on a yellow background",
    "a red circle on a blue background",  # the same prompt again: its own job (next seed)
    "a black circle on a white background",
    "a white square on a red background",
]


def _env() -> dict:
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep: shared CI cores stay usable
    return env


def _run(args: list[str], nproc: int = 1, timeout: float = 240, check: bool = True) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    cmd = (launcher if nproc > 1 else [sys.executable]) + [str(SCRIPT), *args]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def _summary(proc: subprocess.CompletedProcess) -> dict:
    line = next(ln for ln in reversed(proc.stdout.splitlines()) if ln.startswith("SUMMARY "))
    return json.loads(line[len("SUMMARY ") :])


def _images(out: Path) -> list[dict]:
    return [{"file": p.name, **read_metadata(p)} for p in sorted(out.glob("*.png"))]


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "shapes.txt"
    path.write_text("# shapes to draw\n" + "\n".join(PROMPTS[:3]) + "\n\n" + "\n".join(PROMPTS[3:]) + "\n")
    return path


def _common(out: Path) -> list[str]:
    return ["--model", str(offline_model_dir()), "--out", str(out), "--steps", "2", "--batch-size", "2"]


@pytest.fixture(scope="module")
def resumed_run(prompt_file, tmp_path_factory):
    """An interrupted 1-process run, resumed on 2 processes, then run once more: (folder, 3 summaries)."""
    out = tmp_path_factory.mktemp("generate-many") / "run"
    # 1. An "interrupted" run: one process stops after 2 images (--max-jobs, like a crash after 2 saves).
    first = _summary(_run([str(prompt_file), *_common(out), "--max-jobs", "2"]))
    # 2. Resumed on 2 processes: the remaining 4 are shared, the first 2 are not redone.
    second = _summary(_run([str(prompt_file), *_common(out)], nproc=2))
    # 3. Once more: nothing left to do (no model is even loaded).
    third = _summary(_run([str(prompt_file), *_common(out)]))
    return out, (first, second, third)


@pytest.mark.slow
def test_two_processes_after_an_interruption_finish_the_list_once(resumed_run):
    out, (first, second, third) = resumed_run
    assert first["images"] == 2 and first["remaining"] == 4
    assert second["processes"] == 2 and second["skipped"] == 2 and second["images"] == 4
    assert sorted(r["images"] for r in second["per_process"]) == [2, 2], "both processes must work"
    assert third["images"] == 0 and third["skipped"] == 6

    images = _images(out)
    ids = [im["job_id"] for im in images]
    assert len(images) == 6 and len(set(ids)) == 6, "every job exactly once"
    assert {im["rank"] for im in images} == {0, 1}
    assert sorted(im["prompt"] for im in images) == sorted(PROMPTS)
    assert sorted(im["seed"] for im in images) == list(range(6)), "line k of the text file gets seed k"
    assert all(im["num_inference_steps"] == 2 and im["scheduler"] and im["model"] for im in images)
    manifest = read_manifest(out)["images"]
    assert sorted(e["file"] for e in manifest) == sorted(im["file"] for im in images)
    assert set(done_jobs(out)) == set(ids)


@pytest.mark.slow
def test_images_match_generate_with_the_recorded_seed(resumed_run):
    """The metadata is enough to remake an image alone with generate() (batched numerics: <= 2/255)."""
    from helpers.pipeline import load_pipeline

    out, _ = resumed_run
    pipe = load_pipeline(offline_model_dir(), device="cpu", dtype=torch.float32)
    for im in _images(out)[:3]:
        again = generate(pipe, im["prompt"], seed=im["seed"], num_inference_steps=2, show_progress=False)
        diff = np.abs(np.asarray(again.images[0], dtype=int) - np.asarray(Image.open(out / im["file"]), dtype=int))
        assert diff.max() <= 2, f"{im['file']}: max pixel difference {diff.max()}"


@pytest.mark.slow
def test_killed_run_resumes_without_redoing_or_losing_images(tmp_path):
    prompts = tmp_path / "many.csv"
    rows = ["prompt,seed,steps,guidance,negative_prompt"]
    rows += [f"a red circle on a blue background,{100 + i},4,{5 + i % 3},blurry" for i in range(16)]
    prompts.write_text("\n".join(rows) + "\n")
    out = tmp_path / "run"
    args = [str(prompts), "--model", str(offline_model_dir()), "--out", str(out), "--batch-size", "1"]
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), *args], cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    # saved images only: a kill can land while a PNG is still being written under a hidden `.tmp-*.png` name
    saved = lambda: {p.name for p in out.glob("*.png") if not p.name.startswith(TEMP_PREFIX)}  # noqa: E731
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None and len(saved()) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # no clean-up: whatever was half done stays half done
    proc.wait()
    before = saved()
    assert before, "the run was killed before saving anything"
    # The window between saving a PNG and writing its done-marker: make it certain in one image.
    victim = read_metadata(out / sorted(before)[0])["job_id"]
    (out / MARKERS / f"{victim}.json").unlink()

    summary = _summary(_run(args))
    images = _images(out)
    assert summary["images"] + summary["skipped"] == 16 and summary["remaining"] == 0
    assert len(images) == 16 and len({im["job_id"] for im in images}) == 16, "no job redone, none lost"
    assert before <= {im["file"] for im in images}, "images of the killed run are kept"
    assert {(im["seed"], im["num_inference_steps"], im["negative_prompt"]) for im in images} == {
        (100 + i, 4, "blurry") for i in range(16)
    }
    assert sorted(e["file"] for e in read_manifest(out)["images"]) == sorted(im["file"] for im in images)


def test_csv_rows_become_jobs_with_their_own_settings(tmp_path):
    path = tmp_path / "jobs.csv"
    path.write_text("prompt,seed,steps,guidance\na red circle,7,20,3.5\na red circle,7,20,3.5\na blue square,,,\n")
    jobs = read_jobs(path, seed=40, num_inference_steps=30, guidance_scale=7.5)
    assert [(j.prompt, j.seed, j.num_inference_steps, j.guidance_scale) for j in jobs] == [
        ("a red circle", 7, 20, 3.5),
        ("a red circle", 7, 20, 3.5),
        ("a blue square", 42, 30, 7.5),  # empty cells take the defaults; the seed counts rows
    ]
    assert len({j.job_id for j in jobs}) == 3, "identical rows are two jobs (two images)"
    assert [j.job_id for j in read_jobs(path, seed=40, num_inference_steps=30)] == [j.job_id for j in jobs]


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("missing.txt", None, "not found"),
        ("empty.txt", "\n# only a comment\n", "holds no prompts"),
        ("noprompt.csv", "text,seed\nhello,1\n", "'prompt' column"),
        ("typo.csv", "prompt,sed\nhello,1\n", "unknown column"),
        ("badsteps.csv", "prompt,steps\nok,20\nhello,many\n", "row 2: steps must be a number"),
        ("zerosteps.csv", "prompt,steps\nhello,0\n", "row 1: num_inference_steps"),
        ("prompts.json", '["hello"]', "unknown file type"),
    ],
)
def test_bad_prompt_lists_fail_with_a_clear_message(tmp_path, name, text, message):
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        read_jobs(path)


def test_bad_prompt_list_stops_the_script_before_loading_a_model(tmp_path):
    path = tmp_path / "broken.csv"
    path.write_text("prompt,guidance\nhello,-3\n")
    proc = _run([str(path), "--out", str(tmp_path / "out")], check=False, timeout=120)
    assert proc.returncode != 0
    assert "broken.csv, row 1: guidance_scale must be from 0 to 100" in proc.stderr
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------ hardening


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("nan.csv", b"prompt,seed\nok,1\nhello,nan\n", "nan.csv, row 2: seed must be a finite number, got 'nan'"),
        ("inf.csv", b"prompt,guidance\nhello,inf\n", "inf.csv, row 1: guidance must be a finite number"),
        ("huge.csv", b"prompt,guidance\nhello,1e400\n", "huge.csv, row 1: guidance is too large"),
        ("bigseed.csv", b"prompt,seed\nhello,1e30\n", r"bigseed.csv, row 1: seed must be a whole number from 0"),
        ("binary.txt", b"a cat\n\xff\xfe\x00\x89PNG", "binary.txt, line 2: not UTF-8 text"),
        ("nul.csv", b"prompt\nhello\x00world\n", "nul.csv, line 2: holds a NUL byte"),
    ],
)
def test_bad_numbers_and_binary_files_name_the_row(tmp_path, name, data, message):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(ValueError, match=message) as info:
        read_jobs(path)
    assert str(tmp_path) not in str(info.value)  # the file's name, not its folder


def test_csv_seeds_are_exact(tmp_path):
    path = tmp_path / "seeds.csv"
    path.write_text("prompt,seed,steps\na,9007199254740993,1e1\nb,9223372036854775807,20\n")
    jobs = read_jobs(path)
    assert [j.seed for j in jobs] == [9007199254740993, 2**63 - 1]  # float would make ...992 and 2**63
    assert jobs[0].num_inference_steps == 10 and type(jobs[0].seed) is int


class OneProcess:
    """Accelerate's PartialState, as one process sees it when it runs alone."""

    is_main_process, process_index, num_processes = True, 0, 1

    def wait_for_everyone(self):
        pass

    @contextlib.contextmanager
    def split_between_processes(self, items):
        yield items


class Crash(BaseException):
    """A kill at one point of the save (BaseException: nothing in the code under test catches it)."""


def _jobs(tmp_path) -> list:
    path = tmp_path / "three.txt"
    path.write_text("a red circle on a blue background\na green square on a white background\na blue circle\n")
    return read_jobs(path, num_inference_steps=1)


def _check_folder(out: Path, jobs) -> None:
    pngs = sorted(p.name for p in out.glob("*.png") if not p.name.startswith("."))
    by_job = [read_metadata(out / name)["job_id"] for name in pngs]
    assert sorted(by_job) == sorted(j.job_id for j in jobs), "each job exactly one image"
    entries = read_manifest(out)["images"]
    assert sorted(e["file"] for e in entries) == pngs, "manifest lists each image once"
    assert set(done_jobs(out)) == {j.job_id for j in jobs}
    leftovers = [p.name for p in [*out.iterdir(), *(out / MARKERS).iterdir()] if p.name.startswith(".tmp-")]
    assert not leftovers, leftovers


def _crash_before_temp_write(monkeypatch):
    def crash(*a, **k):
        raise Crash

    monkeypatch.setattr(saving, "_png_info", crash)


def _crash_after_temp_write(monkeypatch):
    """Killed between writing the temp PNG and linking it: the temp file (a whole image) stays behind."""

    def crash(*a, **k):
        raise Crash

    monkeypatch.setattr(saving.os, "link", crash)
    monkeypatch.setattr(saving.os, "unlink", lambda *a, **k: None)  # a killed process cleans nothing up


def _crash_after_link(monkeypatch):
    def crash(*a, **k):
        raise Crash

    monkeypatch.setattr(saving, "_update_manifest", crash)


def _crash_after_marker(monkeypatch):
    real = gm._write_marker

    def crash(*a, **k):
        real(*a, **k)
        raise Crash

    monkeypatch.setattr(gm, "_write_marker", crash)


@pytest.mark.parametrize(
    "fault",
    [_crash_before_temp_write, _crash_after_temp_write, _crash_after_link, _crash_after_marker],
    ids=["before-temp-write", "after-temp-write", "after-link", "after-marker"],
)
def test_a_crash_at_each_step_of_the_save_resumes_to_one_image_per_job(tiny_pipe, tmp_path, monkeypatch, fault):
    jobs, out = _jobs(tmp_path), tmp_path / "out"
    quiet = lambda *a: None  # noqa: E731
    gm.run(
        jobs[:1], lambda: tiny_pipe, out, OneProcess(), batch_size=1, height=32, width=32, log=quiet
    )  # one done first
    with monkeypatch.context() as m:
        fault(m)
        with pytest.raises(Crash):
            gm.run(jobs, lambda: tiny_pipe, out, OneProcess(), batch_size=1, height=32, width=32, log=quiet)
    if fault is _crash_after_temp_write:
        temp = [p for p in out.glob(".tmp-*.png")]
        assert temp and read_metadata(temp[0])["job_id"] == jobs[1].job_id  # a whole image: must not be adopted
    summary = gm.run(jobs, lambda: tiny_pipe, out, OneProcess(), batch_size=1, height=32, width=32, log=quiet)
    assert summary["remaining"] == 0
    _check_folder(out, jobs)
    again = gm.run(jobs, lambda: tiny_pipe, out, OneProcess(), batch_size=1, height=32, width=32, log=quiet)
    assert again["images"] == 0 and again["skipped"] == 3


def test_a_second_run_on_the_same_folder_says_so_and_exits(tiny_pipe, tmp_path):
    from filelock import FileLock

    jobs, out = _jobs(tmp_path), tmp_path / "out"
    out.mkdir()
    with FileLock(str(out / gm.RUN_LOCK)):  # the first run, still going (another process would hold it the same)
        with pytest.raises(gm.RunInProgressError, match="Another generate_many run is already writing into out"):
            gm.run(jobs, lambda: tiny_pipe, out, OneProcess(), batch_size=1, height=32, width=32, log=lambda *a: None)
    assert not list(out.glob("*.png"))


def test_out_of_memory_names_the_flags_in_order(fresh_tiny_pipe, tmp_path, monkeypatch):
    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(fresh_tiny_pipe.unet, "forward", oom)
    with pytest.raises(gm.NotEnoughMemoryError) as info:
        gm.run(_jobs(tmp_path), lambda: fresh_tiny_pipe, tmp_path / "out", OneProcess(), batch_size=2, height=32, width=32,
               log=lambda *a: None)  # fmt: skip
    msg = str(info.value)
    steps = [
        msg.index(f) for f in ("--batch-size=1", "--height 512 --width 512", "--memory balanced", "--dtype float16")
    ]
    assert steps == sorted(steps) and "rerun the same command to continue" in msg


def test_records_name_the_prompt_file_and_model_without_their_folders(tiny_pipe, tmp_path):
    jobs, out = _jobs(tmp_path), tmp_path / "out"
    gm.run(jobs[:1], lambda: tiny_pipe, out, OneProcess(), batch_size=1, source=str(tmp_path / "three.txt"), height=32,
           width=32, log=lambda *a: None)  # fmt: skip
    (entry,) = read_manifest(out)["images"]
    assert entry["source"] == "three.txt" and not Path(entry["model"]).is_absolute()


def test_main_tears_its_process_group_down(monkeypatch, prompt_file, tmp_path):
    """Left to interpreter exit, gloo's threads once aborted a finished 2-process run (SIGABRT, 1 run in 16 here)."""
    import accelerate

    torn_down = []

    class Recording(accelerate.PartialState):
        def destroy_process_group(self, group=None):
            torn_down.append(group)
            super().destroy_process_group(group)

    monkeypatch.setattr(accelerate, "PartialState", Recording)
    summary = gm.main([str(prompt_file), *_common(tmp_path / "run"), "--max-jobs", "1"])
    assert summary["images"] == 1 and torn_down == [None]
    with pytest.raises(SystemExit, match="generate_many"):  # refused after the state exists: torn down all the same
        gm.main([str(prompt_file), *_common(tmp_path / "other"), "--height", "65"])
    assert torn_down == [None, None]
