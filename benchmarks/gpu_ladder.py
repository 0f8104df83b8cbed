"""Item 5: the GPU ladder. What each step from fp32 to a compiled fp16 pipeline buys on one GPU.

The real Stable Diffusion v1-4 architecture (`helpers.offline.build_real_architecture_pipeline`,
random weights: speed and memory do not depend on the values), 512x512, 50 PNDM steps, guidance 7.5,
batch 1 and 4, through `helpers.pipeline.generate` (what a learner calls). Each rung adds one thing:

    fp32 -> fp16 -> + channels_last -> + fused QKV projections -> + torch.compile (UNet and VAE decode)

Per rung and batch: seconds per image end to end (text encoder + 50 UNet steps + VAE decode + PIL),
UNet steps/s (from per-step timestamps), peak GPU memory (`torch.cuda.max_memory_allocated`), and the
fraction of the compute floor: FLOPs per image (counted with FlopCounterMode on the meta device,
~81 TFLOP) / the GPU's dense fp16 tensor-core peak (`PEAK_FP16_TFLOPS`, or `--peak-tflops`).
Then the memory presets (`helpers.pipeline.apply_memory_preset`: none, balanced, low, lowest) with
their peak memory and time. The safety checker is off (random weights; it is not in the floor).

Runs only where CUDA exists; elsewhere it says so and exits 0. `--smoke` runs the same code on CPU
with the tiny pipeline and 2 steps (compile only with `--compile`), so the test suite keeps it working.

    python benchmarks/gpu_ladder.py                           # everything (~5-8 min on an H100)
    python benchmarks/gpu_ladder.py --no-presets                # the ladder only (one 10-min slot)
    python benchmarks/gpu_ladder.py --rungs "" --presets none,balanced,low,lowest   # the presets only
    python benchmarks/gpu_ladder.py --peak-tflops 165          # a GPU not in the table
"""

from __future__ import annotations

import gc
import time
import warnings

import common
import torch

#: Dense (no sparsity) fp16 tensor-core peaks in TFLOP/s, from NVIDIA's data sheets.
PEAK_FP16_TFLOPS = {
    "H200": 989.4,  # same GH100 compute as H100 SXM
    "H100 SXM": 989.4,
    "H100 PCIe": 756.0,
    "A100": 312.0,
    "L4": 121.0,
    "T4": 65.0,
}
PROMPT = "a photograph of an astronaut riding a horse"
RUNGS = ("fp32", "fp16", "channels_last", "fused_qkv", "compile")
RUNG_LABELS = {
    "fp32": "fp32",
    "fp16": "fp16",
    "channels_last": "fp16 + channels_last",
    "fused_qkv": "fp16 + channels_last + fused QKV",
    "compile": "fp16 + channels_last + fused QKV + torch.compile",
}


def gpu_peak(name: str) -> tuple[str | None, float | None]:
    """('H100 SXM', 989.4) for 'NVIDIA H100 80GB HBM3'; (None, None) when the GPU is not in the table."""
    n = name.upper()
    if "H200" in n:
        key = "H200"
    elif "H100" in n:
        key = "H100 PCIe" if "PCIE" in n else ("H100 SXM" if ("HBM3" in n or "SXM" in n) else None)
    elif "A100" in n:
        key = "A100"
    elif n.endswith(" L4") or " L4 " in n or n == "L4":
        key = "L4"
    elif "T4" in n:
        key = "T4"
    else:
        key = None
    return key, PEAK_FP16_TFLOPS.get(key) if key else None


