"""The hand-written denoising loop reproduces StableDiffusionPipeline on the same seed, scheduler by scheduler."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, EulerDiscreteScheduler

from helpers.diffusion import classifier_free_guidance
from helpers.manual_loop import capture_guidance, encode_text, initial_noise, manual_generate

TOL = 1e-4


pytestmark = pytest.mark.usefixtures("single_thread")  # tiny models: one thread is fastest (conftest.py)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_manual_loop_matches_pipeline_default_scheduler(tiny_pipe):
    kw = dict(num_inference_steps=8, guidance_scale=7.5)
    ref = tiny_pipe("a red circle on a blue background", generator=_gen(0), output_type="np", **kw).images
    ref_latents = tiny_pipe("a red circle on a blue background", generator=_gen(0), output_type="latent", **kw).images
    out = manual_generate(tiny_pipe, "a red circle on a blue background", generator=_gen(0), **kw)
    assert out.images.shape == ref.shape == (1, 64, 64, 3)
    assert np.abs(out.images - ref).max() < TOL
    assert (out.latents - ref_latents).abs().max().item() < TOL
    scheduler = type(tiny_pipe.scheduler).from_config(tiny_pipe.scheduler.config)
    scheduler.set_timesteps(8)
    assert out.timesteps == scheduler.timesteps.tolist()  # PNDM visits 9 timesteps for 8 steps (one twice)
    other = manual_generate(tiny_pipe, "a red circle on a blue background", generator=_gen(1), **kw)
    assert np.abs(other.images - ref).max() > 1e-3  # the seed matters: the match above is not a coincidence


@pytest.mark.parametrize(
    "scheduler_cls, eta",
    [(DDIMScheduler, 0.0), (DDIMScheduler, 1.0), (DDPMScheduler, 0.0), (EulerDiscreteScheduler, 0.0)],
)
def test_manual_loop_matches_pipeline_other_schedulers(fresh_tiny_pipe, scheduler_cls, eta):
    pipe = fresh_tiny_pipe
    pipe.scheduler = scheduler_cls.from_config(pipe.scheduler.config)
    prompts, negatives = ["a red circle", "a green square"], ["blurry", "a blue triangle"]
    kw = dict(negative_prompt=negatives, num_inference_steps=6, guidance_scale=4.0, eta=eta)
    ref = pipe(prompts, generator=[_gen(3), _gen(4)], output_type="np", **kw).images
    out = manual_generate(pipe, prompts, generator=[_gen(3), _gen(4)], **kw)
    assert np.abs(out.images - ref).max() < TOL


def test_manual_loop_without_guidance(tiny_pipe):
    """guidance_scale <= 1: the pipeline (and our loop) runs the UNet on the prompt only."""
    ref = tiny_pipe("x", num_inference_steps=4, guidance_scale=1.0, generator=_gen(5), output_type="np").images
    out = manual_generate(tiny_pipe, "x", num_inference_steps=4, guidance_scale=1.0, generator=_gen(5))
    assert np.abs(out.images - ref).max() < TOL


def test_pipeline_guidance_is_uncond_plus_scale_times_difference(fresh_tiny_pipe):
    """Spy on the pipeline: what it hands to scheduler.step is our CFG combination of the UNet's two halves."""
    steps = capture_guidance(fresh_tiny_pipe, "a yellow star", 6.0, num_inference_steps=3, generator=_gen(0))
    assert len(steps) >= 3  # PNDM makes one extra UNet call
    for uncond, text, combined in steps:  # the pipeline's batch order: [negative/empty prompt, prompt]
        assert (classifier_free_guidance(uncond, text, 6.0) - combined).abs().max().item() < 1e-6
        assert (text - uncond).abs().max().item() > 1e-4  # the two halves differ, so the check has teeth
    assert "step" not in vars(fresh_tiny_pipe.scheduler)  # the spy is gone


def test_guidance_scale_changes_the_image_and_is_recorded(tiny_pipe):
    low = manual_generate(tiny_pipe, "a red circle", num_inference_steps=4, guidance_scale=1.5, generator=_gen(0))
    high = manual_generate(
        tiny_pipe, "a red circle", num_inference_steps=4, guidance_scale=9.0, generator=_gen(0), keep_intermediates=True
    )
    assert np.abs(low.images - high.images).max() > 1e-3
    assert len(high.intermediates) == len(high.noise_preds) == len(high.timesteps)


def test_encode_text_and_initial_noise_shapes(tiny_pipe):
    embeds = encode_text(tiny_pipe, ["a", "a much longer prompt " * 30])  # the long one is truncated to 77 tokens
    assert embeds.shape == (2, tiny_pipe.tokenizer.model_max_length, tiny_pipe.text_encoder.config.hidden_size)
    one = initial_noise((2, 4, 8, 8), [_gen(7), _gen(8)], "cpu", torch.float32)
    torch.testing.assert_close(one[1:], torch.randn((1, 4, 8, 8), generator=_gen(8)))  # image i uses only seed i
