"""pick_device: CUDA -> fp16, Apple MPS -> fp16, CPU -> fp32, forced choices, Colab/Gradient detection."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from helpers import cpu_speed
from helpers import device as dev
from helpers.device import DeviceChoice, detect_platform, pick_device

PLATFORM_VARS = (
    "COLAB_RELEASE_TAG",
    "PAPERSPACE_NOTEBOOK_REPO_ID",
    "PAPERSPACE_FQDN",
    "KAGGLE_KERNEL_RUN_TYPE",
    "SD_DEVICE",
    "SD_CPU_DTYPE",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for name in PLATFORM_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    # nothing measured on this CPU yet: no benchmark results, no cached quick test
    monkeypatch.setattr(cpu_speed, "OUTPUTS_DIR", tmp_path / "outputs")
    monkeypatch.setattr(cpu_speed, "CACHE_FILE", tmp_path / "cache" / "cpu_speed.json")


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


@pytest.fixture
def fake_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "Tesla T4")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


@pytest.fixture
def fake_mps(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)


def test_cpu_gets_fp32(no_gpu):
    choice = pick_device()
    assert isinstance(choice, DeviceChoice)
    assert (choice.device, choice.dtype, choice.platform) == ("cpu", torch.float32, "local")
    assert "fp32" in choice.reason
    assert str(choice).startswith("cpu / float32 on local:")


def test_this_machine_without_a_gpu_gets_cpu_fp32():
    if torch.cuda.is_available() or torch.backends.mps.is_available():
        pytest.skip("this machine has a GPU")
    assert (pick_device().device, pick_device().dtype) == ("cpu", torch.float32)


def test_cuda_gets_fp16_and_names_the_gpu(fake_cuda):
    choice = pick_device()
    assert (choice.device, choice.dtype) == ("cuda", torch.float16)
    assert "Tesla T4" in choice.reason and "fp16" in choice.reason


def test_mps_gets_fp16(fake_mps):
    choice = pick_device()
    assert (choice.device, choice.dtype) == ("mps", torch.float16)
    assert "MPS" in choice.reason


def test_cpu_can_be_forced_on_a_gpu_machine(fake_cuda):
    assert (pick_device("cpu").device, pick_device("cpu").dtype) == ("cpu", torch.float32)


def test_sd_device_env_forces(fake_cuda, monkeypatch):
    monkeypatch.setenv("SD_DEVICE", "cpu")
    assert pick_device().device == "cpu"
    assert pick_device("cuda").device == "cuda"  # the argument wins over the environment


@pytest.mark.parametrize("bad", ["gpu", "CUDA:0", "tpu", 3])
def test_unknown_device_raises(bad, no_gpu):
    with pytest.raises(ValueError, match="'cuda', 'mps', 'cpu'"):
        pick_device(bad)


def test_forcing_cuda_without_one_says_how_to_get_one(no_gpu):
    with pytest.raises(ValueError) as info:
        pick_device("cuda")
    assert "Runtime > Change runtime type > GPU" in str(info.value)
    assert "CPU" in str(info.value)


def test_forcing_mps_without_one_raises(no_gpu):
    """Asking for the Apple GPU on a machine without one must not silently run on the CPU."""
    with pytest.raises(ValueError, match="MPS"):
        pick_device("mps")


def test_bf16_on_request(no_gpu, monkeypatch):
    monkeypatch.setattr(dev, "cpu_has_bf16", lambda: True)
    choice = pick_device(cpu_dtype=torch.bfloat16)
    assert (choice.device, choice.dtype) == ("cpu", torch.bfloat16)
    assert "may be slower" not in choice.reason
    monkeypatch.setattr(dev, "cpu_has_bf16", lambda: False)
    assert "may be slower" in pick_device(cpu_dtype=torch.bfloat16).reason


@pytest.mark.parametrize("value", ["bfloat16", "bf16"])
def test_bf16_from_env(no_gpu, monkeypatch, value):
    monkeypatch.setenv("SD_CPU_DTYPE", value)
    assert pick_device().dtype == torch.bfloat16
    assert pick_device(cpu_dtype=torch.float32).dtype == torch.float32  # the argument wins


def test_bf16_env_does_not_touch_gpus(fake_cuda, monkeypatch):
    monkeypatch.setenv("SD_CPU_DTYPE", "bfloat16")
    assert pick_device().dtype == torch.float16


def test_cpu_has_bf16_asks_torch(monkeypatch):
    """No /proc/cpuinfo parsing: torch's own cpuinfo-backed queries answer, on Linux, macOS and Windows alike."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert dev.cpu_has_bf16() is True
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    assert dev.cpu_has_bf16() is False
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert dev.cpu_has_bf16() is True
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    assert dev.cpu_has_bf16() is False  # a torch build without the query: no guess


