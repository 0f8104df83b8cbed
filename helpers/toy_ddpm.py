"""A complete DDPM small enough to train live on a CPU: 2-D points (a swiss roll), a tiny MLP, the equations
of `helpers.diffusion`, and a sampler that records x_t along the way so you can watch noise become data.

Everything Stable Diffusion does to 4x64x64 latents happens here to 2 numbers per sample: the forward
process is `q_sample`, the loss is `training_loss` (predict the noise), sampling is `ddpm_step` from
t = T-1 down to 0. Paper: Ho et al. 2020, https://arxiv.org/abs/2006.11239 (Algorithms 1 and 2).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .diffusion import alphas_cumprod_from_betas, ddpm_step, make_betas, training_loss


def load_sample_image(size: int = 128) -> torch.Tensor:
    """A (3, size, size) picture in [-1, 1], the range Stable Diffusion's VAE works in.

    It is matplotlib's bundled photo of Grace Hopper (no download); if that file is missing, a drawn sun and house.
    """
    from PIL import Image, ImageDraw

    try:
        from matplotlib import cbook

        with cbook.get_sample_data("grace_hopper.jpg") as f:
            image = Image.open(f).convert("RGB")
        w, h = image.size
        side = min(w, h)
        image = image.crop(((w - side) // 2, 0, (w + side) // 2, side))  # square, from the top: keep the face
    except (OSError, ValueError):
        image = Image.new("RGB", (256, 256), (110, 170, 240))
        draw = ImageDraw.Draw(image)
        draw.rectangle((0, 180, 256, 256), fill=(60, 150, 60))
        draw.ellipse((170, 20, 230, 80), fill=(250, 210, 40))
        draw.rectangle((50, 110, 150, 190), fill=(200, 80, 60))
        draw.polygon([(40, 110), (100, 60), (160, 110)], fill=(120, 50, 40))
    image = image.resize((size, size), Image.BICUBIC)
    pixels = torch.tensor(np.asarray(image), dtype=torch.float32).permute(2, 0, 1) / 255  # (3, H, W) in [0, 1]
    return pixels * 2 - 1


def make_swiss_roll(n: int = 4000, noise: float = 0.03, seed: int = 0) -> torch.Tensor:
    """(n, 2) points on a 2-D spiral, scaled to roughly [-1, 1] (numpy only, no sklearn)."""
    rng = np.random.default_rng(seed)
    angle = 1.5 * np.pi * (1 + 2 * rng.random(n))  # 1.5 pi .. 4.5 pi: one and a half turns
    xy = np.stack([angle * np.cos(angle), angle * np.sin(angle)], axis=1) / (4.5 * np.pi)
    xy += noise * rng.standard_normal((n, 2))
    return torch.tensor(xy, dtype=torch.float32)


def make_two_moons(n: int = 4000, noise: float = 0.05, seed: int = 0) -> torch.Tensor:
    """(n, 2) points on two interleaved half circles, centred and scaled to roughly [-1, 1]."""
    rng = np.random.default_rng(seed)
    angle = np.pi * rng.random(n)
    upper = rng.random(n) < 0.5
    x = np.where(upper, np.cos(angle), 1 - np.cos(angle))
    y = np.where(upper, np.sin(angle), 0.5 - np.sin(angle))
    xy = np.stack([x - 0.5, y - 0.25], axis=1) / 1.5 + noise * rng.standard_normal((n, 2))
    return torch.tensor(xy, dtype=torch.float32)


def timestep_embedding(t: torch.Tensor, dim: int = 32, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of the integer timestep (the Transformer's position encoding, as in SD's UNet)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)  # (dim/2,)
    args = t.float()[:, None] * freqs[None]  # (B, dim/2)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)  # (B, dim)


class ToyDenoiser(nn.Module):
    """eps_theta(x_t, t): an MLP that reads a noisy 2-D point and its timestep and predicts the noise."""

    def __init__(self, hidden: int = 128, time_dim: int = 32, depth: int = 3):
        super().__init__()
        self.time_dim = time_dim
        layers: list[nn.Module] = [nn.Linear(2 + time_dim, hidden), nn.SiLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(hidden, hidden), nn.SiLU()]
        layers.append(nn.Linear(hidden, 2))
        self.net = nn.Sequential(*layers)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t).expand(x_t.shape[0])  # an int t is shared by the whole batch
        return self.net(torch.cat([x_t, timestep_embedding(t, self.time_dim)], dim=1))  # (B, 2)


@contextmanager
def torch_threads(n: int):
    """Run a block with `n` torch threads, then restore the previous setting."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@dataclass
