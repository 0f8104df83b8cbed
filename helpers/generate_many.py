"""Generate many images from a prompt list, split across processes with Hugging Face Accelerate.

    python scripts/generate_many.py prompts.txt                          # one process
    torchrun --nproc_per_node 2 scripts/generate_many.py prompts.csv     # 2 CPU processes (or 2 GPUs)
    accelerate launch --num_processes 2 scripts/generate_many.py prompts.csv

The prompt list is a text file (one prompt per line; blank lines and lines starting with `#` are
skipped; line k gets seed `--seed + k`) or a CSV file with a header row: `prompt` (required) and
optionally `seed`, `steps`, `guidance`, `negative_prompt` (empty cells take the command's defaults).

How the work is shared: `accelerate.PartialState` starts the process group that `torchrun` or
`accelerate launch` set up (`cpu=True` on a machine without CUDA: without it Accelerate silently runs
a single process), and `split_between_processes` gives each process a contiguous share of the list.
On GPUs each process uses its own GPU (`state.device` is `cuda:<local rank>`).

How nothing is lost or done twice:
- every job has a deterministic id (a hash of prompt, seed, steps, guidance, negative prompt, size,
  scheduler and model, plus a counter for identical rows), stored in its image's metadata;
- images go through `helpers.saving.save_images` into ONE shared folder (no file is ever overwritten),
  under a file lock (`filelock`) so two processes never update `manifest.json` at once;
- after an image is saved, a marker `.jobs/<job id>.json` is written atomically;
- on restart, jobs with a marker (or with a PNG whose metadata names the job, in case a run died
  between the two writes) are skipped; half-written `.tmp-*` files are never taken for results and are
  deleted. So re-running the same command after a crash or Ctrl-C finishes the list without redoing or
  losing images;
- one run at a time per output folder: a second command on the same folder says so and exits.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import decimal
import hashlib
import inspect
import io
import json
import math
import os
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from filelock import FileLock, Timeout

from .paths import OUTPUTS_DIR
from .pipeline import (
    MEMORY_PRESETS,
    NotEnoughMemoryError,
    explain_black_images,
    generate,
    is_out_of_memory,
    out_of_memory_message,
    release_memory,
    scheduler_name,
    validate_inputs,
)
from .saving import TEMP_PREFIX, library_versions, public_name, read_manifest, read_metadata, save_images, slugify

MARKERS = ".jobs"  # folder of done-markers inside the output folder
LOCK = ".lock"  # held while saving a batch (all processes of a run)
RUN_LOCK = ".run.lock"  # held by a run's main process from start to end: one run per folder
#: generate_many's names for the out-of-memory fixes
OOM_FIXES = {
    "images": "--batch-size",
    "size": "--height 512 --width 512",
    "preset": "--memory balanced, then low or lowest",
    "fp16": "--dtype float16 on a GPU",
}
CSV_COLUMNS = {  # accepted header -> Job field
    "prompt": "prompt",
    "seed": "seed",
    "steps": "num_inference_steps",
    "num_inference_steps": "num_inference_steps",
    "guidance": "guidance_scale",
    "guidance_scale": "guidance_scale",
    "negative_prompt": "negative_prompt",
    "negative": "negative_prompt",
}
_DEFAULTS = inspect.signature(generate).parameters  # follow generate()'s defaults
DEFAULT_STEPS = _DEFAULTS["num_inference_steps"].default
DEFAULT_GUIDANCE = _DEFAULTS["guidance_scale"].default


@dataclass(frozen=True)
class Job:
    """One image to make: everything that decides its pixels, plus where it came from."""

    row: int  # line (text) or data row (CSV) number, from 1
    prompt: str
    seed: int
    num_inference_steps: int
    guidance_scale: float
    negative_prompt: str = ""
    job_id: str = ""


def _job_id(fields: dict, occurrence: int) -> str:
    text = json.dumps({**fields, "occurrence": occurrence}, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


class RunInProgressError(RuntimeError):
    """Another run is writing into the same output folder."""


def _parse_number(value: str, kind, what: str, where: str):
    """The number in a CSV cell, exactly: decimal arithmetic, never through float (9007199254740993 stays)."""
    try:
        number = decimal.Decimal(value)  # "12", "1e3", "9007199254740993": exact; "nan"/"inf" caught below
    except decimal.InvalidOperation:
        raise ValueError(f"{where}: {what} must be a number, got {value[:40]!r}.") from None
    if not number.is_finite():
        raise ValueError(f"{where}: {what} must be a finite number, got {value[:40]!r}.")
    if kind is int:
        if number != number.to_integral_value():
            raise ValueError(f"{where}: {what} must be a whole number, got {value[:40]!r}.")
        if abs(number.adjusted()) > 100:
            raise ValueError(f"{where}: {what} is far too large, got {value[:40]!r}.")
        return int(number)
    result = float(number)
    if not math.isfinite(result):
        raise ValueError(f"{where}: {what} is too large for a number, got {value[:40]!r}.")
    return result


def _read_text(path: Path) -> str:
    """The file's text as UTF-8, or a ValueError naming the file, the line and the fix."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ValueError(
            f"{path.name}, line {line}: not UTF-8 text (byte {err.start}); is it a binary file? Save the prompt "
            "list as plain UTF-8 text (.txt, one prompt per line) or CSV."
        ) from None
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise ValueError(
            f"{path.name}, line {line}: holds a NUL byte, so it is not a text file; save it as UTF-8 text."
        )
    return text


