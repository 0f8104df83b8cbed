"""Stable Diffusion's denoising loop written out by hand: what `StableDiffusionPipeline.__call__` does, in order.

    text  --tokenizer-->  ids (B, 77)  --text_encoder-->  prompt_embeds (B, 77, D)
    noise (B, 4, H/8, W/8) * init_noise_sigma                      <- the pipeline's own shapes
    for t in scheduler.timesteps:                                    <- scheduler.set_timesteps(num_inference_steps)
        eps_uncond, eps_text = unet([latents, latents], t, [uncond_embeds, prompt_embeds]).chunk(2)
        eps = eps_uncond + guidance_scale * (eps_text - eps_uncond)  <- classifier-free guidance
        latents = scheduler.step(eps, t, latents)                    <- x_t -> x_{t-1}
    image = vae.decode(latents / scaling_factor)                     (B, 3, H, W) in [-1, 1]

Given the same generator, `manual_generate(pipe, ...)` reproduces `pipe(...)` (tests/test_manual_loop.py checks it).
Paper: Rombach et al. 2022, https://arxiv.org/abs/2112.10752 ; the pipeline:
https://github.com/huggingface/diffusers/blob/main/src/diffusers/pipelines/stable_diffusion/pipeline_stable_diffusion.py
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import numpy as np
import torch

from .diffusion import classifier_free_guidance, unscale_latents


@dataclass
class ManualResult:
    """What the hand-written loop produced."""

    images: np.ndarray  # (B, H, W, 3) in [0, 1], like pipe(..., output_type="np").images
    latents: torch.Tensor  # (B, 4, H/8, W/8) final latents, before 1/scaling_factor
    timesteps: list[int]
    intermediates: list[torch.Tensor] = field(default_factory=list)  # latents after each step, if asked for
    noise_preds: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)  # (uncond, text), if asked


@torch.no_grad()
def encode_text(pipe, prompts: list[str]) -> torch.Tensor:
    """Tokenize to CLIP's fixed 77 tokens (padded and truncated) and run the text encoder."""
    text_inputs = pipe.tokenizer(
        prompts,
        padding="max_length",  # always 77 tokens: the UNet's cross-attention sees a fixed-length sequence
        max_length=pipe.tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    ids = text_inputs.input_ids.to(pipe.device)  # (B, 77)
    return pipe.text_encoder(ids)[0]  # (B, 77, D): the last hidden state, one vector per token


def initial_noise(shape: tuple[int, ...], generator, device, dtype) -> torch.Tensor:
    """Standard normal latents drawn like diffusers' `randn_tensor`: on the generator's device, one generator per
    image when given a list (so that image i depends only on its own seed)."""
    if isinstance(generator, list) and len(generator) == 1:
        generator = generator[0]
    if isinstance(generator, list):
        draws = [torch.randn((1, *shape[1:]), generator=g, device=g.device, dtype=dtype) for g in generator]
        return torch.cat(draws).to(device)
    rand_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=rand_device, dtype=dtype).to(device)


