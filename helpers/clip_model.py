"""CLIP in Flax, small enough to read in one sitting, loading Hugging Face's `model.safetensors` as it is.

Why this file exists: transformers 5 removed every Flax model, `FlaxCLIPModel` included, so the blog's
Flax + `jax.pmap` ranking needs a CLIP of its own. Here it is: a vision transformer, a text transformer and
two projections, about 200 lines. It reads the standard checkpoint (`config.json` + `model.safetensors`,
parameter names such as `vision_model.embeddings.patch_embedding.weight`) with `safetensors.numpy`, so the
torch `transformers.CLIPModel` and this model read the very same file; tests/test_clip_model.py checks that
both give the same embeddings and logits (within 1e-5 relative, fp32).

Why `flax.linen`: the model is a pure function `module.apply({"params": params}, ...)` of an explicit
params pytree, which is exactly what `jax.pmap` replicates and `jax.jit` shards (nnx keeps the weights inside
Python objects, to be split out again for pmap). And linen is the same API on Colab's flax 0.11.2 and on
flax 0.12.8, where parts of nnx still change from release to release.

The paper: Radford et al. 2021, "Learning Transferable Visual Models From Natural Language Supervision",
https://arxiv.org/abs/2103.00020; the transformer blocks are ViT's (Dosovitskiy et al. 2020,
https://arxiv.org/abs/2010.11929) and GPT-2's (pre-layer-norm, causal text).

    image tower:  patches -> + class token -> + positions -> LN -> L blocks -> LN(class token) -> W_i   (B, P)
    text tower:   tokens  -> + positions -> L causal blocks -> LN -> state at <|endoftext|> -> W_t   (B, P)
    logits_per_image = exp(t) * cos(image_embeds, text_embeds)                                    (B_img, B_txt)

Shapes: B batch, L sequence length, D width, H heads, d = D / H, P projection dim, S image side, p patch side.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from functools import partial
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

WEIGHTS_NAME = "model.safetensors"  # what save_pretrained writes; torch and Flax read this one file
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"  # large checkpoints split into shards


# ------------------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class TextConfig:
    """The text tower's `text_config` (defaults as in transformers 5's `CLIPTextConfig`)."""

    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    eos_token_id: int = 49407  # 2 in configs saved before transformers 4.31: then pool at argmax(input_ids)


@dataclass(frozen=True)
class VisionConfig:
    """The image tower's `vision_config` (defaults as in transformers 5's `CLIPVisionConfig`: ViT-B/32)."""

    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 32
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5


@dataclass(frozen=True)
class ClipConfig:
    """CLIP's `config.json`: the two towers, the shared embedding size and the initial temperature."""

    text_config: TextConfig = TextConfig()
    vision_config: VisionConfig = VisionConfig()
    projection_dim: int = 512
    logit_scale_init_value: float = 2.6592  # log(1 / 0.07), the paper's initial temperature

    @classmethod
    def from_dict(cls, d: Mapping) -> ClipConfig:
        """From `config.json`'s dict (or `transformers.CLIPConfig.to_dict()`); unknown keys are ignored."""

        def pick(kind, sub):
            return kind(**{f.name: sub[f.name] for f in fields(kind) if sub.get(f.name) is not None})

        text = dict(d.get("text_config") or {})
        if isinstance(text.get("eos_token_id"), (list, tuple)):
            raise ValueError("This CLIP config lists several eos_token_id values; we pool at one end token.")
        top = {k: d[k] for k in ("projection_dim", "logit_scale_init_value") if d.get(k) is not None}
        return cls(pick(TextConfig, text), pick(VisionConfig, dict(d.get("vision_config") or {})), **top)

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> ClipConfig:
        return cls.from_dict(json.loads((Path(folder) / "config.json").read_text()))


# ------------------------------------------------------------------------------------------- blocks


def quick_gelu(x):
    # $\mathrm{quick\_gelu}(x) = x \, \sigma(1.702 x)$: OpenAI's cheap approximation of GELU
    return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS = {
    "quick_gelu": quick_gelu,
    "gelu": partial(jax.nn.gelu, approximate=False),  # torch's exact erf GELU
    "gelu_new": partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": partial(jax.nn.gelu, approximate=True),
    "relu": jax.nn.relu,
}


