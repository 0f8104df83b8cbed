"""Teaching the toy family a new word: textual inversion and LoRA on models/toy-sd, and the judge of new concepts.

Every test trains a few steps only (seconds on one CPU thread): they prove the mechanics (what changes, what does
not, what round-trips through diffusers' file formats), not the quality, which benchmarks/personalise.py measures.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import personalise as P
from helpers import strict_judge as sj
from helpers.paths import MODELS_DIR
from helpers.shapes_data import COLOURS, SHAPES, V2_RADIUS, Combo, draw_for_size, draw_v2

pytestmark = pytest.mark.usefixtures("single_thread")

TOY = MODELS_DIR / "toy-sd"
OLD_PROMPT = "a red circle on a blue background"
NEW_PROMPT = "a <magenta> circle on a blue background"
STEPS = 4  # denoising steps for the comparisons: exactness does not need good pictures


def load_toy():
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(TOY)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def pipe():
    """A freshly loaded toy pipeline per test (0.5 s): the tests change its token table and UNet."""
    return load_toy()


def images_of(pipe, prompt: str, seeds=(0, 1)) -> np.ndarray:
    return P.generate_images(pipe, prompt, seeds, num_inference_steps=STEPS)


def magenta_data(pipe, n: int = 12, seed: int = 0):
    return P.concept_images("magenta", n, seed, P.image_size(pipe))


# ---------------------------------------------------------------------------------------------- data


def test_concept_images_draw_new_concepts_with_their_word_in_the_caption():
    data = P.concept_images("magenta", 18, 0, 32)
    assert data.images.shape == (18, 32, 32, 3) and data.images.dtype == np.uint8
    assert all("<magenta>" in c and "magenta " not in c.replace("<magenta>", "") for c in data.captions)
    assert {c.shape for c in data.combos} == set(SHAPES) and {c.colour for c in data.combos} == {"magenta"}
    again = P.concept_images("magenta", 18, 0, 32)
    assert np.array_equal(again.images, data.images) and again.captions == data.captions  # seeded
    stars = P.concept_images("star", 6, 1, 64)
    assert stars.images.shape == (6, 64, 64, 3)
    assert all(c.shape == "star" and f"{c.colour} star" in cap for c, cap in zip(stars.combos, stars.captions))
    assert P.concept_images("magenta", 2, 0, 32, word="<m>").captions[0].count("<m>") == 1
    with pytest.raises(ValueError, match="Unknown new concept"):
        P.concept_images("purple", 2, 0, 32)
    assert P.judge_caption(NEW_PROMPT) == "a magenta circle on a blue background"


def test_concept_images_can_draw_big_stars_and_refuse_shapes_that_cross_the_border():
    def area(images):  # share of pixels that differ from the corner (the background), per image
        return np.mean([(np.abs(im.astype(int) - im[0, 0].astype(int)).sum(-1) > 60).mean() for im in images])

    small = P.concept_images("star", 16, 0, 64)
    big = P.concept_images("star", 16, 0, 64, radius=P.STAR_RADIUS_BIG)
    assert big.captions == small.captions and area(big.images) > 2 * area(small.images)
    assert np.array_equal(P.concept_images("star", 16, 0, 64, radius=V2_RADIUS).images, small.images)  # the default
    with pytest.raises(ValueError, match="cross the border"):
        P.concept_images("star", 2, 0, 64, radius=(0.3, 0.5))
    with pytest.raises(ValueError, match="cross the border"):
        draw_v2(Combo("square", "red", "blue"), np.random.default_rng(0), radius=(0.3, 0.42))
    with pytest.raises(ValueError, match="radius applies"):
        P.concept_images("star", 2, 0, 32, radius=P.STAR_RADIUS_BIG)


def test_image_size_comes_from_the_pipeline(pipe):
    assert P.image_size(pipe) == pipe.unet.config.sample_size * pipe.vae_scale_factor
    P.add_lora(pipe.unet, rank=2)
    with pytest.raises(ValueError, match="image_size"):
        P.train_lora(pipe, P.concept_images("star", 2, 0, 2 * P.image_size(pipe)), ["a red star"] * 2, steps=1)


# ---------------------------------------------------------------------------------------------- textual inversion


def test_add_token_leaves_every_other_prompt_bit_identical(pipe):
    before = images_of(pipe, OLD_PROMPT)
    table_before = pipe.text_encoder.get_input_embeddings().weight.detach().clone()
    new_id = P.add_token(pipe, "<magenta>", "red")
    table = pipe.text_encoder.get_input_embeddings().weight
    assert new_id == len(table_before) and len(table) == len(table_before) + 1
    red = pipe.tokenizer.encode("red", add_special_tokens=False)[0]
    assert torch.equal(table[new_id], table[red])  # starts as the init word
    data = magenta_data(pipe)
    P.train_textual_inversion(pipe, "<magenta>", data, data.captions, steps=3, lr=1e-2, batch_size=4, progress=False)
    after = images_of(pipe, OLD_PROMPT)
    assert torch.allclose(torch.from_numpy(before), torch.from_numpy(after), atol=1e-6)
    assert not torch.equal(table[new_id], table[red])  # the new row did move


def test_textual_inversion_lowers_the_loss_and_changes_only_the_new_row(pipe):
    data = magenta_data(pipe, n=18)
    new_id = P.add_token(pipe, "<magenta>", "red")
    table = pipe.text_encoder.get_input_embeddings().weight
    original = table.detach().clone()
    before = P.fixed_batch_loss(pipe, data, data.captions)
    losses = P.train_textual_inversion(pipe, "<magenta>", data, data.captions, steps=25, lr=2e-2, batch_size=9,
                                       seed=0, progress=False)  # fmt: skip
    assert len(losses) == 25 and all(np.isfinite(losses))
    after = P.fixed_batch_loss(pipe, data, data.captions)
    assert after < before, (before, after)
    changed = (table.detach() != original).any(dim=1)
    assert changed.nonzero().flatten().tolist() == [new_id]
    assert not table.requires_grad and table.grad is None  # left frozen, no stale gradient


def test_textual_inversion_round_trips_through_diffusers_load_textual_inversion(pipe, tmp_path):
    from safetensors.torch import load_file

    P.add_token(pipe, "<magenta>", "red")
    data = magenta_data(pipe)
    P.train_textual_inversion(pipe, "<magenta>", data, data.captions, steps=3, lr=1e-2, batch_size=4, progress=False)
    path = P.save_textual_inversion(pipe, "<magenta>", tmp_path / "magenta.safetensors")
    saved = load_file(path)
    assert list(saved) == ["<magenta>"] and saved["<magenta>"].shape == (1, pipe.text_encoder.config.hidden_size)
    fresh = load_toy()
    fresh.load_textual_inversion(path)
    assert torch.equal(P.token_embedding(fresh, "<magenta>"), P.token_embedding(pipe, "<magenta>"))
    assert torch.allclose(torch.from_numpy(images_of(fresh, NEW_PROMPT)), torch.from_numpy(images_of(pipe, NEW_PROMPT)),
                          atol=1e-6)  # fmt: skip


def test_textual_inversion_refuses_bad_input_before_training(pipe, tmp_path):
    data = magenta_data(pipe, n=2)
    vocab = len(pipe.tokenizer)
    with pytest.raises(ValueError, match="add_token"):
        P.train_textual_inversion(pipe, "<magenta>", data, data.captions, steps=1, progress=False)
    with pytest.raises(ValueError, match="already in the tokenizer's vocabulary"):
        P.add_token(pipe, "red", "red")
    with pytest.raises(ValueError, match="one token"):
        P.add_token(pipe, "<x>", "a red circle")
    assert len(pipe.tokenizer) == pipe.text_encoder.get_input_embeddings().num_embeddings == vocab  # untouched
    P.add_token(pipe, "<magenta>", "red")
    with pytest.raises(ValueError, match="already"):
        P.add_token(pipe, "<magenta>", "red")
    with pytest.raises(ValueError, match="do not contain '<magenta>'"):
        P.train_textual_inversion(pipe, "<magenta>", data, ["a red circle on a blue background"] * 2, steps=1)
    with pytest.raises(ValueError, match="one caption per image"):
        P.train_textual_inversion(pipe, "<magenta>", data, data.captions[:1], steps=1)
    with pytest.raises(ValueError, match=".safetensors"):
        P.save_textual_inversion(pipe, "<magenta>", tmp_path / "magenta.bin")


def test_should_stop_and_ctrl_c_end_training_early_with_the_losses_so_far(pipe):
    P.add_token(pipe, "<magenta>", "red")
    data = magenta_data(pipe, n=4)
    calls = []
    stop_after_two = lambda: len(calls) >= 2
    losses = P.train_textual_inversion(pipe, "<magenta>", data, data.captions, steps=50, batch_size=2,
                                       progress=False, should_stop=stop_after_two,
                                       callback=lambda step, loss: calls.append((step, loss)))  # fmt: skip
    assert len(losses) == 2 and [s for s, _ in calls] == [1, 2]

    table = pipe.text_encoder.get_input_embeddings().weight
    original = table.detach().clone()

    def interrupt(step, loss):
        if step == 3:
            raise KeyboardInterrupt  # what the notebook's stop button / Ctrl-C raises

    losses = P.train_textual_inversion(pipe, "<magenta>", data, data.captions, steps=50, batch_size=2,
                                       progress=False, callback=interrupt)  # fmt: skip
    assert len(losses) == 3
    changed = (table.detach() != original).any(dim=1).nonzero().flatten().tolist()
    assert changed == [P.token_id(pipe, "<magenta>")]


# ---------------------------------------------------------------------------------------------- LoRA


def test_lora_round_trip_and_unload_restore_exact_outputs(pipe, tmp_path):

    prompt = "a red star on a blue background"
    base = images_of(pipe, prompt)
    n_adapter = P.add_lora(pipe.unet, rank=2, alpha=4.0)  # alpha != rank: the saved metadata must carry it
    counts = P.parameter_counts(pipe.unet)
    assert counts["adapter"] == n_adapter > 0 and counts["unet"] == sum(p.numel() for p in load_toy().unet.parameters())
    assert np.array_equal(images_of(pipe, prompt), base)  # B = 0 at first: W' = W exactly
    data = P.concept_images("star", 8, 0, P.image_size(pipe))
    losses = P.train_lora(pipe, data, data.captions, steps=4, lr=1e-2, batch_size=4, progress=False)
    assert len(losses) == 4
    trained = images_of(pipe, prompt)
    assert np.abs(trained - base).max() > 1e-3  # the adapter changed the picture

    path = P.save_lora(pipe, tmp_path / "star-lora")
    assert path.exists() and P.lora_size(tmp_path / "star-lora") < 4 * counts["unet"] / 10
    fresh = load_toy()
    fresh.load_lora_weights(tmp_path / "star-lora", weight_name=P.LORA_WEIGHT_NAME)
    assert torch.allclose(torch.from_numpy(images_of(fresh, prompt)), torch.from_numpy(trained), atol=1e-6)
    fresh.unload_lora_weights()
    assert torch.allclose(torch.from_numpy(images_of(fresh, prompt)), torch.from_numpy(base), atol=1e-6)
    pipe.unload_lora_weights()
    assert not P.lora_parameters(pipe.unet)
    assert torch.allclose(torch.from_numpy(images_of(pipe, prompt)), torch.from_numpy(base), atol=1e-6)


def _as_if_trained_then_reloaded(pipe, folder):
    """Give the adapter's B random values (as if trained), save it, load it into a fresh pipeline: (fresh, trained
    images of OLD_PROMPT)."""
    with torch.no_grad():
        for name, p in pipe.unet.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.01, generator=torch.Generator().manual_seed(len(name)))  # as if trained
    trained = images_of(pipe, OLD_PROMPT)
    P.save_lora(pipe, folder)
    fresh = load_toy()
    fresh.load_lora_weights(folder, weight_name=P.LORA_WEIGHT_NAME)
    return fresh, trained


def test_lora_on_every_layer_round_trips_whole(pipe, tmp_path):
    """An adapter on convolutions as well as attention comes back with every tensor (diffusers-renamed keys lost the
    attention layers when the first key was a convolution's)."""
    n_adapter = P.add_lora(pipe.unet, rank=2, target_modules=P.LORA_TARGETS_ALL, seed=0)
    fresh, trained = _as_if_trained_then_reloaded(pipe, tmp_path / "all-lora")
    assert P.parameter_counts(fresh.unet)["adapter"] == n_adapter > P.add_lora(load_toy().unet, rank=2)
    assert np.abs(images_of(fresh, OLD_PROMPT) - trained).max() <= 1e-6


def test_lora_on_the_cross_attention_reads_only_the_text_and_round_trips(pipe, tmp_path):
    """Custom Diffusion's choice (`LORA_TARGETS_CROSS`): only attn2's to_k and to_v, which act on the text states."""
    n_adapter = P.add_lora(pipe.unet, rank=2, target_modules=P.LORA_TARGETS_CROSS, seed=0)
    wrapped = {n.rsplit(".lora_", 1)[0] for n, _ in pipe.unet.named_parameters() if "lora_" in n}
    assert wrapped and all(n.endswith(("attn2.to_k", "attn2.to_v")) for n in wrapped)
    text_width = pipe.unet.config.cross_attention_dim
    by_hand = sum(2 * (text_width + m.out_features) for n, m in pipe.unet.named_modules() if n in wrapped)
    assert n_adapter == by_hand < P.add_lora(load_toy().unet, rank=2)  # smaller than on every projection
    fresh, trained = _as_if_trained_then_reloaded(pipe, tmp_path / "cross-lora")
    assert P.parameter_counts(fresh.unet)["adapter"] == n_adapter
    assert np.abs(images_of(fresh, OLD_PROMPT) - trained).max() <= 1e-6


def test_concept_family_is_the_concept_vae_and_the_fused_lora_loaded_with_diffusers_calls(tmp_path):
    """`training.train_concept_lora` trains only its adapter; `save_concept_lora` writes it in half precision;
    `load_concept_family` swaps in the concept VAE and fuses the adapter, leaving no adapter layers behind, and draws
    what the trained UNet with that VAE draws."""
    import copy
    import shutil

    from diffusers import AutoencoderKL
    from safetensors import safe_open

    from helpers import training as tr

    family = tmp_path / "toy-sd"
    shutil.copytree(TOY, family, ignore=shutil.ignore_patterns("unet_inpainting", "vae_concepts", "concepts_lora"))
    base = load_toy()
    with pytest.raises(FileNotFoundError, match="no concept family.*train_toy_family.py"):
        P.load_concept_family(load_toy(), family)
    vae = copy.deepcopy(base.vae)
    with torch.no_grad():
        vae.decoder.conv_out.bias.add_(0.1)  # a concept VAE that differs from the family's
    tr.save_half(vae, family / tr.CONCEPT_VAE_SUBFOLDER)
    inputs = tr.v2_unet_inputs(None, vae, base.tokenizer, 81, seed=1, rotate=False,
                               scaling_factor=base.vae.config.scaling_factor, concepts=("magenta", "star"),
                               text_encoder=base.text_encoder)  # fmt: skip
    before = {k: v.clone() for k, v in base.unet.state_dict().items()}
    trained, losses = tr.train_concept_lora(base.unet, inputs, base.vae.config.scaling_factor, rank=2, steps=3,
                                            lr=1e-2, batch_size=4, ema_decay=0.0, progress=False)  # fmt: skip
    assert len(losses) == 3
    assert all(torch.equal(v, before[k]) for k, v in base.unet.state_dict().items())  # the family's UNet: untouched
    adapter = {n for n, p in trained.named_parameters() if "lora_" in n}
    assert adapter and {n.rsplit(".lora_", 1)[0].rsplit(".", 1)[-1] for n in adapter} >= {"conv1", "to_k", "proj_in"}
    path = tr.save_concept_lora(trained, family)
    with safe_open(path, "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16} and len(list(f.keys())) == len(adapter)
    want = load_toy()
    want.unet, want.vae = trained, AutoencoderKL.from_pretrained(family, subfolder=tr.CONCEPT_VAE_SUBFOLDER)
    with torch.no_grad():  # what the saved half-precision adapter holds
        for p in want.unet.parameters():
            p.copy_(p.half().float())
    got = P.load_concept_family(load_toy(), family)
    assert not P.lora_parameters(got.unet) and not any("lora" in n for n, _ in got.unet.named_modules())
    moved = [k for k, v in got.unet.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.endswith("attn2.to_k.weight") for k in moved)  # the adapter's change is in the UNet's own weights
    assert torch.allclose(got.vae.decoder.conv_out.bias, want.vae.decoder.conv_out.bias)
    np.testing.assert_allclose(images_of(got, OLD_PROMPT), images_of(want, OLD_PROMPT), atol=2e-3)
    P.add_lora(got.unet, rank=2)
    with pytest.raises(ValueError, match="already has a LoRA adapter"):
        P.load_concept_family(got, family)


def test_lora_seed_fixes_the_start_and_leaves_the_global_generator_alone(pipe):
    P.add_lora(pipe.unet, rank=2, seed=3)
    first = {n: p.detach().clone() for n, p in pipe.unet.named_parameters() if "lora_A" in n}
    assert first and all(p.abs().sum() > 0 for p in first.values())
    other = load_toy()
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    torch.rand(5)  # whatever ran before must not matter
    P.add_lora(other.unet, rank=2, seed=3)
    again = {n: p.detach() for n, p in other.unet.named_parameters() if "lora_A" in n}
    assert all(torch.equal(first[n], again[n]) for n in first)
    torch.random.set_rng_state(state)
    torch.rand(5)
    P.add_lora(load_toy().unet, rank=2, seed=3)
    after = torch.rand(3)
    torch.random.set_rng_state(state)
    torch.rand(5)
    assert torch.equal(after, torch.rand(3))  # adding the seeded adapter drew nothing from the global generator


def test_lora_trains_only_the_adapter(pipe):
    P.add_lora(pipe.unet, rank=2)
    frozen = {n: p.detach().clone() for n, p in pipe.unet.named_parameters() if "lora_" not in n}
    lora_b = {n: p.detach().clone() for n, p in pipe.unet.named_parameters() if "lora_B" in n}
    data = P.concept_images("star", 4, 0, P.image_size(pipe))
    P.train_lora(pipe, data, data.captions, steps=2, lr=1e-2, batch_size=2, progress=False)
    params = dict(pipe.unet.named_parameters())
    assert all(torch.equal(params[n], p) for n, p in frozen.items())
    assert any(not torch.equal(params[n], p) for n, p in lora_b.items())


@pytest.mark.parametrize("p_uncond", [0.0, 0.5])
def test_lora_drops_captions_as_the_unet_was_trained(pipe, p_uncond):
    """A share p_uncond of the batch sees the empty prompt's states, so the adapter learns the unconditional
    prediction that classifier-free guidance uses; 0 turns it off."""
    uncond = pipe.text_encoder(P.tokenize(pipe, [""]))[0][0].detach()  # (77, D)
    seen = []
    hook = pipe.unet.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(kwargs["encoder_hidden_states"].detach().clone()), with_kwargs=True
    )
    P.add_lora(pipe.unet, rank=2, seed=0)
    data = P.concept_images("star", 4, 0, P.image_size(pipe))
    try:
        P.train_lora(pipe, data, data.captions, steps=4, lr=1e-3, batch_size=8, progress=False, p_uncond=p_uncond)
    finally:
        hook.remove()
    states = torch.cat(seen)  # (32, 77, D)
    empty = sum(torch.equal(s, uncond) for s in states)
    assert (empty == 0) if p_uncond == 0 else (4 <= empty <= 28), empty
    with pytest.raises(ValueError, match="share of empty captions"):
        P.train_lora(pipe, data, data.captions, steps=1, p_uncond=1.0)


@pytest.mark.parametrize("size", [32, 64])
def test_family_images_are_what_the_familys_unet_trained_on(size):
    from helpers.shapes_data import make_dataset, make_dataset_v2
    from helpers.training import V2_SCHEDULE

    n = 60  # more than the circles at the front of train_combos(): squares and triangles too
    prior = P.family_images(n, seed=3, size=size)
    if size == 32:
        expected = make_dataset(n, seed=3, size=32)
    else:
        assert V2_SCHEDULE.unet_upright  # the committed UNet saw upright squares and triangles ...
        expected = make_dataset_v2(n, seed=3, size=64, rotate=False)
        assert all(g["angle"] == 0 for g in prior.geometry)  # ... so its prior images are upright too
        assert not np.array_equal(prior.images, make_dataset_v2(n, seed=3, size=64).images)
    assert np.array_equal(prior.images, expected.images) and prior.captions == expected.captions
    with pytest.raises(ValueError, match="at least 1"):
        P.family_images(0, seed=0, size=size)


def test_full_finetune_trains_the_unets_own_weights_and_refuses_an_adapted_unet(pipe):
    before = {n: p.detach().clone() for n, p in pipe.unet.named_parameters()}
    text_before = pipe.text_encoder.get_input_embeddings().weight.detach().clone()
    data = P.concept_images("star", 4, 0, P.image_size(pipe))
    losses = P.finetune_unet(pipe, data, data.captions, steps=2, lr=1e-3, batch_size=2, progress=False)
    assert len(losses) == 2
    changed = [n for n, p in pipe.unet.named_parameters() if not torch.equal(p, before[n])]
    assert len(changed) > len(before) // 2  # the UNet's own weights, not an adapter's
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight, text_before)
    assert not any(p.requires_grad for p in pipe.unet.parameters())
    P.add_lora(pipe.unet, rank=2)
    with pytest.raises(ValueError, match="has a LoRA adapter"):
        P.finetune_unet(pipe, data, data.captions, steps=1)


