"""helpers.saving: nothing is ever overwritten, writes are atomic, and every setting reads back."""

from __future__ import annotations

import errno
import json
import os

import numpy as np
import pytest
from PIL import Image

from helpers import paths, saving
from helpers.saving import (
    MANIFEST,
    METADATA_KEY,
    TEXT_KEYS,
    library_versions,
    new_run_dir,
    read_manifest,
    read_metadata,
    save_images,
    slugify,
)

PROMPT = "Kermit the Frog, on the Iron Throne!"


def make_images(n: int, size: int = 16) -> list[Image.Image]:
    rng = np.random.default_rng(n)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def make_records(n: int, seed: int = 0, prompt: str = PROMPT) -> list[dict]:
    return [
        {
            "prompt": prompt,
            "negative_prompt": "blurry",
            "seed": seed + i,
            "num_inference_steps": 25,
            "guidance_scale": 7.5,
            "scheduler": "pndm",
            "model": "CompVis/stable-diffusion-v1-4",
            "height": 16,
            "width": 16,
            "index": i,
            "dtype": "float16",
            "device": "cuda",
        }
        for i in range(n)
    ]


def no_temp_files(folder) -> bool:
    return not [p for p in os.listdir(folder) if p.startswith(".tmp-")]


def test_outputs_dir_is_the_test_sandbox(sandbox):
    """conftest points outputs/ at a temporary folder: tests never write into the real outputs/."""
    assert paths.OUTPUTS_DIR == sandbox / "outputs"
    assert saving.OUTPUTS_DIR == paths.OUTPUTS_DIR


def test_round_trip_png_chunks_and_manifest(tmp_path):
    images, records = make_images(3), make_records(3, seed=42)
    written = save_images(images, records, root=tmp_path)
    assert len(written) == 3
    run_dir = written[0].parent
    assert run_dir.parent == tmp_path
    assert run_dir.name.endswith("-kermit-the-frog-on-the-iron-throne")
    assert [p.name for p in written] == ["000-seed42.png", "001-seed43.png", "002-seed44.png"]
    versions = library_versions()
    assert {"diffusers", "transformers", "torch"} <= set(versions)

    assert (run_dir / MANIFEST).is_file()
    manifest = read_manifest(run_dir)
    assert manifest["versions"] == versions
    assert len(manifest["images"]) == 3
    for path, image, record, entry in zip(written, images, records, manifest["images"]):
        meta = read_metadata(path)
        assert meta == {**record, "versions": versions}
        assert entry == {"file": path.name, **record, "versions": versions}
        with Image.open(path) as im:
            assert np.array_equal(np.asarray(im), np.asarray(image))  # PNG is lossless
            for key in TEXT_KEYS:  # the plain text chunks any PNG viewer shows
                assert im.text[key] == str(record[key])
            assert json.loads(im.text[METADATA_KEY]) == meta
    assert no_temp_files(run_dir)


def test_records_are_not_modified(tmp_path):
    records = make_records(1)
    before = json.dumps(records, sort_keys=True)
    save_images(make_images(1), records, root=tmp_path)
    assert json.dumps(records, sort_keys=True) == before


def test_default_root_is_outputs():
    written = save_images(make_images(1), make_records(1))
    assert written[0].parent.parent == paths.OUTPUTS_DIR


def test_saving_twice_makes_two_run_folders(tmp_path):
    first = save_images(make_images(2), make_records(2), root=tmp_path)
    first_bytes = [p.read_bytes() for p in first]
    second = save_images(make_images(2, size=8), make_records(2), root=tmp_path)
    assert first[0].parent != second[0].parent  # same prompt, same second: still a new folder
    assert [p.read_bytes() for p in first] == first_bytes
    assert len(read_manifest(first[0].parent)["images"]) == 2
    assert len(list(tmp_path.iterdir())) == 2


def test_same_run_dir_twice_numbers_the_names_and_manifest_grows(tmp_path):
    run_dir = new_run_dir("grid", root=tmp_path)
    first = save_images(make_images(2), make_records(2), run_dir=run_dir)
    first_bytes = [p.read_bytes() for p in first]
    second = save_images(make_images(2, size=8), make_records(2), run_dir=run_dir)
    assert [p.name for p in second] == ["000-seed0-2.png", "001-seed1-2.png"]
    assert [p.read_bytes() for p in first] == first_bytes
    third = save_images(make_images(1), make_records(1), run_dir=run_dir)
    assert third[0].name == "000-seed0-3.png"
    entries = read_manifest(run_dir)["images"]
    assert [e["file"] for e in entries] == [p.name for p in first + second + third]
    assert len(list(run_dir.glob("*.png"))) == 5
    assert no_temp_files(run_dir)


def test_an_existing_file_is_never_touched(tmp_path):
    run_dir = tmp_path / "mine"
    run_dir.mkdir()
    precious = run_dir / "000-seed0.png"
    precious.write_bytes(b"my own picture, not a PNG at all")
    written = save_images(make_images(1), make_records(1), run_dir=run_dir)
    assert written[0] == run_dir / "000-seed0-2.png"
    assert precious.read_bytes() == b"my own picture, not a PNG at all"
    assert read_metadata(written[0])["seed"] == 0
    assert no_temp_files(run_dir)


def test_file_systems_without_hard_links(tmp_path, monkeypatch):
    """Some mounts (e.g. Google Drive on Colab) refuse hard links: saving still works and still never overwrites."""

    def no_links(src, dst):
        raise OSError(errno.ENOTSUP, "Operation not supported")

    monkeypatch.setattr(saving.os, "link", no_links)
    run_dir = tmp_path / "drive"
    run_dir.mkdir()
    precious = run_dir / "000-seed0.png"
    precious.write_bytes(b"keep me")
    first = save_images(make_images(2), make_records(2), run_dir=run_dir)
    second = save_images(make_images(1), make_records(1), run_dir=run_dir)
    assert [p.name for p in first + second] == ["000-seed0-2.png", "001-seed1.png", "000-seed0-3.png"]
    assert precious.read_bytes() == b"keep me"
    assert [read_metadata(p)["seed"] for p in first + second] == [0, 1, 0]
    assert no_temp_files(run_dir)