@torch.no_grad()
def manual_generate(
    pipe,
    prompt: str | list[str],
    negative_prompt: str | list[str] | None = None,
    num_inference_steps: int = 50,
    guidance_scale: float = 7.5,
    generator: torch.Generator | list[torch.Generator] | None = None,
    height: int | None = None,
    width: int | None = None,
    eta: float = 0.0,
    scheduler=None,
    keep_intermediates: bool = False,
) -> ManualResult:
    """Text-to-image with `pipe`'s components and no `pipe.__call__`: the loop a student can read top to bottom.

    The scheduler is a fresh copy of `pipe.scheduler` (schedulers keep state between steps) unless you pass one.
    """
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    batch_size = len(prompts)
    device, dtype = pipe.device, pipe.unet.dtype
    do_cfg = guidance_scale > 1.0  # the pipeline skips the unconditional half when guidance cannot matter

    # 1. text -> embeddings, the negative (or empty) prompt first: the pipeline's batch order is [uncond, cond]
    prompt_embeds = encode_text(pipe, prompts).to(dtype)  # (B, 77, D)
    if do_cfg:
        negatives = [""] * batch_size if negative_prompt is None else negative_prompt
        negatives = [negatives] * batch_size if isinstance(negatives, str) else list(negatives)
        negative_embeds = encode_text(pipe, negatives).to(dtype)  # (B, 77, D)
        prompt_embeds = torch.cat([negative_embeds, prompt_embeds])  # (2B, 77, D)

    # 2. the schedule: which of the 1000 training timesteps we visit, e.g. 981, 961, ..., 1 for 50 PNDM steps
    scheduler = scheduler or type(pipe.scheduler).from_config(pipe.scheduler.config)
    scheduler.set_timesteps(num_inference_steps, device=device)

    # 3. pure noise in latent space, scaled to the scheduler's starting sigma (1 for DDPM-style schedulers)
    height = height or pipe.unet.config.sample_size * pipe.vae_scale_factor
    width = width or pipe.unet.config.sample_size * pipe.vae_scale_factor
    shape = (batch_size, pipe.unet.config.in_channels, height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)
    latents = initial_noise(shape, generator, device, dtype) * scheduler.init_noise_sigma  # (B, 4, H/8, W/8)

    step_params = inspect.signature(scheduler.step).parameters  # DDIM takes eta; samplers with noise take a generator
    step_kwargs = {k: v for k, v in (("eta", eta), ("generator", generator)) if k in step_params}

    result = ManualResult(images=np.empty(0), latents=latents, timesteps=[int(t) for t in scheduler.timesteps])
    # 4. the denoising loop
    for t in scheduler.timesteps:
        latent_model_input = torch.cat([latents] * 2) if do_cfg else latents  # (2B, 4, h, w): one UNet call
        latent_model_input = scheduler.scale_model_input(latent_model_input, t)  # identity for DDPM/DDIM/PNDM
        noise_pred = pipe.unet(latent_model_input, t, encoder_hidden_states=prompt_embeds).sample
        if do_cfg:
            noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
            if keep_intermediates:
                result.noise_preds.append((noise_pred_uncond, noise_pred_text))
            noise_pred = classifier_free_guidance(noise_pred_uncond, noise_pred_text, guidance_scale)
        latents = scheduler.step(noise_pred, t, latents, **step_kwargs).prev_sample  # x_t -> x_{t-1}
        if keep_intermediates:
            result.intermediates.append(latents)

    # 5. latents -> pixels: undo the latent scale, decode, map [-1, 1] -> [0, 1]
    image = pipe.vae.decode(unscale_latents(latents, pipe.vae.config.scaling_factor)).sample  # (B, 3, H, W)
    image = (image / 2 + 0.5).clamp(0, 1)
    result.images = image.cpu().permute(0, 2, 3, 1).float().numpy()  # (B, H, W, 3)
    result.latents = latents
    return result


@torch.no_grad()
def capture_guidance(pipe, prompt: str, guidance_scale: float, **pipe_kwargs) -> list[tuple[torch.Tensor, ...]]:
    """Run `pipe(...)` itself and record, per step, (uncond, text, combined): the UNet's two halves and the noise
    prediction the pipeline handed to `scheduler.step`. Proves what the pipeline's guidance computes."""
    unet_outputs, step_inputs = [], []
    hook = pipe.unet.register_forward_hook(lambda module, args, output: unet_outputs.append(output[0].clone()))
    original_step = pipe.scheduler.step

    def spy_step(model_output, *args, **kwargs):
        step_inputs.append(model_output.clone())
        return original_step(model_output, *args, **kwargs)

    pipe.scheduler.step = spy_step  # an instance attribute shadows the method; removed again below
    try:
        pipe(prompt, guidance_scale=guidance_scale, output_type="latent", **pipe_kwargs)
    finally:
        hook.remove()
        del pipe.scheduler.step
    return [(*doubled.chunk(2), combined) for doubled, combined in zip(unet_outputs, step_inputs)]
