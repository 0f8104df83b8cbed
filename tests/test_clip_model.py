"""Our Flax CLIP (helpers/clip_model.py) equals transformers' torch CLIPModel on the same model.safetensors.

Checked on the trained toy CLIP (models/toy-clip) and on the real ViT-B/32 architecture with random weights
(built from configs/clip-vit-base-patch32, saved, loaded by both): image embeddings, text embeddings and
logits_per_image within 1e-5 relative in float32; the params tree matches the module's own init; the EOS
pooling follows transformers 5's rule for both kinds of config; float16/bfloat16 stay close to float32.
"""

from __future__ import annotations

import dataclasses
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import CLIPConfig, CLIPModel

import helpers  # noqa: F401  (quiet library logs)
from helpers import clip_loading
from helpers import clip_model as cm
from helpers import clip_ranking as cr
from helpers.paths import CONFIGS_DIR, MODELS_DIR

TOY_CLIP = MODELS_DIR / "toy-clip"
PROMPTS = ["a red circle on a blue background", "a yellow square", "triangle"]  # different lengths: padding
RTOL = 1e-5


def rel_diff(a, b) -> float:
    """max |a - b| relative to the largest |b|."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def torch_features(out) -> np.ndarray:
    return getattr(out, "pooler_output", out).detach().float().numpy()  # transformers 5: an output object


def compare(folder, n_images: int = 4) -> dict[str, float]:
    """Load `folder` with both backends, feed both the processor's inputs; relative diffs per output."""
    processor = cr.load_processor(folder)
    module, params, config = cm.load_flax_clip(folder)
    model = CLIPModel.from_pretrained(folder).eval()
    images = [cr.to_rgb(im) for im in cr.example_inputs(n_images)]
    text = processor.tokenizer(PROMPTS, padding="max_length", max_length=77, return_tensors="np")
    pixels = processor.image_processor(images=images, return_tensors="np")["pixel_values"].astype(np.float32)
    ids, mask = text["input_ids"].astype(np.int32), text["attention_mask"].astype(np.int32)
    assert pixels.shape == (n_images, 3, config.vision_config.image_size, config.vision_config.image_size)
    with torch.inference_mode():
        t_ids, t_mask, t_pix = torch.from_numpy(ids).long(), torch.from_numpy(mask).long(), torch.from_numpy(pixels)
        want = {
            "image": torch_features(model.get_image_features(pixel_values=t_pix)),
            "text": torch_features(model.get_text_features(input_ids=t_ids, attention_mask=t_mask)),
            "logits": model(input_ids=t_ids, pixel_values=t_pix, attention_mask=t_mask).logits_per_image.numpy(),
        }
    got = {
        "image": jax.jit(lambda p, x: cm.get_image_features(module, p, x))(params, pixels),
        "text": jax.jit(lambda p, i, m: cm.get_text_features(module, p, i, m))(params, ids, mask),
        "logits": jax.jit(lambda p, i, x, m: cm.logits_per_image(module, p, i, x, m))(params, ids, pixels, mask),
    }
    assert got["logits"].shape == (n_images, len(PROMPTS)) and got["logits"].dtype == jnp.float32
    return {k: rel_diff(got[k], want[k]) for k in want}


@pytest.fixture(scope="module")
def vit_b32_dir(tmp_path_factory):
    """The real ViT-B/32 CLIP (151M parameters) with seeded random weights, saved like a Hub checkpoint."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("vit-b32")
    CLIPModel(CLIPConfig.from_pretrained(CONFIGS_DIR / "clip-vit-base-patch32")).eval().save_pretrained(folder)
    clip_loading.processor_for(configs_dir=CONFIGS_DIR / "clip-vit-base-patch32").save_pretrained(folder)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)  # 605 MB: gone once this module is done


def test_toy_clip_flax_equals_torch():
    diffs = compare(TOY_CLIP)
    print("toy CLIP, max relative diff:", diffs)
    assert max(diffs.values()) < RTOL, diffs


def test_vit_b32_flax_equals_torch(vit_b32_dir):
    diffs = compare(vit_b32_dir, n_images=3)
    print("ViT-B/32 (random weights), max relative diff:", diffs)
    assert max(diffs.values()) < RTOL, diffs


def test_params_tree_is_the_modules_own(vit_b32_dir):
    """Every parameter the module declares comes from the checkpoint, in the module's shape (and nothing else)."""
    for folder in (TOY_CLIP, vit_b32_dir):
        module, params, config = cm.load_flax_clip(folder)
        S = config.vision_config.image_size
        init = jax.eval_shape(
            module.init, jax.random.PRNGKey(0), jnp.zeros((1, 77), jnp.int32), jnp.zeros((1, 3, S, S))
        )
        want = jax.tree_util.tree_map(lambda x: (x.shape, x.dtype), init["params"])
        assert jax.tree_util.tree_map(lambda x: (x.shape, x.dtype), params) == want


