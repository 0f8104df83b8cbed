"""Models built here, with no Hub: the same `StableDiffusionPipeline` class, saved to a folder.

Two builders, both with random weights:

- `build_tiny_pipeline()`: the Stable Diffusion architecture shrunk (UNet 32/64 channels, a 2-layer
  CLIP text encoder with the *real* 49,408-token CLIP tokenizer, a 2-level VAE). About 3.7 M
  parameters: a 5-step image takes a fraction of a second on CPU. It proves the code path, and it
  is the offline fallback until a trained family exists.
- `build_real_architecture_pipeline()`: the public `CompVis/stable-diffusion-v1-4` configs in
  `configs/sd-v1-4/` (UNet 859.5 M, VAE 83.7 M, ViT-L/14 text encoder 123.1 M, safety checker
  304.0 M). It proves our code handles the real shapes: 768-wide text states, 77 tokens, the
  safety checker's 224 px CLIP inputs. ~5 GiB in fp32: keep runs to a step or two at small sizes.

Either is saved with `pipe.save_pretrained(dir)` and loaded back with `load_pipeline(dir)`: exactly
the call a Colab user makes with the Hub id.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .paths import CACHE_DIR, CONFIGS_DIR
from .tokenizer import MODEL_MAX_LENGTH, VOCAB_SIZE, load_clip_tokenizer

SD_V1_4_CONFIGS = CONFIGS_DIR / "sd-v1-4"
TINY_MODEL_DIR = CACHE_DIR / "models" / "tiny-sd-random"


def sd_scheduler(configs_dir: Path | str = SD_V1_4_CONFIGS):
    """Stable Diffusion v1's own scheduler: PNDM, `scaled_linear` betas 0.00085 -> 0.012, 1000 steps."""
    from diffusers import PNDMScheduler

    return PNDMScheduler.from_config(PNDMScheduler.load_config(Path(configs_dir) / "scheduler"))


#: The tiny random UNet's config (also the `--smoke` size of benchmarks/unet_cpu.py).
TINY_UNET = dict(
    sample_size=8,
    block_out_channels=(32, 64),
    layers_per_block=2,
    in_channels=4,
    out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=8,
    norm_num_groups=32,
)


def build_tiny_pipeline(seed: int = 0, cross_attention_dim: int = 32, sample_size: int = 8):
    """A tiny, randomly initialised `StableDiffusionPipeline` with the real CLIP tokenizer."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    # latents are 8x8 -> 64x64 px images by default
    unet = UNet2DConditionModel(**{**TINY_UNET, "sample_size": sample_size, "cross_attention_dim": cross_attention_dim})
    vae = AutoencoderKL(
        block_out_channels=(32, 32, 64, 64),  # 4 levels -> downsamples by 8, like SD's VAE
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=32,
        sample_size=sample_size * 8,
        scaling_factor=0.18215,  # SD v1's latent scale, as in configs/sd-v1-4/vae
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=VOCAB_SIZE,
            hidden_size=cross_attention_dim,
            intermediate_size=4 * cross_attention_dim,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=MODEL_MAX_LENGTH,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        )
    )
    scheduler = sd_scheduler()
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder.eval(),
        tokenizer=load_clip_tokenizer(),
        unet=unet.eval(),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def ensure_tiny_model(path: Path | str = TINY_MODEL_DIR) -> Path:
    """Build and save the tiny random model once; later calls just return its folder."""
    path = Path(path)
    if (path / "model_index.json").exists():
        return path
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    build_tiny_pipeline().save_pretrained(tmp)
    if not path.exists():
        tmp.replace(path)  # atomic: a half-saved model is never seen as ready
    else:  # another process finished first: keep its copy
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return path


def build_real_architecture_pipeline(configs_dir: Path | str = SD_V1_4_CONFIGS, seed: int = 0):
    """`StableDiffusionPipeline` with Stable Diffusion v1-4's real architecture, random weights.

    Every component is built from the public config files, the way `from_pretrained` would build
    it before loading weights. Takes ~10 s and ~5 GiB (fp32).
    """
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPTextConfig, CLIPTextModel

    configs_dir = Path(configs_dir)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(configs_dir / "unet"))
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(configs_dir / "vae"))
    text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(configs_dir / "text_encoder"))
    safety_checker = StableDiffusionSafetyChecker(CLIPConfig.from_pretrained(configs_dir / "safety_checker"))
    scheduler = sd_scheduler(configs_dir)
    feature_extractor = CLIPImageProcessor.from_pretrained(configs_dir / "feature_extractor")
    return StableDiffusionPipeline(
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=load_clip_tokenizer(),
        unet=unet.eval(),
        scheduler=scheduler,
        safety_checker=safety_checker.eval(),
        feature_extractor=feature_extractor,
        requires_safety_checker=True,
    )
