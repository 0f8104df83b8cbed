"""helpers/editing.py against diffusers: each equation of notebook 04 computes what the library does."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMInverseScheduler,
    DDPMScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
)
from PIL import Image

from helpers import editing, inside

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny models: one thread is fastest (conftest.py)


def _gens(n: int, seed: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


def _image(pipe, n: int = 1) -> torch.Tensor:
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    return torch.rand((n, 3, size, size), generator=torch.Generator().manual_seed(7)) * 2 - 1  # (n, 3, H, W)


@pytest.mark.parametrize("strength", [0.2, 0.5, 0.75, 1.0])
def test_img2img_timesteps_are_the_pipelines(tiny_pipe, strength):
    i2i = StableDiffusionImg2ImgPipeline(**tiny_pipe.components)
    i2i.scheduler.set_timesteps(10)
    ref, n = i2i.get_timesteps(10, strength, "cpu")
    ours = editing.img2img_timesteps(i2i.scheduler, strength)
    assert torch.equal(ours, ref) and n == int(10 * strength)  # PNDM (the tiny model) repeats a timestep


def test_img2img_timesteps_refuse_strengths_that_run_nothing(tiny_pipe):
    tiny_pipe.scheduler.set_timesteps(10)
    with pytest.raises(ValueError, match="between 0 and 1"):
        editing.img2img_timesteps(tiny_pipe.scheduler, 1.5)
    with pytest.raises(ValueError, match="no step"):
        editing.img2img_timesteps(tiny_pipe.scheduler, 0.05)


@pytest.mark.parametrize("strength", [0.3, 0.8])
def test_img2img_start_is_prepare_latents(tiny_pipe, strength):
    """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, with the pipeline's timestep and the pipeline's noise draw."""
    i2i = StableDiffusionImg2ImgPipeline(**tiny_pipe.components)
    i2i.scheduler.set_timesteps(10)
    latents = inside.encode_images(tiny_pipe, _image(tiny_pipe, 3))  # (3, C, h, w)
    t = editing.img2img_timesteps(i2i.scheduler, strength)[:1].repeat(3)
    ref = i2i.prepare_latents(latents, t, 3, 1, latents.dtype, "cpu", _gens(3))  # 4 channels: used as latents
    ours = editing.img2img_start(latents, strength, i2i.scheduler, _gens(3))
    assert (ours - ref).abs().max() < 1e-6
    ddpm = DDPMScheduler.from_config(tiny_pipe.scheduler.config)  # add_noise is q_sample (notebook 03)
    noise = torch.cat([torch.randn(latents[:1].shape, generator=g) for g in _gens(3)])
    assert (ours - ddpm.add_noise(latents, noise, t)).abs().max() < 1e-6


def test_hand_written_img2img_is_the_pipeline(tiny_pipe):
    i2i = StableDiffusionImg2ImgPipeline(**tiny_pipe.components)
    i2i.set_progress_bar_config(disable=True)
    x = _image(tiny_pipe)
    for guidance_scale in (1.0, 7.5):
        ref = i2i("a red circle", image=(x + 1) / 2, strength=0.6, num_inference_steps=10, guidance_scale=guidance_scale,
                  generator=_gens(2), num_images_per_prompt=2, output_type="latent").images  # fmt: skip
        ours = editing.img2img(tiny_pipe, x.expand(2, -1, -1, -1), "a red circle", 0.6, 10, guidance_scale, _gens(2))
        assert (ours - ref).abs().max() < 1e-4, guidance_scale


def test_blend_known_is_the_inpaint_pipelines_blend(tiny_pipe):
    """The 4-channel inpaint loop keeps the original, noised to t', outside the mask (a loop written out here)."""
    inp = StableDiffusionInpaintPipeline(**tiny_pipe.components)
    inp.set_progress_bar_config(disable=True)
    size = tiny_pipe.unet.config.sample_size * tiny_pipe.vae_scale_factor
    mask = editing.rectangle_mask(size, (0, 0, size // 2, size))
    image = inside.decode_latents(tiny_pipe, torch.randn(1, 4, size // 8, size // 8))  # any image
    image = (image[0] * 255).round().astype(np.uint8)
    ref = inp("a red circle", image=image, mask_image=mask, num_inference_steps=10, guidance_scale=1.0,
              generator=_gens(1), strength=1.0, output_type="latent").images  # fmt: skip
    gen = _gens(1)[0]
    scheduler = type(tiny_pipe.scheduler).from_config(tiny_pipe.scheduler.config)
    scheduler.set_timesteps(10)
    x = inp.image_processor.preprocess(image)  # (1, 3, H, W) in [-1, 1]
    init_latents = inside.encode_images(tiny_pipe, x, gen)  # the VAE sample draws first ...
    noise = torch.randn(init_latents.shape, generator=gen)  # ... then the noise (used at every blend)
    m = inp.mask_processor.preprocess(mask)  # (1, 1, H, W) in {0, 1}
    m = torch.nn.functional.interpolate(m, size=init_latents.shape[-2:])  # (1, 1, h, w)
    latents = noise * scheduler.init_noise_sigma  # strength 1: pure noise
    cond, _ = tiny_pipe.encode_prompt("a red circle", "cpu", 1, False)
    for i, t in enumerate(scheduler.timesteps):
        eps = tiny_pipe.unet(scheduler.scale_model_input(latents, t), t, encoder_hidden_states=cond).sample
        latents = scheduler.step(eps, t, latents).prev_sample
        t_next = scheduler.timesteps[i + 1] if i + 1 < len(scheduler.timesteps) else None
        latents = editing.blend_known(latents, init_latents, m, noise, t_next, scheduler.alphas_cumprod)
    assert (latents - ref).abs().max() < 1e-4


def test_rectangle_mask_and_pixel_change():
    mask = np.asarray(editing.rectangle_mask(8, (2, 1, 5, 4)))
    assert mask.sum() == 255 * 9 and mask[1, 2] == 255 and mask[4, 2] == 0 and mask[1, 5] == 0
    a = np.zeros((8, 8, 3), np.uint8)
    b = a.copy()
    b[mask > 0] = 30
    assert editing.pixel_change(a, b, mask > 0) == 30 and editing.pixel_change(a, b, mask == 0) == 0
    assert editing.pixel_change(a, b) == pytest.approx(30 * 9 / 64)


def test_ddim_inversion_step_is_ddim_inverse_scheduler(tiny_pipe):
    inverse = DDIMInverseScheduler.from_config(tiny_pipe.scheduler.config)
    inverse.set_timesteps(10)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    eps = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    ddim = editing.ddim_scheduler(tiny_pipe, 10)
    alpha_bar = ddim.final_alpha_cumprod
    for t in inverse.timesteps:  # 1, 101, ..., 901: the DDIM sampling timesteps in reverse
        ref = inverse.step(eps, t, x).prev_sample
        ours = editing.ddim_inversion_step(eps, x, alpha_bar, ddim.alphas_cumprod[int(t)])
        assert (ours - ref).abs().max() < 1e-5, int(t)
        alpha_bar = ddim.alphas_cumprod[int(t)]
    assert torch.equal(inverse.timesteps.flip(0), ddim.timesteps)


def test_ddim_sample_is_the_pipeline_and_inversion_round_trips(tiny_pipe):
    cond, _ = tiny_pipe.encode_prompt("a red circle", "cpu", 2, False)
    x_T = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    ddim_pipe = StableDiffusionPipeline(**{**tiny_pipe.components, "scheduler": editing.ddim_scheduler(tiny_pipe, 10)})
    ddim_pipe.set_progress_bar_config(disable=True)
    ref = ddim_pipe(prompt_embeds=cond, latents=x_T, num_inference_steps=10, guidance_scale=1.0,
                    output_type="latent").images  # fmt: skip
    ours = editing.ddim_sample(tiny_pipe, x_T, cond, 10)
    assert (ours - ref).abs().max() < 1e-5
    # Inverting that image and sampling again comes back close to it (DDIM is nearly invertible at 50 steps).
    again = editing.ddim_sample(tiny_pipe, editing.ddim_invert(tiny_pipe, ours, cond, 50), cond, 50)
    assert (again - ours).abs().mean() < 0.1 * ours.abs().mean()


# -- the 9-channel inpainting UNet (SD-inpainting's recipe) ------------------------------------------------------


def test_inpainting_unet_starts_as_the_text_to_image_unet(tiny_pipe):
    """Zero weights on the 5 new input channels: whatever the mask and masked image, the same noise prediction."""
    from helpers.training import inpainting_unet

    unet9 = inpainting_unet(tiny_pipe.unet)
    assert unet9.config.in_channels == tiny_pipe.unet.config.in_channels + 5 == 9
    g = torch.Generator().manual_seed(0)
    h = tiny_pipe.unet.config.sample_size
    latents, extra = torch.randn(2, 4, h, h, generator=g), torch.randn(2, 5, h, h, generator=g)
    states = torch.randn(2, 77, tiny_pipe.unet.config.cross_attention_dim, generator=g)
    with torch.no_grad():
        ref = tiny_pipe.unet(latents, 10, encoder_hidden_states=states).sample
        ours = unet9(torch.cat([latents, extra], dim=1), 10, encoder_hidden_states=states).sample
    assert torch.allclose(ours, ref, atol=1e-5)


def test_inpainting_masks_hide_the_whole_image_or_the_whole_shape():
    from helpers.shapes_data import EXTENT, make_dataset_v2
    from helpers.training import inpainting_masks

    data = make_dataset_v2(60, seed=3, rotate=False)
    rng = np.random.default_rng(0)
    assert bool((inpainting_masks(data.geometry, rng, p_full=1.0) == 1).all())
    boxes = inpainting_masks(data.geometry, rng, p_full=0.0, p_box=1.0)[:, 0]  # (N, 64, 64)
    ys, xs = np.mgrid[0:64, 0:64] + 0.5
    for mask, g, c in zip(boxes.numpy(), data.geometry, data.combos):
        near = np.hypot(xs - g["cx"], ys - g["cy"]) <= EXTENT[c.shape] * g["r"]  # every pixel of the shape
        assert mask[near].all() and 0 < mask.mean() < 1  # the shape is hidden, some background is not
    cuts = inpainting_masks(data.geometry, rng, p_full=0.0, p_box=0.0)[:, 0]
    sides = cuts.sum(dim=(1, 2)) ** 0.5
    assert bool(((cuts.sum(dim=1) > 0).sum(dim=1) >= 12).all()) and bool((sides <= 57).all())


def test_inpainting_unet_trains_its_new_channels_and_the_pipeline_runs_it(tiny_pipe, tmp_path):
    from helpers.shapes_data import make_dataset_v2
    from helpers.training import encode_latents, inpainting_unet, save_inpainting_unet, train_inpainting_unet

    size = tiny_pipe.unet.config.sample_size * tiny_pipe.vae_scale_factor
    data = make_dataset_v2(8, seed=1, size=size)
    means, stds = encode_latents(tiny_pipe.vae, data.images)
    states = torch.randn(1, 1, 77, tiny_pipe.unet.config.cross_attention_dim)
    unet9 = inpainting_unet(tiny_pipe.unet)
    ema, losses = train_inpainting_unet(
        unet9, tiny_pipe.vae, data.images, data.geometry, means, stds, torch.zeros(8, dtype=torch.long), states,
        states[0, 0], steps=3, batch_size=2, lr=1e-3, progress=False,
    )  # fmt: skip
    assert len(losses) == 3 and all(np.isfinite(losses))
    assert unet9.conv_in.weight[:, 4:].abs().sum() > 0  # the mask and masked-image channels learned something
    save_inpainting_unet(ema, tmp_path)
    assert editing.load_inpainting_unet(tmp_path / "missing") is None
    loaded = editing.load_inpainting_unet(tmp_path)
    assert loaded.dtype == torch.float32
    assert torch.equal(loaded.conv_in.weight, ema.conv_in.weight.half().float())  # half precision on disk
    pipe = editing.inpainting_pipeline(tiny_pipe, loaded)
    assert isinstance(pipe, StableDiffusionInpaintPipeline) and pipe.unet is loaded
    mask = editing.rectangle_mask(size, (0, 0, size // 2, size // 2))
    image = Image.fromarray(data.images[0])
    out = pipe("a red circle", image=image, mask_image=mask, num_inference_steps=2, height=size, width=size,
               generator=torch.Generator().manual_seed(0), output_type="np").images  # fmt: skip
    assert out.shape == (1, size, size, 3) and np.isfinite(out).all()
    with pytest.raises(ValueError, match="9 input channels"):
        editing.inpainting_pipeline(tiny_pipe, tiny_pipe.unet)
