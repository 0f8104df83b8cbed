"""Every equation in helpers.diffusion against diffusers on the same inputs, and the toy DDPM's training/sampling."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, EulerDiscreteScheduler
from diffusers.training_utils import compute_snr

from helpers import diffusion as d
from helpers.offline import SD_V1_4_CONFIGS, sd_scheduler
from helpers.toy_ddpm import (
    load_sample_image,
    make_swiss_roll,
    make_two_moons,
    mean_nearest_distance,
    sample_toy_ddpm,
    train_toy_ddpm,
)

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny models: one thread is fastest (conftest.py)


SCHEDULE_CONFIGS = [
    dict(beta_schedule="linear"),
    dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    dict(beta_schedule="squaredcos_cap_v2"),
]


def _close(a, b, atol=1e-6, rtol=1e-5):
    torch.testing.assert_close(torch.as_tensor(a), torch.as_tensor(b), atol=atol, rtol=rtol)


@pytest.mark.parametrize("config", SCHEDULE_CONFIGS, ids=lambda c: c["beta_schedule"])
def test_betas_and_alphas_cumprod_match_diffusers(config):
    ours = d.make_betas(config["beta_schedule"], 1000, config.get("beta_start"), config.get("beta_end"))
    theirs = DDPMScheduler(num_train_timesteps=1000, **config)
    _close(ours, theirs.betas, atol=1e-8, rtol=1e-6)
    _close(d.alphas_cumprod_from_betas(ours), theirs.alphas_cumprod, atol=1e-7, rtol=1e-5)


def test_cosine_alias_and_unknown_schedule():
    torch.testing.assert_close(d.make_betas("cosine"), d.make_betas("squaredcos_cap_v2"))
    with pytest.raises(ValueError, match="squaredcos_cap_v2"):
        d.make_betas("quadratic")


def test_cosine_alpha_bar_follows_the_cosine_until_the_cap():
    alphas_cumprod = d.alphas_cumprod_from_betas(d.cosine_betas(1000))
    f = torch.tensor([d.cosine_alpha_bar((t + 1) / 1000) / d.cosine_alpha_bar(0.0) for t in range(1000)])
    _close(alphas_cumprod[:990], f[:990], atol=1e-5, rtol=1e-4)  # the last betas are capped at 0.999


def test_stable_diffusion_scheduler_config():
    """SD v1-4's own scheduler config (PNDM, scaled_linear) gives exactly our scaled_linear betas."""
    scheduler = sd_scheduler()
    assert scheduler.config.beta_schedule == "scaled_linear"
    betas = d.make_betas(
        scheduler.config.beta_schedule,
        scheduler.config.num_train_timesteps,
        scheduler.config.beta_start,
        scheduler.config.beta_end,
    )
    _close(betas, scheduler.betas, atol=1e-8, rtol=1e-6)
    _close(d.alphas_cumprod_from_betas(betas), scheduler.alphas_cumprod, atol=1e-7, rtol=1e-5)
    _close(betas.sqrt()[[0, -1]], torch.tensor([0.00085, 0.012]).sqrt())  # the endpoints the config names
    vae_config = json.loads((SD_V1_4_CONFIGS / "vae" / "config.json").read_text())
    assert vae_config["scaling_factor"] == d.LATENT_SCALING_FACTOR


