"""Teach the model a new word on a CPU: textual inversion and LoRA, with Stable Diffusion's own training loss.

The toy family (`models/toy-sd`) knows 3 shapes in 6 colours by name. Its concept sibling (`load_concept_family`:
the family with the VAE from `vae_concepts/` and the LoRA from `concepts_lora/` fused into its UNet) was also shown
magenta shapes and stars, but only under captions that leave them unnamed (`shapes_data.UNNAMED_CONCEPTS`): it can
draw them, with no word for them. Two new words:

- **"<magenta>"** (a colour, `shapes_data.EXTRA_COLOURS`) is taught by *textual inversion* (Gal et al. 2022,
  https://arxiv.org/abs/2208.01618): a new token gets one new row in the text encoder's token table, and only that
  row (32 numbers in the toy, 768 in SD v1) is trained. UNet, VAE and text encoder stay frozen, so every prompt
  without the token gives bit-identical images. "<orange>" is the comparison: neither drew orange, but it lies
  between red and yellow, which the UNet draws, and a new row can point between them (benchmarks/personalise.py).
  A new word only finds what the frozen model can draw (`vae_ceiling` and `decoder_reach` measure the decoder's
  part of that ceiling).
- **"star"** (a shape, `shapes_data.EXTRA_SHAPES`) is taught by *LoRA* (Hu et al. 2021,
  https://arxiv.org/abs/2106.09685): "star" is already a word in CLIP's vocabulary that no caption used. Chosen
  linear layers $W$ get a low-rank update, $W' = W + \\frac{\\alpha}{r} B A$, and only $A$ and $B$ train
  (`LORA_TARGETS`: every attention projection, diffusers' examples; `LORA_TARGETS_CROSS`: the keys and values the
  cross-attention reads from the text, Custom Diffusion's choice). diffusers' peft integration adds, saves, loads
  and removes them (`unet.add_adapter`, `save_lora_weights`, `load_lora_weights`, `unload_lora_weights`).

Both minimise the loss the UNet was trained with (Ho et al. 2020; Rombach et al. 2022):

$$L = \\mathbb{E}_{z_0, \\epsilon, t} \\lVert \\epsilon - \\epsilon_\\theta(x_t, t, c) \\rVert^2, \\quad
x_t = \\sqrt{\\bar\\alpha_t}\\, z_0 + \\sqrt{1 - \\bar\\alpha_t}\\, \\epsilon$$

on VAE latents $z_0 = s \\cdot \\mathcal{E}(x)$ ($s$ = `vae.config.scaling_factor`), $t$ uniform in [0, 1000) and
$\\bar\\alpha_t$ from the pipeline's own noise schedule. Both loops take a seed, show a tqdm bar, and stop early
when `should_stop()` says so or on Ctrl-C (KeyboardInterrupt), returning the losses so far.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from .diffusion import q_sample
from .inside import decode_latents, encode_images
from .shapes_data import (
    IMAGE_SIZE,
    TEMPLATES,
    V2_IMAGE_SIZE,
    ShapesDataset,
    concept_combos,
    draw_for_size,
    make_dataset,
    make_dataset_v2,
    train_combos,
    unnamed_form,
    v2_caption,
)
from .training import CONCEPT_LORA_TARGETS, P_UNCOND, V2_SCHEDULE, encode_latents, to_unit_range

#: The word each new concept is called by in captions: textual inversion learns a new token, LoRA an old word.
CONCEPT_WORDS = {"magenta": "<magenta>", "orange": "<orange>", "star": "star"}
#: The attention projections LoRA adapts (query, key, value, output), as in diffusers' LoRA training example.
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # what `save_lora_weights` writes
#: Only the keys and values the UNet computes from the text (the cross-attention `attn2`): what Custom Diffusion
#: fine-tunes for a new concept (Kumari et al. 2022, https://arxiv.org/abs/2212.04488). They act on the text states
#: alone, so a prompt whose states the adapter's A barely sees (one without the new word) should move least
#: (`benchmarks/personalise.py --lora-targets cross`; toy_family_history.md, 2026-12-07).
LORA_TARGETS_CROSS = ("attn2.to_k", "attn2.to_v")
#: Every linear and convolution layer of the toy UNet's blocks: LoRA "everywhere", a bigger adapter for comparison.
LORA_TARGETS_ALL = CONCEPT_LORA_TARGETS + ("conv_in", "conv_out")
#: Stars drawn this large (half-extent 35-44% of the image; the family's shapes are 17-29%) keep their points
#: through the toy VAE's 8x encode -> decode; at the family's sizes a star's points are under a latent pixel wide
#: and come back rounded (`benchmarks/personalise.py --star-radius` measures both).
STAR_RADIUS_BIG = (0.35, 0.44)

StopCheck = Callable[[], bool]
StepCallback = Callable[[int, float], None]


# ---------------------------------------------------------------------------------------------- data


def image_size(pipe) -> int:
    """The pipeline's image side in pixels: latent side times the VAE's downsampling factor."""
    return pipe.unet.config.sample_size * pipe.vae_scale_factor


def concept_images(
    kind: str, n: int, seed: int, size: int, word: str | None = None, radius: tuple[float, float] | None = None
) -> ShapesDataset:  # fmt: skip
    """`n` training images of a new concept, drawn like the family of `size` px, with their captions.

    kind "magenta" (or "orange"): magenta circles, squares and triangles on each palette background, captioned
    "a <magenta> circle on a blue background" (`word` replaces "<magenta>"); kind "star": stars in each palette
    colour, captioned "a red star on a blue background". Captions use the family's three templates at random.
    Drawn as the family's UNet saw its training shapes: upright on the 64 px family (`V2_SCHEDULE.unet_upright`).
    Deterministic: the same arguments give the same pixels and captions. `radius` (64 px family only): the
    shapes' half-extent range as a share of the image, instead of the family's (`STAR_RADIUS_BIG` draws stars the
    toy VAE gives back).
    """
    if kind not in CONCEPT_WORDS:
        raise ValueError(f"Unknown new concept {kind!r}; use one of {tuple(CONCEPT_WORDS)}.")
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}.")
    word = word or CONCEPT_WORDS[kind]
    rng = np.random.default_rng(seed)
    combos = concept_combos(kind)
    picks = [combos[i] for i in rng.permutation(np.arange(n) % len(combos))]  # balanced, shuffled
    upright = size != IMAGE_SIZE and V2_SCHEDULE.unet_upright  # as the family's UNet saw its shapes
    images = np.stack([np.asarray(draw_for_size(c, rng, size, radius, rotate=not upright)) for c in picks])
    templates = rng.integers(0, len(TEMPLATES), size=n)
    captions = [
        TEMPLATES[t].format(**{k: word if v == kind else v for k, v in vars(c).items()})
        for c, t in zip(picks, templates)
    ]
    return ShapesDataset(images, picks, captions)


def family_images(n: int, seed: int, size: int, concepts: Sequence[str] = ()) -> ShapesDataset:
    """`n` of the family's own training pictures and captions, drawn as its UNet saw them: DreamBooth's prior
    preservation images (Ruiz et al. 2022), mixed into a LoRA's batches so that old prompts drift less.

    The 64 px family's UNet trained on `make_dataset_v2` with upright squares and triangles and every caption form
    (`training.V2_SCHEDULE`); the first family (32 px) on `make_dataset`. Drawing the prior from the wrong
    generation teaches old captions new sizes and outlines. `concepts` (the concept sibling's,
    `shapes_data.UNNAMED_CONCEPTS`): their pictures too, each combination as often as a palette one, captioned as
    the sibling's LoRA saw them (`unnamed_form`: never named). Without them, "a red shape" would be taught back to
    the palette's shapes only, and the sibling would unlearn the stars that a LoRA for "star" ties the word to.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}.")
    if size == IMAGE_SIZE:
        if concepts:
            raise ValueError(f"Only the {V2_IMAGE_SIZE} px family has a concept sibling; the {size} px one has none.")
        return make_dataset(n, seed=seed, size=size)
    if not concepts:
        return make_dataset_v2(n, seed=seed, size=size, rotate=not V2_SCHEDULE.unet_upright)
    combos = train_combos() + [c for concept in concepts for c in concept_combos(concept)]
    combos = [combos[i] for i in np.random.default_rng(seed).permutation(len(combos))]  # n < len: a fair subset
    data = make_dataset_v2(n, seed=seed, size=size, rotate=not V2_SCHEDULE.unet_upright, combos=combos)
    forms = [unnamed_form(c, f) for c, f in zip(data.combos, data.forms)]
    captions = [v2_caption(c, f) for c, f in zip(data.combos, forms)]
    return ShapesDataset(data.images, data.combos, captions, forms, data.geometry)