def flops_per_image(pipe, steps: int, height: int, width: int) -> dict:
    """FLOPs of one image: `steps` UNet calls at guidance batch 2, one VAE decode, one text encoding."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    lat_h, lat_w = height // pipe.vae_scale_factor, width // pipe.vae_scale_factor
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(pipe.unet.config)
        vae = AutoencoderKL.from_config(pipe.vae.config)
        sample = torch.randn(2, unet.config.in_channels, lat_h, lat_w)
        text = torch.randn(2, 77, unet.config.cross_attention_dim)
        latents = torch.randn(1, vae.config.latent_channels, lat_h, lat_w)
    counts = {}
    for name, fn in (
        ("unet_step", lambda: unet(sample, torch.tensor([500, 500], device="meta"), encoder_hidden_states=text)),
        ("vae_decode", lambda: vae.decode(latents)),
    ):
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            fn()
        counts[name] = counter.get_total_flops()
    counts["total"] = steps * counts["unet_step"] + counts["vae_decode"]  # text encoder: ~0.01% of it
    return counts


def build(smoke: bool, dtype: torch.dtype, device: str):
    from helpers.offline import build_real_architecture_pipeline, build_tiny_pipeline

    pipe = build_tiny_pipeline() if smoke else build_real_architecture_pipeline()
    pipe.safety_checker, pipe.feature_extractor = None, None
    pipe.register_to_config(requires_safety_checker=False)
    pipe = pipe.to(device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def apply_rung(pipe, rung: str, compile_mode: str) -> None:
    """Add what `rung` adds (rungs are cumulative: call them in order on the same pipeline)."""
    if rung == "channels_last":
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    elif rung == "fused_qkv":
        pipe.fuse_qkv_projections()  # one matmul for Q, K and V instead of three (self-attention)
    elif rung == "compile":
        import torch._inductor.config as inductor_config

        inductor_config.conv_1x1_as_mm = True  # diffusers' recommended inductor settings for SD UNets
        inductor_config.coordinate_descent_tuning = True
        inductor_config.epilogue_fusion = False
        inductor_config.coordinate_descent_check_all_directions = True
        pipe.unet = torch.compile(pipe.unet, mode=compile_mode, fullgraph=True)
        pipe.vae.decode = torch.compile(pipe.vae.decode, mode=compile_mode, fullgraph=True)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure(pipe, device: str, batch: int, steps: int, size: int, repeats: int, warmup: int) -> dict:
    """Seconds per image end to end, UNet steps/s and peak memory for one batch size."""
    from helpers.pipeline import generate

    kw = dict(n_images=batch, num_inference_steps=steps, height=size, width=size, show_progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights in fp16 may give NaN images: irrelevant to speed
        t_setup = time.perf_counter()
        for _ in range(warmup):
            generate(pipe, PROMPT, **kw)
        sync(device)
        setup_s = time.perf_counter() - t_setup
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        seconds = common.time_calls(
            lambda: generate(pipe, PROMPT, **kw), repeats=repeats, warmup=0, sync=lambda: sync(device)
        )
        peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
        stamps = []

        def on_step(p, i, t, kwargs):
            sync(device)
            stamps.append(time.perf_counter())
            return kwargs

        generate(pipe, PROMPT, callback_on_step_end=on_step, **kw)
    unet_its = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else None
    s = common.median(seconds)
    return {"s_per_image": s / batch, "s_per_batch": s, "unet_it_s": unet_its, "peak_gib": peak,
            "all_seconds": seconds, "warmup_s": setup_s}  # fmt: skip


def main(argv=None) -> dict:
    ap = common.parser(__doc__)
    ap.add_argument(
        "--rungs", default=",".join(RUNGS), help=f"comma-separated subset of {','.join(RUNGS)} (cumulative)"
    )
    ap.add_argument("--batches", default="1,4")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--compile-mode", default="max-autotune-no-cudagraphs", help="torch.compile mode")
    ap.add_argument("--compile", action="store_true", help="with --smoke: include the torch.compile rung on CPU")
    ap.add_argument("--presets", default="none,balanced,low,lowest", help="memory presets to measure ('' = none)")
    ap.add_argument("--no-presets", action="store_true")
    ap.add_argument("--preset-batch", type=int, default=4)
    ap.add_argument("--peak-tflops", type=float, default=None, help="dense fp16 peak of this GPU (overrides the table)")
    args = ap.parse_args(argv)

    cuda = torch.cuda.is_available()
    if not cuda and not args.smoke:
        print("gpu_ladder: no CUDA GPU here, so there is nothing to measure (use --smoke to test the code on CPU).")
        return {}
    device = "cuda" if cuda else "cpu"
    if args.smoke:
        args.batches, args.steps, args.size, args.repeats, args.warmup, args.preset_batch = "1,2", 2, 64, 1, 1, 2
    rungs = [r for r in args.rungs.split(",") if r]
    if args.smoke and not args.compile:
        rungs = [r for r in rungs if r != "compile"]  # compiling on CPU takes minutes
    batches = [int(b) for b in args.batches.split(",")]
    half = torch.float16 if cuda else torch.bfloat16  # CPU smoke: bf16 stands in (fp16 on CPU is emulated)
    machine = common.machine_info()
    gpu = torch.cuda.get_device_name(0) if cuda else "CPU (smoke)"
    table_key, peak = gpu_peak(gpu) if cuda else (None, None)
    peak = args.peak_tflops or peak

    rows = []
    pipe = build(args.smoke, torch.float32, "cpu" if not rungs else device)
    flops = flops_per_image(pipe, args.steps, args.size, args.size)
    floor_s = flops["total"] / (peak * 1e12) if peak else None
    print(f"{gpu}: {flops['total'] / 1e12:.1f} TFLOP per image; floor {floor_s if floor_s else '?'} s", flush=True)
    for rung in rungs:  # cumulative: each rung changes the same pipeline further
        if rung != "fp32":
            if pipe.unet.dtype != half:
                pipe = pipe.to(dtype=half)
            apply_rung(pipe, rung, args.compile_mode)
        for batch in batches:
            try:
                res = measure(pipe, device, batch, args.steps, args.size, args.repeats, args.warmup)
            except Exception as err:  # e.g. out of memory at batch 4 in fp32 on a small GPU
                res = {"skipped": f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"}
                if cuda:
                    torch.cuda.empty_cache()
            label = RUNG_LABELS[rung] if cuda else RUNG_LABELS[rung].replace("fp16", "bf16")
            row = {"rung": label, "key": rung, "batch": batch, **res}
            if floor_s and "s_per_image" in res:
                row["fraction_of_floor"] = floor_s / res["s_per_image"]
            rows.append(row)
            shown = res.get("skipped") or f"{res['s_per_image']:.3f} s/image, {res['unet_it_s'] or 0:.1f} it/s"
            print(f"  {row['rung']}, batch {batch}: {shown}", flush=True)
    del pipe
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()

    preset_rows = []
    presets = [] if args.no_presets else [p for p in args.presets.split(",") if p]
    for preset in presets:
        pipe = build(args.smoke, half, "cpu" if preset in ("low", "lowest") and cuda else device)
        from helpers.pipeline import apply_memory_preset

        done = apply_memory_preset(pipe, preset)  # offload presets move the models themselves
        res = measure(pipe, device, args.preset_batch, args.steps, args.size, 1, 1)
        preset_rows.append({"preset": preset, "batch": args.preset_batch, "what": ", ".join(done), **res})
        print(f"  preset {preset}: {res['s_per_image']:.3f} s/image, peak {res['peak_gib']} GiB", flush=True)
        del pipe
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()

    base = next((r for r in rows if r["key"] == rungs[0] and "s_per_image" in r and r["batch"] == batches[0]), None)
    for r in rows:
        if base and "s_per_image" in r:
            r["speedup"] = base["s_per_image"] / r["s_per_image"]
    if peak:
        peak_txt = f"{peak:.0f} TFLOP/s ({table_key or 'from --peak-tflops'})"
    else:
        peak_txt = "unknown (pass --peak-tflops)"
    notes = [
        f"{args.size}x{args.size}, {args.steps} PNDM steps, guidance 7.5, safety checker off, real SD v1-4 architecture "
        f"with random weights; median of {args.repeats} after {args.warmup} warm-up.",
        f"FLOPs per image {flops['total'] / 1e12:.1f} T (UNet step {flops['unet_step'] / 1e12:.3f} T x {args.steps} + "
        f"VAE decode {flops['vae_decode'] / 1e12:.2f} T); dense fp16 peak "
        f"{peak_txt}" + (f"; compute floor {floor_s * 1000:.0f} ms per image." if floor_s else "."),
        f"torch.compile mode: {args.compile_mode}; the compile rung's warm-up (compilation) is in the JSON as warmup_s.",
    ]
    if args.smoke:
        notes.append("SMOKE on CPU: tiny pipeline, bf16 in place of fp16; peak GPU memory not applicable.")
    cols = {"rung": "rung", "batch": "batch", "s_per_image": "s/image", "speedup": "speed-up", "unet_it_s": "UNet it/s",
            "peak_gib": "peak GiB", "fraction_of_floor": "of floor"}  # fmt: skip
    fmts = {"speedup": "{:.2f}x", "fraction_of_floor": "{:.0%}", "peak_gib": "{:.2f}", "s_per_image": "{:.3f}"}
    if preset_rows:
        print(f"\n### Memory presets (fp16, batch {args.preset_batch})\n")
        print(common.markdown_table(preset_rows, {"preset": "preset", "what": "what it switches on",
              "s_per_image": "s/image", "peak_gib": "peak GiB"}, fmts))  # fmt: skip
    common.report(
        "gpu_ladder",
        f"GPU ladder on {gpu}: SD v1-4 architecture, {args.size} px, {args.steps} steps",
        [r for r in rows if "s_per_image" in r],
        cols,
        args,
        notes=notes + [f"{r['rung']} batch {r['batch']}: not measured ({r['skipped']})" for r in rows if "skipped" in r],
        extra={"gpu": gpu, "peak_fp16_tflops": peak, "peak_source": table_key or ("--peak-tflops" if args.peak_tflops else None),
               "flops_per_image": flops, "floor_s": floor_s, "presets": preset_rows, "skipped": [r for r in rows if "skipped" in r]},
        machine=machine,
        formats=fmts,
    )  # fmt: skip
    return {"rows": rows, "presets": preset_rows}


if __name__ == "__main__":
    main()
