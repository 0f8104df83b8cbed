"""The blog's CLIP ranking code, kept as it was (bugs included) so notebook 06 can show what goes wrong.

The blog (after Boris Dayma's DALL-E Mini) scored images with `jax.pmap` but

1. built the text as `prompt * jax.device_count()`: for a string that repeats the *characters*
   ("a cata cat"), not the prompt (in DALL-E Mini `prompts` was a list, where `* n` makes n copies);
2. never padded the batch: `shard` fails unless the image count divides by the device count;
3. read `logits[0]`, the scores of device 0 only: on 2 devices half the images were never ranked.

`helpers.clip_ranking.rank` fixes all three. Only the model call changed here: `FlaxCLIPModel(params=...)`
became our linen module's `apply`, and flax's `replicate`/`shard` our own (`helpers.clip_devices`).
"""

from __future__ import annotations

import numpy as np

from .clip_devices import replicate, shard
from .clip_loading import TEXT_MAX_LENGTH, Clip


def blog_scores(images, prompt, clip: Clip) -> np.ndarray:
    """The blog's scoring: `text=prompt * jax.device_count()`, shard without padding, return `logits[0]`."""
    import jax

    if "blog" not in clip._cache:
        model = clip.model

        def p_clip(inputs, params):
            return model.apply({"params": params}, **inputs)  # logits_per_image, (b, n_texts) per device

        clip._cache["blog"] = (jax.pmap(p_clip, axis_name="batch"), replicate(clip.params))
    p_clip, params = clip._cache["blog"]
    inputs = clip.processor(
        text=prompt * jax.device_count(),
        images=images,
        return_tensors="np",
        padding="max_length",
        max_length=TEXT_MAX_LENGTH,
        truncation=True,
    ).data
    logits = p_clip(shard(inputs), params)
    return np.asarray(logits[0])  # device 0's (b / n_devices, n_texts) only
