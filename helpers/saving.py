"""Save images so that nothing is ever lost: a new run folder per call, no file overwritten,
atomic writes, and the settings of every image recorded twice (PNG text chunks + manifest.json).

    outputs/
      20261125-141503-kermit-the-frog-on-the-iron-throne/
        000-seed0.png     <- PNG text chunks: prompt, seed, steps, guidance, scheduler, model, versions
        001-seed1.png
        manifest.json     <- the same records, one per image, plus the run's library versions

Regenerating any image needs only its record: `generate(**record)` with `n_images=1`.

Nothing identifying is recorded: a model is named by its Hub id or its path inside the project (else its folder
name), a prompt file by its name, and any other text that holds your home folder or the project's absolute path
has it replaced by `~` or `.`. Several threads or processes may save into one run folder at once: the manifest
is updated under a file lock (`filelock`, every OS), so no entry is lost.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from filelock import FileLock
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from .paths import OUTPUTS_DIR, REPO_ROOT

MANIFEST = "manifest.json"
MANIFEST_LOCK = ".manifest.lock"
TEMP_PREFIX = ".tmp-"  # every file being written starts so: hidden, never adopted as a result
METADATA_KEY = "sd_tutorial"  # one PNG text chunk holding the whole record as JSON
TEXT_KEYS = ("prompt", "negative_prompt", "seed", "num_inference_steps", "guidance_scale", "scheduler", "model")


def library_versions() -> dict[str, str]:
    """Versions of the libraries that decide what an image looks like."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("diffusers", "transformers", "torch", "huggingface_hub", "accelerate"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return out


def public_name(model_or_path: Any) -> str:
    """How a model or a file is recorded: a Hub id as it is, a path inside the project relative to the project
    ("models/toy-sd"), any other path by its last part (the folder or file name), never the absolute path."""
    text = str(model_or_path)
    path = Path(text).expanduser()
    if not text or not (path.is_absolute() or text.startswith((".", "~")) or path.exists()):
        return text  # "CompVis/stable-diffusion-v1-4", or a class name
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError):
        return path.name
    if resolved.is_relative_to(REPO_ROOT.resolve()) and resolved != REPO_ROOT.resolve():
        return resolved.relative_to(REPO_ROOT.resolve()).as_posix()
    return resolved.name or text


