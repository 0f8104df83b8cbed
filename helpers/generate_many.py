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
  under a file lock so two processes never update `manifest.json` at once;
- after an image is saved, a marker `.jobs/<job id>.json` is written atomically;
- on restart, jobs with a marker (or with a PNG whose metadata names the job, in case a run died
  between the two writes) are skipped. So re-running the same command after a crash or Ctrl-C
  finishes the list without redoing or losing images.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import inspect
import json
import os
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .paths import OUTPUTS_DIR
from .pipeline import explain_black_images, generate, scheduler_name, validate_inputs
from .saving import library_versions, read_manifest, read_metadata, save_images, slugify

MARKERS = ".jobs"  # folder of done-markers inside the output folder
LOCK = ".lock"
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


def _parse_number(value: str, kind, what: str, where: str):
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{where}: {what} must be a number, got {value!r}.") from None
    if kind is int:
        if number != int(number):
            raise ValueError(f"{where}: {what} must be a whole number, got {value!r}.")
        return int(number)
    return number


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
    raw: list[tuple[int, dict]] = []  # (row number, fields given in the file)
    if suffix == ".csv":
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            headers = [h.strip().lower() for h in (reader.fieldnames or [])]
            if "prompt" not in headers:
                raise ValueError(
                    f"{path}: the CSV needs a header row with a 'prompt' column (optional: seed, steps, guidance, "
                    f"negative_prompt); found {headers or 'no header'}."
                )
            unknown = [h for h in headers if h and h not in CSV_COLUMNS]
            if unknown:
                raise ValueError(f"{path}: unknown column(s) {unknown}; allowed: {', '.join(CSV_COLUMNS)}.")
            for n, row in enumerate(reader, start=1):
                row = {(k or "").strip().lower(): (v or "").strip() for k, v in row.items() if k is not None}
                if not any(row.values()):
                    continue  # a blank line
                where = f"{path}, row {n}"
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
    elif suffix in (".txt", ".text", ".prompts", ""):
        lines = path.read_text(encoding="utf-8").splitlines()
        prompts = [(n, line.strip()) for n, line in enumerate(lines, start=1)]
        prompts = [(n, p) for n, p in prompts if p and not p.startswith("#")]
        raw = [(n, {"prompt": p, "seed": seed + k}) for k, (n, p) in enumerate(prompts)]
    else:
        raise ValueError(f"{path}: unknown file type {suffix!r}; use .txt (one prompt per line) or .csv.")
    if not raw:
        raise ValueError(f"{path} holds no prompts: write one prompt per line (or CSV rows under a 'prompt' header).")

    jobs, seen = [], {}
    for k, (n, fields) in enumerate(raw):
        where = f"{path}, {'row' if suffix == '.csv' else 'line'} {n}"
        job = {
            "prompt": fields.get("prompt", ""),
            "seed": fields.get("seed", seed + k),
            "num_inference_steps": fields.get("num_inference_steps", num_inference_steps),
            "guidance_scale": float(fields.get("guidance_scale", guidance_scale)),
            "negative_prompt": fields.get("negative_prompt", negative_prompt) or "",
        }
        try:
            validate_inputs(
                job["prompt"], 1, job["seed"], job["guidance_scale"], job["num_inference_steps"],
                job["negative_prompt"] or None, height, width, scheduler,
            )  # fmt: skip
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
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
    """An exclusive lock on `folder` shared by all processes (POSIX `flock`; a no-op on Windows)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: run one process there
        yield
        return
    with open(folder / LOCK, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _write_marker(folder: Path, job_id: str, info: dict) -> None:
    markers = folder / MARKERS
    markers.mkdir(exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=markers, prefix=".tmp-", suffix=".json")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(info, f)
    os.replace(tmp, markers / f"{job_id}.json")  # atomic: a marker is whole or absent


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

    done = done_jobs(folder)
    known_files = set(done.values())
    try:
        in_manifest = {e.get("file") for e in read_manifest(folder).get("images", [])}
    except (OSError, ValueError):
        in_manifest = set()
    found, missing_entries = 0, []
    for png in sorted(folder.glob("*.png")):
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
    if state.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
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
            model = str(getattr(pipe, "name_or_path", "") or type(pipe).__name__)
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
                    "source": source,
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
        "out_dir": str(out_dir),
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
    ap.add_argument("--no-safety-checker", action="store_true", help="drop the NSFW filter (use responsibly)")
    return ap  # fmt: skip


def main(argv=None) -> dict:
    from accelerate import PartialState

    from .pipeline import choose_model, load_pipeline, make_scheduler

    args = build_parser().parse_args(argv)
    if args.batch_size < 1:
        raise SystemExit("--batch-size must be at least 1.")
    use_cuda = torch.cuda.is_available()
    state = PartialState(cpu=not use_cuda)  # cpu=True: a process group over gloo; without it, one process on CPU
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    model, reason = choose_model(args.model)
    try:
        jobs = read_jobs(
            args.prompts, args.seed, args.steps, args.guidance_scale, args.negative_prompt,
            args.height, args.width, args.scheduler, model,
        )  # fmt: skip
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"generate_many: {err}") from None
    if state.device.type == "cpu":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        torch.set_num_threads(args.threads or max(1, cores // state.num_processes))  # no oversubscription
    dtype = None if args.dtype == "auto" else getattr(torch, args.dtype)
    if dtype is None:
        dtype = torch.float16 if state.device.type == "cuda" else torch.float32
    out_dir = args.out or default_out_dir(args.prompts)
    if state.is_main_process:
        log(f"{len(jobs)} jobs from {args.prompts} on {state.num_processes} process(es); model {model} ({reason})")

    def load():
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()  # N processes x "Loading pipeline components" bars
        pipe = load_pipeline(model, device="cpu", dtype=dtype, safety_checker=not args.no_safety_checker)
        pipe = pipe.to(state.device)  # each process its own GPU (cuda:<local rank>), or the CPU
        if args.scheduler:
            pipe.scheduler = make_scheduler(pipe, args.scheduler)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    summary = run(
        jobs, load, out_dir, state, args.batch_size, args.max_jobs, str(args.prompts), args.height, args.width, log
    )
    if state.is_main_process:
        log(format_summary(summary))
        log("SUMMARY " + json.dumps(summary))  # one machine-readable line for scripts and tests
    return summary


if __name__ == "__main__":  # pragma: no cover
    main()
