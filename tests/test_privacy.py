"""Nothing identifying in what the project writes: PNG text, manifests, markers, logs, executed notebooks.

Looked for: the home folder, the user name (as a word) and the project's absolute path, which on a laptop is
`/home/<student>/...`. Models are recorded by Hub id or project-relative path, prompt files by name."""

from __future__ import annotations

import getpass
import json
import re
from pathlib import Path

import pytest
from PIL import Image

from helpers import generate_many as gm
from helpers.paths import OUTPUTS_DIR, REPO_ROOT
from helpers.pipeline import generate
from helpers.saving import read_manifest, save_images

pytestmark = pytest.mark.usefixtures("single_thread")


def identifying(text: str) -> list[str]:
    """The identifying strings in `text`."""
    found = [s for s in {str(Path.home()), str(REPO_ROOT), str(REPO_ROOT.resolve())} if len(s) > 1 and s in text]
    user = getpass.getuser()
    if len(user) >= 3 and re.search(rf"(?<![A-Za-z0-9_]){re.escape(user)}(?![A-Za-z0-9_])", text):
        found.append(f"user name {user!r}")
    return found


def written_text(folder: Path) -> dict[str, str]:
    """Every text a run folder holds: PNG text chunks, JSON and log files, markers."""
    out = {}
    for path in folder.rglob("*"):
        if path.name.startswith(".") and path.suffix != ".json" or not path.is_file():
            continue
        if path.suffix == ".png":
            with Image.open(path) as im:
                out[str(path)] = json.dumps(getattr(im, "text", {}))
        elif path.suffix in (".json", ".txt", ".log", ".ipynb", ".csv"):
            out[str(path)] = path.read_text(encoding="utf-8", errors="replace")
    return out


def test_generate_and_save_record_nothing_identifying(tiny_pipe, tmp_path):
    assert Path(tiny_pipe.name_or_path).is_absolute() or Path(tiny_pipe.name_or_path).exists()
    result = generate(tiny_pipe, "a red circle", n_images=2, num_inference_steps=1, height=32, width=32,
                      show_progress=False)  # fmt: skip
    paths = save_images(result.images, result.records, root=tmp_path)
    texts = written_text(paths[0].parent)
    assert len(texts) == 3  # two PNGs and the manifest
    for where, text in texts.items():
        assert identifying(text) == [], where
    assert read_manifest(paths[0].parent)["images"][0]["model"] == ".cache/models/tiny-sd-random"


def test_generate_many_records_and_logs_nothing_identifying(tiny_pipe, tmp_path):
    prompts = tmp_path / "class-of-2026" / "prompts.txt"
    prompts.parent.mkdir()
    prompts.write_text("a red circle\na blue square\n")
    jobs = gm.read_jobs(prompts, num_inference_steps=1)
    logged: list[str] = []
    summary = gm.run(jobs, lambda: tiny_pipe, tmp_path / "out", _OneProcess(), batch_size=2, source=str(prompts),
                     height=32, width=32, log=logged.append)  # fmt: skip
    logged.append(gm.format_summary(summary))
    texts = written_text(tmp_path / "out")
    assert len([w for w in texts if w.endswith(".png")]) == 2
    for where, text in {**texts, "log": "\n".join(logged)}.items():
        assert identifying(text) == [], where
        assert "class-of-2026" not in text, where  # the prompt file by name, not by folder


def test_bad_prompt_file_messages_name_the_file_only(tmp_path):
    path = tmp_path / "prompts.csv"
    path.write_text("prompt,seed\nhello,nan\n")
    with pytest.raises(ValueError) as info:
        gm.read_jobs(path)
    assert str(tmp_path) not in str(info.value) and "prompts.csv, row 1" in str(info.value)


def test_existing_outputs_and_executed_notebooks_are_clean():
    """Whatever `make run` / the notebooks left in outputs/ (the real one and the test sandbox's)."""
    folders = [f for f in {OUTPUTS_DIR, REPO_ROOT / "outputs"} if f.is_dir()]
    texts = {w: t for f in folders for w, t in written_text(f).items()}
    if not texts:
        pytest.skip("no outputs yet: `make run` writes executed notebooks and images there")
    leaks = {w: identifying(t) for w, t in texts.items() if identifying(t)}
    assert not leaks, f"{len(leaks)} file(s) hold identifying text, e.g. {next(iter(leaks.items()))}"


class _OneProcess:
    is_main_process, process_index, num_processes = True, 0, 1

    def wait_for_everyone(self):
        pass

    def split_between_processes(self, items):
        import contextlib

        return contextlib.nullcontext(items)


def test_benchmark_results_record_no_cache_paths(monkeypatch):
    """torch sets TORCHINDUCTOR_CACHE_DIR to /tmp/torchinductor_<user>: the results keep the setting, not the path."""
    import sys

    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    import common

    user = getpass.getuser()
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", f"/tmp/torchinductor_{user}")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    env = common.performance_env()
    assert env["TORCHINDUCTOR_CACHE_DIR"] == "<path>" and env["OMP_NUM_THREADS"] == "2"
    assert user not in json.dumps(common.machine_info()["env"])


def absolute_paths(value) -> list[str]:
    """Every string in a JSON value that is, or holds, an absolute path (a temporary folder's included)."""
    if isinstance(value, dict):
        return [p for v in value.values() for p in absolute_paths(v)]
    if isinstance(value, list):
        return [p for v in value for p in absolute_paths(v)]
    return (
        [value]
        if isinstance(value, str) and re.search(r"(^|[\s'\"(])/(tmp|home|root|work|Users|var|content)/", value)
        else []
    )


def test_committed_benchmark_results_hold_no_user_paths():
    for path in sorted((REPO_ROOT / "benchmarks" / "results").glob("*.json")):
        text = path.read_text()
        assert "torchinductor_" not in text and not identifying(text), path.name
        assert not absolute_paths(json.loads(text)), (path.name, absolute_paths(json.loads(text)))