def test_a_failed_write_leaves_no_temp_file(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"

    def broken_save(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_images(make_images(1), make_records(1), run_dir=run_dir)
    assert list(run_dir.iterdir()) == []


def test_records_without_seed_or_index(tmp_path):
    written = save_images(make_images(2), [{"prompt": "x"}, {"prompt": "y"}], root=tmp_path)
    assert [p.name for p in written] == ["000.png", "001.png"]
    assert read_metadata(written[1])["prompt"] == "y"


@pytest.mark.parametrize("n_images,n_records", [(2, 1), (1, 2), (0, 1)])
def test_mismatched_images_and_records(tmp_path, n_images, n_records):
    with pytest.raises(ValueError, match="one record per image"):
        save_images(make_images(n_images) if n_images else [], make_records(n_records), root=tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing created before the check


def test_nothing_to_save(tmp_path):
    with pytest.raises(ValueError, match="No images"):
        save_images([], [], root=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_read_metadata_of_a_foreign_png(tmp_path):
    path = tmp_path / "plain.png"
    make_images(1)[0].save(path)
    with pytest.raises(ValueError, match="helpers.saving"):
        read_metadata(path)


def test_new_run_dir_never_reuses(tmp_path):
    dirs = [new_run_dir("same name", root=tmp_path) for _ in range(3)]
    assert len(set(dirs)) == 3 and all(d.is_dir() for d in dirs)
    assert dirs[0].name.endswith("-same-name")


@pytest.mark.parametrize(
    "text,slug",
    [
        ("Kermit the Frog, on the Iron Throne!", "kermit-the-frog-on-the-iron-throne"),
        ("  --Hello__World--  ", "hello-world"),
        ("猫の絵", "images"),
        ("", "images"),
        ("a" * 30 + " " + "b" * 30, "a" * 30 + "-" + "b" * 9),
        ("a" * 39 + " b", "a" * 39),  # no trailing dash after the cut
        ("../../etc/passwd", "etc-passwd"),  # never a path
    ],
)
def test_slugify(text, slug):
    assert slugify(text) == slug
    assert len(slugify(text)) <= 40


def test_generated_images_round_trip(tiny_pipe, tmp_path, single_thread):
    """The records generate() returns go through save and back unchanged, numbers staying numbers."""

    from helpers.pipeline import generate

    result = generate(tiny_pipe, "a red square", n_images=2, seed=np.int64(9), num_inference_steps=1)
    written = save_images(result.images, result.records, root=tmp_path)
    for path, record in zip(written, result.records):
        meta = read_metadata(path)
        assert {k: meta[k] for k in record} == record
        assert meta["seed"] == record["seed"] and isinstance(meta["seed"], int)


# ------------------------------------------------------------------------------------------ hardening


def test_concurrent_saves_into_one_folder_keep_every_manifest_entry(tmp_path):
    """8 writers x 15 saves at once: without the manifest lock, read-extend-replace kept 66 of 120."""
    import threading

    run_dir = tmp_path / "shared"
    run_dir.mkdir()
    images = make_images(1)
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def writer(w: int):
        start.wait()
        try:
            for k in range(15):
                save_images(images, make_records(1, seed=w * 100 + k), run_dir=run_dir)
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    entries = read_manifest(run_dir)["images"]
    assert len(entries) == 120 == len(list(run_dir.glob("[!.]*.png")))
    assert sorted(e["seed"] for e in entries) == sorted(w * 100 + k for w in range(8) for k in range(15))
    assert no_temp_files(run_dir)


def test_a_failed_manifest_write_leaves_no_temp_file_and_the_old_manifest(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    save_images(make_images(1), make_records(1), run_dir=run_dir)
    before = (run_dir / MANIFEST).read_text()

    def broken_dump(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(saving.json, "dump", broken_dump)
    with pytest.raises(OSError, match="disk full"):
        save_images(make_images(1), make_records(1, seed=5), run_dir=run_dir)
    assert (run_dir / MANIFEST).read_text() == before
    assert no_temp_files(run_dir)


def test_nothing_identifying_is_recorded(tmp_path):
    """A model folder under the home directory is recorded by name; inside the project, relative to it."""
    home_model = str(__import__("pathlib").Path.home() / "secret-user-models" / "my-sd")
    records = make_records(2)
    records[0].update(model=home_model, source=str(tmp_path / "class" / "prompts.csv"), note=f"from {home_model}")
    records[1].update(model=str(paths.REPO_ROOT / "models" / "toy-sd"))
    written = save_images(make_images(2), records, run_dir=tmp_path / "run")
    first, second = read_metadata(written[0]), read_metadata(written[1])
    assert (
        first["model"] == "my-sd"
        and first["source"] == "prompts.csv"
        and first["note"] == "from ~/secret-user-models/my-sd"
    )
    assert second["model"] == "models/toy-sd"
    with Image.open(written[0]) as im:
        assert im.text["model"] == "my-sd"  # type: ignore[attr-defined]
    manifest = (tmp_path / "run" / MANIFEST).read_text()
    assert str(__import__("pathlib").Path.home()) not in manifest and str(paths.REPO_ROOT) not in manifest
    assert saving.public_name("CompVis/stable-diffusion-v1-4") == "CompVis/stable-diffusion-v1-4"