def test_hf_names_become_flax_names():
    state = {
        "text_model.encoder.layers.11.self_attn.q_proj.weight": np.arange(6.0).reshape(2, 3),  # Linear (out, in)
        "text_model.encoder.layers.11.self_attn.q_proj.bias": np.zeros(2),
        "vision_model.embeddings.patch_embedding.weight": np.zeros((8, 3, 4, 5)),  # Conv2d (D, 3, kh, kw)
        "vision_model.embeddings.position_ids": np.arange(4),  # a buffer, not a weight
        "vision_model.pre_layrnorm.weight": np.ones(8),
        "text_model.embeddings.token_embedding.weight": np.zeros((10, 8)),
        "logit_scale": np.array(2.6592),
    }
    p = cm.params_from_hf(state)
    q = p["text_model"]["encoder"]["layers_11"]["self_attn"]["q_proj"]
    assert np.array_equal(q["kernel"], np.arange(6.0).reshape(2, 3).T) and q["bias"].shape == (2,)
    assert p["vision_model"]["embeddings"]["patch_embedding"]["kernel"].shape == (4, 5, 3, 8)
    assert "position_ids" not in p["vision_model"]["embeddings"]
    assert p["vision_model"]["pre_layrnorm"]["scale"].shape == (8,)
    assert p["text_model"]["embeddings"]["token_embedding"]["embedding"].shape == (10, 8)
    assert p["logit_scale"].shape == ()


@pytest.mark.parametrize("eos_token_id", [2, 320])
def test_text_pooling_follows_transformers_eos_rule(eos_token_id):
    """eos_token_id == 2 (old configs): the state at argmax(input_ids); otherwise at the first eos_token_id.

    The ids below tell the two rules apart: token 320 comes first, the largest id (49407) later.
    """
    torch_model = cr.build_random_mini_clip(seed=1)
    torch_model.config.text_config.eos_token_id = eos_token_id
    torch_model.text_model.eos_token_id = eos_token_id
    module = cm.CLIP(cm.ClipConfig.from_dict(torch_model.config.to_dict()))
    assert module.config.text_config.eos_token_id == eos_token_id
    params = cm.params_from_hf({k: v.numpy() for k, v in torch_model.state_dict().items()})
    ids = np.full((2, 77), 49407, np.int32)
    ids[:, :4] = [[49406, 320, 1125, 49407], [49406, 1125, 320, 539]]
    with torch.inference_mode():
        want = torch_features(torch_model.get_text_features(input_ids=torch.from_numpy(ids).long()))
    got = cm.get_text_features(module, params, ids)
    assert rel_diff(got, want) < RTOL
    other_rule = dataclasses.replace(module.config.text_config, eos_token_id=320 if eos_token_id == 2 else 2)
    other = cm.CLIP(dataclasses.replace(module.config, text_config=other_rule))
    assert rel_diff(cm.get_text_features(other, params, ids), want) > 1e-3  # the other rule pools elsewhere


@pytest.mark.parametrize("dtype, rtol", [("float16", 2e-2), ("bfloat16", 8e-2)])
def test_half_precision_casts_params_and_stays_close(dtype, rtol):
    module32, params32, _ = cm.load_flax_clip(TOY_CLIP)
    module, params, _ = cm.load_flax_clip(TOY_CLIP, getattr(jnp, dtype))
    assert module.dtype == jnp.dtype(dtype)
    assert {x.dtype for x in jax.tree_util.tree_leaves(params)} == {jnp.dtype(dtype)}
    clip32 = cr.load_clip(TOY_CLIP)
    images = cr.example_inputs(6)
    pixels = cr.pixel_values(clip32, [cr.to_rgb(im) for im in images])
    text = cr.text_inputs(clip32, PROMPTS[0])
    full = np.asarray(cm.logits_per_image(module32, params32, text["input_ids"], pixels, text["attention_mask"]))
    half = np.asarray(cm.logits_per_image(module, params, text["input_ids"], pixels, text["attention_mask"]))
    assert half.dtype == np.float32  # normalised and scaled in float32
    assert rel_diff(half, full) < rtol
    clip = cr.load_clip(TOY_CLIP, dtype=dtype)
    assert clip.dtype == dtype  # rank compiles the half model (XLA may fuse in float32): close to fp32 too
    assert rel_diff(cr.rank(images, PROMPTS[0], clip, "single").scores, full[:, 0]) < rtol


def test_missing_safetensors_says_how_to_make_it(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="save_pretrained"):
        cm.load_flax_clip(tmp_path)
