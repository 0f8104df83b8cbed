"""Item 2: the real Stable Diffusion v1-4 UNet on CPU, every speed trick side by side.

The UNet (859.5 M parameters, built from `configs/sd-v1-4/unet` with random weights: speed does not
depend on the values) runs one denoising step at 64x64 latents (512x512 px) with batch 2
(classifier-free guidance runs the prompt and the empty prompt together). For each row:

- seconds per step (median of `--repeats` after one warm-up);
- achieved GFLOP/s = FLOPs of one step (counted by `torch.utils.flop_counter.FlopCounterMode` on the
  meta device, so counting costs nothing) / seconds;
- that as a fraction of THIS machine's matmul peak for the row's arithmetic (fp32 or bf16),
  measured by the same run with large square matmuls (the best a CPU does on dense math);
- agreement with plain fp32 on the same inputs: cosine similarity of the outputs (>= 0.99 passes).

Rows: fp32 (the baseline), channels_last, oneDNN's bf16 math under fp32 weights, bf16 autocast,
bf16 weights, bf16 + channels_last, the attention kernels (SDPA's CPU flash kernel, SDPA's math
kernel, diffusers' classic processor), threads, `torch.compile` (inductor with weight freezing),
int8 dynamic quantization of the Linear layers (where the CPU has VNNI), and the fp32 baseline once
more at the end: if the two baselines differ, the machine's load changed during the run.

    nice python benchmarks/unet_cpu.py                 # full size: ~10-20 min on 2 cores, ~6 GiB RAM
    python benchmarks/unet_cpu.py --smoke              # a tiny UNet, seconds
    python benchmarks/unet_cpu.py --rows fp32,bf16_cl  # only some rows (see --list)
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import common
import torch
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

from helpers.cpu_speed import cpu_features
from helpers.offline import SD_V1_4_CONFIGS, TINY_UNET  # TINY_UNET: the --smoke size

AGREEMENT_MIN = 0.99  # cosine similarity with fp32 a row must reach


@dataclass
class Row:
    """One way to run the UNet. Each field is one switch; the baseline has them all off."""

    key: str
    label: str
    dtype: torch.dtype = torch.float32  # weights and activations
    channels_last: bool = False
    onednn_bf16: bool = False  # fp32 tensors, oneDNN computes matmuls/convs in bf16 (fp32_precision="bf16")
    autocast: bool = False  # fp32 weights, torch.autocast("cpu", bfloat16)
    attention: str = "sdpa"  # "sdpa" (torch picks: flash on CPU), "sdpa_math", "classic" (bmm + softmax)
    threads: int | None = None  # None: the run's thread count
    compile: bool = False
    int8: bool = False  # dynamic int8 quantization of nn.Linear (convs stay fp32)
    child_env: dict = field(default_factory=dict)  # run in a fresh process with these variables

    @property
    def math(self) -> str:
        """The arithmetic that dominates: which peak this row is measured against."""
        if self.int8:
            return "int8+fp32"
        return "bf16" if (self.dtype == torch.bfloat16 or self.onednn_bf16 or self.autocast) else "fp32"


def flip_wait_policy() -> dict:
    """The OpenMP wait policy opposite to this process's (its effect needs a fresh process)."""
    now = os.environ.get("OMP_WAIT_POLICY", "").upper()
    return {"OMP_WAIT_POLICY": "ACTIVE" if now == "PASSIVE" else "PASSIVE"}


