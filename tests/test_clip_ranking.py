"""CLIP ranking: pmap, jit+NamedSharding, single device and torch agree on 1, 2 and 4 host devices.

The device count is fixed when jax starts, so each count runs in its own subprocess (started together,
they overlap) that sets it with `set_host_device_count` and prints its scores as JSON; the assertions are
made here. The tiny random CLIP (`ensure_mini_clip`) is one `model.safetensors` that our Flax CLIP and
transformers' torch `CLIPModel` both read, so the twins run the same weights.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import background
import numpy as np
import pytest
from PIL import Image

import helpers  # noqa: F401  (quiet library logs)
from helpers import clip_ranking as cr
from helpers.paths import REPO_ROOT

DEVICE_COUNTS = (1, 2, 4)
MAX_N = 9
PROMPT = "a red circle on a blue background"

# Runs in a fresh interpreter: asks for n CPU devices first; prints one JSON line.
WORKER = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import helpers
    from helpers import clip_ranking as cr

    folder, prompt, max_n, n_devices = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    cr.set_host_device_count(n_devices)
    import jax

    flax_clip, torch_clip = cr.load_clip(folder), cr.load_clip(folder, backend="torch")
    n_dev = jax.local_device_count()
    images = cr.example_inputs(max_n)
    out = {"devices": n_dev, "alone": cr.rank(images, prompt, flax_clip, "single", chunk_size=1).scores.tolist()}
    runs = {}
    for n in range(1, max_n + 1):
        # chunk sizes chosen so that only batch shapes n_dev and 2 * n_dev (and 1, 2) exist: few compilations
        for method, clip, chunk in [
            ("pmap", flax_clip, n_dev), ("pmap", flax_clip, 2 * n_dev), ("sharded", flax_clip, n_dev),
            ("sharded", flax_clip, 2 * n_dev), ("single", flax_clip, 1 if n_dev > 1 else 2), ("torch", torch_clip, 4),
        ]:
            r = cr.rank(images[:n], prompt, clip, method, chunk_size=chunk)
            runs[f"{method}/{chunk}/{n}"] = {
                "scores": r.scores.tolist(), "order": r.order.tolist(), "n_devices": r.n_devices,
                "images_sorted": all(
                    np.array_equal(np.asarray(a), np.asarray(cr.to_rgb(images[i]))) for a, i in zip(r.images, r.order)
                ),
            }
    out["runs"] = runs
    # the blog's code: a string prompt times the device count, no padding, device 0's scores only
    blog, rgb = {}, [cr.to_rgb(im) for im in images]  # the processor would drop alpha where we composite
    for name, text, n in [("string", prompt, 2 * n_dev), ("list", [prompt], 2 * n_dev), ("list_odd", [prompt], n_dev + 1)]:
        try:
            blog[name] = np.asarray(cr.blog_scores(rgb[:n], text, flax_clip)).reshape(-1).tolist()
        except Exception as err:
            blog[name] = f"{type(err).__name__}: {err}"
    out["blog"] = blog
    if n_dev == 1:
        e = cr.embed(images, prompt, flax_clip)
        cos = (e.image_embeds / np.linalg.norm(e.image_embeds, axis=1, keepdims=True)) @ (
            e.text_embeds / np.linalg.norm(e.text_embeds))
        out["scale_times_cos"] = (e.logit_scale * cos).tolist()
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def mini_dir():
    return cr.ensure_mini_clip()


def run_device_workers() -> dict:
    """Start one worker per device count at once; wait for all; {n_devices: report}."""
    mini_dir = cr.ensure_mini_clip()
    procs = {}
    for n in DEVICE_COUNTS:
        env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
        procs[n] = subprocess.Popen(
            [sys.executable, "-c", WORKER, str(mini_dir), PROMPT, str(MAX_N), str(n)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**env, "JAX_PLATFORMS": "cpu"},
            cwd=REPO_ROOT,
        )
    reports = {}
    for n, p in procs.items():
        stdout, stderr = p.communicate(timeout=600)
        assert p.returncode == 0, f"worker with {n} devices failed:\n{stderr[-3000:]}"
        reports[n] = json.loads(stdout.strip().splitlines()[-1])
    return reports


def start_early(items) -> None:
    """The workers are subprocesses: they run in the background, beside the rest of the session (tests/background.py)."""
    if background.selected(items, "device_reports"):
        background.start("clip-device-reports", run_device_workers)


@pytest.fixture(scope="module")
def device_reports(mini_dir):
    return background.result("clip-device-reports", run_device_workers)


def rel_diff(a, b) -> float:
    """max |a - b| relative to the largest |score| (scores of a random CLIP sit near 0)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-6))