def read_jobs(
    path: str | os.PathLike,
    seed: int = 0,
    num_inference_steps: int = DEFAULT_STEPS,
    guidance_scale: float = DEFAULT_GUIDANCE,
    negative_prompt: str = "",
    height: int | None = None,
    width: int | None = None,
    scheduler: str | None = None,
    model: str = "",
) -> list[Job]:
    """Read a prompt list (.txt or .csv) into jobs; every row is checked before any model work.

    Raises `FileNotFoundError` or `ValueError` naming the file, the row and the fix.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Prompt list {path} not found: pass a .txt (one prompt per line) or .csv file.")
    suffix = path.suffix.lower()
    fname = path.name  # messages and records name the file, never its folder (it may hold your user name)
    raw: list[tuple[int, dict]] = []  # (row number, fields given in the file)
    if suffix == ".csv":
        text = _read_text(path)
        reader = csv.DictReader(io.StringIO(text, newline=""))
        try:
            headers = [h.strip().lower() for h in (reader.fieldnames or [])]
            if "prompt" not in headers:
                raise ValueError(
                    f"{fname}: the CSV needs a header row with a 'prompt' column (optional: seed, steps, guidance, "
                    f"negative_prompt); found {headers or 'no header'}."
                )
            unknown = [h for h in headers if h and h not in CSV_COLUMNS]
            if unknown:
                raise ValueError(f"{fname}: unknown column(s) {unknown}; allowed: {', '.join(CSV_COLUMNS)}.")
            for n, row in enumerate(reader, start=1):
                row = {(k or "").strip().lower(): (v or "").strip() for k, v in row.items() if k is not None}
                if not any(row.values()):
                    continue  # a blank line
                where = f"{fname}, row {n}"
                fields = {}
                for col, value in row.items():
                    if not value or col not in CSV_COLUMNS:
                        continue
                    name = CSV_COLUMNS[col]
                    if name == "seed" or name == "num_inference_steps":
                        fields[name] = _parse_number(value, int, col, where)
                    elif name == "guidance_scale":
                        fields[name] = _parse_number(value, float, col, where)
                    else:
                        fields[name] = value
                raw.append((n, fields))
        except csv.Error as err:
            raise ValueError(f"{fname}, row {reader.line_num}: not valid CSV ({err}); check its quotes.") from None
    elif suffix in (".txt", ".text", ".prompts", ""):
        lines = _read_text(path).splitlines()
        prompts = [(n, line.strip()) for n, line in enumerate(lines, start=1)]
        prompts = [(n, p) for n, p in prompts if p and not p.startswith("#")]
        raw = [(n, {"prompt": p, "seed": seed + k}) for k, (n, p) in enumerate(prompts)]
    else:
        raise ValueError(f"{fname}: unknown file type {suffix!r}; use .txt (one prompt per line) or .csv.")
    if not raw:
        raise ValueError(f"{fname} holds no prompts: write one prompt per line (or CSV rows under a 'prompt' header).")

    jobs, seen = [], {}
    for k, (n, fields) in enumerate(raw):
        where = f"{fname}, {'row' if suffix == '.csv' else 'line'} {n}"
        job = {
            "prompt": fields.get("prompt", ""),
            "seed": fields.get("seed", seed + k),
            "num_inference_steps": fields.get("num_inference_steps", num_inference_steps),
            "guidance_scale": fields.get("guidance_scale", guidance_scale),
            "negative_prompt": fields.get("negative_prompt", negative_prompt) or "",
        }
        try:
            checked = validate_inputs(
                job["prompt"], 1, job["seed"], job["guidance_scale"], job["num_inference_steps"],
                job["negative_prompt"] or None, height, width, scheduler,
            )  # fmt: skip
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
        job.update({k: checked[k] for k in ("seed", "num_inference_steps", "guidance_scale")})  # exact, plain types
        key = json.dumps(
            {**job, "height": height, "width": width, "scheduler": scheduler, "model": model}, sort_keys=True
        )
        seen[key] = seen.get(key, 0) + 1  # identical rows are separate jobs (and separate images)
        jobs.append(Job(row=n, job_id=_job_id(json.loads(key), seen[key]), **job))
    return jobs


def default_out_dir(prompt_file: str | os.PathLike) -> Path:
    """outputs/generate_many/<file name>/: the same command finds its own folder again when resumed."""
    return OUTPUTS_DIR / "generate_many" / slugify(Path(prompt_file).stem)


# ------------------------------------------------------------------------------------- done bookkeeping


@contextlib.contextmanager
def folder_lock(folder: Path):
    """An exclusive lock on `folder` shared by all processes of a run (`filelock`: any OS)."""
    with FileLock(str(folder / LOCK)):
        yield


@contextlib.contextmanager
def run_lock(folder: Path):
    """Held by one run's main process for the whole run; a second run on `folder` gets RunInProgressError."""
    lock = FileLock(str(folder / RUN_LOCK))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise RunInProgressError(
            f"Another generate_many run is already writing into {public_name(folder)}: wait for it to finish "
            "(it resumes where it stopped if you rerun it later), or pass another --out folder."
        ) from None
    try:
        yield
    finally:
        lock.release()


