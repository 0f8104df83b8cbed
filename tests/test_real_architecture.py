"""The real Stable Diffusion v1-4 architecture (random weights) goes through our code path.

Built from the public configs in configs/sd-v1-4, saved with `variant="fp16"` the way the Hub stores
it, reloaded through `load_pipeline` (the call Colab users make with the Hub id) and run for one
step at a small size on CPU. This proves the shapes: 768-wide text states, 77 tokens, the safety
checker's 224 px CLIP inputs, 4-channel latents at 1/8 of the image size.
"""

import gc
import json
import shutil

import numpy as np
import pytest
import torch

from helpers.offline import build_real_architecture_pipeline
from helpers.pipeline import generate, load_pipeline

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def saved_real(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sd-v1-4-random")
    pipe = build_real_architecture_pipeline()
    counts = {
        n: sum(p.numel() for p in getattr(pipe, n).parameters())
        for n in ("unet", "vae", "text_encoder", "safety_checker")
    }
    pipe.to(torch.float16).save_pretrained(folder, variant="fp16")
    del pipe
    gc.collect()
    yield folder, counts
    shutil.rmtree(folder, ignore_errors=True)  # 2.7 GB: gone once this module is done, not at the session's end


def test_parameter_counts_match_the_published_model(saved_real):
    _, counts = saved_real
    assert round(counts["unet"] / 1e6, 1) == 859.5
    assert round(counts["vae"] / 1e6, 1) == 83.7
    assert round(counts["text_encoder"] / 1e6, 1) == 123.1
    assert round(counts["safety_checker"] / 1e6, 1) == 304.0


def test_saved_like_the_hub_with_fp16_variant(saved_real):
    folder, _ = saved_real
    assert (folder / "unet" / "diffusion_pytorch_model.fp16.safetensors").exists()
    assert (folder / "text_encoder" / "model.fp16.safetensors").exists()
    index = json.loads((folder / "model_index.json").read_text())
    assert index["safety_checker"] == ["stable_diffusion", "StableDiffusionSafetyChecker"]


def test_runs_through_load_pipeline_and_generate(saved_real):
    folder, _ = saved_real
    # fp32 on CPU (fp16 matmuls on CPU are emulated and very slow); load_pipeline reads the fp16 files
    # only when asked for fp16, so load once in fp16 to prove the variant path, then in fp32 to run.
    pipe16 = load_pipeline(folder, dtype=torch.float16)
    assert pipe16.unet.dtype == torch.float16 and pipe16.safety_checker is not None
    del pipe16
    gc.collect()
    pipe = load_pipeline(folder, dtype=torch.float32, variant="fp16")
    assert pipe.text_encoder.config.hidden_size == 768 and pipe.unet.config.cross_attention_dim == 768
    assert pipe.tokenizer.model_max_length == 77 and pipe.vae_scale_factor == 8

    shapes = {}

    def record_shapes(module, args, kwargs, output):  # returns None: the output is left unchanged
        shapes.setdefault("unet", (args[0].shape, kwargs["encoder_hidden_states"].shape))

    pipe.unet.register_forward_hook(record_shapes, with_kwargs=True)
    result = generate(
        pipe,
        "Kermit the Frog on the Iron Throne",
        n_images=1,
        seed=0,
        num_inference_steps=1,
        height=64,
        width=64,
        show_progress=False,
    )
    latents_shape, text_shape = shapes["unet"]
    assert tuple(latents_shape) == (2, 4, 8, 8)  # CFG batch 2, 4 latent channels, 64 px / 8
    assert tuple(text_shape) == (2, 77, 768)  # 77 tokens, 768-wide ViT-L/14 text states
    assert result.images[0].size == (64, 64) and len(result.nsfw) == 1  # the safety checker ran
    assert not result.nan[0] and np.isfinite(np.asarray(result.images[0], float)).all()