def test_lora_refuses_bad_input_before_training(pipe, tmp_path):
    data = P.concept_images("star", 2, 0, P.image_size(pipe))
    with pytest.raises(ValueError, match="add_lora"):
        P.train_lora(pipe, data, data.captions, steps=1)
    with pytest.raises(ValueError, match="rank must be an integer >= 1"):
        P.add_lora(pipe.unet, rank=0)
    with pytest.raises(ValueError, match="no module called"):
        P.add_lora(pipe.unet, rank=2, target_modules=("to_qkv",))
    with pytest.raises(ValueError, match="no LoRA adapter to save"):
        P.save_lora(pipe, tmp_path / "none")
    P.add_lora(pipe.unet, rank=2)
    with pytest.raises(ValueError, match="already has a LoRA adapter"):
        P.add_lora(pipe.unet, rank=2)
    with pytest.raises(ValueError, match="steps and batch_size"):
        P.train_lora(pipe, data, data.captions, steps=0)


# ---------------------------------------------------------------------------------------------- judging new concepts


def test_the_judge_reads_new_concepts_only_when_the_caption_names_them():
    assert sj.parse_caption("a magenta circle on a blue background") == sj.Request("circle", "magenta", "blue")
    assert sj.parse_caption("a blue background with a red star") == sj.Request("star", "red", "blue")
    assert sj.inspect_options("a red circle on a blue background") == {"kinds": SHAPES, "colours": None}
    rng = np.random.default_rng(3)
    star = draw_for_size(Combo("star", "red", "blue"), rng, 32)
    plain = sj.inspect(star)
    assert set(plain.ious) == set(SHAPES) and plain.colours == tuple(COLOURS)  # the default is unchanged
    with pytest.raises(ValueError, match="inspect_options"):
        sj.verdict(plain, "a red star on a blue background")
    assert sj.judge(star, "a red star on a blue background")
    assert not sj.judge(star, "a red circle on a blue background")
    magenta = draw_for_size(Combo("square", "magenta", "green"), rng, 32)
    assert sj.judge(magenta, "a magenta square on a green background")
    assert not sj.judge(magenta, "a blue square on a green background")
    assert P.judge_rates(np.stack([np.asarray(magenta)]), "a <magenta> square on a green background") == {
        "faithful": 1.0, "colour": 1.0, "kind": 1.0, "named": 1.0,
    }  # fmt: skip
    assert P.judge_rates(np.stack([np.asarray(magenta)]), "a <magenta> square on a blue background") == {
        "faithful": 0.0, "colour": 1.0, "kind": 1.0, "named": 0.0,
    }  # fmt: skip  # "named" needs the background too