class Attention(nn.Module):
    """Multi-head self-attention: $\\mathrm{softmax}(Q K^\\top / \\sqrt{d} + M) V$, heads concatenated, then $W_o$."""

    num_heads: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, mask=None):  # x (B, L, D); mask (B, 1, L, L) bool: True where a query may look
        B, L, D = x.shape
        d = D // self.num_heads
        dense = partial(nn.Dense, D, dtype=self.dtype)
        q = dense(name="q_proj")(x).reshape(B, L, self.num_heads, d)  # (B, L, H, d)
        k = dense(name="k_proj")(x).reshape(B, L, self.num_heads, d)
        v = dense(name="v_proj")(x).reshape(B, L, self.num_heads, d)
        # $A = \mathrm{softmax}(Q K^\top / \sqrt{d} + M)$, with $M = -\infty$ where the mask forbids a key
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) * d**-0.5  # (B, H, L, L)
        if mask is not None:
            scores = jnp.where(mask, scores, jnp.finfo(scores.dtype).min)
        weights = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(self.dtype)  # fp32, like torch
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(B, L, D)  # heads side by side again
        return dense(name="out_proj")(out)


class MLP(nn.Module):
    """$\\mathrm{MLP}(x) = W_2 \\, \\mathrm{act}(W_1 x + b_1) + b_2$, widening D -> 4D -> D."""

    intermediate_size: int
    hidden_act: str = "quick_gelu"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):  # (B, L, D)
        h = nn.Dense(self.intermediate_size, dtype=self.dtype, name="fc1")(x)  # (B, L, 4D)
        return nn.Dense(x.shape[-1], dtype=self.dtype, name="fc2")(ACTIVATIONS[self.hidden_act](h))


class EncoderLayer(nn.Module):
    """One pre-layer-norm transformer block (GPT-2's order: normalise, then the sub-layer, then add)."""

    config: TextConfig | VisionConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, mask=None):  # (B, L, D)
        c = self.config
        ln = partial(nn.LayerNorm, epsilon=c.layer_norm_eps, dtype=self.dtype)
        # $h = x + \mathrm{Attn}(\mathrm{LN}_1(x))$
        x = x + Attention(c.num_attention_heads, self.dtype, name="self_attn")(ln(name="layer_norm1")(x), mask)
        # $y = h + \mathrm{MLP}(\mathrm{LN}_2(h))$
        mlp = MLP(c.intermediate_size, c.hidden_act, self.dtype, name="mlp")
        return x + mlp(ln(name="layer_norm2")(x))


class Encoder(nn.Module):
    """`num_hidden_layers` blocks, named `layers_0`, `layers_1`, ... (HF's `layers.0`, `layers.1`, ...)."""

    config: TextConfig | VisionConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, mask=None):
        for i in range(self.config.num_hidden_layers):
            x = EncoderLayer(self.config, self.dtype, name=f"layers_{i}")(x, mask)
        return x


# ------------------------------------------------------------------------------------------- towers


class VisionEmbeddings(nn.Module):
    """ViT's input: cut the image into p x p patches, embed each linearly, prepend a class token, add positions."""

    config: VisionConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, pixel_values):  # (B, 3, S, S): channels first, as CLIP's processor returns them
        c = self.config
        B, D, p = pixel_values.shape[0], c.hidden_size, c.patch_size
        x = jnp.transpose(pixel_values, (0, 2, 3, 1)).astype(self.dtype)  # (B, S, S, 3): Flax convs are NHWC
        # a stride-p convolution with a p x p kernel = one linear map $E$ applied to every patch
        conv = nn.Conv(
            D, (p, p), strides=(p, p), padding="VALID", use_bias=False, dtype=self.dtype, name="patch_embedding"
        )
        patches = conv(x).reshape(B, -1, D)  # (B, N, D), N = (S/p)^2, row-major
        cls = self.param("class_embedding", nn.initializers.normal(0.02), (D,))
        cls = jnp.broadcast_to(cls.astype(self.dtype), (B, 1, D))  # the class token: a learned extra "patch"
        x = jnp.concatenate([cls, patches], axis=1)  # (B, N + 1, D)
        # $z_0 = [x_\mathrm{class}; x_1 E; \dots; x_N E] + E_\mathrm{pos}$
        pos = nn.Embed(x.shape[1], D, dtype=self.dtype, name="position_embedding")(jnp.arange(x.shape[1]))
        return x + pos  # (B, N + 1, D)