def test_snr_matches_diffusers_compute_snr_and_falls():
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    timesteps = torch.arange(1000)
    ours = d.snr(d.alphas_cumprod_from_betas(scheduler.betas))
    _close(ours, compute_snr(scheduler, timesteps), rtol=1e-4, atol=1e-6)
    assert torch.all(ours[1:] < ours[:-1])  # every forward step destroys signal
    _close(d.log_snr(scheduler.alphas_cumprod), ours.log(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("config", SCHEDULE_CONFIGS, ids=lambda c: c["beta_schedule"])
def test_q_sample_matches_add_noise(config):
    scheduler = DDPMScheduler(**config)
    g = torch.Generator().manual_seed(0)
    x_0 = torch.randn((6, 4, 8, 8), generator=g)
    eps = torch.randn((6, 4, 8, 8), generator=g)
    t = torch.tensor([0, 1, 250, 500, 998, 999])
    _close(d.q_sample(x_0, t, eps, d.alphas_cumprod_from_betas(scheduler.betas)), scheduler.add_noise(x_0, eps, t))
    _close(d.q_sample(x_0[:1], 500, eps[:1], scheduler.alphas_cumprod), scheduler.add_noise(x_0[:1], eps[:1], t[3:4]))


def test_stepwise_noising_equals_closed_form():
    betas = d.make_betas("scaled_linear").double()  # float64: 1000 float32 products drift by ~1e-5
    alphas_cumprod = d.alphas_cumprod_from_betas(betas)
    for t in (0, 10, 400, 999):
        coef, std = d.stepwise_mean_std(betas, t)
        assert coef == pytest.approx(alphas_cumprod[t].sqrt().item(), rel=1e-5)
        assert std == pytest.approx((1 - alphas_cumprod[t]).sqrt().item(), rel=1e-5)
    # Monte Carlo: 20,000 copies of the number 1.0 noised step by step have the closed form's mean and std
    x_0 = torch.ones(20_000, dtype=torch.float64)
    x_t = d.q_sample_stepwise(x_0, 200, betas, generator=torch.Generator().manual_seed(0))
    assert x_t.mean().item() == pytest.approx(alphas_cumprod[200].sqrt().item(), abs=0.02)
    assert x_t.std().item() == pytest.approx((1 - alphas_cumprod[200]).sqrt().item(), abs=0.02)
    # one q_step is q_sample with a one-step schedule
    x, eps = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    _close(d.q_step(x, 7, eps, betas), d.q_sample(x, 0, eps, alphas_cumprod=1 - betas[7:8]))


def test_eps_loss_and_training_loss():
    eps, eps_pred = torch.randn(4, 2), torch.randn(4, 2)
    _close(d.eps_loss(eps_pred, eps), torch.nn.functional.mse_loss(eps_pred, eps))
    alphas_cumprod = d.alphas_cumprod_from_betas(d.make_betas("linear"))
    x_0 = torch.randn(64, 2)

    def oracle(x_t, t):  # knows x_0, so it can recover the noise exactly: the loss is ~0
        ab = alphas_cumprod[t][:, None]
        return (x_t - ab.sqrt() * x_0) / (1 - ab).sqrt()

    assert d.training_loss(oracle, x_0, alphas_cumprod, torch.Generator().manual_seed(0)).item() < 1e-8
    zero = lambda x_t, t: torch.zeros_like(x_t)  # predicting no noise costs E[eps^2] = 1
    assert d.training_loss(zero, x_0, alphas_cumprod, torch.Generator().manual_seed(0)).item() == pytest.approx(
        1.0, abs=0.25
    )


@pytest.mark.parametrize("num_inference_steps", [None, 50])
def test_posterior_and_ddpm_step_match_ddpm_scheduler(num_inference_steps):
    """DDPMScheduler.step = predict x_0, posterior mean, + sqrt(posterior variance) * the generator's noise."""
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False)
    sample_scheduler = DDPMScheduler.from_config(scheduler.config, prediction_type="sample")
    if num_inference_steps:
        scheduler.set_timesteps(num_inference_steps)
        sample_scheduler.set_timesteps(num_inference_steps)
    stride = 1000 // (num_inference_steps or 1000)
    alphas_cumprod = d.alphas_cumprod_from_betas(d.make_betas("scaled_linear"))
    g = torch.Generator().manual_seed(1)
    x_t, eps, x_0 = (torch.randn((2, 4, 8, 8), generator=g) for _ in range(3))
    for t in (980, 500, 20, 0) if num_inference_steps else (999, 500, 21, 1, 0):  # t must be on the schedule
        prev_t = t - stride
        mean, variance = d.posterior_mean_variance(x_0, x_t, t, alphas_cumprod, prev_t)
        if t > 0:
            _close(variance, scheduler._get_variance(t), rtol=1e-5, atol=1e-10)
        noise = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(t))
        expected = mean + (variance.sqrt() * noise if t > 0 else 0)
        got = sample_scheduler.step(x_0, t, x_t, generator=torch.Generator().manual_seed(t)).prev_sample
        _close(expected, got, atol=1e-5, rtol=1e-4)  # the posterior itself (the model predicts x_0)

        ours = d.ddpm_step(eps, t, x_t, alphas_cumprod, noise=noise, prev_t=prev_t)
        theirs = scheduler.step(eps, t, x_t, generator=torch.Generator().manual_seed(t)).prev_sample
        _close(ours, theirs, atol=1e-5, rtol=1e-4)