def all_rows(threads: int) -> list[Row]:
    bf = torch.bfloat16
    policy = flip_wait_policy()
    rows = [
        Row("fp32", "fp32 (baseline)"),
        Row("fp32_cl", "fp32 + channels_last", channels_last=True),
        Row("onednn_bf16", "fp32 weights, oneDNN bf16 math", onednn_bf16=True),
        Row("autocast_bf16", "fp32 weights, autocast bf16", autocast=True),
        Row("bf16", "bf16", dtype=bf),
        Row("bf16_cl", "bf16 + channels_last", dtype=bf, channels_last=True),
        Row("bf16_cl_sdpa_math", "bf16 + channels_last, SDPA math kernel", dtype=bf, channels_last=True, attention="sdpa_math"),
        Row("bf16_cl_classic", "bf16 + channels_last, classic attention (bmm)", dtype=bf, channels_last=True, attention="classic"),
    ]  # fmt: skip
    if threads > 1:
        rows.append(Row("bf16_cl_1thread", "bf16 + channels_last, 1 thread", dtype=bf, channels_last=True, threads=1))
    rows += [
        Row("bf16_cl_wait", f"bf16 + channels_last, OMP_WAIT_POLICY={policy['OMP_WAIT_POLICY']} (fresh process)",
            dtype=bf, channels_last=True, child_env=policy),
        Row("bf16_cl_compile", "bf16 + channels_last + torch.compile (inductor, freezing)", dtype=bf, channels_last=True, compile=True),
        Row("fp32_again", "fp32 (baseline again, at the end: drift check)"),
        Row("int8_dynamic", "int8 dynamic quantization of Linear layers (fp32 convs)", int8=True),
    ]  # fmt: skip
    return rows


# ------------------------------------------------------------------------------------------------ model


def unet_config(smoke: bool) -> dict:
    from diffusers import UNet2DConditionModel

    return dict(TINY_UNET) if smoke else dict(UNet2DConditionModel.load_config(SD_V1_4_CONFIGS / "unet"))


def build_unet(config: dict, seed: int = 0, device: str = "cpu"):
    """The UNet with random weights (same seed -> the same weights on this machine)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    with torch.device(device):
        return UNet2DConditionModel.from_config(config).eval()


def make_inputs(config: dict, latent: int, batch: int = 2, seed: int = 1, device: str = "cpu"):
    g = torch.Generator("cpu").manual_seed(seed)
    sample = torch.randn(batch, config["in_channels"], latent, latent, generator=g)  # (2, 4, 64, 64)
    text = torch.randn(batch, 77, config["cross_attention_dim"], generator=g)  # (2, 77, 768): CLIP's hidden states
    timestep = torch.full((batch,), 500, dtype=torch.long)
    return sample.to(device), timestep.to(device), text.to(device)


def count_flops(config: dict, latent: int, batch: int = 2) -> dict:
    """FLOPs of one UNet call, counted on the meta device (shapes only: no memory, no time)."""
    unet = build_unet(config, device="meta")
    sample, timestep, text = make_inputs(config, latent, batch, device="meta")
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        unet(sample, timestep, encoder_hidden_states=text)
    by_op = {str(k).replace("aten.", ""): v for k, v in counter.get_flop_counts()["Global"].items()}
    return {"total": counter.get_total_flops(), "by_op": by_op}


def cast_copy(unet, dtype: torch.dtype):
    """A copy of `unet` in `dtype` without a second fp32 copy in memory (weights cast tensor by tensor)."""
    copy = build_unet(unet.config, device="meta")
    copy.load_state_dict({k: v.to(dtype, copy=True) for k, v in unet.state_dict().items()}, assign=True)
    return copy.eval()


def set_attention(unet, kind: str) -> None:
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    unet.set_attn_processor(AttnProcessor() if kind == "classic" else AttnProcessor2_0())


@contextlib.contextmanager
def row_context(row: Row):
    """Switch on what `row` needs for the duration of a call (thread count, oneDNN math, autocast, SDPA)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    threads = torch.get_num_threads()
    mkl = torch.backends.mkldnn
    old = (mkl.matmul.fp32_precision, mkl.conv.fp32_precision)
    with contextlib.ExitStack() as stack:
        if row.threads:
            torch.set_num_threads(row.threads)
        if row.onednn_bf16:
            mkl.matmul.fp32_precision = "bf16"  # fp32 in, fp32 out, bf16 products inside oneDNN
            mkl.conv.fp32_precision = "bf16"
        if row.autocast:
            stack.enter_context(torch.autocast("cpu", dtype=torch.bfloat16))
        if row.attention == "sdpa_math":
            stack.enter_context(sdpa_kernel([SDPBackend.MATH]))
        stack.enter_context(torch.no_grad())
        try:
            yield
        finally:
            torch.set_num_threads(threads)
            mkl.matmul.fp32_precision, mkl.conv.fp32_precision = old


class Timeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: int):
    """Raise `Timeout` after `seconds` (main thread, POSIX); a no-op elsewhere."""
    if not hasattr(signal, "SIGALRM") or seconds <= 0:
        yield
        return

    def handler(signum, frame):
        raise Timeout(f"gave up after {seconds} s")

    old = signal.signal(signal.SIGALRM, handler)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def prepare(row: Row, master, args):
    """The module to run for `row` (may be `master` itself, converted in place, for fp32 rows)."""
    if row.dtype != torch.float32:
        model = cast_copy(master, row.dtype)
    elif row.int8:
        with warnings.catch_warnings():  # torch.ao.quantization is deprecated in favour of torchao (not installed)
            warnings.simplefilter("ignore")
            from torch.ao.quantization import quantize_dynamic

            model = quantize_dynamic(master, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)  # the last row
    else:
        model = master
    model.to(memory_format=torch.channels_last if row.channels_last else torch.contiguous_format)
    set_attention(model, row.attention)
    if row.compile:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True  # constant-fold weights so oneDNN can pre-pack them
        model = torch.compile(model)
    return model


def run_row(row: Row, master, inputs, reference, flops: float, peaks: dict, args) -> dict:
    """Time one row and compare its output with the fp32 reference."""
    out = {"key": row.key, "row": row.label, "math": row.math, "threads": row.threads or torch.get_num_threads()}
    if row.child_env:
        return {**out, **run_in_child(row, args)}
    if row.int8 and not cpu_features()["vnni"]:
        return {**out, "skipped": "no VNNI on this CPU: int8 would be emulated"}
    sample, timestep, text = inputs
    x = sample.to(memory_format=torch.channels_last) if row.channels_last else sample
    t0 = time.perf_counter()
    try:
        model = prepare(row, master, args)
        dtype = row.dtype

        def step():
            return model(x.to(dtype), timestep, encoder_hidden_states=text.to(dtype)).sample

        with row_context(row):
            limit = args.compile_timeout if row.compile else 0
            with time_limit(limit):
                first = step()  # warm-up (and, for compile, the compilation)
            setup_s = time.perf_counter() - t0
            seconds = common.time_calls(step, repeats=args.repeats, warmup=max(0, args.warmup - 1))
            result = step() if row.compile else first
    except Exception as err:  # a row that cannot run on this machine/version is reported, not fatal
        return {**out, "skipped": f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"}
    finally:
        if row.dtype == torch.float32 and not row.int8:
            master.to(memory_format=torch.contiguous_format)  # undo in-place changes for the next rows
            set_attention(master, "sdpa")
    sec = common.median(seconds)
    achieved = flops / sec / 1e9
    peak = peaks.get(row.math)
    cos = F.cosine_similarity(result.float().flatten(), reference.flatten(), dim=0).item()
    model = None  # free a bf16 copy before the next row
    gc.collect()
    return {
        **out,
        "s_per_step": sec,
        "all_seconds": seconds,
        "setup_s": setup_s,
        "gflops": achieved,
        "peak_gflops": peak,
        "fraction_of_peak": achieved / peak if peak else None,
        "cosine_vs_fp32": cos,
        "agrees": cos >= AGREEMENT_MIN,
    }


# ------------------------------------------------------------------------------------------- children


def run_in_child(row: Row, args) -> dict:
    """Run one row in a fresh process (environment variables such as OMP_WAIT_POLICY act at start-up)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", row.key, "--repeats", str(args.repeats)]
    cmd += ["--warmup", str(args.warmup)] + (["--smoke"] if args.smoke else [])
    cmd += ["--threads", str(torch.get_num_threads()), "--latent", str(args.latent)]
    env = {**os.environ, **row.child_env}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        return {"skipped": f"child process failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}"}
    return json.loads(lines[-1])


# -------------------------------------------------------------------------------------------- peaks


def dense_math_rates(dtype: torch.dtype, n: int, repeats: int = 3) -> dict[str, float]:
    """Best GFLOP/s of the same n x n x n product (2 n^3 FLOPs) through torch's two dense-math libraries.

    - `mm`: `torch.mm`, which on x86 goes to MKL's GEMM for fp32 and to oneDNN for bf16;
    - `conv1x1`: a 1x1 convolution over a channels_last (1, n, s, s) image with s*s = n pixels, i.e. the same
      product through oneDNN, the library that runs the UNet's convolutions.
    They can differ 2x: MKL picks slow fp32 kernels on some CPUs (measured on an AMD EPYC: mm 232 GFLOP/s,
    conv1x1 448), so the peak is the better of the two, or fp32 rows would show over 100% of "peak".
    """
    side = max(1, int(round(n**0.5)))
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    x = torch.randn(1, n, side, side).to(dtype).to(memory_format=torch.channels_last)  # (1, n, s, s) NHWC
    w = torch.randn(n, n, 1, 1).to(dtype)
    out = {}
    for name, call, flops in (
        ("mm", lambda: torch.mm(a, b), 2 * n**3),
        ("conv1x1", lambda: F.conv2d(x, w), 2 * n * n * side * side),
    ):
        call()  # warm-up: thread pool, kernel selection, weight reorders
        best = min(common.time_calls(call, repeats=repeats, warmup=0))
        out[name] = flops / best / 1e9
    return out


def measure_peaks(n: int, repeats: int) -> dict:
    """{"fp32": GFLOP/s, "bf16": GFLOP/s, "kernels": {dtype: {"mm": .., "conv1x1": ..}}}: the best kernel counts."""
    kernels = {k: dense_math_rates(dt, n, repeats) for k, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    return {k: max(v.values()) for k, v in kernels.items()} | {"kernels": kernels}


# ---------------------------------------------------------------------------------------------- main


def setup(args):
    config = unet_config(args.smoke)
    latent = 8 if args.smoke else args.latent
    flops = count_flops(config, latent)
    master = build_unet(config, seed=0)
    inputs = make_inputs(config, latent)
    with torch.no_grad():
        reference = master(*inputs[:2], encoder_hidden_states=inputs[2]).sample.float()
    return config, latent, flops, master, inputs, reference


def child_main(args) -> None:
    _, _, flops, master, inputs, reference = setup(args)
    row = next(r for r in all_rows(torch.get_num_threads()) if r.key == args.child)
    row.child_env = {}
    result = run_row(row, master, inputs, reference, flops["total"], {}, args)
    result["gflops"] = result.get("gflops")  # the parent recomputes the fraction with its own peaks
    print(json.dumps({k: v for k, v in result.items() if k not in ("key", "row", "math", "threads")}))


def main(argv=None) -> dict:
    ap = common.parser(__doc__)
    ap.add_argument("--repeats", type=int, default=2, help="timed calls per row (after the warm-up)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--latent", type=int, default=64, help="latent size (64 = 512x512 px)")
    ap.add_argument("--rows", default=None, help="comma-separated row keys (default: all); see --list")
    ap.add_argument("--list", action="store_true", help="list the rows and exit")
    ap.add_argument("--peak-n", type=int, default=4096, help="matmul size for the peak measurement")
    ap.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="include torch.compile (default: not in --smoke)",
    )
    ap.add_argument("--compile-timeout", type=int, default=900, help="give up compiling after this many seconds")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    threads = common.apply_threads(args.threads)
    if args.smoke:
        args.repeats, args.warmup, args.peak_n = 1, 1, 256
    if args.child:
        return child_main(args)
    rows = all_rows(threads)
    if args.list:
        print("\n".join(f"{r.key:22s} {r.label}" for r in rows))
        return {}
    if args.compile is None:
        args.compile = not args.smoke
    if args.rows:
        wanted = set(args.rows.split(","))
        unknown = wanted - {r.key for r in rows}
        if unknown:
            raise SystemExit(f"Unknown rows {sorted(unknown)}: see --list.")
        rows = [r for r in rows if r.key in wanted]
    rows = [r for r in rows if args.compile or not r.compile]

    machine = common.machine_info()
    peaks_start = measure_peaks(args.peak_n, 1 if args.smoke else 3)
    print(f"Dense-math peaks (GFLOP/s): {peaks_start}", flush=True)
    done = {}

    def show(row, res):
        shown = res.get("skipped") or f"{res['s_per_step']:.3f} s/step, cosine vs fp32 {res['cosine_vs_fp32']:.5f}"
        print(f"  {row.label}: {shown}", flush=True)

    for row in rows:  # fresh-process rows first, while this process holds no model (memory)
        if row.child_env:
            done[row.key] = run_row(row, None, None, None, 0.0, peaks_start, args)
            show(row, done[row.key])
    config, latent, flops, master, inputs, reference = setup(args)
    print(f"One step: {flops['total'] / 1e12:.3f} TFLOP at {latent}x{latent} latents, batch 2", flush=True)
    for row in rows:
        if row.key not in done:
            done[row.key] = run_row(row, master, inputs, reference, flops["total"], peaks_start, args)
            show(row, done[row.key])
    results = [done[row.key] for row in rows]
    del master
    gc.collect()
    peaks_end = measure_peaks(args.peak_n, 1 if args.smoke else 3)
    peaks = {k: max(peaks_start[k], peaks_end[k]) for k in ("fp32", "bf16")}  # the best the machine showed
    base = next((r for r in results if r["key"] == "fp32" and "s_per_step" in r), None)
    for r in results:
        if "s_per_step" not in r:
            continue
        r["peak_gflops"] = peaks.get(r["math"])
        r["fraction_of_peak"] = r["gflops"] / r["peak_gflops"] if r["peak_gflops"] else None
        r["speedup_vs_fp32"] = base["s_per_step"] / r["s_per_step"] if base else None
    ok = [r for r in results if r.get("agrees") and r["key"] != "fp32_again"]
    best = min(ok, key=lambda r: r["s_per_step"]) if ok else None
    notes = [
        f"One UNet step = {flops['total'] / 1e12:.3f} TFLOP ({latent}x{latent} latents, batch 2), counted by FlopCounterMode.",
        f"Dense-math peaks ({args.peak_n}^3 product, best of torch.mm and a channels_last 1x1 conv, best of start "
        f"and end): fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s ({peaks['bf16'] / peaks['fp32']:.2f}x); "
        "per kernel: "
        + "; ".join(
            f"{k} mm {max(p['kernels'][k]['mm'] for p in (peaks_start, peaks_end)):.0f}, "
            f"conv1x1 {max(p['kernels'][k]['conv1x1'] for p in (peaks_start, peaks_end)):.0f}"
            for k in ("fp32", "bf16")
        )
        + ".",
        f"{threads} threads; median of {args.repeats} timed steps after {args.warmup} warm-up; "
        f"fraction = achieved / the peak of the row's arithmetic; agreement = cosine vs fp32 (>= {AGREEMENT_MIN}).",
    ]
    if best:
        notes.append(f"Fastest row that agrees with fp32: {best['row']} ({best['speedup_vs_fp32']:.2f}x over fp32).")
    for r in results:
        if r.get("skipped"):
            notes.append(f"{r['row']}: not measured ({r['skipped']}).")
    common.report(
        "unet_cpu",
        "The SD v1-4 UNet on CPU: one denoising step" + (" (tiny UNet)" if args.smoke else ""),
        [r for r in results if "s_per_step" in r],
        {
            "row": "row",
            "s_per_step": "s/step",
            "speedup_vs_fp32": "vs fp32",
            "gflops": "GFLOP/s",
            "fraction_of_peak": "of peak",
            "math": "peak used",
            "cosine_vs_fp32": "cosine vs fp32",
        },
        args,
        notes=notes,
        extra={"flops_per_step": flops, "latent": latent, "peaks": {"start": peaks_start, "end": peaks_end, "best": peaks},
               "best_row": best["key"] if best else None, "skipped_rows": [r for r in results if r.get("skipped")]},
        machine=machine,
        formats={"fraction_of_peak": "{:.0%}", "cosine_vs_fp32": "{:.5f}", "speedup_vs_fp32": "{:.2f}x"},
    )  # fmt: skip
    return {"rows": results, "best": best, "peaks": peaks}


if __name__ == "__main__":
    main()