class VisionTransformer(nn.Module):
    """The image tower: embeddings, LN, blocks, and the class token's final state, layer-normed."""

    config: VisionConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, pixel_values):  # (B, 3, S, S)
        ln = partial(nn.LayerNorm, epsilon=self.config.layer_norm_eps, dtype=self.dtype)
        x = VisionEmbeddings(self.config, self.dtype, name="embeddings")(pixel_values)  # (B, N + 1, D)
        x = ln(name="pre_layrnorm")(x)  # (sic: the checkpoint's spelling) CLIP adds this LN before the blocks
        x = Encoder(self.config, self.dtype, name="encoder")(x)  # no mask: every patch sees every patch
        return ln(name="post_layernorm")(x[:, 0])  # (B, D): the class token sums up the image


class TextEmbeddings(nn.Module):
    """Token embedding plus a learned position embedding (no sinusoids in CLIP)."""

    config: TextConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, input_ids):  # (B, L) int
        c = self.config
        tokens = nn.Embed(c.vocab_size, c.hidden_size, dtype=self.dtype, name="token_embedding")(input_ids)
        L = input_ids.shape[-1]
        pos = nn.Embed(c.max_position_embeddings, c.hidden_size, dtype=self.dtype, name="position_embedding")
        return tokens + pos(jnp.arange(L))  # (B, L, D)


class TextTransformer(nn.Module):
    """The text tower: a causal transformer read out at the end-of-text token."""

    config: TextConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, input_ids, attention_mask=None):  # (B, L) each
        c = self.config
        B, L = input_ids.shape
        if attention_mask is None:
            attention_mask = jnp.ones((B, L), jnp.int32)
        x = TextEmbeddings(c, self.dtype, name="embeddings")(input_ids)  # (B, L, D)
        # causal mask $M_{qk} = 0$ if $k \le q$ (and key k is not padding), else $-\infty$: token q sees only its past
        causal = jnp.tril(jnp.ones((L, L), bool))  # (L, L)
        mask = causal[None, None] & attention_mask.astype(bool)[:, None, None, :]  # (B, 1, L, L)
        x = Encoder(c, self.dtype, name="encoder")(x, mask)
        x = nn.LayerNorm(epsilon=c.layer_norm_eps, dtype=self.dtype, name="final_layer_norm")(x)
        # EOS pooling, exactly as transformers 5's CLIPTextTransformer: the first <|endoftext|>; configs saved
        # with the old eos_token_id == 2 take argmax(input_ids) instead (the end token has CLIP's largest id)
        if c.eos_token_id == 2:
            eos = jnp.argmax(input_ids, axis=-1)  # (B,)
        else:
            eos = jnp.argmax(input_ids == c.eos_token_id, axis=-1)  # (B,): argmax returns the first True
        return x[jnp.arange(B), eos]  # (B, D): causal, so only that state has read the whole prompt


# --------------------------------------------------------------------------------------------- CLIP


class CLIP(nn.Module):
    """Both towers and their projections into one P-dimensional space, plus the learned temperature $t$."""

    config: ClipConfig
    dtype: Any = jnp.float32  # compute dtype; load_flax_clip casts the params to it too

    def setup(self):
        c = self.config
        self.vision_model = VisionTransformer(c.vision_config, self.dtype)
        self.text_model = TextTransformer(c.text_config, self.dtype)
        self.visual_projection = nn.Dense(c.projection_dim, use_bias=False, dtype=self.dtype)  # $W_i$
        self.text_projection = nn.Dense(c.projection_dim, use_bias=False, dtype=self.dtype)  # $W_t$
        self.logit_scale = self.param("logit_scale", nn.initializers.constant(c.logit_scale_init_value), ())

    def get_image_features(self, pixel_values):
        """$I = W_i \\, f(\\text{image})$: (B, 3, S, S) -> (B, P), not normalised (like transformers)."""
        return self.visual_projection(self.vision_model(pixel_values))

    def get_text_features(self, input_ids, attention_mask=None):
        """$T = W_t \\, g(\\text{tokens})$: (B, L) -> (B, P), not normalised."""
        return self.text_projection(self.text_model(input_ids, attention_mask))

    def __call__(self, input_ids, pixel_values, attention_mask=None):
        """logits_per_image (B_img, B_txt) in float32: $e^t \\cos(I_i, T_j)$."""
        image_embeds = normalize(self.get_image_features(pixel_values))  # (B_img, P)
        text_embeds = normalize(self.get_text_features(input_ids, attention_mask))  # (B_txt, P)
        # $\mathrm{logits}_{ij} = e^{t} \, \hat I_i \cdot \hat T_j$, $\hat x = x / \lVert x \rVert$
        return jnp.exp(self.logit_scale.astype(jnp.float32)) * image_embeds @ text_embeds.T


