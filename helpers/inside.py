"""Stable Diffusion opened up: the small pieces notebook 02 pokes at, one function per idea.

    prompt --tokenize-->  input_ids (77,)  --text_encoder-->  embeddings (77, D)
    image  --vae.encode-->  z = s * E(x)  (4, H/f, W/f)   --vae.decode(z / s)-->  image      (s: scaling_factor)
    cross-attention:  A = softmax(Q K^T / sqrt(d))   Q from the latent pixels, K from the 77 token embeddings

Every fact about the model (scaling factor, downsampling factor f, latent channels, sample size) is read from the
loaded pipeline, never assumed. Papers: latent diffusion (Rombach et al. 2022, https://arxiv.org/abs/2112.10752),
attention (Vaswani et al. 2017, https://arxiv.org/abs/1706.03762), prompt-to-prompt's cross-attention maps
(Hertz et al. 2022, https://arxiv.org/abs/2208.01626). tests/test_inside.py checks each piece against diffusers.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor

# ---------------------------------------------------------------------------------------------- tokenizer


@dataclass
class Tokens:
    """What CLIP's tokenizer makes of one prompt."""

    pieces: list[str]  # the BPE pieces of the whole prompt, before any cut ("</w>" ends a word)
    input_ids: list[int]  # exactly model_max_length ids: <start>, the prompt, <end>, then padding
    attention_mask: list[int]  # 1 for real tokens, 0 for padding (SD v1's text encoder does not use it)
    n_tokens: int  # ids the whole prompt needs, <start> and <end> included
    kept: int  # how many of the prompt's pieces fit (model_max_length - 2 at most)
    cut: str  # the text truncation drops ("" if nothing)


def tokenize(tokenizer, prompt: str) -> Tokens:
    """Tokenize like the pipeline does (pad to max length, truncate), and say what truncation cuts."""
    max_len = tokenizer.model_max_length  # 77 for CLIP: <start> + 75 tokens + <end>
    full = tokenizer(prompt, truncation=False).input_ids  # no cut: how long the prompt really is
    padded = tokenizer(prompt, padding="max_length", max_length=max_len, truncation=True)
    kept = min(len(full) - 2, max_len - 2)
    return Tokens(
        pieces=tokenizer.convert_ids_to_tokens(full[1:-1]),
        input_ids=list(padded.input_ids),
        attention_mask=list(padded.attention_mask),
        n_tokens=len(full),
        kept=kept,
        cut=tokenizer.decode(full[1 + kept : -1]),
    )


# ---------------------------------------------------------------------------------------------- VAE


def to_model_range(images) -> torch.Tensor:
    """PIL images or uint8 arrays (N, H, W, 3) -> a float tensor (N, 3, H, W) in [-1, 1], what the VAE reads."""
    arr = np.stack([np.asarray(im) for im in images]) if isinstance(images, list) else np.asarray(images)
    # $x = 2 \cdot \frac{\text{pixel}}{255} - 1$
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1.0


