"""The toy Stable Diffusion family: data, judge, training loops, the committed models, their quality."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import helpers  # noqa: F401
from helpers import judge as judge_mod
from helpers import training as tr
from helpers.editing import load_inpainting_unet
from helpers.paths import MODELS_DIR, REPO_ROOT
from helpers.shapes_data import (
    HELD_OUT,
    TEMPLATES,
    Combo,
    all_combos,
    held_out_combos,
    make_dataset,
    make_dataset_v2,
    parse_prompt,
    train_combos,
)
from helpers.tokenizer import load_clip_tokenizer

MODELS = MODELS_DIR


@pytest.fixture(scope="module")
def tokenizer():
    return load_clip_tokenizer()


def _quality_module():
    spec = importlib.util.spec_from_file_location("toy_quality", REPO_ROOT / "scripts" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- data and judge ------------------------------------------------------------------------------


def test_dataset_is_deterministic_and_holds_out_combinations():
    a, b = make_dataset(40, seed=3), make_dataset(40, seed=3)
    assert np.array_equal(a.images, b.images) and a.captions == b.captions
    assert not np.array_equal(a.images, make_dataset(40, seed=4).images)
    assert a.images.shape == (40, 32, 32, 3) and a.images.dtype == np.uint8
    assert len(all_combos()) == 90 and len(held_out_combos()) == len(HELD_OUT) == 9
    assert not set(make_dataset(500, seed=0).combos) & HELD_OUT  # training draws never show a held-out triple
    # every shape, colour and background still occurs in training
    for attr in ("shape", "colour", "background"):
        assert {getattr(c, attr) for c in train_combos()} == {getattr(c, attr) for c in all_combos()}


def test_parse_prompt_reads_every_template():
    for c in all_combos()[::7]:
        for t in range(len(TEMPLATES)):
            assert parse_prompt(c.caption(t)) == c
    assert parse_prompt("A Red CIRCLE on a blue background.") == Combo("circle", "red", "blue")
    assert parse_prompt("a blue background with a red circle") == Combo("circle", "red", "blue")  # any order
    assert parse_prompt("a photo of an astronaut riding a horse") is None
    with pytest.raises(ValueError, match="cannot read"):
        judge_mod.judge(make_dataset(1).pil(0), "a horse")


def test_judge_is_accurate_on_clean_images_and_rejects_wrong_prompts():
    acc = judge_mod.judge_accuracy(n=180)
    assert acc["shape"] >= 0.97 and acc["colour"] >= 0.99 and acc["background"] >= 0.99, acc
    img = make_dataset_v2(1, seed=5, combos=[Combo("circle", "red", "blue")]).pil(0)  # the committed family's size
    assert judge_mod.judge(img, "a red circle on a blue background")
    assert not judge_mod.judge(img, "a blue circle on a red background")  # colours swapped
    assert not judge_mod.judge(img, "a red square on a blue background")
    flat = np.full((64, 64, 3), 200, dtype=np.uint8)  # no shape at all
    assert judge_mod.inspect(flat)[0].shape is None


# -- training loops ---------------------------------------------------------------------------------

TINY = tr.ToySizes(
    text_width=16, text_layers=1, text_heads=2, vision_width=16, vision_layers=1, vision_heads=2, projection_dim=8,
    vae_channels=(8, 16, 16), vae_groups=8, unet_channels=(16, 32), unet_groups=8,
)  # fmt: skip


@pytest.mark.slow
def test_short_training_schedule_runs_and_losses_fall(tokenizer):
    torch.manual_seed(0)
    combos = train_combos()[::8]  # 11 combinations: a small contrastive batch
    clip = tr.build_mini_clip(TINY)
    clip_losses = tr.train_clip(clip, tokenizer, steps=40, lr=3e-3, combos=combos, progress=False)
    assert np.mean(clip_losses[-5:]) < 0.8 * np.mean(clip_losses[:5]), clip_losses

    vae = tr.build_mini_vae(TINY)
    vae_losses = tr.train_vae(vae, steps=60, batch_size=8, lr=3e-3, combos=combos, progress=False)
    assert np.mean(vae_losses[-5:]) < 0.8 * np.mean(vae_losses[:5]), vae_losses

    data = make_dataset(64, seed=1, combos=combos)
    means, stds = tr.encode_latents(vae, data.images)
    assert means.shape == (64, 4, 8, 8)
    scaling = tr.latent_scaling_factor(means, stds)
    text_encoder = tr.text_encoder_from_clip(clip)
    cond = tr.text_states(text_encoder, tokenizer, [c.caption(t) for c in combos for t in range(len(TEMPLATES))])
    cond = cond.view(len(combos), len(TEMPLATES), 77, TINY.text_width)
    uncond = tr.text_states(text_encoder, tokenizer, [""])[0]
    unet = tr.build_mini_unet(TINY.text_width, TINY)
    index = torch.tensor([combos.index(c) for c in data.combos])
    ema, unet_losses = tr.train_unet(
        unet, means, stds, scaling, index, cond, uncond, steps=60, batch_size=32, lr=2e-3, progress=False
    )
    assert np.mean(unet_losses[-10:]) < 0.9 * np.mean(unet_losses[:10]), unet_losses
    # Min-SNR weighting: same seed, same batches; each step's loss is the plain one reweighted by w_t <= 1
    args = (means, stds, scaling, index, cond, uncond)
    seen = []  # the callback sees every step count and the EMA weights that train_unet returns
    plain_ema, plain = tr.train_unet(
        tr.build_mini_unet(TINY.text_width, TINY), *args, steps=3, batch_size=32, progress=False,
        callback=lambda step, weights: seen.append((step, weights)),
    )  # fmt: skip
    assert [step for step, _ in seen] == [1, 2, 3] and all(w is plain_ema for _, w in seen)
    _, weighted = tr.train_unet(
        tr.build_mini_unet(TINY.text_width, TINY), *args, steps=3, batch_size=32, progress=False, snr_gamma=5.0
    )
    assert weighted[0] < plain[0]  # identical first batch: the nearly clean timesteps count less
    _, v_losses = tr.train_unet(
        tr.build_mini_unet(TINY.text_width, TINY), *args, steps=3, batch_size=32, progress=False,
        prediction_type="v_prediction",
    )  # fmt: skip
    assert np.isfinite(v_losses).all() and v_losses[0] != plain[0]  # same batch, another target
    _, agreeing = tr.train_unet(
        tr.build_mini_unet(TINY.text_width, TINY), *args, steps=3, batch_size=32, progress=False,
        agreement_weight=1.0, agreement_t_max=1000,
    )  # fmt: skip
    assert agreeing[0] > plain[0]  # same batch plus the gap between the captioned and uncaptioned predictions
    pipe = tr.assemble_pipeline(text_encoder, tokenizer, vae, ema)
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a red circle on a blue background", num_inference_steps=3, output_type="np").images
    assert image.shape == (1, 32, 32, 3) and np.isfinite(image).all()


@pytest.mark.slow
def test_decoder_finetune_moves_only_the_decoder(tokenizer):
    """`finetune_decoder` trains the decoder on the UNet's img2img latents; the encoder (so the latents and the
    scaling factor) and the UNet stay as they were."""
    clip, vae = tr.build_mini_clip(TINY), tr.build_mini_vae(TINY)
    text_encoder = tr.text_encoder_from_clip(clip)
    pipe = tr.assemble_pipeline(text_encoder, tokenizer, vae, tr.build_mini_unet(TINY.text_width, TINY))
    pipe.set_progress_bar_config(disable=True)
    frozen = {n: p.clone() for n, p in [*vae.encoder.named_parameters(), *pipe.unet.named_parameters()]}
    decoder = {n: p.clone() for n, p in vae.decoder.named_parameters()}
    losses = tr.finetune_decoder(pipe, steps=3, batch_size=2, p_clean=0.5, size=32, progress=False)
    assert len(losses) == 3 and np.isfinite(losses).all()
    now = dict([*vae.encoder.named_parameters(), *pipe.unet.named_parameters()])
    assert all(torch.equal(now[n], p) for n, p in frozen.items())
    assert any(not torch.equal(p, decoder[n]) for n, p in vae.decoder.named_parameters())
    assert not vae.training and not vae.decoder.training


def test_unet_heads_reach_every_attention_layer():
    """`ToySizes.unet_heads` is diffusers' `attention_head_dim` (a head count): one number, or one per block."""
    from dataclasses import replace

    unet = tr.build_mini_unet(TINY.text_width, replace(TINY, unet_heads=(1, 2)))
    heads = [blk.attentions[0].transformer_blocks[0].attn1.heads for blk in unet.down_blocks]
    assert heads == [1, 2]
    assert {m.heads for m in unet.modules() if type(m).__name__ == "Attention"} == {1, 2}
    default = tr.build_mini_unet(TINY.text_width, TINY)  # 8 heads, as SD v1's attention_head_dim=8
    assert {m.heads for m in default.modules() if type(m).__name__ == "Attention"} == {8}