def judge_caption(prompt: str) -> str:
    """The caption the strict judge reads for a prompt with a placeholder token: "<magenta>" -> "magenta"."""
    return re.sub(r"<([a-z]+)>", r"\1", prompt)


# ---------------------------------------------------------------------------------------------- the loss


def noise_schedule(pipe) -> torch.Tensor:
    """$\\bar\\alpha_t$ for t = 0..T-1 from the pipeline's scheduler config: the DDPM schedule it was trained on."""
    from diffusers import DDPMScheduler

    config = pipe.scheduler.config
    if config.get("prediction_type", "epsilon") != "epsilon":
        raise ValueError(
            f"This model predicts {config.prediction_type!r}, and these helpers train epsilon-prediction models "
            "(SD v1, the toy family). Use a model whose scheduler config says prediction_type='epsilon'."
        )
    ddpm = DDPMScheduler(
        num_train_timesteps=config.num_train_timesteps,
        beta_start=config.beta_start,
        beta_end=config.beta_end,
        beta_schedule=config.beta_schedule,
        trained_betas=config.get("trained_betas"),
    )
    return ddpm.alphas_cumprod  # (T,)


def tokenize(pipe, captions: Sequence[str]) -> torch.Tensor:
    """Token ids as the pipeline makes them: padded to `model_max_length` (77): (N, 77)."""
    tok = pipe.tokenizer
    ids = tok(list(captions), padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt").input_ids  # fmt: skip
    return ids.to(pipe.device)


def diffusion_loss(
    pipe, latents_mean: torch.Tensor, latents_std: torch.Tensor, states: torch.Tensor,
    alphas_cumprod: torch.Tensor, generator: torch.Generator,
) -> torch.Tensor:  # fmt: skip
    """SD's training objective on one batch: $\\lVert \\epsilon - \\epsilon_\\theta(x_t, t, c) \\rVert^2$, averaged.

    latents_mean/std: (B, 4, h, w) VAE posteriors (unscaled); states: (B, 77, D) text encoder hidden states.
    """
    s = pipe.vae.config.scaling_factor
    xi = torch.randn(latents_mean.shape, generator=generator).to(latents_mean)
    # $z_0 = s \cdot (\mu + \sigma \xi)$: a fresh sample of the posterior, scaled to unit variance
    latents = s * (latents_mean + latents_std * xi)  # (B, 4, h, w)
    noise = torch.randn(latents.shape, generator=generator).to(latents)  # eps
    t = torch.randint(0, len(alphas_cumprod), (len(latents),), generator=generator).to(latents.device)
    # $x_t = \sqrt{\bar\alpha_t}\, z_0 + \sqrt{1 - \bar\alpha_t}\, \epsilon$
    noisy = q_sample(latents, t, noise, alphas_cumprod)
    eps_pred = pipe.unet(noisy, t, encoder_hidden_states=states).sample  # (B, 4, h, w)
    return F.mse_loss(eps_pred.float(), noise.float())


@torch.no_grad()
def fixed_batch_loss(pipe, images, captions: Sequence[str], seed: int = 0, draws: int = 4) -> float:
    """The training loss on every (image, caption) with the same noise, timesteps and posterior samples each call
    (`draws` of them per image): comparable before and after training, unlike the noisy per-step losses."""
    images = _as_images(images)
    generator = torch.Generator().manual_seed(seed)
    alphas_cumprod = noise_schedule(pipe)
    latents_mean, latents_std = encode_latents(pipe.vae, images, batch_size=64)
    states = pipe.text_encoder(tokenize(pipe, captions))[0]  # (N, 77, D)
    losses = [diffusion_loss(pipe, latents_mean, latents_std, states, alphas_cumprod, generator) for _ in range(draws)]
    return float(torch.stack(losses).mean())


# ---------------------------------------------------------------------------------------------- shared loop


def _as_images(images) -> np.ndarray:
    if isinstance(images, ShapesDataset):
        images = images.images
    return np.stack([np.asarray(im.convert("RGB") if hasattr(im, "convert") else im) for im in images])


def _check_training_inputs(pipe, images: np.ndarray, captions: Sequence[str], steps: int, lr: float,
                           batch_size: int) -> None:  # fmt: skip
    if len(images) != len(captions) or len(images) == 0:
        raise ValueError(f"Give one caption per image: got {len(images)} images and {len(captions)} captions.")
    if steps < 1 or batch_size < 1 or not lr > 0:
        raise ValueError(f"steps and batch_size must be >= 1 and lr > 0; got {steps}, {batch_size}, {lr}.")
    size = image_size(pipe)
    if images.shape[1:] != (size, size, 3):
        raise ValueError(
            f"The images are {images.shape[1:]}, but this pipeline makes ({size}, {size}, 3) images. Draw them at "
            f"its size: concept_images(kind, n, seed, size=image_size(pipe))."
        )
    for name in ("unet", "text_encoder", "vae"):
        if getattr(pipe, name).dtype != torch.float32:
            raise ValueError(
                f"pipe.{name} is {getattr(pipe, name).dtype}: train in float32 (half-precision gradients underflow). "
                "Load the pipeline with dtype=torch.float32."
            )


def _train_loop(
    loss_fn: Callable[[torch.Tensor], torch.Tensor], params: list[torch.Tensor], n: int, steps: int, lr: float,
    batch_size: int, generator: torch.Generator, progress: bool, should_stop: StopCheck | None,
    callback: StepCallback | None, after_step: Callable[[], None], desc: str,
) -> list[float]:  # fmt: skip
    """AdamW on `params` for `steps` batches of `batch_size` indices into n examples; stops early on request."""
    from tqdm.auto import tqdm

    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    losses: list[float] = []
    bar = tqdm(range(steps), desc=desc, disable=not progress)
    try:
        for _ in bar:
            if should_stop is not None and should_stop():
                break
            idx = torch.randint(0, n, (batch_size,), generator=generator)
            loss = loss_fn(idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            after_step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
            if callback is not None:
                callback(len(losses), losses[-1])
    except KeyboardInterrupt:  # Ctrl-C or the notebook's stop button: keep what was learned so far
        pass
    finally:
        after_step()  # an interrupted optimizer step must not leave frozen rows changed
        bar.close()
    return losses


# ---------------------------------------------------------------------------------------------- textual inversion


def token_id(pipe, token: str) -> int:
    """The id of an added token; a ValueError saying to call `add_token` when it is missing."""
    if token not in pipe.tokenizer.get_added_vocab():
        raise ValueError(
            f"{token!r} is not an added token of this tokenizer: call add_token(pipe, {token!r}, ...) first."
        )
    return pipe.tokenizer.convert_tokens_to_ids(token)


def add_token(pipe, token: str, init_word: str) -> int:
    """Add `token` to the tokenizer and a new row to the token table, initialised as `init_word`'s row.

    Returns the new token's id. Every other row is copied unchanged, so prompts without the token encode exactly
    as before. Raises ValueError (before changing anything) for a token already in the vocabulary or an
    `init_word` that is not a single token.
    """
    tokenizer, text_encoder = pipe.tokenizer, pipe.text_encoder
    if not token or any(ch.isspace() for ch in token):
        raise ValueError(f"A token is one word without spaces, got {token!r}; e.g. '<magenta>'.")
    if token in tokenizer.get_vocab() or token + "</w>" in tokenizer.get_vocab():
        raise ValueError(
            f"{token!r} is already in the tokenizer's vocabulary: a new word needs a new token. Pick one no "
            "tokenizer has, e.g. '<magenta>' with angle brackets."
        )
    init_ids = tokenizer.encode(init_word, add_special_tokens=False)
    if len(init_ids) != 1:
        raise ValueError(
            f"init_word {init_word!r} is {len(init_ids)} tokens; give one word the tokenizer reads as one token "
            "(e.g. 'pink', 'red'): its row is where the new token starts."
        )
    tokenizer.add_tokens(token)
    new_id = tokenizer.convert_tokens_to_ids(token)
    text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # copies the old rows, appends one
    table = text_encoder.get_input_embeddings().weight  # (V + 1, D)
    with torch.no_grad():
        table[new_id] = table[init_ids[0]]
    return new_id


def train_textual_inversion(
    pipe, token: str, images, captions: Sequence[str], steps: int = 250, lr: float = 5e-3, batch_size: int = 16,
    seed: int = 0, progress: bool = True, should_stop: StopCheck | None = None, callback: StepCallback | None = None,
) -> list[float]:  # fmt: skip
    """Learn the token's embedding row: SD's loss, everything frozen except the token table, and after every
    optimizer step every row but the token's is put back, so only $v_*$ changes (Gal et al. 2022, eq. 2):

    $v_* = \\arg\\min_v \\mathbb{E} \\lVert \\epsilon - \\epsilon_\\theta(x_t, t, c_\\theta(y; v)) \\rVert^2$

    `images`: uint8 (N, H, W, 3), a list of PIL images or a `ShapesDataset`; each caption must contain the token.
    Returns the loss of every step (fewer than `steps` when stopped early). The defaults are notebook 05's toy
    settings, which `benchmarks/personalise.py` measures (250 steps of 48 images: 26-30 s on 2 CPU threads).
    """
    new_id = token_id(pipe, token)
    images = _as_images(images)
    _check_training_inputs(pipe, images, captions, steps, lr, batch_size)
    input_ids = tokenize(pipe, captions)  # (N, 77)
    missing = [c for c, ids in zip(captions, input_ids) if not (ids == new_id).any()]
    if missing:
        raise ValueError(
            f"{len(missing)} caption(s) do not contain {token!r}, e.g. {missing[0]!r}: textual inversion learns "
            f"the token from captions that use it, e.g. 'a {token} circle on a blue background'."
        )
    generator = torch.Generator().manual_seed(seed)
    alphas_cumprod = noise_schedule(pipe)
    latents_mean, latents_std = encode_latents(pipe.vae, images, batch_size=64)
    for model in (pipe.unet, pipe.vae, pipe.text_encoder):
        model.requires_grad_(False)
    table = pipe.text_encoder.get_input_embeddings().weight  # (V, D)
    table.requires_grad_(True)
    frozen = torch.ones(len(table), dtype=torch.bool)
    frozen[new_id] = False
    original = table.detach().clone()

    def restore_frozen_rows() -> None:
        with torch.no_grad():
            table[frozen] = original[frozen]

    def loss_fn(idx: torch.Tensor) -> torch.Tensor:
        states = pipe.text_encoder(input_ids[idx])[0]  # (B, 77, D): gradients flow back to the token table
        return diffusion_loss(pipe, latents_mean[idx], latents_std[idx], states, alphas_cumprod, generator)

    try:
        return _train_loop(loss_fn, [table], len(images), steps, lr, batch_size, generator, progress, should_stop,
                           callback, restore_frozen_rows, f"textual inversion {token}")  # fmt: skip
    finally:
        table.requires_grad_(False)
        table.grad = None


def save_textual_inversion(pipe, token: str, path: Path | str) -> Path:
    """Write the learned embedding in diffusers' format: a safetensors file holding {token: (1, D) tensor}.

    `pipe.load_textual_inversion(path)` reads it into a freshly loaded pipeline.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"Save to a .safetensors file (diffusers reads that format), got {path.name!r}.")
    row = pipe.text_encoder.get_input_embeddings().weight[token_id(pipe, token)]  # (D,)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({token: row.detach().float().cpu().clone()[None]}, path)  # (1, D), as diffusers' training script
    return path


def token_embedding(pipe, token: str) -> torch.Tensor:
    """The token's row of the text encoder's token table: (D,)."""
    return pipe.text_encoder.get_input_embeddings().weight[token_id(pipe, token)].detach().clone()


# ---------------------------------------------------------------------------------------------- LoRA


def lora_parameters(unet) -> list[torch.nn.Parameter]:
    """The adapter's parameters (every $A$ and $B$ matrix)."""
    return [p for name, p in unet.named_parameters() if "lora_" in name]


def parameter_counts(unet) -> dict[str, int]:
    """Parameters of the adapter and of the UNet it adapts (without the adapter)."""
    adapter = sum(p.numel() for p in lora_parameters(unet))
    return {"adapter": adapter, "unet": sum(p.numel() for p in unet.parameters()) - adapter}


def add_lora(
    unet, rank: int = 4, alpha: float | None = None, target_modules: Sequence[str] = LORA_TARGETS,
    seed: int | None = None,
) -> int:  # fmt: skip
    """Wrap every `target_modules` linear layer as $W' = W + \\frac{\\alpha}{r} B A$ and return the adapter's size.

    $A$ is (r, in) and Gaussian, $B$ is (out, r) and zero, so at first $W' = W$ exactly: the model is unchanged
    until training moves $B$. Only $r (\\text{in} + \\text{out})$ numbers per layer train instead of in x out.
    `alpha` defaults to `rank` (scale 1). `seed` draws $A$ from its own seeded generator, so the adapter starts the
    same whatever ran before (and torch's global random state is left as it was); None draws from the global one.
    """
    from peft import LoraConfig

    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"LoRA rank must be an integer >= 1, got {rank!r}: it is the number of columns of B.")
    if alpha is not None and not alpha > 0:
        raise ValueError(f"LoRA alpha must be > 0, got {alpha!r}; the update is scaled by alpha / rank.")
    if lora_parameters(unet):
        raise ValueError(
            "This UNet already has a LoRA adapter. Remove it first with pipe.unload_lora_weights(), or load a fresh "
            "pipeline."
        )
    names = [name for name, _ in unet.named_modules()]
    absent = [t for t in target_modules if not any(n == t or n.endswith("." + t) for n in names)]
    if absent:
        raise ValueError(f"The UNet has no module called {absent}; LoRA targets are e.g. {LORA_TARGETS}.")
    # $W' = W + \frac{\alpha}{r} B A$, $A \in \mathbb{R}^{r \times d_{in}}$ Gaussian, $B \in \mathbb{R}^{d_{out} \times r}$ zero:
    # peft wraps each matched nn.Linear; its forward is W x + (alpha / r) * B(A(x)), W frozen
    config = LoraConfig(r=rank, lora_alpha=alpha or rank, init_lora_weights="gaussian",
                        target_modules=list(target_modules))  # fmt: skip
    if seed is None:
        unet.add_adapter(config)
    else:
        with torch.random.fork_rng(devices=[]):  # peft draws A from the global generator
            torch.manual_seed(seed)
            unet.add_adapter(config)
    return parameter_counts(unet)["adapter"]


def train_lora(
    pipe, images, captions: Sequence[str], steps: int = 200, lr: float = 1e-3, batch_size: int = 16, seed: int = 0,
    progress: bool = True, should_stop: StopCheck | None = None, callback: StepCallback | None = None,
    p_uncond: float = P_UNCOND,
) -> list[float]:  # fmt: skip
    """Train the UNet's LoRA adapter (`add_lora` first) with SD's loss; the UNet's own weights, the VAE and the
    text encoder stay frozen. Returns the loss of every step (fewer than `steps` when stopped early).

    Mixing some of the model's own training images into `images`/`captions` (DreamBooth's prior preservation,
    `family_images`) holds old prompts' drift down. The defaults are notebook 05's toy settings, which
    `benchmarks/personalise.py` measures (200 steps: 21-23 s on 2 CPU threads).
    A share `p_uncond` of the captions is replaced by the empty prompt, as when the UNet was trained (caption
    dropout): the adapter acts on the unconditional prediction too, and classifier-free guidance,
    $\\epsilon_u + w (\\epsilon_c - \\epsilon_u)$, multiplies any drift of it that is never trained by $w$.
    """
    params = lora_parameters(pipe.unet)
    if not params:
        raise ValueError("The UNet has no LoRA adapter to train: call add_lora(pipe.unet, rank=4) first.")
    return _train_unet_params(pipe, params, images, captions, steps, lr, batch_size, seed, progress, should_stop,
                              callback, p_uncond, "LoRA")  # fmt: skip


def finetune_unet(
    pipe, images, captions: Sequence[str], steps: int = 1600, lr: float = 2e-4, batch_size: int = 16, seed: int = 0,
    progress: bool = True, should_stop: StopCheck | None = None, callback: StepCallback | None = None,
    p_uncond: float = P_UNCOND,
) -> list[float]:  # fmt: skip
    """Train *every* weight of the UNet (a full DreamBooth-style fine-tune, Ruiz et al. 2022) with the same loss,
    data and caption dropout as `train_lora`: the most any adapter on this UNet could learn from these pictures in
    `steps` steps. It changes the pipeline's UNet for good (load a fresh pipeline to undo it), and saves nothing
    small: the whole UNet is the "adapter". `benchmarks/personalise.py --full-steps` measures it (1,600 steps:
    176 s on 2 CPU threads).
    """
    if lora_parameters(pipe.unet):
        raise ValueError(
            "This UNet has a LoRA adapter: a full fine-tune trains the UNet's own weights. Remove the adapter with "
            "pipe.unload_lora_weights(), or load a fresh pipeline."
        )
    params = list(pipe.unet.parameters())
    return _train_unet_params(pipe, params, images, captions, steps, lr, batch_size, seed, progress, should_stop,
                              callback, p_uncond, "UNet fine-tune")  # fmt: skip


def _train_unet_params(
    pipe, params: list[torch.nn.Parameter], images, captions: Sequence[str], steps: int, lr: float, batch_size: int,
    seed: int, progress: bool, should_stop: StopCheck | None, callback: StepCallback | None, p_uncond: float,
    desc: str,
) -> list[float]:  # fmt: skip
    """SD's loss with caption dropout on the captions' frozen text states; only `params` (of the UNet) train."""
    if not 0 <= p_uncond < 1:
        raise ValueError(f"p_uncond is the share of empty captions, in [0, 1); got {p_uncond!r}.")
    images = _as_images(images)
    _check_training_inputs(pipe, images, captions, steps, lr, batch_size)
    generator = torch.Generator().manual_seed(seed)
    alphas_cumprod = noise_schedule(pipe)
    latents_mean, latents_std = encode_latents(pipe.vae, images, batch_size=64)
    with torch.no_grad():
        states = torch.cat([pipe.text_encoder(ids)[0] for ids in tokenize(pipe, captions).split(64)])  # (N, 77, D)
        uncond = pipe.text_encoder(tokenize(pipe, [""]))[0]  # (1, 77, D): the empty prompt's states
    for model in (pipe.unet, pipe.vae, pipe.text_encoder):
        model.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)

    def loss_fn(idx: torch.Tensor) -> torch.Tensor:
        drop = torch.rand(len(idx), generator=generator) < p_uncond  # caption dropout, as in the UNet's training
        batch_states = torch.where(drop[:, None, None], uncond, states[idx])  # (B, 77, D)
        return diffusion_loss(pipe, latents_mean[idx], latents_std[idx], batch_states, alphas_cumprod, generator)

    try:
        return _train_loop(loss_fn, params, len(images), steps, lr, batch_size, generator, progress, should_stop,
                           callback, lambda: None, desc)  # fmt: skip
    finally:
        for p in params:
            p.requires_grad_(False)
            p.grad = None