def test_the_judge_accepts_unnamed_concepts_where_the_caption_leaves_the_attribute_open():
    rng = np.random.default_rng(4)
    magenta = draw_for_size(Combo("circle", "magenta", "blue"), rng, 64)
    star = draw_for_size(Combo("star", "red", "blue"), rng, 64)
    assert sj.judge(magenta, "a circle on a blue background")  # what a family trained with UNNAMED_CONCEPTS draws
    assert not sj.judge(magenta, "a red circle on a blue background")
    assert sj.inspect(magenta, **sj.inspect_options("a circle on a blue background")).colour == "magenta"
    assert sj.judge(star, "a red shape on a blue background")
    assert not sj.judge(star, "a red circle on a blue background")
    assert sj.inspect_options("a circle on a blue background")["kinds"] == SHAPES  # the kind is named
    assert sj.inspect_options("a red shape")["colours"] is None  # the colour is named


@pytest.mark.parametrize("size", [32, 64])
def test_new_concepts_calibration(size):
    r = sj.calibrate_new_concepts(n=60, seed=5, size=size)
    assert r["magenta_pass"] >= 0.99 and r["star_pass"] >= 0.99, r
    assert r["orange_pass"] >= 0.99, r
    for key in ("shape_as_star_fail", "star_as_shape_fail", "palette_as_magenta_fail", "red_as_magenta_fail",
                "magenta_as_palette_fail", "red_as_orange_fail", "orange_as_palette_fail"):  # fmt: skip
        assert r[key] >= 0.99, (key, r)


