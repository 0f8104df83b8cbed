"""Fail if anything that looks like a real Hugging Face token is in the repository, its history or the outputs.

    python scripts/scan_tokens.py                 # working tree + every commit + outputs/
    python scripts/scan_tokens.py --no-history    # quicker: files only
    python scripts/scan_tokens.py more/folders    # also scan these folders (e.g. a Colab Drive output folder)

A token is `hf_` followed by 30 or more letters and digits (real ones have 34). Where one is found the report
names the place and the first 6 characters only, never the token. Exit code 0 clean, 1 found.

Allow-list: tokens known to be fake, by SHA-256, each with the reason (so the token itself is not repeated here).
Other scanners (gitleaks, trufflehog, GitHub secret scanning) can be pointed at the same entries.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import subprocess
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

TOKEN = re.compile(rb"hf_[A-Za-z0-9]{30,}")

#: sha256(token) -> why it is not a secret.
ALLOWED = {
    # tests/test_login.py's fake token "hf_" + "TESTsecretTOKENnotToBePrinted0123456789": written as one literal
    # in commit dd93d80 (test_login added) and split in b3e727d; it was never a real token (no account has it).
    "b706e4adb5fb3b6bc5dc44c8669c21d0852ee8d5ca3260274bf5f5352d3deb3f": "fake test token of tests/test_login.py",
}
SKIP_DIRS = {".git", ".venv", "node_modules", "__pycache__", ".cache", ".mypy_cache", ".ruff_cache"}
MAX_BYTES = 64 * 2**20  # larger files are model weights or archives: not where a token is pasted


@dataclass(frozen=True)
class Finding:
    where: str  # "path", "commit abc1234: path", ...
    prefix: str  # the first 6 characters: enough to recognise, useless to an attacker

    def __str__(self) -> str:
        return f"{self.where}: looks like a Hugging Face token ({self.prefix}...)"


def _is_allowed(token: bytes) -> bool:
    return hashlib.sha256(token).hexdigest() in ALLOWED


def scan_bytes(data: bytes, where: str) -> list[Finding]:
    found = {m.group(0) for m in TOKEN.finditer(data)}
    return [Finding(where, t[:6].decode()) for t in sorted(found) if not _is_allowed(t)]


def _png_text(path: Path) -> bytes:
    """A PNG's text chunks, decompressed (zTXt/iTXt are compressed, so the raw bytes could hide a token)."""
    try:
        from PIL import Image

        with Image.open(path) as im:
            return "\n".join(f"{k}={v}" for k, v in getattr(im, "text", {}).items()).encode("utf-8", "replace")
    except Exception:  # noqa: BLE001 - not a readable PNG: the raw bytes were scanned anyway
        return b""


def walk(folder: Path) -> Iterator[Path]:
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS]
        for name in files:
            yield Path(root) / name


def scan_files(paths: Iterable[Path], base: Path) -> list[Finding]:
    out = []
    for path in paths:
        try:
            if not path.is_file() or path.stat().st_size > MAX_BYTES:
                continue
            data = path.read_bytes()
        except OSError:
            continue
        try:
            where = path.relative_to(base).as_posix()
        except ValueError:
            where = path.name
        out += scan_bytes(data, where)
        if path.suffix.lower() == ".png":
            out += scan_bytes(_png_text(path), f"{where} (PNG text)")
    return out


def _git(repo: Path, *args: str) -> bytes:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, check=True).stdout


def scan_worktree(repo: Path) -> list[Finding]:
    """Tracked files and untracked files git does not ignore (what the next commit could take)."""
    names = _git(repo, "ls-files", "-z", "--cached", "--others", "--exclude-standard").split(b"\0")
    return scan_files((repo / n.decode("utf-8", "replace") for n in names if n), repo)


def scan_history(repo: Path) -> list[Finding]:
    """Every line added or removed by any commit on any ref (`git log -G` finds the commits quickly)."""
    commits = _git(repo, "log", "--all", "--format=%H", "-G", TOKEN.pattern.decode()).split()
    out = []
    for sha in commits:
        diff = _git(repo, "show", "--format=", "--no-color", "--text", sha.decode())
        current = "?"
        for line in diff.splitlines():
            if line.startswith(b"+++ b/"):
                current = line[6:].decode("utf-8", "replace")
            elif line.startswith((b"+", b"-")):
                out += scan_bytes(line, f"commit {sha.decode()[:7]}: {current}")
    return out


def scan(repo: Path, outputs: Iterable[Path] = (), history: bool = True) -> list[Finding]:
    findings = scan_worktree(repo)
    if history:
        findings += scan_history(repo)
    for folder in outputs:
        if folder.is_dir():
            findings += scan_files(walk(folder), folder.parent)
    return list(dict.fromkeys(findings))


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from helpers.paths import OUTPUTS_DIR, REPO_ROOT

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folders", nargs="*", type=Path, help="more output folders to scan")
    ap.add_argument("--no-history", action="store_true", help="skip the git history")
    args = ap.parse_args(argv)
    findings = scan(REPO_ROOT, [OUTPUTS_DIR, *args.folders], history=not args.no_history)
    for f in findings:
        print(f)
    if findings:
        print(
            f"{len(findings)} possible Hugging Face token(s). Revoke each at https://huggingface.co/settings/tokens, "
            "then remove it (from history too: git filter-repo). A known fake goes in ALLOWED with its reason.",
            file=sys.stderr,
        )
        return 1
    print("No Hugging Face tokens found (working tree, history, outputs).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