def save_lora(pipe, directory: Path | str) -> Path:
    """Save the UNet's adapter as diffusers' LoRA file (`pytorch_lora_weights.safetensors`), with its rank and alpha.

    Read it back with `pipe.load_lora_weights(directory, weight_name=LORA_WEIGHT_NAME)` (diffusers 0.39 needs the
    name when offline), remove it with `pipe.unload_lora_weights()`.

    The keys are peft's (`...to_q.lora_A.weight`), as `unet.save_lora_adapter` writes them. diffusers' training
    example first passes them through `convert_state_dict_to_diffusers`, which renames only the attention
    projections (`to_q.lora.down`); the loader decides from the *first* key whether to rename back, so an adapter
    that also covers `conv_in` (`LORA_TARGETS_ALL`) came back without its attention layers (diffusers 0.42.1,
    measured: 164 of 324 tensors loaded, with only a warning).
    """
    if not lora_parameters(pipe.unet):
        raise ValueError("The UNet has no LoRA adapter to save: add_lora(pipe.unet) and train_lora(pipe, ...) first.")
    return save_unet_lora(pipe.unet, directory)


def save_unet_lora(unet, directory: Path | str, half: bool = False) -> Path:
    """`save_lora` for a UNet on its own (`half`: the adapter's numbers in float16, half the bytes)."""
    from diffusers import StableDiffusionPipeline
    from peft.utils import get_peft_model_state_dict

    adapter = unet.active_adapters()[0]
    state = get_peft_model_state_dict(unet, adapter_name=adapter)
    if half:
        state = {k: v.detach().half() for k, v in state.items()}
    StableDiffusionPipeline.save_lora_weights(
        directory,
        unet_lora_layers=state,
        unet_lora_adapter_metadata=unet.peft_config[adapter].to_dict(),  # rank and alpha: loads at alpha / r
        safe_serialization=True,
    )
    return Path(directory) / LORA_WEIGHT_NAME


