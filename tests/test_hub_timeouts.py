"""Every Hub call gives up in bounded time, with a message saying what to do.

The "Hub" here is a local server on 127.0.0.1 that accepts connections and never answers (a captive portal or a
broken proxy does this); HF_ENDPOINT points at it. The server stops by itself after `SERVER_LIFETIME` seconds.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import pytest

from helpers.hub import HubTimeoutError, hub_call, install_timeouts, is_timeout, timeouts
from helpers.paths import REPO_ROOT

SERVER_LIFETIME = 240  # seconds; longer than any test below, so the server never outlives the module by much
FAKE_TOKEN = "hf_" + "fake" * 9  # built at runtime: token scans of the repo stay clean


@contextmanager
def silent_server():
    """Yield http://127.0.0.1:<port>: accepts every connection, reads, never writes a byte."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    server.settimeout(0.2)
    stop = threading.Event()
    held: list[socket.socket] = []
    deadline = time.monotonic() + SERVER_LIFETIME

    def serve():
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            held.append(conn)  # keep it open, say nothing
        for conn in held:
            conn.close()
        server.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)


def _env(tmp_path, endpoint: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE")}
    env.update(
        HF_ENDPOINT=endpoint,
        HF_HOME=str(tmp_path / "hf-home"),
        SD_HUB_CONNECT_TIMEOUT="2",
        SD_HUB_READ_TIMEOUT="2",
        CI="true",
        OMP_NUM_THREADS="1",
    )
    return env


def test_timeouts_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("SD_HUB_CONNECT_TIMEOUT", "3")
    monkeypatch.setenv("SD_HUB_READ_TIMEOUT", "4.5")
    assert timeouts() == (3.0, 4.5)
    monkeypatch.setenv("SD_HUB_READ_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="SD_HUB_READ_TIMEOUT='soon' is not a number"):
        timeouts()


def test_a_request_without_timeout_still_times_out(monkeypatch):
    """huggingface_hub passes timeout=None (wait forever) on whoami/model_info: our transport fills it in."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # conftest sets it; this test's "Hub" is local
    monkeypatch.setenv("SD_HUB_CONNECT_TIMEOUT", "1")
    monkeypatch.setenv("SD_HUB_READ_TIMEOUT", "1")
    install_timeouts()
    with silent_server() as url:
        t0 = time.monotonic()
        with pytest.raises(HubTimeoutError, match="did not answer while fetching a test page") as info:
            hub_call(lambda: get_session().get(f"{url}/api/whoami-v2", timeout=None), what="fetching a test page")
        assert time.monotonic() - t0 < 20
    assert "SD_MODEL=offline" in str(info.value) and "HF_HUB_OFFLINE=1" in str(info.value)
    monkeypatch.delenv("SD_HUB_CONNECT_TIMEOUT")
    monkeypatch.delenv("SD_HUB_READ_TIMEOUT")
    install_timeouts()  # back to the defaults for the rest of the session


def test_is_timeout_follows_the_cause_chain():
    import httpx2

    try:
        try:
            raise httpx2.ReadTimeout("slow")
        except httpx2.ReadTimeout as inner:
            raise OSError("wrapped by a library") from inner
    except OSError as outer:
        assert is_timeout(outer)
    assert not is_timeout(ValueError("no"))


def test_login_status_gives_up_on_a_silent_hub(tmp_path):
    env = _env(tmp_path, "")
    env["HF_TOKEN"] = FAKE_TOKEN
    with silent_server() as url:
        env["HF_ENDPOINT"] = url
        t0 = time.monotonic()
        proc = subprocess.run(
            [sys.executable, str(REPO_ROOT / "login.py"), "--status"],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
        )  # fmt: skip
        took = time.monotonic() - t0
    text = proc.stdout + proc.stderr
    assert proc.returncode == 2, text
    assert "The Hugging Face Hub did not answer while checking your token" in text and "Traceback" not in text
    assert FAKE_TOKEN not in text
    assert took < 90, f"took {took:.0f} s"


def _silent_hub_run(tmp_path, code: str) -> tuple[str, float]:
    """Run `code` in a fresh Python whose Hub is a local server that never answers; (stdout, seconds)."""
    with silent_server() as url:
        t0 = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=_env(tmp_path, url),
            cwd=REPO_ROOT, timeout=300,
        )  # fmt: skip
        took = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout, took


def _print_error_of(call: str, imports: str) -> str:
    return f"import helpers\n{imports}\ntry:\n    {call}\nexcept Exception as err:\n    print(type(err).__name__, '|', err)\n"


def test_load_pipeline_gives_up_on_a_silent_hub(tmp_path):
    out, took = _silent_hub_run(
        tmp_path,
        _print_error_of(
            "load_pipeline('someone/some-model', device='cpu')", "from helpers.pipeline import load_pipeline"
        ),
    )
    assert "ModelUnavailableError" in out, out
    assert "did not answer while loading 'someone/some-model'" in out, out
    assert took < 240, f"took {took:.0f} s"


@pytest.mark.parametrize("backend", ["flax", "torch"])
def test_load_clip_gives_up_on_a_silent_hub(tmp_path, backend):
    out, took = _silent_hub_run(
        tmp_path,
        _print_error_of(
            f"load_clip('openai/clip-vit-base-patch32', backend={backend!r})",
            "from helpers.clip_ranking import load_clip",
        ),
    )
    assert "HubTimeoutError" in out, out
    assert "did not answer while loading CLIP 'openai/clip-vit-base-patch32'" in out, out
    assert "HF_HUB_OFFLINE=1" in out
    assert took < 60, f"took {took:.0f} s"