def test_ddpm_step_clip_sample():
    scheduler = DDPMScheduler()  # diffusers' default: linear betas, clip_sample=True
    alphas_cumprod = d.alphas_cumprod_from_betas(d.make_betas("linear"))
    x_t, eps = torch.randn(3, 2) * 3, torch.randn(3, 2)
    noise = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(5))
    ours = d.ddpm_step(eps, 300, x_t, alphas_cumprod, noise=noise, clip_sample=1.0)
    theirs = scheduler.step(eps, 300, x_t, generator=torch.Generator().manual_seed(5)).prev_sample
    _close(ours, theirs, atol=1e-5, rtol=1e-4)


def test_ddim_trajectory_matches_ddim_scheduler():
    """A whole 20-step DDIM run with eta = 0 on SD's config, fed the same 'model' outputs, lands on the same x_0."""
    scheduler = DDIMScheduler.from_config(sd_scheduler().config)
    scheduler.set_timesteps(20)
    alphas_cumprod = d.alphas_cumprod_from_betas(d.make_betas("scaled_linear"))
    final = alphas_cumprod[0].item() if not scheduler.config.set_alpha_to_one else 1.0
    stride = 1000 // 20
    g = torch.Generator().manual_seed(2)
    ours = theirs = torch.randn((1, 4, 8, 8), generator=g)
    for t in scheduler.timesteps:
        eps = 0.3 * ours + 0.1 * torch.randn(ours.shape, generator=g)  # any function of x_t plays the model
        theirs = scheduler.step(eps, t, theirs, eta=0.0).prev_sample
        ours = d.ddim_step(eps, int(t), ours, alphas_cumprod, int(t) - stride, eta=0.0, final_alpha_cumprod=final)
        _close(ours, theirs, atol=1e-5, rtol=1e-4)


def _model(x_t: torch.Tensor, t) -> torch.Tensor:
    """Plays the UNet: any fixed function of the (variance-preserving) x_t and t."""
    return 0.3 * x_t + 0.05 * torch.sin(x_t * float(t) / 100)


def test_euler_step_and_sigmas_match_euler_discrete_scheduler():
    scheduler = EulerDiscreteScheduler.from_config(sd_scheduler().config)  # Euler's own "linspace" timesteps
    scheduler.set_timesteps(20)
    alphas_cumprod = d.alphas_cumprod_from_betas(d.make_betas("scaled_linear"))
    leading = EulerDiscreteScheduler.from_config(sd_scheduler().config, timestep_spacing="leading")
    leading.set_timesteps(20)  # training timesteps (951, 901, ... 1): no interpolation between them
    _close(d.sigma_from_alpha_bar(alphas_cumprod[leading.timesteps.long()]), leading.sigmas[:-1], rtol=1e-5)
    g = torch.Generator().manual_seed(4)
    ours = theirs = torch.randn((1, 4, 8, 8), generator=g) * scheduler.init_noise_sigma
    for i, t in enumerate(scheduler.timesteps):
        eps = _model(scheduler.scale_model_input(theirs, t), t)
        theirs = scheduler.step(eps, t, theirs).prev_sample
        ours = d.euler_step(eps, scheduler.sigmas[i], scheduler.sigmas[i + 1], ours)
        _close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_ddim_is_euler_until_its_last_step():
    """DDIM (eta 0) and Euler, same timesteps and 'model': the same run, but for where SD's config ends DDIM."""
    config = sd_scheduler().config
    # the same timesteps for both: "leading", as the toy family's saved config says for every sampler (SD's config
    # leaves the spacing to each scheduler's default, and Euler's is "linspace")
    euler = EulerDiscreteScheduler.from_config(config, timestep_spacing="leading")
    ddim = {
        one: DDIMScheduler.from_config(config, set_alpha_to_one=one, timestep_spacing="leading")
        for one in (True, False)
    }
    for scheduler in (euler, *ddim.values()):
        scheduler.set_timesteps(20)
    assert euler.timesteps.long().tolist() == ddim[True].timesteps.tolist() == ddim[False].timesteps.tolist()
    noise = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(3))
    x_euler, x_ddim = noise * euler.init_noise_sigma, {one: noise.clone() for one in ddim}
    for t in euler.timesteps:
        x_euler = euler.step(_model(euler.scale_model_input(x_euler, t), t), t, x_euler).prev_sample
        last_eps = _model(x_ddim[False], t)
        for one, scheduler in ddim.items():
            x_ddim[one] = scheduler.step(_model(x_ddim[one], t), int(t), x_ddim[one]).prev_sample
    _close(x_ddim[True], x_euler, atol=1e-4, rtol=1e-4)  # set_alpha_to_one=True: Euler's method exactly
    # SD's config (set_alpha_to_one=False) stops at alphas_cumprod[0]: Euler's x_0, re-noised by the last eps guess
    a0 = ddim[False].alphas_cumprod[0]
    assert not config.set_alpha_to_one
    _close(x_ddim[False], a0**0.5 * x_euler + (1 - a0) ** 0.5 * last_eps, atol=1e-4, rtol=1e-4)
    assert (x_ddim[False] - x_euler).abs().max() > 0.01