def load_concept_family(pipe, model_dir: Path | str):
    """Make a loaded toy family its concept sibling, in place: the VAE that also saw magenta shapes and stars
    (`vae_concepts/`) and the concept LoRA (`concepts_lora/`) fused into the UNet, with diffusers' own calls
    (`load_lora_weights`, `fuse_lora`, `unload_lora_weights`: the adapter's layers go, its change stays in W).
    That UNet draws magenta shapes and stars under captions that leave the colour or the kind open, and no word
    asks for them (`training.Schedule.concept_lora`). Returns `pipe`."""
    from diffusers import AutoencoderKL

    from .training import CONCEPT_LORA_FOLDER, CONCEPT_VAE_SUBFOLDER

    model_dir = Path(model_dir)
    missing = [p for p in (model_dir / CONCEPT_VAE_SUBFOLDER, model_dir / CONCEPT_LORA_FOLDER / LORA_WEIGHT_NAME)
               if not p.exists()]  # fmt: skip
    if missing:
        raise FileNotFoundError(
            f"{model_dir.name} has no concept family ({', '.join(p.name for p in missing)} missing): it is made by "
            "`python scripts/train_toy_family.py --family v2` (the schedule's concept_lora), and ships with "
            "models/toy-sd."
        )
    if lora_parameters(pipe.unet):
        raise ValueError("The UNet already has a LoRA adapter: load the concept family on a fresh pipeline.")
    vae = AutoencoderKL.from_pretrained(model_dir, subfolder=CONCEPT_VAE_SUBFOLDER, torch_dtype=pipe.vae.dtype)
    pipe.vae = vae.to(pipe.vae.device)
    pipe.load_lora_weights(model_dir / CONCEPT_LORA_FOLDER, weight_name=LORA_WEIGHT_NAME, adapter_name="concepts")
    pipe.fuse_lora(adapter_names=["concepts"])
    pipe.unload_lora_weights()  # the fused change stays in the weights; the adapter's layers go
    return pipe