def test_concept_scores_measure_distance_to_the_named_colour_and_kind():
    """Drawn orange circles: Delta E to orange small, circle IoU high; judged against magenta: Delta E large."""
    rng = np.random.default_rng(0)
    drawn = np.stack([np.asarray(draw_for_size(Combo("circle", "orange", "blue"), rng, 64)) for _ in range(6)])
    right = P.concept_scores(drawn, "a <orange> circle on a blue background")
    wrong = P.concept_scores(drawn, "a <magenta> circle on a blue background")
    assert right["colour_delta_e"] < 8 and right["kind_iou"] > 0.93 and right["colour"] == 1.0
    assert wrong["colour_delta_e"] > 40 and wrong["colour"] == 0.0
    stars = np.stack([np.asarray(draw_for_size(Combo("star", "red", "blue"), rng, 64)) for _ in range(6)])
    assert P.concept_scores(stars, "a red star on a blue background")["kind_iou"] > 0.9
    assert P.concept_scores(stars, "a red circle on a blue background")["kind_iou"] < 0.85


def test_vae_ceiling_of_the_committed_family_and_its_concept_sibling(pipe):
    """What notebook 05 asserts on the decoders: the family's own gives no magenta back, whatever the latents; its
    concept sibling's (`vae_concepts/`) gives back magenta, orange and stars."""
    magenta, orange = "a <magenta> circle on a blue background", "a <orange> circle on a blue background"
    star = "a red star on a blue background"
    assert P.vae_ceiling(pipe, magenta, 8)["colour"] <= 0.1
    assert P.decoder_reach(pipe, magenta, 4)["colour"] == 0.0
    sibling = P.load_concept_family(load_toy(), TOY)
    assert P.vae_ceiling(sibling, magenta, 8)["colour"] >= 0.9 and P.vae_ceiling(sibling, orange, 8)["colour"] >= 0.75
    assert P.vae_ceiling(sibling, star, 8)["kind"] >= 0.6
    assert P.decoder_reach(sibling, magenta, 4)["colour"] == 1.0 and P.decoder_reach(sibling, star, 4)["kind"] == 1.0
    big = P.vae_ceiling(pipe, star, 8, radius=P.STAR_RADIUS_BIG)  # points wider than a latent pixel survive
    assert big["faithful"] >= 0.75 and big["kind"] == 1.0
    with pytest.raises(ValueError, match="Name a shape"):
        P.vae_ceiling(pipe, "a red shape", 4)
    with pytest.raises(ValueError, match="Name a shape"):
        P.decoder_reach(pipe, "a red shape", 4)