@pytest.mark.slow
@pytest.mark.parametrize("n_devices", DEVICE_COUNTS)
def test_methods_agree_for_1_to_9_images(device_reports, n_devices):
    rep = device_reports[n_devices]
    assert rep["devices"] == n_devices
    alone = np.array(rep["alone"])  # each image scored by itself: no padding, no neighbours
    assert len(alone) == MAX_N and np.isfinite(alone).all()
    assert len(set(np.round(alone, 6))) == MAX_N  # distinct scores, so orders are comparable
    for key, run in rep["runs"].items():
        method, _, n = key.split("/")
        n = int(n)
        scores = np.array(run["scores"])
        assert scores.shape == (n,), key  # padding dropped, every device's scores gathered
        tol = 1e-3 if method == "torch" else 1e-5
        assert rel_diff(scores, alone[:n]) < tol, (key, scores, alone[:n])
        assert run["order"] == cr.stable_order(scores).tolist(), key
        assert run["order"] == cr.stable_order(alone[:n]).tolist(), key  # same ranking as each image alone
        assert run["images_sorted"], key
        assert run["n_devices"] == (n_devices if method in ("pmap", "sharded") else 1), key


@pytest.mark.slow
def test_padding_never_changes_a_score(device_reports):
    """On 4 devices, 5 images are padded to 8 (chunk 8) or to 4+4 (chunk 4): the same scores as alone."""
    rep = device_reports[4]
    alone = np.array(rep["alone"])
    for chunk in (4, 8):
        for n in (1, 3, 5, 6, 7, 9):
            assert rel_diff(rep["runs"][f"pmap/{chunk}/{n}"]["scores"], alone[:n]) < 1e-5
            assert rel_diff(rep["runs"][f"sharded/{chunk}/{n}"]["scores"], alone[:n]) < 1e-5


@pytest.mark.slow
def test_blog_code_is_right_on_one_device_only(device_reports):
    one = device_reports[1]
    alone = np.array(one["alone"])
    assert rel_diff(one["blog"]["string"], alone[:2]) < 1e-5  # `prompt * 1` is the prompt
    assert rel_diff(one["blog"]["list"], alone[:2]) < 1e-5
    for n in (2, 4):
        blog = device_reports[n]["blog"]
        assert isinstance(blog["string"], str) and "reshape" in blog["string"]  # "a cata cat" is ONE text
        assert len(blog["list"]) == 2 and len(blog["list"]) < 2 * n  # device 0's images only
        assert rel_diff(blog["list"], alone[:2]) < 1e-5
        assert isinstance(blog["list_odd"], str)  # n + 1 images cannot be split without padding


@pytest.mark.slow
def test_logits_are_scale_times_cosine(device_reports):
    rep = device_reports[1]
    assert rel_diff(rep["scale_times_cos"], rep["alone"]) < 1e-5


def test_torch_twin_matches_flax_weights_and_scale_times_cosine(mini_dir):
    torch_clip = cr.load_clip(mini_dir, backend="torch")
    images = cr.example_inputs(4)
    scores = cr.rank(images, PROMPT, torch_clip, method="torch").scores
    e = cr.embed(images, PROMPT, torch_clip)
    cos = (e.image_embeds / np.linalg.norm(e.image_embeds, axis=1, keepdims=True)) @ (
        e.text_embeds / np.linalg.norm(e.text_embeds)
    )
    assert rel_diff(e.logit_scale * cos, scores) < 1e-5
    assert e.logit_scale == pytest.approx(float(np.exp(torch_clip.model.config.logit_scale_init_value)), rel=1e-6)