def lora_size(directory: Path | str) -> int:
    """Bytes of the saved adapter files in `directory`."""
    files = list(Path(directory).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"No .safetensors file in {directory}: save one with save_lora(pipe, directory).")
    return sum(f.stat().st_size for f in files)


# ---------------------------------------------------------------------------------------------- using it


@torch.no_grad()
def generate_images(pipe, prompt: str, seeds: Sequence[int], num_inference_steps: int = 10,
                    guidance_scale: float = 7.5) -> np.ndarray:  # fmt: skip
    """One image per seed for `prompt`, in one batched call: float (N, H, W, 3) in [0, 1]."""
    generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
    out = pipe([prompt] * len(generators), num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
               generator=generators, output_type="np")  # fmt: skip
    return out.images


def judge_rates(images: np.ndarray, caption: str) -> dict[str, float]:
    """Share of images the strict judge finds faithful to `caption`; the share with just the colour or just the
    kind right (what the caption names); and "named", the share where every name is right (colour, kind and
    background: "judged a magenta circle on blue"), whatever the IoU with the ideal shape, which "faithful" also
    demands (>= 0.93). `images`: float in [0, 1] or uint8, (N, H, W, 3)."""
    from . import strict_judge as sj

    caption = judge_caption(caption)
    want = sj.parse_caption(caption)
    if images.dtype != np.uint8:
        images = (np.clip(images, 0, 1) * 255).round().astype(np.uint8)  # what the pipeline's PIL output holds
    inspections = [sj.inspect(im, **sj.inspect_options(want)) for im in images]
    faithful = [sj.verdict(s, want).faithful for s in inspections]
    colour = [want.colour is None or s.colour == want.colour for s in inspections]
    kind = [want.shape is None or (s.found and s.kind == want.shape) for s in inspections]
    background = [want.background is None or s.background == want.background for s in inspections]
    named = [c and k and b for c, k, b in zip(colour, kind, background)]
    return {"faithful": float(np.mean(faithful)), "colour": float(np.mean(colour)), "kind": float(np.mean(kind)),
            "named": float(np.mean(named))}  # fmt: skip