def _scrub(value: Any) -> Any:
    """Replace the project's absolute path and the home folder in recorded text (a last line of defence)."""
    if isinstance(value, str):
        for absolute, short in ((str(REPO_ROOT.resolve()), "."), (str(Path.home()), "~")):
            if len(absolute) > 1:  # a home of "/" would replace every slash
                value = value.replace(absolute, short)
        return value
    if isinstance(value, Mapping):
        return {k: _scrub(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_scrub(v) for v in value]
    return value


#: The same scrub for other text a learner may publish (benchmark tables and their JSON, logs).
scrub_paths = _scrub


def public_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """`record` as it may be written to disk: model and source by public name, no absolute paths."""
    out = dict(record)
    if out.get("model"):
        out["model"] = public_name(out["model"])
    if out.get("source"):
        out["source"] = Path(str(out["source"])).name
    return _scrub(out)


def slugify(text: str, max_len: int = 40) -> str:
    """'Kermit the Frog, on the Iron Throne!' -> 'kermit-the-frog-on-the-iron-throne'."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:max_len].rstrip("-") or "images"


def new_run_dir(name: str = "images", root: Path | str | None = None) -> Path:
    """Create and return a fresh folder under `root` (default `outputs/`); never reuses one."""
    root = Path(root) if root is not None else OUTPUTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = f"{stamp}-{slugify(name)}"
    for i in range(10_000):
        path = root / (base if i == 0 else f"{base}-{i + 1}")
        try:
            path.mkdir()  # atomic: fails if another run (or process) took this name first
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"Could not create a new run folder under {root}")


def _png_info(record: Mapping[str, Any]) -> PngInfo:
    info = PngInfo()
    for key in TEXT_KEYS:  # readable by any PNG viewer ("exiftool image.png")
        if record.get(key) is not None:
            info.add_text(key, str(record[key]))
    info.add_text(METADATA_KEY, json.dumps(record, sort_keys=True, default=str))
    return info


def _write_new_file(path_for: Any, write) -> Path:
    """Write via a temp file, then hard-link it into place: the link fails if the name exists,
    so an existing file is never replaced, and a reader never sees a half-written file."""
    first = path_for(0)
    fd, tmp = tempfile.mkstemp(dir=first.parent, prefix=TEMP_PREFIX, suffix=first.suffix)
    os.close(fd)
    try:
        write(tmp)
        for i in range(100_000):
            target = path_for(i)
            try:
                os.link(tmp, target)
                return target
            except FileExistsError:
                continue
            except OSError:  # no hard links on this file system (some network/FUSE mounts, e.g. Google Drive)
                try:
                    os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY))  # claim the name, or fail
                except FileExistsError:
                    continue
                os.replace(tmp, target)  # replaces only the empty placeholder we just created
                return target
        raise RuntimeError(f"No free file name near {first}")
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_image(image: Image.Image, record: Mapping[str, Any], run_dir: Path | str, stem: str) -> Path:
    """Save one PNG as `<stem>.png` (or `<stem>-2.png`, ... if taken) with `record` embedded."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    info = _png_info(public_record(record))

    def path_for(i: int) -> Path:
        return run_dir / (f"{stem}.png" if i == 0 else f"{stem}-{i + 1}.png")

    return _write_new_file(path_for, lambda tmp: image.save(tmp, format="PNG", pnginfo=info))


def manifest_lock(run_dir: Path | str) -> FileLock:
    """The lock every writer of `run_dir`'s manifest holds (threads and processes, any OS)."""
    return FileLock(str(Path(run_dir) / MANIFEST_LOCK))


def _update_manifest(run_dir: Path, entries: list[dict]) -> Path:
    """Append `entries` to the manifest: read, extend and replace it under the lock, so no writer's entries are
    lost; a failed write leaves the old manifest and no temp file."""
    path = run_dir / MANIFEST
    with manifest_lock(run_dir):
        manifest = {"versions": library_versions(), "images": []}
        if path.exists():
            manifest = json.loads(path.read_text(encoding="utf-8"))
        manifest["images"].extend(public_record(e) for e in entries)
        fd, tmp = tempfile.mkstemp(dir=run_dir, prefix=TEMP_PREFIX, suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(manifest, f, indent=2, default=str)
            os.replace(tmp, path)  # the manifest only ever grows, so replacing it loses nothing
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return path


def save_images(
    images: Iterable[Image.Image],
    records: Iterable[Mapping[str, Any]],
    run_dir: Path | str | None = None,
    root: Path | str | None = None,
) -> list[Path]:
    """Save images with their records. Without `run_dir`, a new folder is made under `root`
    (default `outputs/`), named after the first prompt. Returns the paths written."""
    images, records = list(images), [dict(r) for r in records]
    if len(images) != len(records):
        raise ValueError(f"Got {len(images)} images but {len(records)} records: pass one record per image.")
    if not images:
        raise ValueError("No images to save.")
    versions = library_versions()
    if run_dir is None:
        run_dir = new_run_dir(str(records[0].get("prompt", "images")), root=root)
    run_dir = Path(run_dir)
    paths, entries = [], []
    for i, (image, record) in enumerate(zip(images, records)):
        record.setdefault("versions", versions)
        record = public_record(record)
        stem = f"{record.get('index', i):03d}-seed{record['seed']}" if "seed" in record else f"{i:03d}"
        path = save_image(image, record, run_dir, stem)
        paths.append(path)
        entries.append({"file": path.name, **record})
    _update_manifest(run_dir, entries)
    return paths


def read_metadata(path: Path | str) -> dict[str, Any]:
    """The record saved inside a PNG by `save_image`."""
    with Image.open(path) as im:
        text = im.text.get(METADATA_KEY)  # type: ignore[attr-defined]
    if text is None:
        raise ValueError(f"{path} has no {METADATA_KEY!r} metadata: was it saved by helpers.saving?")
    return json.loads(text)


def read_manifest(run_dir: Path | str) -> dict[str, Any]:
    return json.loads((Path(run_dir) / MANIFEST).read_text(encoding="utf-8"))
