"""scripts/scan_tokens.py: the repository, its history and the outputs hold no Hugging Face token."""

from __future__ import annotations

import importlib.util
import random
import string
import subprocess
import sys

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from helpers.paths import REPO_ROOT

spec = importlib.util.spec_from_file_location("scan_tokens", REPO_ROOT / "scripts" / "scan_tokens.py")
scan_tokens = importlib.util.module_from_spec(spec)
sys.modules["scan_tokens"] = scan_tokens  # dataclasses look their module up there
spec.loader.exec_module(scan_tokens)

# Built at runtime from a seeded generator: the repository never holds a token-shaped literal.
REALISTIC = "hf_" + "".join(random.Random(0).choices(string.ascii_letters + string.digits, k=34))
OLD_FAKE = "hf_" + "TESTsecretTOKENnotToBePrinted0123456789"  # the allow-listed one in this repo's history


def test_this_repository_its_history_and_outputs_are_clean(capsys):
    assert scan_tokens.main([]) == 0, capsys.readouterr()


def test_the_old_fake_test_token_is_allow_listed():
    assert scan_tokens.scan_bytes(f'TOKEN = "{OLD_FAKE}"'.encode(), "x") == []
    assert scan_tokens.scan_bytes(REALISTIC.encode(), "x")[0].prefix == "hf_" + REALISTIC[3:6]
    assert scan_tokens.scan_bytes(b"hf_" + b"a" * 29, "x") == []  # shorter than a token


@pytest.fixture
def leaky_repo(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()

    def git(*args):
        subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)

    git("init", "-q")
    git("config", "user.email", "t@example.com")
    git("config", "user.name", "t")
    (repo / "notebook.py").write_text(f'login(token="{REALISTIC}")\n')
    git("add", ".")
    git("commit", "-qm", "oops")
    (repo / "notebook.py").write_text("login()\n")  # removed again, but history keeps it
    git("commit", "-qam", "fix")
    return repo


def test_a_token_in_history_is_found(leaky_repo):
    assert scan_tokens.scan_worktree(leaky_repo) == []
    found = scan_tokens.scan_history(leaky_repo)  # added by one commit, removed by the next: both show it
    assert len(found) == 2 and all("notebook.py" in f.where and REALISTIC not in str(f) for f in found)


def test_a_token_in_an_untracked_file_or_an_output_png_is_found(leaky_repo, tmp_path):
    (leaky_repo / "scratch.txt").write_text(f"HF_TOKEN={REALISTIC}\n")
    assert [f.where for f in scan_tokens.scan_worktree(leaky_repo)] == ["scratch.txt"]
    outputs = tmp_path / "outputs"
    (outputs / "run").mkdir(parents=True)
    info = PngInfo()
    info.add_text("prompt", f"a cat {REALISTIC}", zip=True)  # compressed: invisible in the raw bytes
    Image.new("RGB", (4, 4)).save(outputs / "run" / "000.png", pnginfo=info)
    found = scan_tokens.scan(leaky_repo, [outputs], history=False)
    assert any(f.where == "outputs/run/000.png (PNG text)" for f in found)


def test_the_script_fails_and_never_prints_the_token(leaky_repo, tmp_path):
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    (outputs / "log.txt").write_text(REALISTIC)
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "scan_tokens.py"), "--no-history", str(outputs)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 1 and "log.txt" in proc.stdout and "Revoke" in proc.stderr
    assert REALISTIC not in proc.stdout + proc.stderr