def normalize(x):
    """$\\hat x = x / \\lVert x \\rVert$ along the last axis, in float32 (fp16 norms overflow easily)."""
    x = x.astype(jnp.float32)
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


# -------------------------------------------------------------------------------- HF checkpoint -> Flax


def params_from_hf(state: Mapping[str, Any]) -> dict:
    """Hugging Face's flat torch names -> this module's params tree, as numpy arrays.

    Dots become nesting (`layers.0` becomes `layers_0`, linen's name for the first of a list) and torch's
    layouts become Flax's: a Linear `weight` (out, in) is a Dense `kernel` (in, out); the Conv2d patch
    `weight` (D, 3, p, p) a Conv `kernel` (p, p, 3, D); an Embedding's `weight` its `embedding`; a
    LayerNorm's `weight` its `scale`. Biases, `class_embedding` and `logit_scale` keep their names.
    """
    params: dict = {}
    for name, w in state.items():
        if name.endswith("position_ids"):  # a buffer (0, 1, 2, ...) older checkpoints saved, not a weight
            continue
        w = np.asarray(w)
        *path, leaf = re.sub(r"\.layers\.(\d+)\.", r".layers_\1.", name).split(".")
        module = path[-1] if path else ""
        if leaf == "weight":
            if "norm" in module:  # layer_norm1/2, pre_layrnorm, post_layernorm, final_layer_norm
                leaf = "scale"
            elif module in ("token_embedding", "position_embedding"):
                leaf = "embedding"
            elif w.ndim == 4:  # the patch embedding, (D, 3, p, p) -> (p, p, 3, D)
                leaf, w = "kernel", w.transpose(2, 3, 1, 0)
            else:  # nn.Linear computes x W^T, nn.Dense x K: K = W^T
                leaf, w = "kernel", w.T
        node = params
        for key in path:
            node = node.setdefault(key, {})
        node[leaf] = w
    return params


def read_safetensors(folder: str | Path) -> dict[str, np.ndarray]:
    """Every tensor of `model.safetensors` (or of its shards) by its HF name, as numpy arrays."""
    from safetensors.numpy import load_file

    folder = Path(folder)
    index = folder / WEIGHTS_INDEX_NAME
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else [WEIGHTS_NAME]
    state = {}
    for f in files:
        try:
            state.update(load_file(folder / f))
        except (KeyError, TypeError):  # bfloat16 tensors: numpy has no bf16, jax (ml_dtypes) does
            from safetensors.flax import load_file as load_jax

            state.update({k: np.asarray(v) for k, v in load_jax(folder / f).items()})
    return state


def cast_params(params, dtype):
    """All floating params in `dtype` (float32, float16 or bfloat16); the compute then runs in it too."""
    return jax.tree_util.tree_map(lambda x: np.asarray(x).astype(dtype), params)


def load_flax_clip(folder: str | Path, dtype=jnp.float32) -> tuple[CLIP, dict, ClipConfig]:
    """(module, params, config) from a folder made by `save_pretrained` (config.json + model.safetensors).

    `dtype` is the compute dtype: float16/bfloat16 cast the params too (half the memory, faster on GPUs/TPUs;
    on a CPU the logits move by about 1e-2). The params are numpy arrays: jax places them where they are used.
    """
    folder = Path(folder)
    if not (folder / WEIGHTS_NAME).exists() and not (folder / WEIGHTS_INDEX_NAME).exists():
        raise FileNotFoundError(
            f"{folder} has no {WEIGHTS_NAME}: save the torch model with save_pretrained(folder) (safetensors is "
            "its default), or convert a pytorch_model.bin by loading it with CLIPModel and saving it again."
        )
    config = ClipConfig.from_pretrained(folder)
    params = cast_params(params_from_hf(read_safetensors(folder)), jnp.dtype(dtype))
    return CLIP(config, jnp.dtype(dtype)), params, config


def get_image_features(module: CLIP, params, pixel_values):
    """Image embeddings (B, P), unnormalised: `module.apply` on `get_image_features`."""
    return module.apply({"params": params}, pixel_values, method=CLIP.get_image_features)


def get_text_features(module: CLIP, params, input_ids, attention_mask=None):
    """Text embeddings (B, P), unnormalised."""
    return module.apply({"params": params}, input_ids, attention_mask, method=CLIP.get_text_features)


def logits_per_image(module: CLIP, params, input_ids, pixel_values, attention_mask=None):
    """(B_img, B_txt) float32: `exp(logit_scale) * cos`, the same as transformers' `logits_per_image`."""
    return module.apply({"params": params}, input_ids, pixel_values, attention_mask)
