"""The equations of diffusion models, one small function each, written to match diffusers line by line.

Papers: DDPM (Ho et al. 2020, https://arxiv.org/abs/2006.11239), improved DDPM / cosine schedule
(Nichol & Dhariwal 2021, https://arxiv.org/abs/2102.09672), DDIM (Song et al. 2020,
https://arxiv.org/abs/2010.02502), classifier-free guidance (Ho & Salimans 2022,
https://arxiv.org/abs/2207.12598), latent diffusion / Stable Diffusion (Rombach et al. 2022,
https://arxiv.org/abs/2112.10752).

Conventions (the same as diffusers, so every number can be compared with `DDPMScheduler`/`DDIMScheduler`):
- timesteps are 0-based: `t` runs over 0..T-1 and `alphas_cumprod[t]` is the paper's $\bar\alpha_{t+1}$;
- "the previous timestep" of a sampler that skips steps is `prev_t` (diffusers: `t - T // num_inference_steps`),
  and `prev_t < 0` means "after the last step", where $\bar\alpha = 1$ (or `final_alpha_cumprod`);
- tensors are batched: `x_0`, `x_t`, `eps` are (B, ...) and a per-sample `t` is (B,).

Each equation is written as a LaTeX comment right above the line that computes it, in the notebook's symbols.
"""

from __future__ import annotations

import math

import torch

#: Stable Diffusion v1's latent scale: VAE latents are multiplied by it so that they have roughly unit variance.
LATENT_SCALING_FACTOR = 0.18215

SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


# ---------------------------------------------------------------------------------------------- noise schedules


def linear_betas(num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """DDPM's schedule: betas evenly spaced from `beta_start` to `beta_end` (diffusers `"linear"`)."""
    # $\beta_t = \beta_{start} + \frac{t}{T-1}(\beta_{end} - \beta_{start})$
    return torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)


def scaled_linear_betas(
    num_train_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012
) -> torch.Tensor:
    """Stable Diffusion's schedule: the *square roots* of beta are evenly spaced (diffusers `"scaled_linear"`)."""
    # $\beta_t = \left(\sqrt{\beta_{start}} + \frac{t}{T-1}(\sqrt{\beta_{end}} - \sqrt{\beta_{start}})\right)^2$
    return torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32) ** 2


def cosine_alpha_bar(u: float, s: float = 0.008) -> float:
    """The cosine schedule's $\\bar\\alpha$ as a function of continuous time u in [0, 1] (before normalising)."""
    # $f(u) = \cos^2\left(\frac{u + s}{1 + s} \cdot \frac{\pi}{2}\right)$
    return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2