def test_platform_local():
    assert detect_platform() == "local"


def test_platform_colab_from_module(monkeypatch, no_gpu):
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    assert detect_platform() == "colab"
    assert pick_device().platform == "colab"


def test_platform_colab_from_env(monkeypatch):
    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab_20260101")
    assert detect_platform() == "colab"


@pytest.mark.parametrize("var", ["PAPERSPACE_NOTEBOOK_REPO_ID", "PAPERSPACE_FQDN"])
def test_platform_gradient(monkeypatch, var):
    monkeypatch.setenv(var, "x")
    assert detect_platform() == "gradient"


def test_platform_kaggle(monkeypatch):
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")
    assert detect_platform() == "kaggle"


# ---------------------------------------------------------------- CPU dtype: what was measured on this CPU


def _benchmark(tmp_path, seconds: dict) -> None:
    """A full benchmarks/unet_cpu.py result for this CPU model (only the fields cpu_speed reads)."""
    import json

    rows = [{"key": k, "s_per_step": s, "agrees": True} for k, s in seconds.items()]
    data = {"name": "unet_cpu", "smoke": False, "rows": rows, "machine": {"cpu_model": cpu_speed.cpu_model_name()}}
    folder = tmp_path / "outputs" / "benchmarks"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "unet_cpu-20260101-000000.json").write_text(json.dumps(data))


def test_cpu_without_a_measurement_stays_fp32_and_says_how_to_measure(no_gpu, monkeypatch):
    monkeypatch.setattr(cpu_speed, "micro_benchmark", lambda: pytest.fail("measured without being asked"))
    choice = pick_device()
    assert (choice.dtype, choice.channels_last) == (torch.float32, False)
    assert "cpu_dtype='auto'" in choice.reason and "SD_CPU_DTYPE=auto" in choice.reason


def test_cpu_follows_this_cpus_benchmark(no_gpu, tmp_path):
    _benchmark(tmp_path, {"fp32": 8.0, "fp32_cl": 7.9, "bf16": 4.0, "bf16_cl": 3.5})
    choice = pick_device()
    assert (choice.device, choice.dtype, choice.channels_last) == ("cpu", torch.bfloat16, True)
    assert "measured 2.29x faster than plain fp32" in choice.reason
    assert str(choice).startswith("cpu / bfloat16 + channels_last on local:")
    assert pick_device(cpu_dtype=torch.float32).dtype == torch.float32  # an explicit choice wins


def test_cpu_where_bf16_measured_slower_keeps_fp32(no_gpu, tmp_path):
    _benchmark(tmp_path, {"fp32": 7.0, "bf16": 8.4, "bf16_cl": 8.0})
    choice = pick_device()
    assert choice.dtype == torch.float32 and "fp32 was the fastest" in choice.reason and "0.88x" in choice.reason


def test_cpu_auto_measures_once_then_reads_the_cache(no_gpu, monkeypatch):
    calls = []

    def fake_micro_benchmark():
        calls.append(1)
        return {"fp32": 1.0, "fp32_cl": 1.0, "bf16": 0.5, "bf16_cl": 0.6}

    monkeypatch.setattr(cpu_speed, "micro_benchmark", fake_micro_benchmark)
    monkeypatch.setenv("SD_CPU_DTYPE", "auto")
    first = pick_device()
    assert (first.dtype, first.channels_last, len(calls)) == (torch.bfloat16, False, 1)
    assert "2.00x faster" in first.reason
    monkeypatch.delenv("SD_CPU_DTYPE")
    assert pick_device().dtype == torch.bfloat16 and len(calls) == 1  # the default now uses the cached measurement