def test_both_backends_read_the_one_safetensors_file(mini_dir, tmp_path):
    import shutil

    flax_clip, torch_clip = cr.load_clip(mini_dir), cr.load_clip(mini_dir, backend="torch")
    state = torch_clip.model.state_dict()
    kernel = flax_clip.params["visual_projection"]["kernel"]  # Dense (in, out) = torch Linear weight transposed
    assert np.array_equal(kernel, state["visual_projection.weight"].numpy().T)
    assert float(flax_clip.params["logit_scale"]) == float(state["logit_scale"])
    assert sorted(p.name for p in mini_dir.iterdir() if p.suffix in (".safetensors", ".msgpack", ".bin")) == [
        "model.safetensors"
    ]
    only_bin = tmp_path / "bin"  # a folder without model.safetensors: say how to make one
    shutil.copytree(mini_dir, only_bin)
    (only_bin / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="no CLIP weights.*model.safetensors"):
        cr.load_clip(only_bin)


def test_set_host_device_count_before_and_after_jax_starts():
    code = textwrap.dedent(
        """
        from helpers.clip_devices import set_host_device_count
        assert set_host_device_count(3) == 3
        import jax
        assert jax.local_device_count() == 3, jax.devices()
        assert set_host_device_count(3) == 3  # the same count again: fine
        try:
            set_host_device_count(2)
        except RuntimeError as err:
            print(err)
        """
    )
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, env={**env, "JAX_PLATFORMS": "cpu"}
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "already started with 3 CPU device(s)" in out.stdout and "set_host_device_count(2)" in out.stdout


def test_replicate_and_shard_give_each_device_its_row():
    import jax

    from helpers import clip_devices

    n = jax.local_device_count()
    tree = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "s": np.float32(2.5)}
    rep = clip_devices.replicate(tree)
    assert rep["w"].shape == (n, 2, 3) and rep["s"].shape == (n,)
    assert all(np.array_equal(row, tree["w"]) for row in np.asarray(rep["w"]))
    assert [s.device for s in rep["w"].addressable_shards] == jax.local_devices()
    batch = {"pixel_values": np.zeros((2 * n, 3, 4, 4)), "input_ids": np.zeros((n, 77), np.int32)}
    shards = clip_devices.shard(batch)
    assert shards["pixel_values"].shape == (n, 2, 3, 4, 4) and shards["input_ids"].shape == (n, 1, 77)
    if n > 1:
        with pytest.raises(ValueError, match="reshape"):  # the blog's failure: no padding
            clip_devices.shard(np.zeros((n + 1, 3)))


def test_stable_order_keeps_ties_in_input_order():
    assert cr.stable_order(np.array([1.0, 3.0, 1.0, 3.0, 2.0])).tolist() == [1, 3, 4, 0, 2]
    assert cr.stable_order(np.zeros(5)).tolist() == [0, 1, 2, 3, 4]
    # float32 noise between two slots of a batch is a tie too; a real difference is not
    noisy = np.array([0.8078818, 0.5, 0.80788255, 0.80790], np.float32)
    assert cr.stable_order(noisy).tolist() == [3, 0, 2, 1]
    assert cr.stable_order(np.array([30.0, 30.0 + 1e-5, 29.0])).tolist() == [0, 1, 2]  # rtol scales with |score|
    assert cr.stable_order(np.array([30.0, 30.01])).tolist() == [1, 0]
    assert cr.stable_order(np.array([])).tolist() == []


