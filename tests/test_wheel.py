"""One install carries everything: the wheel holds the offline models and configs, so a plain
`pip install <wheel>` (what `pip install git+URL@tag` builds) gives working helpers outside any checkout."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import background
import pytest

from helpers.paths import REPO_ROOT, RESULTS_DIR

pytestmark = pytest.mark.slow

OUTSIDE = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import helpers, helpers.paths as paths
    from helpers.pipeline import generate, load_pipeline, offline_model_dir
    from helpers.clip_ranking import load_clip, offline_clip_dir, rank

    here = Path(helpers.__file__).resolve().parent
    assert not paths.IN_CHECKOUT, "the installed package must not think it is in a checkout"
    model, clip_dir = offline_model_dir(), offline_clip_dir()
    assert here in model.resolve().parents and here in Path(clip_dir).resolve().parents, (model, clip_dir)
    runs = sorted(paths.RESULTS_DIR.glob("toy_quality_v2-wide48-13k-*euler_a30-*.json"))  # what notebook 01 reads
    assert runs and json.loads(runs[-1].read_text())["guidance_7.5"]["faithful"] > 0.9, paths.RESULTS_DIR
    pipe = load_pipeline(model, device="cpu")
    result = generate(pipe, "a red circle on a blue background", n_images=2, num_inference_steps=3, show_progress=False)
    clip = load_clip(clip_dir)
    ranked = rank(result.images, "a red circle on a blue background", clip=clip, method="single")
    print(json.dumps({"images": len(result.images), "size": result.images[0].size, "order": [int(i) for i in ranked.order]}))
    """
)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    with background.SOURCE_TREE:  # tests/test_wheelhouse.py may be building it in the background
        build = subprocess.run(
            [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(REPO_ROOT)],
            capture_output=True,
            text=True,
            timeout=600,
        )
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
    (path,) = out.glob("sd_step_by_step-*.whl")
    return path


def test_wheel_carries_models_and_configs(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in (
        "helpers/models/toy-sd/model_index.json",
        "helpers/models/toy-sd/unet/diffusion_pytorch_model.safetensors",
        "helpers/models/toy-sd/vae_concepts/diffusion_pytorch_model.safetensors",  # notebook 05's concept sibling
        "helpers/models/toy-sd/concepts_lora/pytorch_lora_weights.safetensors",
        "helpers/models/toy-sd/tokenizer/vocab.json",
        "helpers/models/toy-clip/model.safetensors",
        "helpers/models/toy-clip/merges.txt",
        "helpers/configs/clip-vit-base-patch32/config.json",
        "helpers/configs/sd-v1-4/unet/config.json",
        *(f"helpers/results/{p.name}" for p in RESULTS_DIR.glob("*.json")),  # notebook 01 and 03 read them
        "login.py",
    ):
        assert required in names, required
    assert not any(n.endswith(".msgpack") for n in names)  # one weights file that both CLIP backends read


def test_installed_wheel_generates_and_ranks_outside_the_checkout(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    # the dependencies come from this environment (after the venv's own packages); the project only from the wheel
    deps = [p for p in (sysconfig.get_path("purelib"), sysconfig.get_path("platlib")) if p]
    (site / "zz_deps.pth").write_text("\n".join(dict.fromkeys(deps)) + "\n")
    pip = subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], capture_output=True, text=True
    )
    assert pip.returncode == 0, pip.stderr[-2000:]
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env.update(SD_TUTORIAL_CACHE=str(work / ".cache"), SD_TUTORIAL_OUTPUTS=str(work / "outputs"), HF_HUB_OFFLINE="1")
    run = subprocess.run([str(py), "-c", OUTSIDE], cwd=work, capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    import json

    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["images"] == 2 and sorted(report["order"]) == [0, 1]
    assert not (work / "helpers").exists()