@pytest.mark.parametrize(
    "value, dtype", [("bf16", torch.bfloat16), ("bfloat16", torch.bfloat16), ("FP32", torch.float32)]
)
def test_cpu_dtype_names(no_gpu, monkeypatch, value, dtype):
    assert pick_device(cpu_dtype=value).dtype == dtype
    monkeypatch.setenv("SD_CPU_DTYPE", value)
    assert pick_device().dtype == dtype


@pytest.mark.parametrize("bad", ["fp16", "int8", torch.float16])
def test_unknown_cpu_dtype_raises(no_gpu, bad):
    with pytest.raises(ValueError, match="'auto'"):
        pick_device(cpu_dtype=bad)


def test_a_measured_cpu_setup_holds_for_full_size_unets_only():
    measured = DeviceChoice("cpu", torch.bfloat16, "local", "measured 1.86x faster", channels_last=True, measured=True)
    assert measured.for_unet(859_520_964) is measured  # SD v1's UNet: what was measured
    small = measured.for_unet(1_000_000)  # the toy UNet's
    assert (small.dtype, small.channels_last, small.measured) == (torch.float32, False, False)
    assert "small UNet (1.0 M parameters)" in small.reason and "bfloat16 + channels_last" in small.reason
    requested = DeviceChoice("cpu", torch.bfloat16, "local", "bf16 requested")  # asked for, not measured: kept
    assert requested.for_unet(1_000_000) is requested


def test_load_pipeline_keeps_small_models_on_fp32_where_bf16_was_measured_faster(no_gpu, tmp_path, tiny_model_dir):
    from helpers.pipeline import load_pipeline

    _benchmark(tmp_path, {"fp32": 8.0, "fp32_cl": 7.9, "bf16": 4.0, "bf16_cl": 3.5})
    assert pick_device().dtype == torch.bfloat16
    pipe = load_pipeline(tiny_model_dir)
    assert pipe.unet.dtype == pipe.vae.dtype == pipe.device_choice.dtype == torch.float32
    assert pipe.unet.conv_in.weight.is_contiguous()  # no channels_last either
    assert "small UNet" in pipe.device_choice.reason
    asked = load_pipeline(tiny_model_dir, dtype=torch.bfloat16)  # an explicit dtype is kept, and said
    assert asked.unet.dtype == asked.device_choice.dtype == torch.bfloat16
    assert asked.device_choice.channels_last and "measured" in asked.device_choice.reason


def test_load_pipeline_applies_the_measured_setup_to_big_unets(no_gpu, tmp_path, tiny_model_dir, monkeypatch):
    from helpers import device
    from helpers.pipeline import load_pipeline

    monkeypatch.setattr(device, "MEASURED_SETUP_MIN_PARAMS", 1)  # the tiny UNet stands in for a full-size one
    _benchmark(tmp_path, {"fp32": 8.0, "fp32_cl": 7.9, "bf16": 4.0, "bf16_cl": 3.5})
    pipe = load_pipeline(tiny_model_dir)
    assert pipe.unet.dtype == pipe.text_encoder.dtype == pipe.device_choice.dtype == torch.bfloat16
    assert pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert "measured 2.29x faster" in pipe.device_choice.reason


def test_load_pipeline_uses_channels_last_when_measured_faster(no_gpu, tmp_path, tiny_model_dir, monkeypatch):
    from helpers import device
    from helpers.pipeline import load_pipeline

    monkeypatch.setattr(device, "MEASURED_SETUP_MIN_PARAMS", 1)
    _benchmark(tmp_path, {"fp32": 8.0, "fp32_cl": 6.0, "bf16": 9.0})
    pipe = load_pipeline(tiny_model_dir)
    assert pipe.unet.dtype == torch.float32
    conv = pipe.unet.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