class ToyDDPM:
    """A trained toy model with its schedule and training curve."""

    model: ToyDenoiser
    betas: torch.Tensor
    alphas_cumprod: torch.Tensor
    losses: list[float] = field(default_factory=list)

    @property
    def num_train_timesteps(self) -> int:
        return len(self.betas)


def train_toy_ddpm(
    data: torch.Tensor,
    steps: int = 5000,
    batch_size: int = 512,
    lr: float = 1e-2,
    num_train_timesteps: int = 1000,
    beta_schedule: str = "linear",
    hidden: int = 128,
    seed: int = 0,
    threads: int = 1,
) -> ToyDDPM:
    """DDPM Algorithm 1: repeat { x_0 ~ data, t ~ U, eps ~ N(0, I); step on ||eps - eps_theta(x_t, t)||^2 }.

    The defaults take ~15 s of CPU time. `threads=1` on purpose: an MLP this small only loses time to
    thread synchronisation (on a busy 2-core machine, 2 threads were ~7x slower than 1).
    """
    with torch_threads(threads):
        return _train(data, steps, batch_size, lr, num_train_timesteps, beta_schedule, hidden, seed)


def _train(data, steps, batch_size, lr, num_train_timesteps, beta_schedule, hidden, seed) -> ToyDDPM:
    torch.manual_seed(seed)  # the model's initial weights
    generator = torch.Generator().manual_seed(seed)  # batches, timesteps and noise
    betas = make_betas(beta_schedule, num_train_timesteps)
    alphas_cumprod = alphas_cumprod_from_betas(betas)
    model = ToyDenoiser(hidden=hidden)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    losses = []
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(data), (batch_size,), generator=generator)
        loss = training_loss(model, data[idx], alphas_cumprod, generator=generator)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    model.eval()
    return ToyDDPM(model=model, betas=betas, alphas_cumprod=alphas_cumprod, losses=losses)


@torch.no_grad()
def sample_toy_ddpm(
    toy: ToyDDPM,
    n: int = 2000,
    seed: int = 0,
    num_inference_steps: int | None = None,
    record_at: tuple[int, ...] = (),
    threads: int = 1,
) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """DDPM Algorithm 2: x_T ~ N(0, I), then x_{t-1} = ddpm_step(eps_theta(x_t, t), ...) down to t = 0.

    Returns the samples (n, 2) and {t: x_t} for every t in `record_at` (x_t *before* the step at t; the key -1
    holds the final samples). With `num_inference_steps`, steps jump T // num_inference_steps timesteps at a time.
    """
    T = toy.num_train_timesteps
    stride = T // num_inference_steps if num_inference_steps else 1
    generator = torch.Generator().manual_seed(seed)
    x_t = torch.randn((n, 2), generator=generator)  # x_T ~ N(0, I)
    recorded: dict[int, torch.Tensor] = {}
    with torch_threads(threads):
        for t in range(T - 1, -1, -stride):
            if t in record_at:
                recorded[t] = x_t.clone()
            eps = toy.model(x_t, torch.tensor(t))  # (n, 2)
            noise = torch.randn(x_t.shape, generator=generator) if t > 0 else None
            x_t = ddpm_step(eps, t, x_t, toy.alphas_cumprod, noise=noise, prev_t=t - stride)
    recorded[-1] = x_t.clone()
    return x_t, recorded


def plot_point_clouds(clouds, titles, reference: torch.Tensor | None = None, size: float = 2.4):
    """Scatter plots side by side (e.g. x_t from t = T-1 down to 0), with the data in grey behind them."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(clouds), figsize=(size * len(clouds), size), squeeze=False)
    for ax, points, title in zip(axes[0], clouds, titles):
        if reference is not None:
            ax.scatter(reference[:, 0], reference[:, 1], s=1, c="lightgrey")
        ax.scatter(points[:, 0], points[:, 1], s=2, alpha=0.6)
        ax.set(xlim=(-2.2, 2.2), ylim=(-2.2, 2.2), xticks=[], yticks=[], aspect="equal", title=title)
    fig.tight_layout()
    return fig


def mean_nearest_distance(points: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean distance from each point to its nearest reference point: ~0 when samples lie on the data."""
    return torch.cdist(points, reference).min(dim=1).values.mean().item()