def test_v2_unet_inputs_measure_the_scaling_factor_or_keep_a_given_one(tokenizer):
    clip, vae = tr.build_mini_clip(TINY), tr.build_mini_vae(TINY)
    first = tr.v2_unet_inputs(clip, vae, tokenizer, 8, seed=1)
    assert first.scaling_factor == pytest.approx(tr.latent_scaling_factor(first.latents_mean, first.latents_std))
    assert vae.config.scaling_factor == first.scaling_factor  # 1 / std of these latents, set on the VAE
    later = tr.v2_unet_inputs(clip, vae, tokenizer, 8, seed=2, scaling_factor=first.scaling_factor)
    assert later.scaling_factor == vae.config.scaling_factor == first.scaling_factor  # a later phase keeps it
    assert tr.latent_scaling_factor(later.latents_mean, later.latents_std) != first.scaling_factor  # new images


def test_unnamed_concepts_are_drawn_but_never_named_in_the_unet_captions():
    from helpers.shapes_data import (
        UNNAMED_CONCEPTS,
        V2_CAPTION_FORMS,
        concept_combos,
        unnamed_form,
        v2_caption,
    )

    assert set(UNNAMED_CONCEPTS) == {"magenta", "star"}
    for form in range(len(V2_CAPTION_FORMS)):
        for combo in train_combos():
            assert unnamed_form(combo, form) == form  # the palette's captions are unchanged
        for combo in concept_combos("magenta") + concept_combos("star"):
            caption = v2_caption(combo, unnamed_form(combo, form))
            assert "magenta" not in caption and "star" not in caption, caption
            # everything else the form names, it still names where a form can: the kind or colour, the background
            if "{background}" in V2_CAPTION_FORMS[form][0] and form != 10:
                assert f"{combo.background} background" in caption
    assert v2_caption(Combo("circle", "magenta", "blue"), unnamed_form(Combo("circle", "magenta", "blue"), 0)) == (
        "a circle on a blue background"
    )
    assert v2_caption(Combo("star", "red", "blue"), unnamed_form(Combo("star", "red", "blue"), 3)) == (
        "a red shape on a blue background"
    )


def test_mapped_concept_pictures_come_as_often_as_a_palette_combinations_and_are_never_named(tokenizer):
    """The concept family's data (`v2_unet_inputs(concepts=...)`): each concept combination as many pictures as a
    palette combination, every caption form that would name the concept moved to the one that leaves it unnamed."""
    from helpers.shapes_data import V2_CAPTION_FORMS, concept_combos, unnamed_form, v2_form_weights

    clip, vae = tr.build_mini_clip(TINY), tr.build_mini_vae(TINY)
    plain = tr.v2_unet_inputs(clip, vae, tokenizer, 810, seed=1)  # 10 pictures per palette combination
    mapped = tr.v2_unet_inputs(clip, vae, tokenizer, 810, seed=1, concepts=("magenta", "star"))
    assert len(mapped.images) == 810 + 10 * 48 == len(mapped.latents_mean) == len(mapped.geometry)
    assert torch.equal(mapped.latents_mean[:810], plain.latents_mean)  # the palette's pictures are the same
    assert plain.form_weights is None and mapped.form_weights.shape == (81 + 48, len(V2_CAPTION_FORMS))
    assert torch.allclose(mapped.form_weights[:81], torch.tensor(v2_form_weights(), dtype=torch.float32).expand(81, -1))
    counts = np.bincount(mapped.combo_index.numpy(), minlength=81 + 48)
    assert set(counts[81:].tolist()) == {10}
    w = v2_form_weights()
    magenta = mapped.form_weights[81 + concept_combos("magenta").index(Combo("circle", "magenta", "blue"))].numpy()
    assert magenta[6] == pytest.approx(w[[0, 1, 2, 3, 4, 6, 7]].sum())  # "a circle on a blue background": 0.76
    assert magenta[8] == pytest.approx(w[[5, 8, 9]].sum()) and magenta[10] == pytest.approx(w[10])
    star = mapped.form_weights[81 + 18 + concept_combos("star").index(Combo("star", "red", "blue"))].numpy()
    assert star[7] == pytest.approx(w[[0, 1, 2, 3, 4, 6, 7]].sum())  # "a red shape on a blue background"
    for row, combo in enumerate(concept_combos("magenta") + concept_combos("star"), start=81):
        named = [f for f in range(len(V2_CAPTION_FORMS)) if unnamed_form(combo, f) != f]
        assert mapped.form_weights[row, named].sum() == 0 and mapped.form_weights[row].sum() == pytest.approx(1)
    assert all(unnamed_form(c, f) == f for c, f in zip(both_combos(mapped), mapped.forms.tolist()))
    # the caption table: the palette's rows as before; a magenta circle on blue's form 0 is "a circle on a blue ..."
    assert mapped.cond_states.shape[0] == plain.cond_states.shape[0] + 48
    assert torch.equal(mapped.cond_states[:81], plain.cond_states)
    magenta_row = 81 + concept_combos("magenta").index(Combo("circle", "magenta", "blue"))
    circle_on_blue = tr.text_states(mapped.text_encoder, tokenizer, ["a circle on a blue background"])[0]
    assert torch.allclose(mapped.cond_states[magenta_row, 0], circle_on_blue, atol=1e-6)