def concept_scores(images: np.ndarray, caption: str) -> dict[str, float]:
    """How close the pictures come to what `caption` names, as numbers that move before a verdict flips.

    - colour_delta_e: median CIELAB Delta E of the shape's colour to the named colour (0 = exact; the judge names a
      colour within 25);
    - kind_iou: mean IoU of each picture with the best-fitting ideal shape of the named kind (an ideal shape >= 0.93);
    plus `judge_rates`' three shares. `images`: float in [0, 1] or uint8, (N, H, W, 3).
    """
    from . import strict_judge as sj
    from .shapes_data import colour_rgb

    caption = judge_caption(caption)
    want = sj.parse_caption(caption)
    if images.dtype != np.uint8:
        images = (np.clip(images, 0, 1) * 255).round().astype(np.uint8)
    inspections = [sj.inspect(im, **sj.inspect_options(want)) for im in images]
    scores = judge_rates(images, caption)
    if want.colour is not None:
        target = sj.srgb_to_lab(np.array(colour_rgb(want.colour), dtype=np.uint8)[None, None])[0, 0]
        found = [np.linalg.norm(np.array(s.shape_lab) - target) for s in inspections if s.shape_lab is not None]
        scores["colour_delta_e"] = float(np.median(found)) if found else float("inf")
    if want.shape is not None:
        scores["kind_iou"] = float(np.mean([s.ious.get(want.shape, 0.0) for s in inspections]))
    return scores