def test_the_concept_sibling_draws_magenta_and_stars_where_captions_leave_them_open_and_the_family_does_not(pipe):
    """The committed concept sibling (`vae_concepts/` + `concepts_lora/` fused) answers captions that leave the
    colour or the kind open with magenta shapes and stars (measured: 16 of 16 each at 30 steps); the family itself
    never does. And "star", a word it never learned, stays one it reads as a shape it knows (1 of 16 seeds a star),
    so that notebook 05's LoRA has a shape to teach. A retrained sibling that loses any of these fails here."""
    from helpers.pipeline import default_sampler

    sibling = P.load_concept_family(load_toy(), TOY)
    steps = default_sampler(pipe).num_inference_steps
    seeds = range(8)

    def found(model, prompt):
        images = (P.generate_images(model, prompt, seeds, steps) * 255).round().astype(np.uint8)
        return [sj.inspect(im, **sj.inspect_options(prompt)) for im in images]

    open_colour, open_kind = "a circle on a blue background", "a red shape on a blue background"
    assert sum(f.colour == "magenta" for f in found(sibling, open_colour)) >= 6
    assert sum(f.kind == "star" for f in found(sibling, open_kind)) >= 5
    assert not any(f.colour == "magenta" for f in found(pipe, open_colour))
    assert not any(f.kind == "star" for f in found(pipe, open_kind))
    assert sum(f.kind == "star" for f in found(sibling, "a red star on a blue background")) <= 2
    named = P.judge_rates(P.generate_images(sibling, OLD_PROMPT, seeds, steps), OLD_PROMPT)
    assert named["faithful"] >= 0.75  # a caption that names everything is still drawn as named