def test_stand_in_words_caption_palette_pictures_only_and_leave_star_out(tokenizer):
    """`v2_unet_inputs(stand_in_share=...)`: each of `STAND_IN_WORDS` is one more caption form, drawn only for
    palette pictures ("a red dog on a blue background" under a red circle on blue); "star" and the held-out probes
    are never among them, and nothing else of the concept data changes."""
    from helpers.shapes_data import (
        KIND_FORMS,
        STAND_IN_HELD_OUT,
        STAND_IN_WORDS,
        V2_CAPTION_FORMS,
        stand_in_caption,
    )
    from helpers.toy_vocab import known_words

    assert not set(STAND_IN_WORDS) & (set(STAND_IN_HELD_OUT) | known_words()) and "star" in STAND_IN_HELD_OUT
    assert len(set(STAND_IN_WORDS)) == len(STAND_IN_WORDS)
    assert all(tokenizer.tokenize(w) == [w + "</w>"] for w in STAND_IN_WORDS + STAND_IN_HELD_OUT[:4])  # one token
    assert all("{shape}" in V2_CAPTION_FORMS[f][0] for f in KIND_FORMS)
    assert stand_in_caption(Combo("circle", "red", "blue"), 0) == "a red dog on a blue background"
    assert stand_in_caption(Combo("square", "red", "blue"), 3) == "a blue background with a red tree"
    clip, vae = tr.build_mini_clip(TINY), tr.build_mini_vae(TINY)
    mapped = tr.v2_unet_inputs(clip, vae, tokenizer, 81, seed=1, concepts=("magenta", "star"))
    stand = tr.v2_unet_inputs(clip, vae, tokenizer, 81, seed=1, concepts=("magenta", "star"), stand_in_share=0.2)
    n, k = len(V2_CAPTION_FORMS), len(STAND_IN_WORDS)
    assert stand.cond_states.shape[:2] == (81 + 48, n + k) and stand.form_weights.shape == (81 + 48, n + k)
    assert torch.equal(stand.cond_states[:, :n], mapped.cond_states)  # the caption forms as before
    assert torch.equal(stand.latents_mean, mapped.latents_mean) and torch.equal(stand.forms, mapped.forms)
    w = stand.form_weights
    assert torch.allclose(w.sum(1), torch.ones(81 + 48))
    assert torch.allclose(w[:81, n:].sum(1), torch.full((81,), 0.2)) and torch.allclose(
        w[:81, :n], mapped.form_weights[:81] * 0.8
    )
    assert w[81:, n:].sum() == 0 and torch.equal(w[81:, :n], mapped.form_weights[81:])  # concepts: never a stand-in
    j = 5
    want = tr.text_states(stand.text_encoder, tokenizer, [stand_in_caption(train_combos()[0], j)])[0]
    assert torch.allclose(stand.cond_states[0, n + j], want, atol=1e-6)
    with pytest.raises(ValueError, match="only with `concepts`"):
        tr.v2_unet_inputs(clip, vae, tokenizer, 81, seed=1, stand_in_share=0.2)
    with pytest.raises(ValueError, match=r"share in \[0, 1\)"):
        tr.v2_unet_inputs(clip, vae, tokenizer, 81, seed=1, concepts=("star",), stand_in_share=1.0)


def both_combos(inputs):
    from helpers.shapes_data import concept_combos

    rows = train_combos() + concept_combos("magenta") + concept_combos("star")
    return [rows[i] for i in inputs.combo_index.tolist()]


def test_save_half_stores_float16_that_loads_back_in_float32(tmp_path):
    from safetensors import safe_open
    from transformers import CLIPTextModel

    text_encoder = tr.text_encoder_from_clip(tr.build_mini_clip(TINY))
    tr.save_half(text_encoder, tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        stored = {k: f.get_tensor(k) for k in f.keys()}
        assert f.metadata() == {"format": "pt"}
    assert {v.dtype for k, v in stored.items() if "position_ids" not in k} == {torch.float16}
    loaded = CLIPTextModel.from_pretrained(tmp_path)  # transformers 5's default dtype="auto": the config's float32
    assert loaded.dtype == torch.float32
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, text_encoder.state_dict()[k].half().to(v.dtype)), k  # the rounding, nothing else


