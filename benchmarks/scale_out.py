"""Item 4's benchmark: images/s with 1 process against N processes (Accelerate, `torchrun`).

Runs the real entry point, `scripts/generate_many.py`, on the same prompt list (the 90 shape
captions of the offline family, cycled to `--images`) with `torchrun --standalone --nproc_per_node P`
for each P in `--processes`, each into a fresh temporary folder. On CPU each process gets
cores / P threads, so the comparison is "one process using every core" against "P processes
sharing them". Two rates per row: images/s while generating (the summary's, model loading
excluded) and images/s over the whole command (start-up, imports and model loading included).

    nice python benchmarks/scale_out.py                  # 1 vs 2 processes, 48 images, 25 steps
    python benchmarks/scale_out.py --smoke               # 4 images, 2 steps
    python benchmarks/scale_out.py --processes 1,2,4     # on a machine with more cores (or GPUs)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common

from helpers.pipeline import offline_model_dir
from helpers.shapes_data import all_combos

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "generate_many.py"


def run_once(prompts: Path, out: Path, nproc: int, steps: int, batch: int, model: str) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", str(SCRIPT)]
    cmd += [str(prompts), "--out", str(out), "--steps", str(steps), "--batch-size", str(batch), "--model", model]
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)  # generate_many sets cores / processes threads itself
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    line = next(ln for ln in reversed(proc.stdout.splitlines()) if ln.startswith("SUMMARY "))
    return {**json.loads(line[len("SUMMARY ") :]), "wall_s": wall}


def main(argv=None) -> dict:
    ap = common.parser(__doc__)
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--batch-size", type=int, default=8, help="images per pipeline call in each process")
    ap.add_argument("--processes", default="1,2", help="comma-separated process counts")
    ap.add_argument("--model", default=None, help="model folder (default: the offline model)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.images, args.steps, args.batch_size = 4, 2, 2
    machine = common.machine_info()
    model = str(args.model or offline_model_dir())
    captions = [c.caption() for c in all_combos()]
    rows = []
    with tempfile.TemporaryDirectory(prefix="scale-out-") as tmp:
        prompts = Path(tmp) / "prompts.txt"
        prompts.write_text("\n".join(captions[i % len(captions)] for i in range(args.images)) + "\n")
        for nproc in map(int, args.processes.split(",")):
            s = run_once(prompts, Path(tmp) / f"out-{nproc}", nproc, args.steps, args.batch_size, model)
            assert s["images"] == args.images, s
            rows.append(
                {
                    "processes": nproc,
                    "images": s["images"],
                    "generate_s": s["seconds"],
                    "images_per_s": s["images_per_s"],
                    "wall_s": s["wall_s"],
                    "images_per_s_wall": s["images"] / s["wall_s"],
                    "per_process": [r["images"] for r in s["per_process"]],
                }
            )
            print(
                f"  {nproc} process(es): {s['images_per_s']:.2f} images/s generating, {s['wall_s']:.1f} s total",
                flush=True,
            )
    base = rows[0]
    for r in rows:
        r["speedup"] = r["images_per_s"] / base["images_per_s"]
    common.report(
        "scale_out",
        f"Scale-out: scripts/generate_many.py on 1 vs more processes ({args.images} images, {args.steps} steps)",
        rows,
        {
            "processes": "processes",
            "per_process": "images per process",
            "generate_s": "s generating",
            "images_per_s": "images/s",
            "speedup": "speed-up",
            "wall_s": "s whole command",
            "images_per_s_wall": "images/s incl. start-up",
        },
        args,
        notes=[
            f"Model: {model}; torchrun --standalone; CPU threads per process = cores / processes "
            f"({machine['cpu_cores']} cores); batch {args.batch_size} per call.",
        ],
        extra={"model": model},
        machine=machine,
        formats={"speedup": "{:.2f}x"},
    )
    return {"rows": rows}


if __name__ == "__main__":
    main()