def _write_marker(folder: Path, job_id: str, info: dict) -> None:
    markers = folder / MARKERS
    markers.mkdir(exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=markers, prefix=TEMP_PREFIX, suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(info, f)
        os.replace(tmp, markers / f"{job_id}.json")  # atomic: a marker is whole or absent
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def remove_temp_files(folder: Path) -> int:
    """Delete the half-written `.tmp-*` files a killed run left; call only while no run writes to `folder`."""
    removed = 0
    for place in (folder, folder / MARKERS):
        for tmp in place.glob(TEMP_PREFIX + "*") if place.is_dir() else []:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
                removed += 1
    return removed


def done_jobs(folder: Path) -> dict[str, str]:
    """job id -> image file name, for every job already finished in `folder`."""
    done = {}
    for marker in (folder / MARKERS).glob("*.json") if (folder / MARKERS).is_dir() else []:
        try:
            done[marker.stem] = json.loads(marker.read_text(encoding="utf-8"))["file"]
        except (OSError, ValueError, KeyError):
            continue  # unreadable marker: the PNG scan below decides
    return done


def repair(folder: Path) -> int:
    """Make markers and manifest agree with the PNGs on disk (after a run died between writes).

    Returns how many images were found without a marker. Call from one process only.
    """
    from .saving import _update_manifest

    remove_temp_files(folder)  # a temp file may hold a whole image, but it is not a result: its job is redone
    done = done_jobs(folder)
    known_files = set(done.values())
    try:
        in_manifest = {e.get("file") for e in read_manifest(folder).get("images", [])}
    except (OSError, ValueError):
        in_manifest = set()
    found, missing_entries = 0, []
    for png in sorted(folder.glob("*.png")):
        if png.name.startswith("."):
            continue  # hidden: a temp file or not ours (pathlib's glob matches dot files too)
        if png.name in known_files and png.name in in_manifest:
            continue
        try:
            record = read_metadata(png)
        except (OSError, ValueError):
            continue  # not one of ours
        job_id = record.get("job_id")
        if not job_id:
            continue
        if job_id not in done:
            _write_marker(folder, job_id, {"file": png.name, "repaired": True})
            done[job_id] = png.name
            found += 1
        if png.name not in in_manifest:
            missing_entries.append({"file": png.name, **record})
    if missing_entries:
        _update_manifest(folder, missing_entries)
    return found


# ---------------------------------------------------------------------------------------------- running


def _batches(jobs: list[Job], batch_size: int) -> list[list[Job]]:
    """Consecutive jobs that share steps and guidance, at most `batch_size` per pipeline call."""
    out: list[list[Job]] = []
    for job in jobs:
        last = out[-1] if out else None
        if (
            last
            and len(last) < batch_size
            and (last[0].num_inference_steps, last[0].guidance_scale) == (job.num_inference_steps, job.guidance_scale)
        ):
            last.append(job)
        else:
            out.append([job])
    return out


def generate_batch(pipe, jobs: list[Job], height: int | None = None, width: int | None = None):
    """One pipeline call for several jobs; image i is what `generate(prompt_i, seed=seed_i)` makes."""
    import numpy as np
    from PIL import Image

    height = height or pipe.unet.config.sample_size * pipe.vae_scale_factor
    width = width or pipe.unet.config.sample_size * pipe.vae_scale_factor
    out_of_memory = False
    try:
        out = pipe(
            prompt=[j.prompt for j in jobs],
            negative_prompt=[j.negative_prompt for j in jobs],
            generator=[torch.Generator("cpu").manual_seed(j.seed) for j in jobs],  # one per image, as generate()
            num_inference_steps=jobs[0].num_inference_steps,
            guidance_scale=jobs[0].guidance_scale,
            height=height,
            width=width,
            output_type="np",
        )
    except (torch.OutOfMemoryError, RuntimeError) as err:
        if not is_out_of_memory(err):
            raise
        out_of_memory = True  # raised below, once this block has dropped the traceback and its tensors
    if out_of_memory:
        release_memory()
        dtype = str(pipe.unet.dtype).replace("torch.", "")
        msg = out_of_memory_message(len(jobs), height, width, dtype, str(pipe.device), how=OOM_FIXES)
        raise NotEnoughMemoryError(msg + " Images made so far are kept: rerun the same command to continue.")
    arrays = np.asarray(out.images)  # (n, H, W, 3) in [0, 1]
    nan = [bool(np.isnan(a).any()) for a in arrays]
    nsfw = [bool(x) for x in (out.nsfw_content_detected or [False] * len(jobs))]
    images = [Image.fromarray((np.nan_to_num(a).clip(0, 1) * 255).round().astype(np.uint8)) for a in arrays]
    return images, nsfw, nan, height, width


def run(
    jobs: list[Job],
    pipe_or_loader,
    out_dir: Path,
    state,
    batch_size: int = 4,
    max_jobs: int | None = None,
    source: str = "",
    height: int | None = None,
    width: int | None = None,
    log=print,
) -> dict:
    """Generate the jobs not done yet in `out_dir`, this process's share of them; return the summary.

    `pipe_or_loader` is a pipeline, or a function that loads one (called only if this process has work).
    """
    from accelerate.utils import gather_object

    out_dir = Path(out_dir)
    with contextlib.ExitStack() as stack:
        busy = ""
        if state.is_main_process:
            out_dir.mkdir(parents=True, exist_ok=True)
            try:
                stack.enter_context(run_lock(out_dir))
            except RunInProgressError as err:
                busy = str(err)
        busy = next((b for b in gather_object([busy]) if b), "")  # every process learns it, none hangs
        if busy:
            raise RunInProgressError(busy)
        return _run_locked(jobs, pipe_or_loader, out_dir, state, batch_size, max_jobs, source, height, width, log)


def _run_locked(jobs, pipe_or_loader, out_dir: Path, state, batch_size, max_jobs, source, height, width, log) -> dict:
    from accelerate.utils import gather_object

    if state.is_main_process:
        repaired = repair(out_dir)
        if repaired:
            log(f"Found {repaired} image(s) saved by an interrupted run without a done-marker; they count as done.")
    state.wait_for_everyone()
    done = done_jobs(out_dir)
    pending = [j for j in jobs if j.job_id not in done]
    skipped = len(jobs) - len(pending)
    if max_jobs is not None:
        pending = pending[:max_jobs]  # the same cut in every process: all computed it from the same markers
    state.wait_for_everyone()  # nobody writes a marker before every process has read them

    versions = library_versions()
    made, t0 = 0, time.perf_counter()
    with state.split_between_processes(pending) as mine:
        pipe = pipe_or_loader() if mine and callable(pipe_or_loader) else pipe_or_loader
        if mine:
            model = public_name(getattr(pipe, "name_or_path", "") or type(pipe).__name__)
            dtype = str(pipe.unet.dtype).replace("torch.", "")
            common = {"scheduler": scheduler_name(pipe), "model": model, "dtype": dtype}
            t0 = time.perf_counter()  # generation time, without loading the model
        for batch in _batches(list(mine), batch_size):
            images, nsfw, nan, h, w = generate_batch(pipe, batch, height, width)
            records = [
                {
                    **{k: v for k, v in asdict(j).items() if k != "row"},
                    **common,
                    "height": h,
                    "width": w,
                    "index": j.row,  # file name: <row>-seed<seed>.png
                    "row": j.row,
                    "source": Path(source).name if source else "",
                    "rank": state.process_index,
                    "device": str(pipe.device),
                    "nsfw": f,
                    "nan": bad,
                    "versions": versions,
                }
                for j, f, bad in zip(batch, nsfw, nan)
            ]
            for msg in explain_black_images(nsfw, nan, records, pipe.unet.dtype):
                warnings.warn(msg, stacklevel=2)
            with folder_lock(out_dir):
                paths = save_images(images, records, run_dir=out_dir)
                for job, path in zip(batch, paths):
                    _write_marker(out_dir, job.job_id, {"file": path.name, "rank": state.process_index})
            made += len(batch)
            log(f"[process {state.process_index}] {made}/{len(mine)} images")
    seconds = time.perf_counter() - t0
    per_rank = gather_object([{"rank": state.process_index, "images": made, "seconds": seconds}])
    state.wait_for_everyone()
    total_images = sum(r["images"] for r in per_rank)
    wall = max(r["seconds"] for r in per_rank)
    summary = {
        "images": total_images,
        "skipped": skipped,
        "remaining": len(jobs) - skipped - total_images,
        "jobs": len(jobs),
        "seconds": wall,
        "images_per_s": total_images / wall if wall > 0 and total_images else 0.0,
        "processes": state.num_processes,
        "per_process": per_rank,
        "out_dir": public_name(out_dir),
    }
    return summary


def format_summary(s: dict) -> str:
    per = ", ".join(f"process {r['rank']}: {r['images']}" for r in s["per_process"])
    left = f"; {s['remaining']} left (run the same command again to continue)" if s["remaining"] else ""
    return (
        f"Done: {s['images']} new images in {s['seconds']:.1f} s ({s['images_per_s']:.2f} images/s) on "
        f"{s['processes']} process(es) [{per}]; {s['skipped']} already done{left}.\nImages and manifest.json: {s['out_dir']}"
    )


# -------------------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="generate_many",
        description=__doc__.split("\n\n")[0],
        epilog="Start several processes with `torchrun --nproc_per_node N scripts/generate_many.py ...` or "
        "`accelerate launch --num_processes N scripts/generate_many.py ...`.",
    )
    ap.add_argument(
        "prompts", type=Path, help=".txt (one prompt per line) or .csv (prompt, seed, steps, guidance, negative_prompt)"
    )
    ap.add_argument("--out", type=Path, default=None, help="output folder (default outputs/generate_many/<file name>/)")
    ap.add_argument("--model", default=None, help="Hub id or folder (default: helpers.pipeline.choose_model())")
    ap.add_argument(
        "--seed", type=int, default=0, help="text files: line k gets seed + k; CSV: seed of rows without one"
    )
    ap.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="default num_inference_steps")
    ap.add_argument("--guidance-scale", type=float, default=DEFAULT_GUIDANCE)
    ap.add_argument("--negative-prompt", default="")
    ap.add_argument("--height", type=int, default=None)
    ap.add_argument("--width", type=int, default=None)
    ap.add_argument("--scheduler", default=None, help="pndm, ddim, euler, euler_a, dpmpp_2m, ...")
    ap.add_argument("--batch-size", type=int, default=4, help="images per pipeline call in each process")
    ap.add_argument(
        "--max-jobs", type=int, default=None, help="stop after this many new images (all processes together)"
    )
    ap.add_argument(
        "--threads", type=int, default=None, help="torch threads per process (CPU; default cores / processes)"
    )
    ap.add_argument("--dtype", choices=("auto", "float32", "float16", "bfloat16"), default="auto")
    ap.add_argument("--memory", choices=list(MEMORY_PRESETS), default="none", help="memory preset (see notebook 01)")
    ap.add_argument("--no-safety-checker", action="store_true", help="drop the NSFW filter (use responsibly)")
    return ap  # fmt: skip