@torch.no_grad()
def encode_images(pipe, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Images (N, 3, H, W) in [-1, 1] -> UNet latents (N, C, H/f, W/f): the VAE's posterior mean, or a sample of
    it when a generator is given, times the scaling factor."""
    dist = pipe.vae.encode(x.to(pipe.device, pipe.vae.dtype)).latent_dist
    latents = dist.mean if generator is None else dist.sample(generator)  # (N, C, H/f, W/f)
    # $z = s \cdot \mathcal{E}(x)$
    return latents * pipe.vae.config.scaling_factor


@torch.no_grad()
def decode_latents(pipe, latents: torch.Tensor, chunk: int = 4) -> np.ndarray:
    """UNet latents (N, C, h, w) -> images (N, H, W, 3) in [0, 1], a few at a time (VAE decoding is memory hungry)."""
    out = []
    for part in latents.split(chunk):
        # $x = \mathcal{D}(z / s)$
        image = pipe.vae.decode(part.to(pipe.vae.dtype) / pipe.vae.config.scaling_factor).sample  # (n, 3, H, W)
        out.append((image / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().cpu().numpy())
    return np.concatenate(out)


def scaling_factor_from_latents(latents: torch.Tensor) -> float:
    """Latent diffusion's rule for the scaling factor: one over the standard deviation of unscaled VAE latents
    (posterior samples), so that the UNet sees unit-variance latents, like its N(0, I) noise."""
    # $s = 1 / \operatorname{std}(\mathcal{E}(x))$
    return float(1.0 / latents.float().std())


# ---------------------------------------------------------------------------------------------- cross-attention


class AttentionStore:
    """Cross-attention probabilities, summed over the denoising steps, per layer.

    `guidance=True`: the UNet's batch is [uncond, cond] (classifier-free guidance), so only the second half (the
    prompt's) is kept. Heads are averaged. `max_row_error` is the largest |sum over tokens - 1| seen.
    """

    def __init__(self, guidance: bool = True):
        self.guidance = guidance
        self.sums: dict[str, torch.Tensor] = {}  # layer -> (B, HW, 77)
        self.calls: dict[str, int] = {}
        self.max_row_error = 0.0

    def add(self, layer: str, probs: torch.Tensor, heads: int) -> None:
        """`probs`: (batch * heads, HW, tokens) from one attention call."""
        self.max_row_error = max(self.max_row_error, (probs.float().sum(-1) - 1).abs().max().item())
        probs = probs.reshape(-1, heads, *probs.shape[1:]).float().mean(1)  # (batch, HW, tokens)
        if self.guidance:
            probs = probs[probs.shape[0] // 2 :]  # [uncond, cond]: keep the prompt's half
        self.sums[layer] = self.sums.get(layer, 0) + probs
        self.calls[layer] = self.calls.get(layer, 0) + 1

    def token_maps(self, latent_hw: tuple[int, int]) -> torch.Tensor:
        """(B, tokens, h, w): each token's attention, averaged over steps and layers, every layer resized to the
        latent grid (h, w) (the UNet attends at several resolutions: h*w, h*w/4, ...)."""
        h, w = latent_hw
        maps = []
        for layer, total in self.sums.items():
            mean = total / self.calls[layer]  # (B, HW, tokens)
            factor = round((h * w / mean.shape[1]) ** 0.5)  # this layer's downsampling of the latent grid
            grid = mean.transpose(1, 2).reshape(mean.shape[0], mean.shape[2], h // factor, w // factor)
            maps.append(F.interpolate(grid, size=(h, w), mode="bilinear", align_corners=False))
        return torch.stack(maps).mean(0)  # (B, tokens, h, w)


class CrossAttentionRecorder(AttnProcessor):
    """diffusers' plain `AttnProcessor`, with cross-attention written out so the probabilities can be kept.

    Self-attention (no `encoder_hidden_states`) and unusual layers go to the parent unchanged.
    """

    def __init__(self, layer: str, store: AttentionStore):
        super().__init__()
        self.layer, self.store = layer, store

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *a, **kw):
        unusual = attn.spatial_norm is not None or attn.group_norm is not None or attn.norm_cross
        if encoder_hidden_states is None or unusual or hidden_states.ndim != 3:
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *a, **kw)
        batch, tokens, _ = encoder_hidden_states.shape
        attention_mask = attn.prepare_attention_mask(attention_mask, tokens, batch)
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))  # (B*heads, HW, d): from the latent pixels
        key = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))  # (B*heads, 77, d): from the tokens
        value = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))  # (B*heads, 77, d)
        # $A = \mathrm{softmax}\left(Q K^\top / \sqrt{d}\right)$: each pixel's weights over the 77 tokens
        probs = attn.get_attention_scores(query, key, attention_mask)  # (B*heads, HW, 77)
        self.store.add(self.layer, probs, attn.heads)
        # $\mathrm{out} = A V$, heads merged, then the output projection (and dropout, off at inference)
        out = attn.batch_to_head_dim(torch.bmm(probs, value))  # (B, HW, heads*d)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


def cross_attention_layers(unet) -> list[str]:
    """Names of the UNet's cross-attention processors ("...attn2.processor" in diffusers' transformer blocks)."""
    return [name for name in unet.attn_processors if name.endswith("attn2.processor")]


@contextmanager
def record_cross_attention(pipe, guidance: bool = True):
    """Inside the `with`, every cross-attention layer of `pipe.unet` records into the yielded `AttentionStore`;
    self-attention keeps its own processor. The original processors are put back afterwards."""
    original = pipe.unet.attn_processors  # {name: processor}
    store = AttentionStore(guidance)
    layers = set(cross_attention_layers(pipe.unet))
    pipe.unet.set_attn_processor(
        {name: CrossAttentionRecorder(name, store) if name in layers else proc for name, proc in original.items()}
    )
    try:
        yield store
    finally:
        pipe.unet.set_attn_processor(original)


@contextmanager
def plain_cross_attention(pipe):
    """Cross-attention on diffusers' plain `AttnProcessor` (what the recorder computes, without recording): the
    reference that shows recording changes nothing."""
    original = pipe.unet.attn_processors
    layers = set(cross_attention_layers(pipe.unet))
    pipe.unet.set_attn_processor({n: AttnProcessor() if n in layers else p for n, p in original.items()})
    try:
        yield
    finally:
        pipe.unet.set_attn_processor(original)


def to_unit(a: torch.Tensor) -> np.ndarray:
    """Stretch a 2-D map (a latent channel, an attention map) to [0, 1] so it can be drawn as a grey image."""
    a = a.detach().float().cpu().numpy()
    return (a - a.min()) / (a.max() - a.min() + 1e-12)


def token_index(tokenizer, prompt: str, word: str) -> int:
    """Position of `word`'s first token among the 77 (0 is <start>), to pick its attention map."""
    ids = tokenizer(prompt).input_ids
    word_ids = tokenizer(word, add_special_tokens=False).input_ids
    for i in range(len(ids) - len(word_ids) + 1):
        if ids[i : i + len(word_ids)] == word_ids:
            return i
    raise ValueError(f"{word!r} is not in the prompt {prompt!r}: pick a word of the prompt.")