def test_ddim_step_with_eta():
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False)
    scheduler.set_timesteps(10)
    alphas_cumprod = d.alphas_cumprod_from_betas(d.make_betas("scaled_linear"))
    x_t, eps, noise = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4)
    for eta in (0.5, 1.0):
        theirs = scheduler.step(eps, 501, x_t, eta=eta, variance_noise=noise).prev_sample
        ours = d.ddim_step(eps, 501, x_t, alphas_cumprod, 401, eta=eta, noise=noise)
        _close(ours, theirs, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="noise"):
        d.ddim_step(eps, 501, x_t, alphas_cumprod, 401, eta=1.0)


def test_cfg_combination_and_latent_scale():
    uncond, text = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    torch.testing.assert_close(d.classifier_free_guidance(uncond, text, 1.0), text)
    torch.testing.assert_close(d.classifier_free_guidance(uncond, text, 0.0), uncond)
    torch.testing.assert_close(d.classifier_free_guidance(uncond, text, 7.5), uncond + 7.5 * (text - uncond))
    z = torch.randn(1, 4, 8, 8)
    torch.testing.assert_close(d.unscale_latents(d.scale_latents(z)), z)
    assert d.values_per_image(512, 512, 3) // d.values_per_image(64, 64, 4) == 48


def test_toy_data_shapes():
    for make in (make_swiss_roll, make_two_moons):
        x = make(500, seed=3)
        assert x.shape == (500, 2) and x.dtype == torch.float32
        assert x.abs().max() < 1.6 and torch.equal(x, make(500, seed=3))


def test_toy_ddpm_short_training_loss_falls_and_sampling_matches_diffusers():
    data = make_swiss_roll(2000)
    toy = train_toy_ddpm(data, steps=400, num_train_timesteps=100, seed=0)
    first, last = sum(toy.losses[:50]) / 50, sum(toy.losses[-50:]) / 50
    assert last < 0.75 * first, (first, last)
    # our sampler (ddpm_step) and diffusers' DDPMScheduler, same model and generator: the same points
    ours, recorded = sample_toy_ddpm(toy, n=300, seed=4, record_at=(99, 50))
    assert set(recorded) == {99, 50, -1}
    scheduler = DDPMScheduler(num_train_timesteps=100, beta_schedule="linear", clip_sample=False)
    g = torch.Generator().manual_seed(4)
    x = torch.randn((300, 2), generator=g)
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(toy.model(x, t), t, x, generator=g).prev_sample
    _close(ours, x, atol=1e-4, rtol=1e-4)
    # even 400 steps pull the samples much closer to the data than the starting noise
    noise = torch.randn((300, 2), generator=torch.Generator().manual_seed(4))
    assert mean_nearest_distance(ours, data) < 0.6 * mean_nearest_distance(noise, data)


