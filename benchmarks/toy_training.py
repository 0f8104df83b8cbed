"""Training speed of the second toy family's UNet on CPU: which settings buy more steps in the same time.

Issue 12 measured that, at the same number of latents seen, more and smaller steps draw better shapes (README,
the UNet table), so the training budget is counted in steps. This script times one training step (forward,
backward, AdamW) of `helpers.training.build_mini_unet` on random 8x8x4 latents and random 77 x 32 text states
(speed does not depend on the values), for each row side by side in one run:

- the second family's UNet (`V2_SIZES`: blocks (32, 64, 64), 8 attention heads, as SD v1's `attention_head_dim=8`)
  at batch 32 and 96;
- the same UNet with fewer attention heads (4, 2, and (1, 2, 2): 32 channels per head everywhere): a head of
  4-8 channels leaves the attention kernels with almost no work per call;
- wider UNets, (48, 96, 96) and (64, 128, 128).

Columns: steps/s and latents/s (median of `--repeats` timings of `--steps` steps after a warm-up), parameters.
The rows interleave (every row once, then again), so a change in the machine's load hits every row alike.

    python benchmarks/toy_training.py --threads 1       # ~2 min on 2 cores
    python benchmarks/toy_training.py --smoke           # one repeat of 2 steps, seconds
"""

from __future__ import annotations

import time
from dataclasses import replace

import common
import torch

from helpers import training as tr

ROWS = [  # (label, batch, changes to V2_SIZES)
    ("v2 UNet, 8 heads (the recipe)", 32, {}),
    ("v2 UNet, 8 heads (the recipe)", 96, {}),
    ("4 heads", 32, {"unet_heads": 4}),
    ("2 heads", 32, {"unet_heads": 2}),
    ("(1, 2, 2) heads: 32 channels each", 32, {"unet_heads": (1, 2, 2)}),
    ("(1, 2, 2) heads: 32 channels each", 96, {"unet_heads": (1, 2, 2)}),
    ("wider (48, 96, 96), 8 heads", 32, {"unet_channels": (48, 96, 96)}),
    ("wider (64, 128, 128), 8 heads", 32, {"unet_channels": (64, 128, 128)}),
]
TEXT_WIDTH = tr.V2_SIZES.text_width


def make_step(sizes, batch: int):
    """One training step of a fresh UNet of `sizes` on fixed random inputs (a closure) and its parameter count."""
    unet = tr.build_mini_unet(TEXT_WIDTH, sizes, seed=0).train()
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(batch, sizes.latent_channels, 8, 8, generator=g)
    states = torch.randn(batch, 77, TEXT_WIDTH, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)

    def step():
        loss = unet(latents, t, encoder_hidden_states=states).sample.pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step, sum(p.numel() for p in unet.parameters())


def main(argv=None) -> list[dict]:
    ap = common.parser(__doc__)
    ap.add_argument("--steps", type=int, default=10, help="steps per timing")
    ap.add_argument("--repeats", type=int, default=3, help="timings per row (the median is reported)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.steps, args.repeats = 2, 1
    threads = common.apply_threads(args.threads)
    machine = common.machine_info()  # after the threads are set: it records torch's thread count
    rows = ROWS[:3] if args.smoke else ROWS
    steps = []
    for _, batch, changes in rows:
        sizes = replace(tr.V2_SIZES, **changes)
        if args.smoke:  # tiny widths: only the code path is checked
            sizes = replace(sizes, unet_channels=(16, 32, 32), unet_groups=8)
        step, n_params = make_step(sizes, batch)
        step()  # warm-up: the first call allocates
        steps.append((step, n_params))
    seconds = [[] for _ in rows]
    for _ in range(args.repeats):
        for i, (step, _) in enumerate(steps):
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step()
            seconds[i].append((time.perf_counter() - t0) / args.steps)
    base = common.median(seconds[0])
    results = []
    for (label, batch, _), (_, n_params), secs in zip(rows, steps, seconds):
        per_step = common.median(secs)
        results.append(
            {
                "setting": label,
                "batch": batch,
                "params_m": n_params / 1e6,
                "steps_per_s": 1 / per_step,
                "latents_per_s": batch / per_step,
                "vs_recipe": base / per_step,
            }
        )
    common.report(
        "toy_training",
        f"One training step of the v2 toy UNet on CPU ({threads} torch thread(s), {args.steps} steps x "
        f"{args.repeats} timings per row)",
        results,
        {
            "setting": "UNet",
            "batch": "batch",
            "params_m": "params (M)",
            "steps_per_s": "steps/s",
            "latents_per_s": "latents/s",
            "vs_recipe": "steps/s vs the recipe at 32",
        },
        args,
        machine=machine,
        formats={"vs_recipe": "{:.2f}x", "steps_per_s": "{:.2f}", "latents_per_s": "{:.0f}", "params_m": "{:.2f}"},
        notes=[
            "Random inputs: speed does not depend on the values. Quality per step is measured separately "
            "(scripts/unet_experiment.py).",
        ],
    )
    return results


if __name__ == "__main__":
    main()