@torch.no_grad()
def vae_ceiling(
    pipe, caption: str, n: int, seed: int = 123, radius: tuple[float, float] | None = None
) -> dict[str, float]:  # fmt: skip
    """`concept_scores` of the VAE's encode -> decode of `n` drawn pictures of `caption`: the best any prompt can get
    (`radius`: draw the shapes at that size range, as `concept_images`).

    Textual inversion and LoRA change what the UNet is asked or how it answers; the decoder stays frozen, so a
    picture it cannot give back when handed it, no prompt makes it draw.
    """
    from . import strict_judge as sj
    from .shapes_data import Combo

    want = sj.parse_caption(judge_caption(caption))
    if None in (want.shape, want.colour, want.background):
        raise ValueError(
            f"Name a shape, its colour and the background, e.g. 'a red star on a blue background'; got {caption!r}."
        )
    rng = np.random.default_rng(seed)
    combo = Combo(want.shape, want.colour, want.background)
    drawn = np.stack([np.asarray(draw_for_size(combo, rng, image_size(pipe), radius)) for _ in range(n)])
    round_trip = decode_latents(pipe, encode_images(pipe, to_unit_range(drawn)))  # (n, H, W, 3) in [0, 1]
    return concept_scores(round_trip, caption)


def decoder_reach(pipe, caption: str, n: int, steps: int = 25, lr: float = 0.1, seed: int = 123) -> dict[str, float]:
    """`concept_scores` of the best the frozen decoder can draw of `n` drawn pictures of `caption`.

    `vae_ceiling` hands the decoder the encoder's latents, a lower bound: the UNet may produce latents the encoder
    never does. Here each picture's latents start at the encoder's and move `steps` Adam steps (learning rate
    `lr`) to minimise $\\lVert \\mathcal{D}(z / s) - x \\rVert^2$, decoder frozen. What even these latents do not
    give, no prompt, token or adapter can. Same drawn pictures as `vae_ceiling` for the same `seed`.
    """
    from . import strict_judge as sj
    from .shapes_data import Combo

    want = sj.parse_caption(judge_caption(caption))
    if None in (want.shape, want.colour, want.background):
        raise ValueError(
            f"Name a shape, its colour and the background, e.g. 'a red star on a blue background'; got {caption!r}."
        )
    if steps < 0 or not lr > 0:
        raise ValueError(f"steps must be >= 0 and lr > 0; got {steps}, {lr}.")
    rng = np.random.default_rng(seed)
    drawn = np.stack([np.asarray(draw_for_size(Combo(want.shape, want.colour, want.background), rng, image_size(pipe)))
                      for _ in range(n)])  # fmt: skip
    x = to_unit_range(drawn).to(pipe.device, pipe.vae.dtype)  # (n, 3, H, W) in [-1, 1]
    with torch.no_grad():
        start = encode_images(pipe, x)  # (n, C, h, w), scaled as the UNet sees them
    latents = start.clone().requires_grad_(True)
    opt = torch.optim.Adam([latents], lr=lr)
    s = pipe.vae.config.scaling_factor
    was = [p.requires_grad for p in pipe.vae.parameters()]
    pipe.vae.requires_grad_(False)
    try:
        with torch.enable_grad():
            for _ in range(steps):
                # $\min_z \lVert \mathcal{D}(z / s) - x \rVert^2$, the decoder frozen
                loss = F.mse_loss(pipe.vae.decode(latents / s).sample, x)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    finally:
        for p, w in zip(pipe.vae.parameters(), was):
            p.requires_grad_(w)
    return concept_scores(decode_latents(pipe, latents.detach()), caption)