def test_decoder_reach_starts_at_the_round_trip_and_leaves_the_vae_as_it_was(pipe):
    prompt = "a red star on a blue background"
    assert P.decoder_reach(pipe, prompt, 2, steps=0) == P.vae_ceiling(pipe, prompt, 2)  # 0 steps: the encoder's latents
    weights = {n: p.detach().clone() for n, p in pipe.vae.named_parameters()}
    flags = {n: p.requires_grad for n, p in pipe.vae.named_parameters()}
    P.decoder_reach(pipe, prompt, 2, steps=2)
    assert all(torch.equal(p, weights[n]) and p.requires_grad == flags[n] and p.grad is None
               for n, p in pipe.vae.named_parameters())  # fmt: skip
    with pytest.raises(ValueError, match="steps must be"):
        P.decoder_reach(pipe, prompt, 2, steps=-1)


def _notebook_05_and_cited(pattern: str) -> tuple[str, list[dict]]:
    """Notebook 05's text with its comment markers and line breaks removed, and the committed results files it
    cites whose names match `pattern` (a regex group), in the order of their names."""
    import json
    import re

    from helpers.paths import REPO_ROOT

    text = (REPO_ROOT / "notebooks" / "05_new_words.py").read_text()
    flat = " ".join(line.lstrip("# ") for line in text.splitlines())
    names = sorted(set(re.findall(rf"benchmarks/results/({pattern})", text)))
    return flat, [json.loads((REPO_ROOT / "benchmarks" / "results" / n).read_text()) for n in names]