def cosine_betas(num_train_timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Improved DDPM's cosine schedule (diffusers `"squaredcos_cap_v2"`): alpha-bar follows a cosine, betas are capped."""
    T = num_train_timesteps
    # $\beta_t = \min\left(1 - \frac{f((t+1)/T)}{f(t/T)},\ \beta_{max}\right)$: the ratio of consecutive alpha-bars
    betas = [min(1 - cosine_alpha_bar((t + 1) / T, s) / cosine_alpha_bar(t / T, s), max_beta) for t in range(T)]
    return torch.tensor(betas, dtype=torch.float32)


def make_betas(
    beta_schedule: str = "scaled_linear",
    num_train_timesteps: int = 1000,
    beta_start: float | None = None,
    beta_end: float | None = None,
) -> torch.Tensor:
    """Betas by diffusers' schedule name ("linear", "scaled_linear", "squaredcos_cap_v2"; "cosine" is an alias).

    Without `beta_start`/`beta_end`, each schedule uses its usual values: DDPM's 1e-4 -> 0.02 for "linear",
    Stable Diffusion's 0.00085 -> 0.012 for "scaled_linear".
    """
    if beta_schedule == "linear":
        return linear_betas(num_train_timesteps, beta_start or 1e-4, beta_end or 0.02)
    if beta_schedule == "scaled_linear":
        return scaled_linear_betas(num_train_timesteps, beta_start or 0.00085, beta_end or 0.012)
    if beta_schedule in ("squaredcos_cap_v2", "cosine"):
        return cosine_betas(num_train_timesteps)
    raise ValueError(f"Unknown beta_schedule {beta_schedule!r}: use one of {SCHEDULES} (or 'cosine').")


def alphas_cumprod_from_betas(betas: torch.Tensor) -> torch.Tensor:
    """alpha-bar: how much of the clean signal's variance survives after t+1 noising steps."""
    # $\alpha_t = 1 - \beta_t$
    alphas = 1.0 - betas
    # $\bar\alpha_t = \prod_{s \le t} \alpha_s$
    return torch.cumprod(alphas, dim=0)


def snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio of x_t: signal variance over noise variance."""
    # $\mathrm{SNR}(t) = \frac{\bar\alpha_t}{1 - \bar\alpha_t}$
    return alphas_cumprod / (1.0 - alphas_cumprod)


def log_snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """log SNR(t), the natural axis to compare schedules on (it falls from about +10 to about -10)."""
    # $\lambda_t = \log \bar\alpha_t - \log(1 - \bar\alpha_t)$
    return torch.log(alphas_cumprod) - torch.log1p(-alphas_cumprod)


# ---------------------------------------------------------------------------------------------- forward process


def _per_sample(values: torch.Tensor, t, like: torch.Tensor) -> torch.Tensor:
    """values[t] shaped (B, 1, 1, ...) to broadcast against `like` (t: int or (B,) tensor)."""
    t = torch.as_tensor(t, device=values.device)
    out = values.to(like.device, like.dtype)[t.to(values.device)].to(like.device).flatten()
    return out.reshape(-1, *([1] * (like.ndim - 1)))


def q_sample(x_0: torch.Tensor, t, eps: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Jump straight to step t: the closed form of the forward process (diffusers `DDPMScheduler.add_noise`)."""
    alpha_bar_t = _per_sample(alphas_cumprod, t, x_0)  # (B, 1, ...)
    # $x_t = \sqrt{\bar\alpha_t}\, x_0 + \sqrt{1 - \bar\alpha_t}\, \epsilon, \quad \epsilon \sim \mathcal{N}(0, I)$
    return alpha_bar_t.sqrt() * x_0 + (1 - alpha_bar_t).sqrt() * eps


def q_step(x_prev: torch.Tensor, t: int, eps: torch.Tensor, betas: torch.Tensor) -> torch.Tensor:
    """One forward step q(x_t | x_{t-1}): shrink the signal a little, add a little noise."""
    beta_t = betas[t].to(x_prev.dtype)
    # $x_t = \sqrt{1 - \beta_t}\, x_{t-1} + \sqrt{\beta_t}\, \epsilon$
    return (1 - beta_t).sqrt() * x_prev + beta_t.sqrt() * eps


def q_sample_stepwise(
    x_0: torch.Tensor, t: int, betas: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Reach step t by applying `q_step` t+1 times with fresh noise (same distribution as `q_sample`)."""
    x = x_0
    for s in range(t + 1):
        eps = torch.randn(x.shape, generator=generator, dtype=x.dtype)
        x = q_step(x, s, eps, betas)
    return x


def stepwise_mean_std(betas: torch.Tensor, t: int) -> tuple[float, float]:
    """Signal coefficient and noise std after t+1 forward steps, by composing the Gaussians one step at a time.

    Adding independent Gaussian noise steps gives one Gaussian: this is why `q_sample` has a closed form.
    """
    coef, var = 1.0, 0.0
    for s in range(t + 1):
        b = float(betas[s])
        # $m_s = \sqrt{1-\beta_s}\, m_{s-1}$: the signal coefficient shrinks
        coef = math.sqrt(1 - b) * coef
        # $v_s = (1-\beta_s)\, v_{s-1} + \beta_s$: old noise shrinks, new noise adds (variances add)
        var = (1 - b) * var + b
    return coef, math.sqrt(var)


# ---------------------------------------------------------------------------------------------- training objective


def eps_loss(eps_pred: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """DDPM's simplified objective: mean squared error between the true and the predicted noise."""
    # $L_{simple} = \mathbb{E}_{x_0, t, \epsilon}\left[\lVert \epsilon - \epsilon_\theta(x_t, t) \rVert^2\right]$
    return torch.mean((eps - eps_pred) ** 2)


def training_loss(
    model, x_0: torch.Tensor, alphas_cumprod: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """One Monte-Carlo estimate of L_simple: random t per sample, random noise, predict it back.

    `model(x_t, t)` returns the predicted noise, shaped like x_t.
    """
    T = len(alphas_cumprod)
    # $t \sim \mathcal{U}\{0, \dots, T-1\}$
    t = torch.randint(0, T, (x_0.shape[0],), generator=generator)  # (B,)
    # $\epsilon \sim \mathcal{N}(0, I)$
    eps = torch.randn(x_0.shape, generator=generator, dtype=x_0.dtype)
    x_t = q_sample(x_0, t, eps, alphas_cumprod)
    return eps_loss(model(x_t, t), eps)


# ---------------------------------------------------------------------------------------------- reverse process


def _alpha_bar_prev(alphas_cumprod: torch.Tensor, prev_t: int, final_alpha_cumprod: float = 1.0) -> torch.Tensor:
    return alphas_cumprod[prev_t] if prev_t >= 0 else torch.tensor(final_alpha_cumprod, dtype=alphas_cumprod.dtype)


def predict_x0(x_t: torch.Tensor, eps: torch.Tensor, alpha_bar_t) -> torch.Tensor:
    """The model's guess of the clean sample, from its noise prediction (invert `q_sample`)."""
    # $\hat x_0 = \frac{x_t - \sqrt{1 - \bar\alpha_t}\, \hat\epsilon}{\sqrt{\bar\alpha_t}}$
    return (x_t - (1 - alpha_bar_t) ** 0.5 * eps) / alpha_bar_t**0.5


def posterior_mean_variance(
    x_0: torch.Tensor, x_t: torch.Tensor, t: int, alphas_cumprod: torch.Tensor, prev_t: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The Gaussian q(x_{prev} | x_t, x_0): where x_t came from, if we knew x_0. Returns (mean, variance).

    With `prev_t = t - 1` (the default) this is DDPM's equation (7); with larger jumps the same formula holds
    with beta_t replaced by the jump's effective beta, as diffusers does when sampling with fewer steps.
    """
    prev_t = t - 1 if prev_t is None else prev_t
    alpha_bar_t = alphas_cumprod[t]
    alpha_bar_prev = _alpha_bar_prev(alphas_cumprod, prev_t)
    # $\alpha_t = \bar\alpha_t / \bar\alpha_{t-1}$, $\beta_t = 1 - \alpha_t$ (exact for one step; the jump's betas otherwise)
    alpha_t = alpha_bar_t / alpha_bar_prev
    beta_t = 1 - alpha_t
    # $\tilde\mu_t = \frac{\sqrt{\bar\alpha_{t-1}}\,\beta_t}{1 - \bar\alpha_t} x_0 + \frac{\sqrt{\alpha_t}\,(1 - \bar\alpha_{t-1})}{1 - \bar\alpha_t} x_t$
    mean = (alpha_bar_prev.sqrt() * beta_t / (1 - alpha_bar_t)) * x_0 + (
        alpha_t.sqrt() * (1 - alpha_bar_prev) / (1 - alpha_bar_t)
    ) * x_t
    # $\tilde\beta_t = \frac{1 - \bar\alpha_{t-1}}{1 - \bar\alpha_t} \beta_t$
    variance = (1 - alpha_bar_prev) / (1 - alpha_bar_t) * beta_t
    return mean, variance


def ddpm_step(
    eps: torch.Tensor,
    t: int,
    x_t: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    noise: torch.Tensor | None = None,
    prev_t: int | None = None,
    clip_sample: float | None = None,
) -> torch.Tensor:
    """One ancestral DDPM step x_t -> x_{prev}: predict x_0, take the posterior mean, add posterior noise.

    Matches `DDPMScheduler.step` (variance_type "fixed_small") when `noise` is the scheduler's own draw.
    Without `noise` it returns the posterior mean (the deterministic part of the step).
    `clip_sample` clamps the x_0 guess to [-c, c] like diffusers' `clip_sample=True` (c = 1) does.
    """
    x_0_hat = predict_x0(x_t, eps, alphas_cumprod[t])
    if clip_sample is not None:
        x_0_hat = x_0_hat.clamp(-clip_sample, clip_sample)
    mean, variance = posterior_mean_variance(x_0_hat, x_t, t, alphas_cumprod, prev_t)
    if t == 0 or noise is None:  # the last step returns the mean: no noise is added at t = 0
        return mean
    # $x_{t-1} = \tilde\mu_t(x_t, \hat x_0) + \sqrt{\tilde\beta_t}\, z, \quad z \sim \mathcal{N}(0, I)$
    return mean + variance.clamp(min=1e-20).sqrt() * noise


def ddim_step(
    eps: torch.Tensor,
    t: int,
    x_t: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    prev_t: int,
    eta: float = 0.0,
    noise: torch.Tensor | None = None,
    final_alpha_cumprod: float = 1.0,
) -> torch.Tensor:
    """One DDIM step x_t -> x_{prev}; eta = 0 is deterministic, eta = 1 has DDPM's noise level.

    Matches `DDIMScheduler.step` (`final_alpha_cumprod` is alphas_cumprod[0] when `set_alpha_to_one=False`).
    """
    alpha_bar_t = alphas_cumprod[t]
    alpha_bar_prev = _alpha_bar_prev(alphas_cumprod, prev_t, final_alpha_cumprod)
    x_0_hat = predict_x0(x_t, eps, alpha_bar_t)
    # $\sigma_t = \eta \sqrt{\frac{1 - \bar\alpha_{t-1}}{1 - \bar\alpha_t}} \sqrt{1 - \frac{\bar\alpha_t}{\bar\alpha_{t-1}}}$
    sigma_t = eta * ((1 - alpha_bar_prev) / (1 - alpha_bar_t) * (1 - alpha_bar_t / alpha_bar_prev)) ** 0.5
    # $x_{t-1} = \sqrt{\bar\alpha_{t-1}}\, \hat x_0 + \sqrt{1 - \bar\alpha_{t-1} - \sigma_t^2}\, \hat\epsilon + \sigma_t z$
    x_prev = alpha_bar_prev**0.5 * x_0_hat + (1 - alpha_bar_prev - sigma_t**2) ** 0.5 * eps
    if eta > 0:
        if noise is None:
            raise ValueError("ddim_step with eta > 0 needs `noise` (a standard normal tensor shaped like x_t).")
        x_prev = x_prev + sigma_t * noise
    return x_prev


def sigma_from_alpha_bar(alpha_bar):
    """The noise level of the rescaled sample $x_t / \\sqrt{\\bar\\alpha_t} = x_0 + \\sigma_t \\epsilon$ (Euler's sigmas)."""
    # $\sigma_t = \sqrt{(1 - \bar\alpha_t) / \bar\alpha_t}$
    return ((1 - alpha_bar) / alpha_bar) ** 0.5


def euler_step(eps: torch.Tensor, sigma, sigma_next, sample: torch.Tensor) -> torch.Tensor:
    """One step of Euler's method on $d\\tilde x / d\\sigma = \\hat\\epsilon$: `EulerDiscreteScheduler.step` (no churn).

    `sample` is $\\tilde x_t = x_t / \\sqrt{\\bar\\alpha_t}$, the variable Euler-type schedulers keep. Dividing the eta = 0
    `ddim_step` by $\\sqrt{\\bar\\alpha_{t'}}$ gives this same update (the DDIM paper, section 4.3, eq. 13-14).
    """
    # $\tilde x_{t'} = \tilde x_t + (\sigma_{t'} - \sigma_t)\,\hat\epsilon$
    return sample + (sigma_next - sigma) * eps


# ---------------------------------------------------------------------------------------------- guidance and latents


def classifier_free_guidance(
    noise_pred_uncond: torch.Tensor, noise_pred_text: torch.Tensor, guidance_scale: float
) -> torch.Tensor:
    """Push the prediction away from "no prompt" and towards "the prompt" (s = 1: plain conditional; s = 0: uncond)."""
    # $\hat\epsilon = \epsilon_\theta(x_t, \varnothing) + s\,\left(\epsilon_\theta(x_t, c) - \epsilon_\theta(x_t, \varnothing)\right)$
    return noise_pred_uncond + guidance_scale * (noise_pred_text - noise_pred_uncond)


def scale_latents(latents: torch.Tensor, scaling_factor: float = LATENT_SCALING_FACTOR) -> torch.Tensor:
    """VAE posterior sample -> the latents the UNet is trained on (roughly unit variance)."""
    # $z = 0.18215 \cdot \mathcal{E}(x)$
    return latents * scaling_factor


def unscale_latents(latents: torch.Tensor, scaling_factor: float = LATENT_SCALING_FACTOR) -> torch.Tensor:
    """UNet latents -> what the VAE decoder expects (the pipeline's `latents / vae.config.scaling_factor`)."""
    # $x = \mathcal{D}(z / 0.18215)$
    return latents / scaling_factor


def values_per_image(height: int, width: int, channels: int) -> int:
    """How many numbers describe one image (or one latent)."""
    return height * width * channels


def sd_unet_on_meta(configs_dir=None):
    """Stable Diffusion v1's UNet (859.5 M parameters) on PyTorch's "meta" device: shapes only, no memory, no weights.

    Enough to count its FLOPs at any input size in about a second.
    """
    from diffusers import UNet2DConditionModel

    from .offline import SD_V1_4_CONFIGS

    with torch.device("meta"):
        return UNet2DConditionModel.from_config(
            UNet2DConditionModel.load_config((configs_dir or SD_V1_4_CONFIGS) / "unet")
        )


def unet_flops(unet, height: int, width: int, batch_size: int = 2) -> float:
    """FLOPs of one UNet call on (batch_size, C, height, width) inputs (batch 2 = one guided denoising step).

    Counted by `torch.utils.flop_counter.FlopCounterMode` (matmuls and convolutions, 2 FLOPs per multiply-add).
    """
    from torch.utils.flop_counter import FlopCounterMode

    device = next(unet.parameters()).device
    sample = torch.zeros(batch_size, unet.config.in_channels, height, width, device=device)
    context = torch.zeros(batch_size, 77, unet.config.cross_attention_dim, device=device)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        unet(sample, torch.tensor(500, device=device), encoder_hidden_states=context)
    return float(counter.get_total_flops())