def test_duplicate_images_tie_and_keep_input_order(mini_dir):
    clip = cr.load_clip(mini_dir, backend="torch")
    a, b = cr.example_inputs(2)
    result = cr.rank([a, b, a, b, a], PROMPT, clip, method="torch")
    s = result.scores
    tol = cr.tie_tolerance(s)
    assert np.ptp(s[[0, 2, 4]]) <= tol and np.ptp(s[[1, 3]]) <= tol  # the same image in one batch: a tie
    assert abs(s[0] - s[1]) > tol
    top, bottom = ([0, 2, 4], [1, 3]) if s[0] > s[1] else ([1, 3], [0, 2, 4])
    assert result.order.tolist() == top + bottom


def test_faithfulness_counts_top_k_against_the_average():
    def result(prompt, order):
        images = [Image.new("L", (4, 4), v) for v in order]  # the pixel value says which image it is
        return cr.RankResult(np.zeros(len(order)), np.arange(len(order)), images, prompt, "torch", 1)

    def judge(image, prompt):  # "faithful" = even pixel value
        return image.getpixel((0, 0)) % 2 == 0

    stats = cr.faithfulness([result("a", [2, 1, 3, 5]), result("b", [7, 4, 6, 8])], judge)
    assert stats == {"top_1": 0.5, "mean": 0.5, "bottom_1": 0.5, "n_prompts": 2, "n_images": 8}  # last picks 5, 8
    assert cr.faithfulness([result("a", [2, 4, 1, 3])], judge, k=2)["top_2"] == 1.0
    with pytest.raises(ValueError, match="No rankings"):
        cr.faithfulness([], judge)


def test_padding_helpers():
    assert [cr.padded_size(n, 4) for n in (1, 4, 5, 8, 9)] == [4, 4, 8, 8, 12]
    x = np.ones((5, 3, 2, 2), np.float32)
    padded = cr.pad_batch(x, 8)
    assert padded.shape == (8, 3, 2, 2) and (padded[:5] == 1).all() and (padded[5:] == 0).all()


def test_mixed_sizes_and_modes_are_converted(mini_dir):
    clip = cr.load_clip(mini_dir, backend="torch")
    rng = np.random.default_rng(1)
    rgb = Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8))
    arr = np.asarray(rgb)
    images = [
        rgb,
        rgb.convert("RGBA"),  # opaque alpha: the same picture
        arr,  # uint8 array
        arr.astype(np.float32) / 255,  # floats in 0..1
        rgb.convert("L"),
        np.asarray(rgb.convert("L")),  # (H, W) array
        rgb.resize((100, 70)),
        Image.fromarray(np.dstack([arr, np.zeros(arr.shape[:2], np.uint8)]), "RGBA"),  # fully transparent
    ]
    s = cr.rank(images, PROMPT, clip, method="torch").scores
    assert s.shape == (8,) and np.isfinite(s).all()
    assert np.allclose(s[1:4], s[0], rtol=1e-5, atol=1e-6)
    assert s[4] == pytest.approx(s[5], rel=1e-5, abs=1e-6)
    assert cr.to_rgb(images[7]).getextrema() == ((255, 255),) * 3  # transparency composited on white


@pytest.mark.parametrize(
    "images, prompt, match",
    [
        ([], PROMPT, "No images"),
        (None, PROMPT, "No images"),
        (["a cat.png"], PROMPT, "not an image"),
        ([np.zeros((8, 8, 3), np.uint8), 3], PROMPT, "Image 1 is a int"),
        ([np.zeros((8, 8, 2), np.uint8)], PROMPT, "not an image"),
        ([np.zeros((8, 8, 3), np.int64)], PROMPT, "not an image"),
        ([np.full((8, 8, 3), np.nan, np.float32)], PROMPT, "NaN"),
        ([np.zeros((8, 8, 3), np.uint8)], "", "prompt is empty"),
        ([np.zeros((8, 8, 3), np.uint8)], "   ", "prompt is empty"),
        ([np.zeros((8, 8, 3), np.uint8)], ["a", "b"], "one string"),
    ],
)
def test_bad_inputs_raise_with_a_fix(images, prompt, match):
    with pytest.raises(ValueError, match=match):
        cr.check_inputs(images, prompt)


