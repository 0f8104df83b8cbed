"""helpers/inside.py against diffusers and transformers: every equation of notebook 02 computes what the library does."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler
from diffusers.models.attention_processor import AttnProcessor

from helpers import inside
from helpers.diffusion import predict_x0

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny models: one thread is fastest (conftest.py)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_tokenize_pads_to_77_and_says_what_truncation_cuts(tiny_pipe):
    tok = inside.tokenize(tiny_pipe.tokenizer, "a red circle")
    ref = tiny_pipe.tokenizer("a red circle", padding="max_length", max_length=77, truncation=True)
    assert tok.input_ids == ref.input_ids and tok.attention_mask == ref.attention_mask and len(tok.input_ids) == 77
    assert tok.pieces == ["a</w>", "red</w>", "circle</w>"] and tok.n_tokens == 5 and tok.kept == 3 and tok.cut == ""
    text = " ".join(["red", "circle", "blue", "square"] * 25) + " green"  # 101 words, one token each
    long = inside.tokenize(tiny_pipe.tokenizer, text)
    full = tiny_pipe.tokenizer(text).input_ids
    assert long.n_tokens == 103 and long.kept == 75 and long.input_ids[1:-1] == full[1:76]
    assert long.input_ids[-1] == tiny_pipe.tokenizer.eos_token_id and long.cut.endswith("square green")
    assert tiny_pipe.tokenizer(long.cut, add_special_tokens=False).input_ids == full[76:-1]


def test_text_embeddings_are_the_pipelines(tiny_pipe):
    with torch.no_grad():
        cond = tiny_pipe.text_encoder(torch.tensor([inside.tokenize(tiny_pipe.tokenizer, "a cat").input_ids]))[0]
        uncond = tiny_pipe.text_encoder(torch.tensor([inside.tokenize(tiny_pipe.tokenizer, "").input_ids]))[0]
    ref_cond, ref_uncond = tiny_pipe.encode_prompt("a cat", "cpu", 1, True)
    assert torch.equal(cond, ref_cond) and torch.equal(uncond, ref_uncond)
    assert torch.equal(cond[0, 0], uncond[0, 0])  # causal mask: position 0 (<start>) never sees the prompt


def test_encode_and_decode_are_the_vaes_with_the_scaling_factor(tiny_pipe):
    x = torch.rand(2, 3, 64, 64, generator=_gen(0)) * 2 - 1
    s = tiny_pipe.vae.config.scaling_factor
    z = inside.encode_images(tiny_pipe, x)
    with torch.no_grad():
        dist = tiny_pipe.vae.encode(x).latent_dist
        torch.testing.assert_close(z, dist.mean * s)
        torch.testing.assert_close(inside.encode_images(tiny_pipe, x, generator=_gen(1)), dist.sample(_gen(1)) * s)
        ref = tiny_pipe.vae.decode(z / s).sample
    ref = tiny_pipe.image_processor.postprocess(ref, output_type="np")  # the pipeline's own decode-to-[0, 1]
    np.testing.assert_allclose(inside.decode_latents(tiny_pipe, z), ref, atol=1e-6)
    np.testing.assert_allclose(inside.decode_latents(tiny_pipe, z, chunk=1), ref, atol=1e-4)  # batch-size rounding
    f, C = tiny_pipe.vae_scale_factor, tiny_pipe.vae.config.latent_channels
    assert z.shape == (2, C, 64 // f, 64 // f)


def test_to_model_range_maps_uint8_to_minus_one_one():
    arr = np.array([[[[0, 255, 51]]]], dtype=np.uint8)  # (1, 1, 1, 3)
    torch.testing.assert_close(inside.to_model_range(arr)[:, :, 0, 0], torch.tensor([[-1.0, 1.0, -0.6]]))


def test_scaling_factor_is_one_over_std_like_the_training_code():
    from helpers.training import latent_scaling_factor

    means = torch.randn(512, 4, 8, 8, generator=_gen(0)) * 3.0
    stds = torch.full_like(means, 0.5)
    samples = means + stds * torch.randn(means.shape, generator=_gen(1))  # posterior samples
    ours = inside.scaling_factor_from_latents(samples)
    assert abs(ours - latent_scaling_factor(means, stds)) / ours < 0.01
    assert abs((samples * ours).std().item() - 1) < 1e-5  # scaled latents have unit spread


@pytest.mark.parametrize("t", [999, 500, 21, 1])
def test_predicted_x0_is_the_schedulers_pred_original_sample(tiny_pipe, t):
    """x̂0 = (x_t - sqrt(1 - ᾱ_t) ε̂) / sqrt(ᾱ_t), as notebook 02 writes it, is what DDIM and DDPM compute."""
    x_t, eps = torch.randn(2, 4, 8, 8, generator=_gen(t)), torch.randn(2, 4, 8, 8, generator=_gen(t + 1))
    ddim = DDIMScheduler.from_config(tiny_pipe.scheduler.config)
    ddim.set_timesteps(50)
    ours = predict_x0(x_t, eps, ddim.alphas_cumprod[t])
    torch.testing.assert_close(ours, ddim.step(eps, t, x_t).pred_original_sample)
    ddpm = DDPMScheduler.from_config(tiny_pipe.scheduler.config, clip_sample=False)
    torch.testing.assert_close(ours, ddpm.step(eps, t, x_t, generator=_gen(0)).pred_original_sample)


def test_recorded_cross_attention_is_probabilities_and_changes_nothing(fresh_tiny_pipe):
    pipe = fresh_tiny_pipe
    kw = dict(num_inference_steps=3, guidance_scale=7.5, output_type="latent")
    before = dict(pipe.unet.attn_processors)
    default = pipe("a red circle", generator=_gen(0), **kw).images
    with inside.record_cross_attention(pipe) as store:
        recorded = pipe("a red circle", generator=_gen(0), **kw).images
    with inside.plain_cross_attention(pipe):
        plain = pipe("a red circle", generator=_gen(0), **kw).images
    assert torch.equal(recorded, plain)  # the recorder computes AttnProcessor's attention, op for op
    assert (recorded - default).abs().max() < 1e-4  # the default fused kernel rounds differently
    assert pipe.unet.attn_processors == before  # processors restored
    layers = inside.cross_attention_layers(pipe.unet)
    assert layers and set(store.sums) == set(layers) and store.max_row_error < 1e-5
    assert set(store.calls.values()) == {len(pipe.scheduler.timesteps)}  # one call per UNet call
    h = pipe.unet.config.sample_size
    maps = store.token_maps((h, h))  # (1, 77, h, h): the prompt's half only (guidance batch is [uncond, cond])
    assert maps.shape == (1, 77, h, h)
    torch.testing.assert_close(maps.sum(1), torch.ones(1, h, h))  # still probabilities after averaging


def test_recorder_equals_attnprocessor_on_one_layer(tiny_pipe):
    """One cross-attention call: the recorder's softmax(QK^T/sqrt(d)) V equals diffusers' AttnProcessor."""
    name = inside.cross_attention_layers(tiny_pipe.unet)[0]
    attn = tiny_pipe.unet.get_submodule(name.removesuffix(".processor"))
    hidden = torch.randn(2, 16, attn.query_dim, generator=_gen(0))
    text = torch.randn(2, 77, attn.cross_attention_dim, generator=_gen(1))
    store = inside.AttentionStore(guidance=False)
    with torch.no_grad():
        ours = inside.CrossAttentionRecorder(name, store)(attn, hidden, text)
        ref = AttnProcessor()(attn, hidden, text)
        q = attn.head_to_batch_dim(attn.to_q(hidden))
        k = attn.head_to_batch_dim(attn.to_k(text))
        by_hand = torch.softmax(q @ k.transpose(1, 2) / q.shape[-1] ** 0.5, dim=-1)  # (B*heads, 16, 77)
    assert torch.equal(ours, ref)
    torch.testing.assert_close(store.sums[name], by_hand.reshape(2, attn.heads, 16, 77).mean(1))


def test_token_index_finds_the_words_first_token(tiny_pipe):
    prompt = "a red circle on a blue background"
    assert inside.token_index(tiny_pipe.tokenizer, prompt, "red") == 2  # 0 is <start>
    assert inside.token_index(tiny_pipe.tokenizer, prompt, "background") == 7
    with pytest.raises(ValueError, match="not in the prompt"):
        inside.token_index(tiny_pipe.tokenizer, prompt, "square")
    assert inside.to_unit(torch.tensor([[2.0, 4.0]])).tolist() == [[0.0, 1.0]]
