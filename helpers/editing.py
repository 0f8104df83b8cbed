"""Editing images with a text-to-image model: img2img, inpainting, DDIM inversion. One function per idea.

Papers: SDEdit (Meng et al. 2021, https://arxiv.org/abs/2108.01073) is img2img: noise the image part of the way
with the forward process, then denoise it under a prompt. RePaint (Lugmayr et al. 2022,
https://arxiv.org/abs/2201.09865) blends known pixels back at every step: diffusers' inpainting pipeline does this
in latent space for 4-channel UNets. DDIM inversion (Song et al. 2020, https://arxiv.org/abs/2010.02502, sec. 4.3;
used for editing by Mokady et al. 2022, https://arxiv.org/abs/2211.09794) runs the deterministic DDIM update
backwards, from an image to the noise that DDIM would turn into it.

Conventions follow `helpers.diffusion` and diffusers: 0-based timesteps, `alphas_cumprod[t]` is $\\bar\\alpha_t$,
latents are (B, C, h, w) and already multiplied by the VAE's scaling factor.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import DDIMScheduler
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from .diffusion import classifier_free_guidance, ddim_step, predict_x0, q_sample
from .inside import encode_images

# ---------------------------------------------------------------------------------------------- img2img (SDEdit)


def img2img_timesteps(scheduler, strength: float) -> torch.Tensor:
    """The timesteps img2img runs, after `scheduler.set_timesteps(n)`: the last int(strength * n) of them.

    Strength 1.0 runs all n (start from pure noise, like text-to-image); 0.3 skips the noisiest 70%.
    This is `StableDiffusionImg2ImgPipeline.get_timesteps`.
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be between 0 and 1, got {strength}: 0 keeps the image, 1 starts from noise.")
    n = scheduler.num_inference_steps  # what set_timesteps was given (PNDM's list repeats a timestep)
    init_timestep = min(int(n * strength), n)  # how many denoising steps img2img will run
    t_start = n - init_timestep
    if init_timestep == 0:
        raise ValueError(f"strength {strength} with {n} steps runs no step at all: raise strength or steps.")
    return scheduler.timesteps[t_start * scheduler.order :]


def img2img_start(latents: torch.Tensor, strength: float, scheduler, generator=None) -> torch.Tensor:
    """The noisy latents img2img starts from: the clean latents pushed forward to the first img2img timestep.

    `latents` (B, C, h, w) are the encoded image; `generator` (one, or one per image) draws the noise, exactly as
    `StableDiffusionImg2ImgPipeline.prepare_latents` draws it (after the VAE's own sample, which the caller does).
    """
    t = img2img_timesteps(scheduler, strength)[0]
    eps = randn_tensor(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
    # $x_t = \sqrt{\bar\alpha_t}\, x_0 + \sqrt{1 - \bar\alpha_t}\, \epsilon$ at $t$ = the first img2img timestep
    return q_sample(latents, t, eps, scheduler.alphas_cumprod)  # (B, C, h, w)


@torch.no_grad()
def denoise(pipe, latents, timesteps, cond, uncond=None, guidance_scale: float = 1.0, scheduler=None) -> torch.Tensor:
    """Notebook 02's loop over the given timesteps: UNet, guidance (when `uncond` is given), scheduler step.

    `cond`/`uncond` are (B, 77, D) text embeddings. The scheduler must have `set_timesteps` called already.
    """
    scheduler = scheduler or pipe.scheduler
    for t in timesteps:
        if uncond is None:
            eps = pipe.unet(scheduler.scale_model_input(latents, t), t, encoder_hidden_states=cond).sample
        else:
            x_in = scheduler.scale_model_input(torch.cat([latents] * 2), t)  # (2B, C, h, w)
            eps_uncond, eps_text = pipe.unet(x_in, t, encoder_hidden_states=torch.cat([uncond, cond])).sample.chunk(2)
            eps = classifier_free_guidance(eps_uncond, eps_text, guidance_scale)
        latents = scheduler.step(eps, t, latents).prev_sample  # x_t -> x_t'
    return latents


@torch.no_grad()
def img2img(pipe, x: torch.Tensor, prompt: str, strength: float, num_inference_steps: int,
            guidance_scale: float, generators: list) -> torch.Tensor:  # fmt: skip
    """Hand-written img2img: encode, `img2img_start`, denoise the remaining steps. Returns final latents (B, C, h, w).

    Equal to `StableDiffusionImg2ImgPipeline(**pipe.components)(prompt, image=x, ..., output_type="latent")`.
    """
    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)  # a fresh copy: schedulers keep state
    scheduler.set_timesteps(num_inference_steps, device=pipe.device)
    cond, uncond = pipe.encode_prompt(prompt, pipe.device, len(generators), guidance_scale > 1)
    latents = encode_images(pipe, x, generators)  # the VAE's posterior sample draws first from each generator ...
    latents = img2img_start(latents, strength, scheduler, generators)  # ... then the forward-process noise
    timesteps = img2img_timesteps(scheduler, strength)
    return denoise(pipe, latents, timesteps, cond, uncond if guidance_scale > 1 else None, guidance_scale, scheduler)


