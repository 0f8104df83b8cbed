"""Property-based tests (hypothesis, a fixed small budget): validators, folder names, CSV reading, ranking
padding and manifest updates hold for every input hypothesis draws, not only the ones we thought of."""

from __future__ import annotations

import csv
import io
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from helpers.clip_devices import pad_batch, padded_size
from helpers.generate_many import read_jobs
from helpers.pipeline import MAX_GUIDANCE, MAX_IMAGES, MAX_SEED, validate_inputs
from helpers.saving import new_run_dir, public_name, read_manifest, save_images, slugify

BUDGET = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
INT_TYPES = [int, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64]


@st.composite
def integer_like(draw, lo=-(2**70), hi=2**70):
    """A Python int, or the same value as any numpy integer type that can hold it."""
    value = draw(st.integers(lo, hi))
    fits = [t for t in INT_TYPES if t is int or np.iinfo(t).min <= value <= np.iinfo(t).max]
    return draw(st.sampled_from(fits))(value)


@BUDGET
@given(seed=integer_like(), n=st.integers(-2, MAX_IMAGES + 2))
def test_seed_and_count_are_exact_or_refused(seed, n):
    ok = 0 <= int(seed) and 1 <= n <= MAX_IMAGES and int(seed) + n - 1 <= MAX_SEED
    try:
        checked = validate_inputs("a cat", n_images=n, seed=seed)
    except ValueError as err:
        assert not ok, err
        assert "must be a whole number" in str(err)
    else:
        assert ok and checked["seed"] == int(seed) and type(checked["seed"]) is int


@BUDGET
@given(guidance=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-(2**1100), 2**1100)))
def test_guidance_is_a_finite_number_in_range_or_refused(guidance):
    try:
        checked = validate_inputs("a cat", guidance_scale=guidance)
    except ValueError as err:
        assert "guidance_scale must be" in str(err)
    else:
        assert 0 <= checked["guidance_scale"] <= MAX_GUIDANCE and checked["guidance_scale"] == float(guidance)


@BUDGET
@given(size=st.one_of(integer_like(-100, 5000), st.floats(allow_nan=True), st.text(max_size=3), st.none()))
def test_sizes_are_multiples_of_8_in_range_or_refused(size):
    try:
        checked = validate_inputs("a cat", height=size)
    except ValueError as err:
        hint = int(re.search(r"try (\d+)\)", str(err)).group(1))
        assert hint % 8 == 0 and 8 <= hint <= 2048  # the suggested fix is itself valid
    else:
        assert size is None or (checked["height"] % 8 == 0 and 8 <= checked["height"] <= 2048)


@BUDGET
@given(text=st.text(max_size=200))
def test_folder_names_are_safe(text):
    slug = slugify(text)
    assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", slug) and len(slug) <= 40


@BUDGET
@given(name=st.text(min_size=1, max_size=60))
def test_run_folders_never_collide(name):
    with tempfile.TemporaryDirectory() as root:
        a, b = new_run_dir(name, root=root), new_run_dir(name, root=root)
        assert a != b and a.parent == b.parent == Path(root) and a.is_dir() and b.is_dir()


@BUDGET
@given(parts=st.lists(st.from_regex(r"[A-Za-z0-9_.-]{1,12}", fullmatch=True).filter(lambda p: p not in (".", "..")),
                      min_size=1, max_size=4))  # fmt: skip
def test_public_names_hide_the_home_folder(parts):
    path = Path.home().joinpath(*parts)
    name = public_name(path)
    assert not Path(name).is_absolute() and str(Path.home()) not in name


@BUDGET
@given(
    rows=st.lists(
        st.tuples(
            st.from_regex(r"[a-z][a-z ]{0,30}[a-z]", fullmatch=True),
            st.integers(0, MAX_SEED),
            st.integers(1, 1000),
            st.decimals(0, MAX_GUIDANCE, allow_nan=False, places=3),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_csv_numbers_are_read_exactly(rows):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "jobs.csv"
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["prompt", "seed", "steps", "guidance"])
        writer.writerows([p, str(s), str(n), str(g)] for p, s, n, g in rows)
        path.write_text(buf.getvalue())
        jobs = read_jobs(path)
    assert [(j.prompt, j.seed, j.num_inference_steps) for j in jobs] == [(p, s, n) for p, s, n, _ in rows]
    assert [j.guidance_scale for j in jobs] == [float(g) for *_, g in rows]


@BUDGET
@given(row=st.integers(1, 6), junk=st.sampled_from(["nan", "inf", "-inf", "1.5", "x", "1e999", "0x10", "--1"]))
def test_a_bad_csv_number_names_its_row(row, junk):
    lines = ["prompt,seed"] + [f"p{i},{junk if i == row else i}" for i in range(1, 7)]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "jobs.csv"
        path.write_text("\n".join(lines) + "\n")
        with pytest.raises(ValueError, match=rf"^jobs\.csv, row {row}: seed "):
            read_jobs(path)


@BUDGET
@given(n=st.integers(1, 200), devices=st.integers(1, 16))
def test_ranking_padding_fills_equal_slices(n, devices):
    size = padded_size(n, devices)
    assert size % devices == 0 and n <= size < n + devices
    batch = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
    padded = pad_batch(batch, size)
    assert padded.shape == (size, 3) and np.array_equal(padded[:n], batch) and not padded[n:].any()


@settings(max_examples=15, deadline=None)
@given(batches=st.lists(st.integers(1, 4), min_size=1, max_size=5))
def test_manifest_updates_keep_every_entry_once(batches):
    image = Image.new("RGB", (4, 4))
    with tempfile.TemporaryDirectory() as folder:
        run_dir = Path(folder) / "run"
        seeds, seed = [], 0
        for size in batches:
            records = [{"prompt": "p", "seed": seed + i, "index": seed + i} for i in range(size)]
            save_images([image] * size, records, run_dir=run_dir)
            seeds += [r["seed"] for r in records]
            seed += size
        entries = read_manifest(run_dir)["images"]
        assert [e["seed"] for e in entries] == seeds
        files = [e["file"] for e in entries]
        assert len(set(files)) == len(files) and all((run_dir / f).is_file() for f in files)