def test_bad_arguments_raise_with_a_fix(mini_dir, tmp_path):
    clip = cr.load_clip(mini_dir, backend="torch")
    img = [np.zeros((8, 8, 3), np.uint8)]
    with pytest.raises(ValueError, match="method must be one of"):
        cr.rank(img, PROMPT, clip, method="vmap")
    with pytest.raises(ValueError, match="needs a flax CLIP"):
        cr.rank(img, PROMPT, clip, method="pmap")
    with pytest.raises(ValueError, match="chunk_size"):
        cr.rank(img, PROMPT, clip, method="torch", chunk_size=0)
    with pytest.raises(ValueError, match="load_clip"):
        cr.rank(img, PROMPT, "openai/clip-vit-base-patch32", method="torch")
    with pytest.raises(ValueError, match="No images"):
        cr.rank([], PROMPT, clip, method="torch")
    with pytest.raises(ValueError, match="no CLIP weights"):
        cr.load_clip(tmp_path)
    with pytest.raises(ValueError, match="neither a folder nor a Hub id"):
        cr.load_clip(tmp_path / "missing")
    with pytest.raises(ValueError, match="backend"):
        cr.load_clip(mini_dir, backend="tf")
    with pytest.raises(ValueError, match="dtype"):
        cr.load_clip(mini_dir, dtype="int8")
    with pytest.raises(ValueError, match="whole number"):
        cr.set_host_device_count(0)


def test_unreachable_hub_names_the_fixes():
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # tests/conftest.py: no Hub and an empty cache, like a train
    for backend in cr.BACKENDS:
        with pytest.raises(cr.ClipUnavailableError) as info:
            cr.load_clip("openai/clip-vit-base-patch32", backend=backend)
        msg = str(info.value)
        for fix in ("network", "HF_HUB_OFFLINE=1", "models/toy-clip", "offline_clip_dir()"):
            assert fix in msg


def test_choose_clip_says_why(monkeypatch, tmp_path):
    monkeypatch.delenv("CLIP_MODEL", raising=False)
    model, why = cr.choose_clip("CompVis/stable-diffusion-v1-4")
    assert model == cr.DEFAULT_CLIP and "Hub" in why
    model, why = cr.choose_clip(tmp_path)  # a local pipeline folder -> the offline CLIP
    assert model == str(cr.offline_clip_dir()) and ("toy-clip" in why or "RANDOM" in why)
    monkeypatch.setenv("CLIP_MODEL", "my/clip")
    assert cr.choose_clip(tmp_path) == ("my/clip", "the CLIP_MODEL environment variable names it")


def test_importing_helpers_does_not_import_jax():
    code = (
        "import sys, helpers, helpers.clip_ranking, helpers.clip_loading, helpers.clip_devices, helpers.clip_blog\n"
        "import helpers.clip_inputs, helpers.plotting, helpers.saving, helpers.pipeline\n"
        "print(sorted(m for m in ('jax', 'flax') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO_ROOT)
    assert out.stdout.strip() == "[]"


@pytest.mark.slow
def test_benchmark_smoke(tmp_path):
    out = subprocess.run(
        [sys.executable, "benchmarks/clip_throughput.py", "--smoke", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "images/s" in out.stdout and "| pmap" in out.stdout
    (result,) = list(tmp_path.glob("clip_throughput-*.json"))
    data = json.loads(result.read_text())
    assert data["smoke"] is True and data["machine"]["cpu_model"]
    methods = {(r["model"], r["method"], r["devices"], r["torch_threads"]) for r in data["rows"]}
    assert len(methods) == len(data["rows"]) >= 8
    assert {m for _, m, *_ in methods} == {"pmap", "sharded", "single", "torch"}
    assert all(r["images_per_s"] > 0 for r in data["rows"])