def main(argv=None) -> dict:
    from accelerate import PartialState

    args = build_parser().parse_args(argv)
    if args.batch_size < 1:
        raise SystemExit("--batch-size must be at least 1.")
    state = PartialState(cpu=not torch.cuda.is_available())  # cpu=True: a process group over gloo, else 1 process
    try:
        return _main(args, state)
    finally:
        # Tear the process group down before the interpreter exits: left to exit, gloo's threads were once destroyed
        # still running and aborted a finished 2-process run ("terminate called without an active exception").
        state.destroy_process_group()


def _main(args, state) -> dict:
    """main's work, in the process group `state` (accelerate's `PartialState`)."""
    from .pipeline import apply_memory_preset, choose_model, load_pipeline, make_scheduler

    log = lambda msg: print(msg, flush=True)  # noqa: E731
    model, reason = choose_model(args.model)
    try:
        jobs = read_jobs(
            args.prompts, args.seed, args.steps, args.guidance_scale, args.negative_prompt,
            args.height, args.width, args.scheduler, model,
        )  # fmt: skip
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"generate_many: {err}") from None
    source = Path(args.prompts).name
    if state.device.type == "cpu":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        torch.set_num_threads(args.threads or max(1, cores // state.num_processes))  # no oversubscription
    dtype = None if args.dtype == "auto" else getattr(torch, args.dtype)
    if dtype is None:
        dtype = torch.float16 if state.device.type == "cuda" else torch.float32
    out_dir = args.out or default_out_dir(args.prompts)
    if state.is_main_process:
        log(
            f"{len(jobs)} jobs from {source} on {state.num_processes} process(es); model {public_name(model)} "
            f"({reason})"
        )

    def load():
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()  # N processes x "Loading pipeline components" bars
        pipe = load_pipeline(model, device="cpu", dtype=dtype, safety_checker=not args.no_safety_checker)
        pipe = pipe.to(state.device)  # each process its own GPU (cuda:<local rank>), or the CPU
        if args.scheduler:
            pipe.scheduler = make_scheduler(pipe, args.scheduler)
        if args.memory != "none":
            apply_memory_preset(pipe, args.memory)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    try:
        summary = run(jobs, load, out_dir, state, args.batch_size, args.max_jobs, source, args.height, args.width, log)
    except (RunInProgressError, NotEnoughMemoryError) as err:
        raise SystemExit(f"generate_many: {err}") from None
    if state.is_main_process:
        log(format_summary(summary))
        log("SUMMARY " + json.dumps(summary))  # one machine-readable line for scripts and tests
    return summary


if __name__ == "__main__":  # pragma: no cover
    main()