def test_notebook_05_cites_the_committed_personalise_results_as_measured():
    """The figures notebook 05 quotes from `benchmarks/personalise.py` are the committed runs', not typed in: the
    family itself (textual inversion and the full fine-tune draw nothing new) and the concept sibling (where the
    adapter sits)."""
    flat, results = _notebook_05_and_cited(r"personalise-(?!star-size)[\w-]+\.json")
    family = next(r for r in results if r["args"].get("family", "plain") == "plain")
    rows = {r["method"]: r for r in family["rows"] if r["concept"] in ("magenta", "star")}
    assert rows["textual inversion"]["after_loaded"]["colour"] == 0 and rows["LoRA"]["after_loaded"]["kind"] == 0
    full = next(r for r in family["rows"] if r["method"].startswith("full fine-tune"))
    assert full["after_loaded"]["kind"] == 0 and f"{full['steps']:,} (0% of 16 seeds each" in flat
    sibling = [r for r in results if r["args"].get("family") == "concepts"]
    by_targets = {r["args"]["lora_targets"]: next(x for x in r["rows"] if x["method"] == "LoRA") for r in sibling}
    cross, attention = by_targets["cross"], by_targets["attention"]
    quoted = (
        f"on the cross-attention's keys and values, {cross['adapter_params']:,} numbers, "
        f"{cross['after_loaded']['kind']:.0%} of 16 seeds judged stars and {cross['old_loaded']['faithful']:.0%} of "
        "the old prompts",
        f"on every attention projection (diffusers' examples), {attention['adapter_params']:,} numbers, "
        f"{attention['after_loaded']['kind']:.0%} and {attention['old_loaded']['faithful']:.0%}",
    )  # fmt: skip
    assert all(q in flat for q in quoted), [q for q in quoted if q not in flat]
    assert attention["adapter_params"] >= 5 * cross["adapter_params"]  # "five times fewer numbers"
    base = cross["old_unloaded"]["faithful"]  # unloaded: the sibling itself, bit for bit
    assert (
        attention["old_unloaded"]["faithful"] == base and f"the sibling draws {base:.0%} of those old prompts" in flat
    )
    lost = {k: round((base - r["old_loaded"]["faithful"]) * 32) for k, r in by_targets.items()}
    assert f"the smaller adapter lost {'none' if lost['cross'] == 0 else lost['cross']} of them" in flat
    assert f"the larger one {lost['attention']} of 32" in flat
    gap = round(abs(attention["after_loaded"]["kind"] - cross["after_loaded"]["kind"]) * 16)
    assert f"only roughly ({['no', 'one', 'two', 'three'][gap]} image" in flat  # "Sixteen seeds tell ... apart"
    assert cross["before"]["kind"] <= 0.1 and cross["after_loaded"]["kind"] >= 0.7  # the closing note's figures
    ti = next(x for r in sibling for x in r["rows"] if x["concept"] == "magenta")
    assert ti["after_loaded"]["named"] >= 0.8 and ti["after_loaded"]["faithful"] >= 0.8  # the closing note's figures


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--methods", "lora,dreambooth"], "subset of ti, lora, full"),
        (["--methods", "full", "--full-steps", "0"], "runs nothing"),
        (["--star-radius", "0.3", "0.6"], "--star-radius LOW HIGH needs"),
        (["--prior-images", "0"], "--prior-images needs at least 1"),
    ],
)
def test_personalise_benchmark_refuses_bad_flags_before_loading_anything(flags, message):
    import subprocess
    import sys

    from helpers.paths import REPO_ROOT

    run = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "personalise.py"), *flags],
                         capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)  # fmt: skip
    assert run.returncode == 2 and message in run.stderr, run.stderr[-2000:]