# ---------------------------------------------------------------------------------------------- inpainting


def rectangle_mask(size: int, box: tuple[int, int, int, int]) -> Image.Image:
    """A black "L" image with the box (left, top, right, bottom; right/bottom exclusive) white: white = repaint."""
    mask = np.zeros((size, size), dtype=np.uint8)
    left, top, right, bottom = box
    mask[top:bottom, left:right] = 255
    return Image.fromarray(mask, mode="L")


def load_inpainting_unet(model_dir):
    """The family's 9-channel inpainting UNet (`<model_dir>/unet_inpainting`, saved in half precision by
    `training.save_inpainting_unet`), in float32; None when the folder has none."""
    from pathlib import Path

    from diffusers import UNet2DConditionModel

    from .training import INPAINT_UNET_SUBFOLDER

    folder = Path(model_dir) / INPAINT_UNET_SUBFOLDER
    if not (folder / "config.json").exists():
        return None
    return UNet2DConditionModel.from_pretrained(folder, variant="fp16", torch_dtype=torch.float32)


def inpainting_pipeline(pipe, unet=None):
    """`StableDiffusionInpaintPipeline` from a text-to-image pipeline's components.

    With the pipeline's own 4-channel UNet it inpaints by blending latents (`blend_known` at every step); with a
    9-channel inpainting `unet` (`load_inpainting_unet`) the UNet itself sees the mask and the masked image.
    """
    from diffusers import StableDiffusionInpaintPipeline

    components = dict(pipe.components)
    if unet is not None:
        if unet.config.in_channels != 9:
            raise ValueError(
                f"An inpainting UNet takes 9 input channels (latents, mask, masked-image latents); this one takes "
                f"{unet.config.in_channels}. Leave `unet` out to inpaint with the pipeline's own UNet by blending."
            )
        components["unet"] = unet.to(pipe.device)
    out = StableDiffusionInpaintPipeline(**components)
    out.set_progress_bar_config(disable=True)
    return out


def blend_known(latents, init_latents, mask, noise, t_next, alphas_cumprod) -> torch.Tensor:
    """One inpainting blend (4-channel UNets): outside the mask, replace the latents by the original's, noised to
    the timestep the scheduler just stepped to; inside, keep what the model drew. `mask` is (B, 1, h, w), 1 = repaint.
    Pass `t_next=None` after the last step (the original's clean latents)."""
    known = init_latents if t_next is None else q_sample(init_latents, t_next, noise, alphas_cumprod)
    # $x_{t'} \leftarrow (1 - m) \odot q(x_0, t', \epsilon) + m \odot x_{t'}$
    return (1 - mask) * known + mask * latents