def test_unet_flops_latent_vs_pixel_space():
    """SD's real UNet, counted on the meta device: one guided step at 64x64 latents vs the same UNet on 512x512."""
    unet = d.sd_unet_on_meta()
    assert sum(p.numel() for p in unet.parameters()) > 800e6
    latent, pixel = d.unet_flops(unet, 64, 64), d.unet_flops(unet, 512, 512)
    assert 1e12 < latent < 3e12  # ~1.6 TFLOP per step with guidance (batch 2)
    assert pixel / latent > 64  # more than the 8x8 = 64x more positions: attention grows with their square


def test_sample_image():
    image = load_sample_image(64)
    assert image.shape == (3, 64, 64) and image.min() >= -1 and image.max() <= 1 and image.std() > 0.1


def test_min_snr_weights_match_diffusers_recipe():
    """training.min_snr_weights is diffusers' train_text_to_image.py --snr_gamma weighting for epsilon."""
    from helpers.training import min_snr_weights, noise_scheduler

    scheduler = noise_scheduler()
    timesteps = torch.arange(0, 1000, 37)
    snr = compute_snr(scheduler, timesteps)
    expected = torch.stack([snr, 5.0 * torch.ones_like(timesteps)], dim=1).min(dim=1)[0] / snr
    _close(min_snr_weights(scheduler, timesteps, 5.0), expected, rtol=1e-5, atol=1e-7)
    weights = min_snr_weights(scheduler, timesteps, 5.0)
    assert weights.max() <= 1.0 + 1e-6 and weights[0] < 0.01  # nearly clean steps are damped
    assert torch.allclose(weights[snr <= 5.0], torch.ones(int((snr <= 5.0).sum())))  # noisy steps keep weight 1


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_training_target_is_what_ddim_reads(prediction_type):
    """training.training_target (epsilon, or $v_t = \\sqrt{\\bar\\alpha_t}\\epsilon - \\sqrt{1-\\bar\\alpha_t} z_0$) is
    what diffusers' DDIM, set to the same prediction_type, turns back into $z_0$ and $\\epsilon$; and it matches
    the training scheduler's own `get_velocity`."""
    from helpers.training import default_scheduler, min_snr_weights, noise_scheduler, training_target

    train = noise_scheduler(prediction_type)
    gen = torch.Generator().manual_seed(0)
    z0, eps = torch.randn(3, 4, 8, 8, generator=gen), torch.randn(3, 4, 8, 8, generator=gen)
    ddim = default_scheduler(prediction_type)
    ddim.set_timesteps(10)
    for t in ddim.timesteps[[0, 4, 9]]:
        ts = torch.full((3,), int(t))
        zt = train.add_noise(z0, eps, ts)
        target = training_target(train, z0, eps, ts)
        out = ddim.step(target, t, zt)
        _close(out.pred_original_sample, z0, rtol=1e-4, atol=1e-4)
    if prediction_type == "v_prediction":
        _close(target, train.get_velocity(z0, eps, ts), rtol=1e-5, atol=1e-6)
        # Min-SNR for a v objective, as diffusers' train_text_to_image.py weights it: min(SNR, 5) / (SNR + 1)
        timesteps = torch.arange(0, 1000, 37)
        snr = compute_snr(train, timesteps)
        expected = torch.minimum(snr, torch.full_like(snr, 5.0)) / (snr + 1)
        _close(min_snr_weights(train, timesteps, 5.0), expected, rtol=1e-5, atol=1e-7)
    else:
        assert torch.equal(target, eps)


@pytest.mark.parametrize(
    "bad",
    [{"prediction_type": "sample"}, {"agreement_weight": -1.0}, {"agreement_t_max": 0}, {"agreement_t_max": 2000}],
)
def test_train_unet_refuses_bad_settings_before_any_work(bad):
    from helpers.training import train_unet

    with pytest.raises(ValueError, match="use 'epsilon'|must be >= 0"):
        train_unet(None, None, None, 1.0, None, None, None, **bad)  # no model, no data: it must stop first


def test_unknown_prediction_type_is_refused():
    from helpers.training import training_target

    class Config:
        prediction_type = "sample"

    class Scheduler:
        config = Config()

    with pytest.raises(ValueError, match="epsilon' or 'v_prediction"):
        training_target(Scheduler(), torch.zeros(1), torch.zeros(1), torch.zeros(1, dtype=torch.long))