@pytest.mark.slow
def test_unet_experiment_trains_judges_at_each_evaluation_and_refuses_bad_folders(tokenizer, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("unet_experiment", REPO_ROOT / "scripts" / "unet_experiment.py")
    exp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(exp)
    clip_dir, vae_dir, out = tmp_path / "clip", tmp_path / "vae", tmp_path / "results"
    tr.save_clip(tr.build_mini_clip(TINY), clip_dir)
    tr.build_mini_vae(TINY).save_pretrained(vae_dir)
    with pytest.raises(SystemExit):
        exp.main(["--clip", str(clip_dir), "--vae", str(tmp_path / "nowhere")])
    assert "no config.json there" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        exp.main(["--clip", str(clip_dir), "--vae", str(vae_dir), "--steps", "2", "--evals", "5"])
    assert "between 1 and --steps 2" in capsys.readouterr().err
    rows = exp.main(
        ["--clip", str(clip_dir), "--vae", str(vae_dir), "--steps", "2", "--batch", "4", "--images", "16",
         "--channels", "16,32", "--heads", "1,2", "--evals", "1,2", "--quick", "--upright", "--out", str(out),
         "--decoder-steps", "2", "--sample-steps", "3", "--save", str(tmp_path / "pipes")]
    )  # fmt: skip
    assert [r["steps"] for r in rows] == [1, 2, 2] and rows[-1]["decoder_steps"] == 2
    assert {r["sample_steps"] for r in rows} == {3}
    assert 0 <= rows[-1]["vae_round_trip"] <= 1 and 0 <= rows[-1]["vae_round_trip_before"] <= 1
    assert all(r["n"] == 90 and 0 <= r["faithful"] <= 1 and set(r["faithful_by_kind"]) == {"circle", "square",
               "triangle"} for r in rows)  # fmt: skip
    printed = capsys.readouterr().out
    assert printed.count("\n| 1 |") == 1 and printed.count("\n| 2 |") == 1 and "\n| 2 + decoder 2 |" in printed
    (written,) = out.glob("unet_experiment_*.json")
    text = written.read_text()
    assert str(tmp_path) not in text and json.loads(text)["settings"]["upright"] is True
    # --init continues a saved UNet (its own channels and heads) instead of building a new one
    with pytest.raises(SystemExit):
        exp.main(["--clip", str(clip_dir), "--vae", str(vae_dir), "--init", str(tmp_path / "nowhere")])
    assert "no config.json there" in capsys.readouterr().err
    cont = tmp_path / "continued"
    rows = exp.main(
        ["--clip", str(clip_dir), "--vae", str(vae_dir), "--init", str(tmp_path / "pipes" / "toy-sd-2" / "unet"),
         "--steps", "1", "--batch", "4", "--images", "16", "--quick", "--sample-steps", "2", "--out", str(cont)]
    )  # fmt: skip
    assert [r["steps"] for r in rows] == [1] and rows[0]["n"] == 90
    (written,) = cont.glob("unet_experiment_*.json")
    assert json.loads(written.read_text())["settings"]["init"] == "toy-sd-2/unet"
    capsys.readouterr()
    # scripts/guidance_check.py judges a saved pipeline under several guidance settings
    spec = importlib.util.spec_from_file_location("guidance_check", REPO_ROOT / "scripts" / "guidance_check.py")
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    with pytest.raises(SystemExit):
        check.main([str(tmp_path / "pipes" / "toy-sd-2"), "--guided-share", "1.5"])
    assert "each share must be in (0, 1]" in capsys.readouterr().err
    rows = check.main(
        [str(tmp_path / "pipes" / "toy-sd-2"), "--guidance", "1,7.5", "--guided-share", "0.5", "--rescale", "0.7",
         "--steps", "4", "--quick"]
    )  # fmt: skip
    assert [r["setting"] for r in rows] == [
        "guidance 1.0", "guidance 7.5", "guidance 7.5 for the first 50% of the steps",
        "guidance 7.5, guidance_rescale 0.7",
    ]  # fmt: skip
    assert all(r["n"] == 90 and 0 <= r["faithful"] <= 1 for r in rows)
    guided = check.guidance_until(0.5)  # turns guidance off after step 2 of 4, keeping the captioned states
    pipe = type("Pipe", (), {"num_timesteps": 4, "_guidance_scale": 7.5})()
    states = {"prompt_embeds": torch.arange(4.0).view(2, 2)}
    assert guided(pipe, 0, 999, dict(states))["prompt_embeds"].shape == (2, 2) and pipe._guidance_scale == 7.5
    assert guided(pipe, 1, 500, dict(states))["prompt_embeds"].tolist() == [[2.0, 3.0]] and pipe._guidance_scale == 0


# -- the committed models -----------------------------------------------------------------------


def test_edge_loss_and_logvar_start_of_the_v2_vae_recipe():
    """`edge_l1` is 0 for the same image and grows with a blurred edge; `logvar_init` starts the posterior's
    log-variance there, and the v2 recipe (edges + logvar -8) trains and lowers the error on 64 px images."""
    x = torch.zeros(1, 3, 16, 16)
    x[..., :, 8:] = 1.0  # a vertical edge
    blurred = x.clone()
    blurred[..., :, 7:9] = 0.5
    assert tr.edge_l1(x, x) == 0 and tr.edge_l1(blurred, x) > 0
    vae = tr.build_mini_vae(tr.V2_SIZES, seed=0)
    losses = tr.train_vae(vae, steps=30, batch_size=4, lr=5e-4, kl_weight=1e-5, size=64, edges=True,
                          logvar_init=-8.0, progress=False)  # fmt: skip
    posterior = vae.encode(torch.zeros(1, 3, 64, 64)).latent_dist
    assert posterior.logvar.mean() < -4  # started at -8, not 0: the latent is not drowned in unit noise
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    assert tr.V2_SCHEDULE.vae_edges and tr.V2_SCHEDULE.vae_logvar_init == -8.0
    # the corners sharpen in the low-learning-rate phases (round trip 78% -> 91% -> 94.7% faithful): keep them
    assert [lr for _, lr, _ in tr.V2_SCHEDULE.vae_refine] == [2e-4, 1e-4]
    assert not tr.Schedule().vae_edges and tr.Schedule().vae_logvar_init is None  # the committed v1 recipe as it was
    assert tr.Schedule().vae_refine == ()


class _PixelVAE(torch.nn.Module):
    """A stand-in VAE whose latent is the image itself; `drop` zeroes one RGB channel of what it decodes."""

    def __init__(self, drop: int | None = None):
        super().__init__()
        self.drop = drop
        self.device, self.dtype = torch.device("cpu"), torch.float32  # as diffusers' models report them

    def encode(self, x):
        return type("Out", (), {"latent_dist": type("Dist", (), {"mean": x})()})()

    def decode(self, z):
        z = z.clone()
        if self.drop is not None:
            z[:, self.drop] = -1.0  # that channel always 0: red shapes come back black, white ones cyan
        return type("Out", (), {"sample": z})()


def test_vae_colour_failures_tells_merged_colours_from_a_faithful_round_trip():
    assert tr.vae_colour_failures(_PixelVAE(), n=60) == 0.0  # a perfect round trip keeps every colour
    dropped = tr.vae_colour_failures(_PixelVAE(drop=0), n=60)
    assert dropped >= 0.5  # without red, red, yellow and white shapes and backgrounds change colour
    assert tr.V2_SCHEDULE.vae_restarts >= 1 and 0 < tr.V2_SCHEDULE.vae_colour_limit <= 0.1


def test_train_vae_check_stops_a_phase_early_only_when_it_fails():
    """The early colour check (`V2_SCHEDULE.vae_check`) sees the VAE in eval mode after exactly `check_at` steps; a
    failed check ends the phase there, a passed one lets it run to the end."""
    calls = []

    def run(verdict: bool) -> int:
        vae = tr.build_mini_vae(seed=0)
        check = lambda model: calls.append(model.training) or verdict  # noqa: E731
        return len(tr.train_vae(vae, steps=5, batch_size=2, check_at=2, check=check, progress=False))

    assert run(False) == 2 and run(True) == 5
    assert calls == [False, False]  # called once per run, never in train mode
    check_at, limit = tr.V2_SCHEDULE.vae_check
    assert 0 < check_at < tr.V2_SCHEDULE.vae_steps and tr.V2_SCHEDULE.vae_colour_limit < limit < 1


def test_vae_latent_noise_reaches_the_decoder():
    """`latent_noise` perturbs the latent the decoder reads (so it learns to decode a neighbourhood of each latent);
    without it the decoder reads the posterior sample, within its own tiny std of the mean."""
    seen = {}

    def spread_from_mean(noise: float) -> float:
        vae = tr.build_mini_vae(tr.V2_SIZES, seed=0)
        vae.quant_conv.register_forward_hook(lambda m, i, out: seen.__setitem__("mean", out[:, :4].detach()))
        vae.post_quant_conv.register_forward_pre_hook(lambda m, args: seen.__setitem__("z", args[0].detach()))
        tr.train_vae(vae, steps=1, batch_size=4, lr=1e-6, size=64, logvar_init=-8.0, latent_noise=noise,
                     progress=False)  # fmt: skip
        return float((seen["z"] - seen["mean"]).std())

    assert spread_from_mean(0.0) < 0.05  # sigma = exp(-8 / 2) = 0.018
    assert 0.4 < spread_from_mean(0.5) < 0.6


def test_committed_models_are_small():
    files = [p for p in MODELS.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 30_000_000  # the budget for the whole family
    assert max(p.stat().st_size for p in files) < 15 * 1024**2
    for folder in ("toy-sd", "toy-clip", "shape-judge"):
        assert (MODELS / folder / "README.md").read_text().strip(), folder


@pytest.fixture(scope="module")
def toy_pipe():
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(MODELS / "toy-sd")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_toy_sd_loads_and_generates_at_training_resolution(toy_pipe):
    summary = json.loads((MODELS / "training_summary.json").read_text())
    assert toy_pipe.safety_checker is None
    assert toy_pipe.vae.config.scaling_factor == pytest.approx(summary["scaling_factor"])  # measured, not SD's 0.18215
    # stored in half precision, loaded in float32; the UNet is the width the summary records
    from safetensors import safe_open

    for name in ("text_encoder", "unet", "vae", "unet_inpainting"):
        (weights,) = (MODELS / "toy-sd" / name).glob("*.safetensors")
        with safe_open(weights, "pt") as f:
            assert {f.get_tensor(k).dtype for k in f.keys() if "position_ids" not in k} == {torch.float16}, name
    assert toy_pipe.unet.dtype == toy_pipe.vae.dtype == toy_pipe.text_encoder.dtype == torch.float32
    assert list(toy_pipe.unet.config.block_out_channels) == summary["sizes"]["unet_channels"]
    assert sum(p.numel() for p in toy_pipe.unet.parameters()) == summary["params"]["unet"]
    unet9 = load_inpainting_unet(MODELS / "toy-sd")  # fine-tuned from this UNet, as the recipe does: the same blocks
    assert unet9.dtype == torch.float32 and unet9.config.block_out_channels == toy_pipe.unet.config.block_out_channels
    gen = torch.Generator().manual_seed(0)
    image = toy_pipe("a red circle on a blue background", num_inference_steps=25, generator=gen).images[0]
    assert image.size == (64, 64) == (summary["sizes"]["image_size"],) * 2  # the size it was trained at
    gen = torch.Generator().manual_seed(0)
    again = toy_pipe("a red circle on a blue background", num_inference_steps=25, generator=gen).images[0]
    assert np.array_equal(np.asarray(image), np.asarray(again))  # seeded: reproducible


def test_toy_clip_loads_in_torch_and_flax_with_the_same_scores():
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from transformers import CLIPModel

    from helpers.clip_loading import load_processor
    from helpers.clip_model import load_flax_clip, logits_per_image

    clip = CLIPModel.from_pretrained(MODELS / "toy-clip").eval()
    assert clip.dtype == torch.float32  # stored in half precision; the config's float32 is what transformers 5 loads
    processor = load_processor(MODELS / "toy-clip")
    data = make_dataset_v2(4, seed=9, combos=held_out_combos())  # 64 px, as the committed CLIP was trained
    captions = [c.caption() for c in held_out_combos()]
    inputs = processor(text=captions, images=[data.pil(i) for i in range(4)], return_tensors="np", padding=True)
    # the processor does exactly what training did to the pixels
    assert np.allclose(inputs["pixel_values"], tr.clip_pixel_values(data.images).numpy(), atol=1e-5)
    with torch.no_grad():
        pt = clip(**{k: torch.from_numpy(v) for k, v in inputs.items()}).logits_per_image.numpy()
    flax_model, params, _ = load_flax_clip(MODELS / "toy-clip")  # our Flax CLIP, the same model.safetensors
    fx = np.asarray(
        logits_per_image(flax_model, params, inputs["input_ids"], inputs["pixel_values"], inputs["attention_mask"])
    )
    assert np.abs(pt - fx).max() < 1e-3
    truth = [captions.index(c.caption()) for c in data.combos]
    assert (pt.argmax(1) == truth).mean() >= 0.75  # held-out images, never seen in training


@pytest.mark.slow
def test_quality_script_smoke(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SD_TUTORIAL_OUTPUTS", str(tmp_path))
    q = _quality_module()
    monkeypatch.setattr(q, "OUTPUTS_DIR", tmp_path)
    from helpers.pipeline import DEFAULT_STEPS

    for bad in (["--steps", "0"], ["--scheduler", "nope"]):
        with pytest.raises(SystemExit):  # refused before any model loads
            q.main(["--smoke", *bad])
    capsys.readouterr()
    # the default sampler replaced: euler_a at 6 steps instead of the family's own (Euler ancestral at 30)
    assert q.main(["--smoke", "--scheduler", "euler_a", "--steps", "6"]) == 0
    table = capsys.readouterr().out
    assert "| Prompt-faithful, guidance 7.5, euler_a-6 (all / held-out)" in table
    assert (q.default_steps(), q.default_scheduler()) == (DEFAULT_STEPS, "ddim")  # restored after the measurement
    assert "| VAE round trip of drawn images (its ceiling)" in table
    assert "| CLIP's best of 2, guidance 1.0: faithful top-1 / average / bottom-1 image" in table
    assert "| Prompt-faithful, ddim 20 steps ending at alpha-bar 1 (set_alpha_to_one=True" in table
    assert "| Inpainting (the 9-channel inpainting UNet, padding_mask_crop=4: crop, inpaint, paste back)" in table
    saved = list((tmp_path / "benchmarks").glob("toy_quality_smoke_*.json"))
    assert len(saved) == 1
    result = json.loads(saved[0].read_text())
    assert result["models_dir"] == "models", result["models_dir"]  # the project's folder, never the absolute path
    # why each row's images missed: the counts agree with the row's own faithful rate
    assert "| row | missed | single shape | kind | IoU |" in table and "| ddim 20 steps |" in table
    for row in (result["guidance_7.5"], result["ddim_20"], result["negative"]["negative_red"]):
        m = row["misses"]
        assert m["n"] == round((1 - row["faithful"]) * row["n"]), row
        assert sum(m[c] for c in q.sj.CHECKS) >= m["n"] and m["IoU near the threshold"] <= m["IoU"], row


# -- the second generation (64 px, 8x VAE): each lesson guarded on a small sample --------------------------
# They run against the committed family (training_summary.json "family": "v2"), or against TOY_MODELS_DIR=<folder>
# (a retrain measured before it is committed, e.g. .cache/toy-v2).

V2_DIR = Path(os.environ.get("TOY_MODELS_DIR", MODELS))


def _is_v2(folder: Path) -> bool:
    summary = folder / "training_summary.json"
    return summary.exists() and json.loads(summary.read_text()).get("family") == "v2"


v2_only = pytest.mark.skipif(not _is_v2(V2_DIR), reason=f"{V2_DIR} holds no v2 family (set TOY_MODELS_DIR)")


@pytest.fixture(scope="module")
def v2_pipe():
    from diffusers import StableDiffusionPipeline

    from helpers.pipeline import default_sampler, make_scheduler

    pipe = StableDiffusionPipeline.from_pretrained(V2_DIR / "toy-sd")
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = make_scheduler(pipe, default_sampler(pipe).scheduler)  # the family's own, when it records one
    return pipe


def _v2_generate(pipe, prompts, seeds, guidance_scale=7.5, negative=None):
    from helpers.pipeline import default_sampler

    steps = default_sampler(pipe).num_inference_steps
    return _quality_module().generate(pipe, prompts, seeds, guidance_scale, steps=steps, negative=negative)


@v2_only
def test_v2_has_sd_geometry_and_a_measured_scaling_factor(v2_pipe):
    from helpers.shapes_data import make_dataset_v2

    assert v2_pipe.vae_scale_factor == 8 and v2_pipe.vae.config.latent_channels == 4
    assert v2_pipe.unet.config.sample_size == 8  # 64 px -> 8x8 latents, as SD v1's 512 px -> 64x64
    data = make_dataset_v2(96, seed=77)
    means, stds = tr.encode_latents(v2_pipe.vae, data.images)
    assert means.shape == (96, 4, 8, 8)
    # scaling_factor = 1 / std of the latents over the training data, the way SD v1's 0.18215 was found
    assert tr.latent_scaling_factor(means, stds) == pytest.approx(v2_pipe.vae.config.scaling_factor, rel=0.1)


@v2_only
def test_v2_vae_gives_drawn_shapes_back(v2_pipe):
    """The decoder is the pipeline's ceiling: the v2 recipe's VAE gave back 94.7% of 300 drawn images (IoU 0.966)."""
    # on 100 images the refined VAE gives 96% / IoU 0.966; without the refine phases, 80% / 0.947
    row = _quality_module().vae_round_trip(v2_pipe, n=100)
    assert row["faithful"] >= 0.9 and row["mean_iou"] >= 0.955, row


@v2_only
def test_v2_guidance_is_faithful_and_beats_no_guidance(v2_pipe):
    from helpers import strict_judge as sj

    combos = all_combos()[::5] + held_out_combos()[:3]  # 21 prompts, 3 held-out
    prompts = [c.caption() for c in combos]
    seeds = list(range(300, 300 + len(prompts)))
    rate = {}
    for g in (1.0, 7.5):
        rate[g] = np.mean([v.faithful for v in sj.judge_many(_v2_generate(v2_pipe, prompts, seeds, g), prompts)])
    assert rate[7.5] >= 0.8 and rate[7.5] > rate[1.0], rate


@v2_only
def test_v2_seeds_draw_different_places_and_sizes(v2_pipe):
    from helpers import strict_judge as sj

    prompts = ["a white square on a black background"] * 8 + ["a red circle on a blue background"] * 8
    images = _v2_generate(v2_pipe, prompts, list(range(16)))
    q = _quality_module()
    generated = q.spread([sj.inspect(im) for im in images], prompts)
    # the training data's spread at this size: centre ~7 px, size ~3 px (quality.py measures it each run)
    assert generated["centre_std_px"] >= 2.5 and generated["size_std_px"] >= 1.0, generated


@v2_only
def test_v2_negative_prompt_removes_the_named_colour_and_keeps_the_rest(v2_pipe):
    """Negative "red" on prompts that leave the shape's colour unnamed: no red shapes, the rest mostly kept.

    The issue asks that the images also stay faithful to the rest of the prompt; the committed family misses that
    (quality.py: 73% of 180 images). On these 30 images the previous, narrower UNet kept 77% (87% without the
    negative; from seeds 1500 and 2500 instead: 67% and 80%, with 3% and 0% red), so the guard asks for 60%."""
    from helpers import strict_judge as sj

    backgrounds = ("blue", "black", "green", "yellow", "white")  # every background but red
    prompts = [f"a {s} on a {b} background" for s in ("circle", "square", "triangle") for b in backgrounds] * 2
    seeds = list(range(500, 500 + len(prompts)))
    verdicts = sj.judge_many(_v2_generate(v2_pipe, prompts, seeds, negative="red"), prompts)
    assert np.mean([v.inspection.colour == "red" for v in verdicts]) <= 0.1  # without the negative: 37% red
    assert np.mean([v.faithful for v in verdicts]) >= 0.6, [v.reasons for v in verdicts if not v.faithful]


@v2_only
def test_v2_img2img_changes_the_colour_and_keeps_the_place(v2_pipe):
    from diffusers import StableDiffusionImg2ImgPipeline

    from helpers import strict_judge as sj
    from helpers.shapes_data import make_dataset_v2

    i2i = StableDiffusionImg2ImgPipeline(**v2_pipe.components)
    i2i.set_progress_bar_config(disable=True)
    data = make_dataset_v2(8, seed=21, combos=[Combo("circle", "red", "blue"), Combo("square", "white", "black")])
    prompts = [Combo(c.shape, "yellow", c.background).caption() for c in data.combos]
    out = i2i(prompt=prompts, image=[data.pil(i) for i in range(8)], strength=0.6, num_inference_steps=20,
              generator=[torch.Generator().manual_seed(i) for i in range(8)], output_type="np").images  # fmt: skip
    after = [sj.inspect(im) for im in (out * 255).round().astype(np.uint8)]
    ok = [sj.verdict(a, p).faithful and np.hypot(a.cx - g["cx"], a.cy - g["cy"]) <= 3
          for a, p, g in zip(after, prompts, data.geometry)]  # fmt: skip
    assert np.mean(ok) >= 0.75, [sj.verdict(a, p).reasons for a, p in zip(after, prompts)]


@v2_only
def test_v2_inpainting_draws_inside_the_mask_and_keeps_the_rest(v2_pipe):
    q = _quality_module()
    unet = load_inpainting_unet(V2_DIR / "toy-sd")  # the family's inpainting UNet; else the UNet, blending latents
    r = q.inpaint_rows(v2_pipe, quick=True, n=24, unet=unet)
    blend = q.inpaint_rows(v2_pipe, quick=True, n=24)  # the same masks, the 4-channel UNet blending latents
    # over 300 masks (quality.py): 74.3% with the inpainting UNet, 19.3% blending; raw change outside 7.5 and 15.5 /255
    assert r["shape_inside_mask_faithful"] >= max(0.6, blend["shape_inside_mask_faithful"] + 0.2), (r, blend)
    assert r["outside_change_pasted_255"] <= 1.0 and r["outside_change_raw_255"] <= 10.0, r
    assert r["outside_change_raw_255"] < blend["outside_change_raw_255"], (r, blend)
    if unet is not None:  # diffusers' crop-inpaint-paste (padding_mask_crop): the hole fills the latent grid
        crop = q.inpaint_rows(v2_pipe, quick=True, n=24, unet=unet, padding_mask_crop=4)
        # on these 24 masks at the test's Euler ancestral 20 steps: 96% (whole picture 75%)
        assert crop["outside_change_raw_255"] == 0.0, crop  # the original's pixels, exactly, outside the mask
        assert crop["shape_inside_mask_faithful"] >= max(0.85, r["shape_inside_mask_faithful"] + 0.1), (crop, r)


@pytest.mark.slow
def test_training_script_rehearsal_v2(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("train_toy", REPO_ROOT / "scripts" / "train_toy_family.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # At 0.2% of the steps no VAE draws a shape yet, so its real colour figure says nothing; the first colour check
    # is told that seed 0's colours merged, as on the Xeon at step 3,000, and every later check that they did not.
    measured = []
    real = tr.vae_colour_failures
    monkeypatch.setattr(
        tr, "vae_colour_failures", lambda vae: measured.append(real(vae)) or (0.5 if len(measured) == 1 else 0.0)
    )
    summary = module.main(
        ["--family", "v2", "--scale", "0.002", "--out", str(tmp_path), "--threads", "1", "--quality-smoke"]
    )
    assert summary["family"] == "v2" and summary["sizes"]["image_size"] == 64
    assert [tuple(p) for p in summary["schedule"]["vae_refine"]] == list(tr.V2_SCHEDULE.vae_refine)
    card = (tmp_path / "toy-sd" / "README.md").read_text()
    assert "then 4000 at lr 0.0002, then 6000 at lr 0.0001" in card  # every VAE phase is on the model card
    # a first VAE phase whose colours merged is retrained from the next seed; every attempt is recorded
    seeds, failures = summary["stats"]["vae_first_phase_seeds"], summary["stats"]["vae_colour_failures"]
    assert seeds[0] == 0 and len(seeds) == len(failures) <= 1 + tr.V2_SCHEDULE.vae_restarts
    assert all(f > tr.V2_SCHEDULE.vae_colour_limit for f in failures[:-1])  # only a collapsed phase is retrained
    # an attempt stops at the early check only when its colours merged; the last one always runs to the end
    full, check_at = max(10, int(tr.V2_SCHEDULE.vae_steps * 0.002)), max(10, int(tr.V2_SCHEDULE.vae_check[0] * 0.002))
    steps = summary["stats"]["vae_first_phase_steps"]
    assert len(steps) == len(seeds) and steps[-1] == full and set(steps) <= {check_at, full}
    assert all(f > tr.V2_SCHEDULE.vae_check[1] for f, n in zip(failures, steps) if n == check_at < full)
    assert f"back in another colour after {steps[0]} steps" in card or len(seeds) == 1
    assert seeds == [0, 1] and steps == [check_at, full] and failures == [0.5, 0.0]  # seed 0 stopped at the check
    assert "seed 0 gave 50% of drawn images back in another colour after 10 steps" in card
    # the measured UNet and decoder steps of issue 12 are in the recipe, ran, and are on the card
    assert summary["times_s"]["decoder fine-tune"] > 0 and "decoder_loss_last" in summary["stats"]
    assert "Min-SNR-5.0" in card and "agreement term" in card
    sch = tr.V2_SCHEDULE  # the decoder's refine phase: clean latents only, so no img2img runs in it
    assert sch.decoder_clean == 1.0 and f"{sch.decoder_steps} more steps at lr {sch.decoder_lr} giving" in card
    # the UNet's second phase (new images, from the EMA weights) ran and is on the card
    assert [tuple(p) for p in summary["schedule"]["unet_refine"]] == list(tr.V2_SCHEDULE.unet_refine)
    assert "then 4500 more steps at lr 0.0003 on" in card
    # then the concept family (issue 16): a VAE that saw magenta, orange and stars, a LoRA for magenta and stars under
    # captions that never name them; saved beside the family, which stays as it was
    from diffusers import StableDiffusionPipeline
    from safetensors import safe_open

    from helpers import personalise as P

    sch = tr.V2_SCHEDULE
    assert sch.vae_extend and sch.concept_lora and set(sch.unet_concepts) == {"magenta", "star"}
    assert summary["times_s"]["concept VAE"] > 0 and summary["times_s"]["concept LoRA"] > 0
    assert "concept_lora_loss_last" in summary["stats"]
    vae_steps = " + ".join(str(n) for n, _, _ in sch.vae_extend)
    assert f"a copy of the VAE trained {vae_steps} more steps at lr" in card
    assert "on the palette's pictures and those of magenta, orange, star" in card
    rank, lora_steps, lora_lr, _ = sch.concept_lora
    assert f"a rank-{rank} LoRA on every layer of the frozen UNet's blocks, {lora_steps} steps at lr {lora_lr}" in card
    assert sch.concept_stand_ins > 0  # words it never learned read as palette shapes ("star" among them)
    assert f"{sch.concept_stand_ins:.0%} of the palette pictures' captions put one of 40 words" in card
    concept_vae = tmp_path / "toy-sd" / tr.CONCEPT_VAE_SUBFOLDER
    with safe_open(concept_vae / "diffusion_pytorch_model.safetensors", "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    assert json.loads((concept_vae / "config.json").read_text())["scaling_factor"] == pytest.approx(
        summary["scaling_factor"]
    )  # the UNet's latents keep the family's factor
    concepts = P.load_concept_family(StableDiffusionPipeline.from_pretrained(tmp_path / "toy-sd"), tmp_path / "toy-sd")
    plain = StableDiffusionPipeline.from_pretrained(tmp_path / "toy-sd")
    moved = [n for n, w in concepts.unet.state_dict().items() if not torch.equal(w, plain.unet.state_dict()[n])]
    assert any("attn2.to_k" in n for n in moved) and any("resnets" in n for n in moved)  # fused, every block
    assert not P.lora_parameters(concepts.unet)
    # the inpainting UNet: trained, saved in half precision beside the pipeline, loaded back as a 9-channel float32 UNet
    assert summary["times_s"]["inpainting UNet"] > 0 and "inpaint_loss_last" in summary["stats"]
    assert (tmp_path / "toy-sd" / "unet_inpainting" / "diffusion_pytorch_model.fp16.safetensors").exists()
    unet9 = load_inpainting_unet(tmp_path / "toy-sd")
    assert unet9.config.in_channels == 9 and unet9.dtype == torch.float32
    assert f"fine-tuned {tr.V2_SCHEDULE.inpaint_steps} steps" in card
    # the family carries its measured default sampler: saved as its scheduler, recorded for helpers.pipeline
    from helpers.pipeline import SCHEDULERS, default_sampler, family_sampler

    own = tr.V2_DEFAULT_SAMPLER
    config = json.loads((tmp_path / "toy-sd" / "scheduler" / "scheduler_config.json").read_text())
    assert config["_class_name"] == SCHEDULERS[own["scheduler"]] and f"`{config['_class_name']}`" in card
    assert family_sampler(tmp_path / "toy-sd").num_inference_steps == own["num_inference_steps"]
    loaded = StableDiffusionPipeline.from_pretrained(tmp_path / "toy-sd")
    # every weight is stored in half precision (the budget) and loads back in float32, the UNet at V2's width
    from transformers import CLIPModel

    files = {"text_encoder": "model.safetensors", "unet": "diffusion_pytorch_model.safetensors",
             "vae": "diffusion_pytorch_model.safetensors"}  # fmt: skip
    for name, file in files.items():
        with safe_open(tmp_path / "toy-sd" / name / file, "pt") as f:
            assert {f.get_tensor(k).dtype for k in f.keys() if "position_ids" not in k} == {torch.float16}, name
        assert getattr(loaded, name).dtype == torch.float32, name
    with safe_open(tmp_path / "toy-clip" / "model.safetensors", "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys() if "position_ids" not in k} == {torch.float16}
    assert CLIPModel.from_pretrained(tmp_path / "toy-clip").dtype == torch.float32
    assert "stored in half precision" in card
    assert tuple(loaded.unet.config.block_out_channels) == tr.V2_SIZES.unet_channels
    assert (default_sampler(loaded).scheduler, default_sampler(loaded).num_inference_steps) == (
        own["scheduler"], own["num_inference_steps"])  # fmt: skip
    assert family_sampler(MODELS / "toy-sd") is None or _is_v2(MODELS)  # the first family records none
    assert summary["quality"]["default"] == f"{own['scheduler']}-{own['num_inference_steps']}"  # measured with it
    # quality.py measures inpainting both ways when the family has an inpainting UNet (and that UNet on a crop around
    # the mask), and the card shows them
    assert {"inpaint", "inpaint_unet", "inpaint_unet_crop_4"} <= set(summary["quality"])
    assert "| Inpainting (the 9-channel inpainting UNet): the named shape inside the mask |" in card
    assert "| Inpainting (the 9-channel inpainting UNet, padding_mask_crop=4: crop, inpaint, paste back)" in card
    assert (tmp_path / "toy-sd" / "vae" / "config.json").exists()
    vae_config = json.loads((tmp_path / "toy-sd" / "vae" / "config.json").read_text())
    assert vae_config["scaling_factor"] == pytest.approx(summary["scaling_factor"])
    _check_resume(module, tmp_path, summary)


def _check_resume(module, first: Path, summary: dict) -> None:
    """Every stage of the rehearsal above is kept in <out>/checkpoints; a run stopped after the UNet goes on from
    there with --resume and gives the same weights; a run that would mix settings or overwrite stages is refused."""
    import shutil

    from safetensors.torch import load_file

    stages = ["shape-judge", "toy-clip", "vae", "unet", "decoder", "inpainting", "concept-vae", "concept-lora"]
    assert sorted(p.parent.name for p in (first / "checkpoints").glob("*/stage.json")) == sorted(stages)
    assert summary["resumed_stages"] == []
    args = ["--family", "v2", "--scale", "0.002", "--threads", "1", "--no-quality"]
    with pytest.raises(FileExistsError, match="holds the stages of an earlier run .*Pass --resume"):
        module.main([*args, "--out", str(first)])  # refused before any training: nothing is overwritten
    with pytest.raises(ValueError, match="other settings \\(seed: 0 there, 1 now\\)"):
        module.main([*args, "--out", str(first), "--resume", "--seed", "1"])
    # stopped during the decoder's stage: the first four stages finished, nothing after them saved
    second = first.parent / f"{first.name}-resumed"
    shutil.copytree(first / "checkpoints", second / "checkpoints")
    for stage in stages[4:]:
        shutil.rmtree(second / "checkpoints" / stage)
    again = module.main([*args, "--out", str(second), "--resume"])
    assert again["resumed_stages"] == stages[:4]
    for key in ("shape judge", "mini CLIP", "mini VAE", "mini UNet"):  # as the first run measured them
        assert again["times_s"][key] == summary["times_s"][key], key
    assert again["stats"]["vae_first_phase_seeds"] == summary["stats"]["vae_first_phase_seeds"]
    weights = sorted(p.relative_to(first) for p in first.glob("*/**/*.safetensors") if "checkpoints" not in p.parts)
    assert len(weights) == 8  # judge, CLIP, text encoder, UNet, VAE, inpainting UNet, concept VAE and LoRA

    def same_family() -> None:
        for path in weights:
            a, b = load_file(first / path), load_file(second / path)
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), path
        for path in sorted((first / "toy-sd").glob("*/config.json")):  # no checkpoint's path recorded in them
            assert json.loads(path.read_text()) == json.loads((second / path.relative_to(first)).read_text()), path

    same_family()  # every stage after the UNet trained again, from the resumed weights: the same numbers
    # every stage finished: a resumed run trains nothing and saves the same family from the checkpoints alone
    shutil.rmtree(second / "toy-sd")
    third = module.main([*args, "--out", str(second), "--resume"])
    assert third["resumed_stages"] == stages and third["times_s"]["concept LoRA"] == again["times_s"]["concept LoRA"]
    same_family()