def pixel_change(a: np.ndarray, b: np.ndarray, where: np.ndarray | None = None) -> float:
    """Mean absolute difference of two uint8 images (H, W, 3), in units of 1/255, over the pixels `where` is True."""
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64)).mean(-1)  # (H, W)
    return float(diff[where].mean() if where is not None else diff.mean())


# ---------------------------------------------------------------------------------------------- DDIM inversion


def ddim_inversion_step(eps: torch.Tensor, x: torch.Tensor, alpha_bar: torch.Tensor, alpha_bar_next) -> torch.Tensor:
    """One DDIM step run backwards, from $\\bar\\alpha$ (less noise) to $\\bar\\alpha_{next}$ (more noise).

    DDIM's update is deterministic: $x_{t'} = \\sqrt{\\bar\\alpha_{t'}}\\,\\hat x_0 + \\sqrt{1-\\bar\\alpha_{t'}}\\,\\hat\\epsilon$ for
    any pair of noise levels, so the same line that denoises also noises. Matches `DDIMInverseScheduler.step`.
    """
    x_0_hat = predict_x0(x, eps, alpha_bar)
    # $x_{t+1} = \sqrt{\bar\alpha_{t+1}}\, \hat x_0 + \sqrt{1 - \bar\alpha_{t+1}}\, \hat\epsilon$
    return alpha_bar_next**0.5 * x_0_hat + (1 - alpha_bar_next) ** 0.5 * eps


def ddim_scheduler(pipe, num_inference_steps: int) -> DDIMScheduler:
    """A DDIM scheduler with the pipeline's noise schedule (whatever sampler the pipeline itself uses)."""
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(num_inference_steps, device=pipe.device)
    return scheduler


@torch.no_grad()
def ddim_invert(pipe, latents: torch.Tensor, cond: torch.Tensor, num_inference_steps: int) -> torch.Tensor:
    """Clean latents (B, C, h, w) -> the noise x_T that DDIM (guidance 1, prompt `cond`) turns back into them.

    Walks DDIM's timesteps in reverse. The UNet sees the current latents with the timestep it is heading to
    (the clean end has no timestep of its own), as diffusers' `DDIMInverseScheduler` does.
    """
    scheduler = ddim_scheduler(pipe, num_inference_steps)
    alpha_bar = scheduler.final_alpha_cumprod  # where the sampling loop ends: the clean latents
    x = latents
    for t in scheduler.timesteps.flip(0):  # 1, 101, ..., 901 for 10 steps (leading spacing)
        eps = pipe.unet(x, t, encoder_hidden_states=cond).sample  # (B, C, h, w)
        alpha_bar_next = scheduler.alphas_cumprod[int(t)]
        x = ddim_inversion_step(eps, x, alpha_bar, alpha_bar_next)
        alpha_bar = alpha_bar_next
    return x


@torch.no_grad()
def ddim_sample(pipe, x_T: torch.Tensor, cond: torch.Tensor, num_inference_steps: int) -> torch.Tensor:
    """The forward DDIM loop (eta 0, guidance 1) from x_T with prompt embeddings `cond`: clean latents."""
    scheduler = ddim_scheduler(pipe, num_inference_steps)
    timesteps = scheduler.timesteps
    x = x_T
    for i, t in enumerate(timesteps):
        eps = pipe.unet(x, t, encoder_hidden_states=cond).sample
        prev_t = int(timesteps[i + 1]) if i + 1 < len(timesteps) else -1  # -1: the clean end
        # notebook 03's DDIM step: $x_{t'} = \sqrt{\bar\alpha_{t'}}\, \hat x_0 + \sqrt{1 - \bar\alpha_{t'}}\, \hat\epsilon$
        x = ddim_step(
            eps, int(t), x, scheduler.alphas_cumprod, prev_t, final_alpha_cumprod=float(scheduler.final_alpha_cumprod)
        )
    return x
