"""login.py: every flow with the Hub calls mocked. In every flow the token never shows up in what is
printed, logged or written by login.py (the hub library alone stores it, and here that call is mocked)."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import types
from pathlib import Path

import httpx2
import pytest
from huggingface_hub import constants
from huggingface_hub.errors import HfHubHTTPError

import login
from helpers.paths import REPO_ROOT

TOKEN = "hf_" + "TESTsecretTOKENnotToBePrinted0123456789"  # fake; split so that token scanners do not flag the repo


class Calls:
    """Records what login.py asked of the hub library and of the keyboard."""

    def __init__(self):
        self.whoami: list[str | None] = []
        self.hf_login: list[dict] = []
        self.hf_logout = 0
        self.getpass: list[str] = []


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


class NoTty(io.StringIO):
    def isatty(self) -> bool:
        return False


def http_error(status: int) -> HfHubHTTPError:
    response = httpx2.Response(status, request=httpx2.Request("GET", "https://huggingface.co/api/whoami-v2"))
    # a careless library could put the token in its message: login.py must not repeat it
    return HfHubHTTPError(f"{status} Client Error: Invalid credentials for token {TOKEN}", response=response)


@pytest.fixture
def hub(monkeypatch, tmp_path, capsys, caplog):
    """A sandbox: HF_HOME in tmp, no token anywhere, online, not CI, no terminal; hub calls mocked.

    After the test: the token is in no output, no log record, and no file login.py could have written."""
    home = tmp_path / "hf-home"
    home.mkdir()
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "CI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)
    monkeypatch.setattr(sys, "stdin", NoTty(""))
    monkeypatch.chdir(tmp_path)  # anything login.py wrote to a relative path would land here
    caplog.set_level(logging.DEBUG)

    calls = Calls()
    state = {"token": None, "whoami": {"name": "kermit"}}

    def whoami(token=None):
        calls.whoami.append(token)
        result = state["whoami"]
        if isinstance(result, Exception):
            raise result
        return result

    def hf_login(token=None, add_to_git_credential=False, **kw):
        calls.hf_login.append({"token": token, "add_to_git_credential": add_to_git_credential, **kw})
        with open(constants.HF_TOKEN_PATH, "w") as f:  # as a careless library would: mode from the umask
            f.write("stands in for the token")

    def hf_logout(*a, **kw):
        calls.hf_logout += 1
        if state.get("logout_error"):
            raise state["logout_error"]

    def getpass(prompt=""):
        calls.getpass.append(prompt)
        typed = state.get("typed", TOKEN + "\n")
        if isinstance(typed, BaseException):
            raise typed
        return typed

    monkeypatch.setattr(login, "whoami", whoami)
    monkeypatch.setattr(login, "hf_login", hf_login)
    monkeypatch.setattr(login, "hf_logout", hf_logout)
    monkeypatch.setattr(login, "get_token", lambda: state["token"])
    monkeypatch.setattr(login.getpass, "getpass", getpass)
    old_umask = os.umask(0o022)  # the usual default: files 0644, world-readable
    try:
        yield types.SimpleNamespace(calls=calls, state=state, home=home)
    finally:
        os.umask(old_umask)

    out, err = capsys.readouterr()
    assert TOKEN not in out and TOKEN not in err
    logged = [r.getMessage() for when in ("setup", "call", "teardown") for r in caplog.get_records(when)]
    assert not [m for m in logged if TOKEN in m]
    for path in tmp_path.rglob("*"):  # HF_HOME and the working directory
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), f"{path} contains the token"


def output(capsys) -> str:
    out, err = capsys.readouterr()
    text = out + err
    assert TOKEN not in text
    return text


# --------------------------------------------------------------------------------------- existing token


def test_existing_env_token_is_validated_without_prompting(hub, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    hub.state["token"] = TOKEN
    assert login.main([]) == login.OK
    assert hub.calls.whoami == [TOKEN]
    assert hub.calls.getpass == [] and hub.calls.hf_login == []  # nothing to save: the hub library finds it
    text = output(capsys)
    assert "Logged in as kermit" in text and "HF_TOKEN environment variable" in text
    assert login.LICENSE_URL in text


def test_saved_token_is_used(hub, capsys):
    Path(constants.HF_TOKEN_PATH).write_text("saved by huggingface_hub")
    hub.state["token"] = TOKEN
    assert login.main([]) == login.OK
    assert hub.calls.getpass == []
    assert f"token saved in {constants.HF_TOKEN_PATH}" in output(capsys)
    Path(constants.HF_TOKEN_PATH).unlink()


def test_colab_secret_is_used(hub, capsys):
    hub.state["token"] = TOKEN  # get_token() finds it, but not in the environment nor in a file
    assert login.main([]) == login.OK
    assert "Colab secret" in output(capsys)


def test_existing_token_rejected(hub, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    hub.state.update(token=TOKEN, whoami=http_error(401))
    assert login.main([]) == login.REJECTED
    text = output(capsys)
    assert "rejected" in text and "401" in text and login.TOKENS_URL in text


# --------------------------------------------------------------------------------------- explicit tokens


def test_token_stdin(hub, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", "hf_anOtherToken")  # an explicit --token-stdin wins over the environment
    hub.state["token"] = "hf_anOtherToken"
    monkeypatch.setattr(sys, "stdin", NoTty(TOKEN + "\n"))
    assert login.main(["--token-stdin"]) == login.OK
    assert hub.calls.whoami == [TOKEN]
    assert hub.calls.hf_login == [{"token": TOKEN, "add_to_git_credential": False}]
    assert hub.calls.getpass == []
    text = output(capsys)
    assert "standard input" in text and "Token saved" in text


def test_token_stdin_empty(hub, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", NoTty("\n"))
    assert login.main(["--token-stdin"]) == login.REJECTED
    assert hub.calls.whoami == [] and hub.calls.hf_login == []
    assert "empty" in output(capsys)


def test_token_argument_warns_about_shell_history(hub, capsys):
    assert login.main(["--token", TOKEN]) == login.OK
    assert hub.calls.hf_login[0]["token"] == TOKEN
    text = output(capsys)
    assert "shell history" in text and "--token-stdin" in text


def test_rejected_token_is_not_saved(hub, capsys):
    hub.state["whoami"] = http_error(401)
    assert login.main(["--token", TOKEN]) == login.REJECTED
    assert hub.calls.hf_login == []
    text = output(capsys)
    assert "was rejected (the Hub answered 401)" in text and login.TOKENS_URL in text


def test_forbidden_token_is_rejected(hub, capsys):
    hub.state["whoami"] = http_error(403)
    assert login.main(["--token", TOKEN]) == login.REJECTED
    assert hub.calls.hf_login == []


def test_unreachable_hub(hub, capsys):
    hub.state["whoami"] = httpx2.ConnectError(f"cannot connect (token {TOKEN})")
    assert login.main(["--token", TOKEN]) == login.UNAVAILABLE
    assert hub.calls.hf_login == []
    text = output(capsys)
    assert "cannot reach the Hugging Face Hub" in text and "SD_MODEL=offline" in text


def test_server_error_is_not_called_a_bad_token(hub, capsys):
    hub.state["whoami"] = http_error(500)
    assert login.main(["--token", TOKEN]) == login.UNAVAILABLE
    assert "rejected" not in output(capsys)


# --------------------------------------------------------------------------------------- prompting


def test_interactive_prompt_hides_the_input(hub, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", Tty(""))
    assert login.main([]) == login.OK
    assert len(hub.calls.getpass) == 1
    assert login.TOKENS_URL in hub.calls.getpass[0] and "hidden" in hub.calls.getpass[0]
    assert hub.calls.whoami == [TOKEN]  # the trailing newline is stripped
    assert hub.calls.hf_login == [{"token": TOKEN, "add_to_git_credential": False}]
    assert "Logged in as kermit (token from the prompt)" in output(capsys)


def test_prompt_left_empty(hub, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", Tty(""))
    hub.state["typed"] = "   "
    assert login.main([]) == login.REJECTED
    assert hub.calls.hf_login == [] and "empty" in output(capsys)


def test_notebook_prompts_and_ignores_sys_argv(hub, monkeypatch, capsys):
    """In a notebook sys.argv holds the kernel's arguments: login.main() must not parse them."""
    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
    monkeypatch.setattr(sys, "argv", ["ipykernel_launcher.py", "-f", "/tmp/kernel.json"])
    assert login.main() == login.OK
    assert len(hub.calls.getpass) == 1


def test_ci_never_prompts(hub, monkeypatch, capsys):
    monkeypatch.setenv("CI", "true")
    monkeypatch.setattr(sys, "stdin", Tty(""))  # even with a terminal attached
    assert login.main([]) == login.UNAVAILABLE
    assert hub.calls.getpass == [] and hub.calls.whoami == []
    text = output(capsys)
    assert "will not prompt" in text and "HF_TOKEN" in text and "--token-stdin" in text


def test_no_terminal_never_prompts(hub, capsys):
    assert login.main([]) == login.UNAVAILABLE
    assert hub.calls.getpass == []


def test_offline_never_prompts(hub, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(sys, "stdin", Tty(""))  # interactive, but the Hub is off: asking is pointless
    assert login.main([]) == login.UNAVAILABLE
    assert hub.calls.getpass == [] and hub.calls.whoami == []
    text = output(capsys)
    assert "HF_HUB_OFFLINE" in text and "SD_MODEL=offline" in text


def test_offline_with_a_token_does_not_call_the_hub(hub, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    hub.state["token"] = TOKEN
    assert login.main([]) == login.UNAVAILABLE
    assert hub.calls.whoami == [] and hub.calls.hf_login == []
    assert "HF_HUB_OFFLINE is set" in output(capsys)


# --------------------------------------------------------------------------------------- status, logout, usage


def test_status_logged_in(hub, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    hub.state["token"] = TOKEN
    assert login.main(["--status"]) == login.OK
    assert hub.calls.getpass == [] and hub.calls.hf_login == []
    assert "Logged in as kermit" in output(capsys)


def test_status_not_logged_in(hub, capsys):
    assert login.main(["--status"]) == login.UNAVAILABLE
    assert hub.calls.whoami == [] and hub.calls.getpass == []
    assert "Not logged in" in output(capsys)


def test_logout(hub, capsys):
    assert login.main(["--logout"]) == login.OK
    assert hub.calls.hf_logout == 1
    assert "Logged out" in output(capsys)


def test_logout_with_env_token_says_to_unset_it(hub, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    hub.state["logout_error"] = KeyError("nothing saved")
    assert login.main(["--logout"]) == login.OK
    assert "unset it" in output(capsys)


def test_bad_usage(hub, capsys):
    assert login.main(["--token", TOKEN, "--token-stdin"]) == login.USAGE
    assert login.main(["--frobnicate"]) == login.USAGE
    assert login.main(["--help"]) == login.OK
    assert hub.calls.whoami == [] and hub.calls.getpass == []


# --------------------------------------------------------------------------------------- hardening


@pytest.mark.parametrize(
    "argv",
    [[TOKEN], ["--status", TOKEN], ["--token-stdin", TOKEN], ["--logout", "--token", TOKEN], ["--tok", TOKEN]],
    ids=["stray", "after-status", "after-stdin", "conflict", "abbrev-typo"],
)
def test_usage_errors_never_echo_an_argument(hub, argv, capsys):
    assert login.main(argv) == login.USAGE
    text = output(capsys)  # argparse itself would say "unrecognized arguments: hf_..."
    assert "not repeated here" in text and "--help" in text
    assert hub.calls.whoami == [] and hub.calls.hf_login == []


def test_saved_token_file_is_private(hub, capsys):
    assert login.main(["--token", TOKEN]) == login.OK
    mode = os.stat(constants.HF_TOKEN_PATH).st_mode & 0o777
    assert mode == 0o600, oct(mode)  # written under a 0077 umask, then chmod-ed
    assert os.umask(0o022) == 0o022  # and the caller's umask is back


@pytest.mark.parametrize("key", [EOFError, KeyboardInterrupt], ids=["ctrl-d", "ctrl-c"])
def test_prompt_cancelled_exits_cleanly(hub, monkeypatch, capsys, key):
    monkeypatch.setattr(sys, "stdin", Tty(""))
    hub.state["typed"] = key()
    assert login.main([]) == login.UNAVAILABLE
    assert hub.calls.whoami == [] and hub.calls.hf_login == []
    text = output(capsys)
    assert "cancelled at the prompt" in text and "Traceback" not in text


def test_ctrl_c_while_reading_stdin(hub, monkeypatch, capsys):
    class Interrupted(NoTty):
        def readline(self, *a):
            raise KeyboardInterrupt

    monkeypatch.setattr(sys, "stdin", Interrupted(""))
    assert login.main(["--token-stdin"]) == login.CANCELLED
    assert "cancelled (Ctrl-C); nothing was saved" in output(capsys)


@pytest.mark.parametrize(
    "bad, why",
    [
        ("x" * 10_000, "10000 characters long"),
        (TOKEN + " " + TOKEN, "contains spaces"),
        ("sk-" + "a" * 40, "does not start with hf_"),
        ("hf_abc", "too short"),
        ("hf_" + "a" * 30 + "!", "other than letters and digits"),
    ],
    ids=["10kB", "pasted-twice", "other-service", "short", "punctuation"],
)
def test_malformed_token_is_reported_as_malformed(hub, capsys, bad, why):
    assert login.main(["--token", bad]) == login.REJECTED
    assert hub.calls.whoami == [] and hub.calls.hf_login == []  # nothing sent to the Hub
    text = output(capsys)
    assert "is malformed" in text and why in text and "cannot reach" not in text
    assert bad not in text


def test_expired_saved_token_says_how_to_replace_it(hub, capsys):
    Path(constants.HF_TOKEN_PATH).write_text("saved by huggingface_hub")
    hub.state.update(token=TOKEN, whoami=http_error(401))
    assert login.main(["--status"]) == login.REJECTED
    text = output(capsys)
    assert "expired or been revoked" in text and "python login.py --logout`, then `python login.py`" in text
    Path(constants.HF_TOKEN_PATH).unlink()


def test_expired_env_token_says_to_update_the_variable(hub, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    hub.state.update(token=TOKEN, whoami=http_error(401))
    assert login.main([]) == login.REJECTED
    assert "put the new one in HF_TOKEN" in output(capsys)


def test_hub_timeout_is_reported_with_the_fix(hub, capsys):
    hub.state["whoami"] = httpx2.ReadTimeout("timed out")
    assert login.main(["--token", TOKEN]) == login.UNAVAILABLE
    text = output(capsys)
    assert "did not answer while checking your token" in text and "SD_HUB_READ_TIMEOUT" in text


# --------------------------------------------------------------------------------------- a real process


def test_script_never_echoes_a_stray_token(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    env.update(CI="true", HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf-home"))
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "login.py"), TOKEN],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert proc.returncode == login.USAGE
    assert TOKEN not in proc.stdout + proc.stderr and "not repeated here" in proc.stderr


def test_script_in_ci_offline_exits_2_without_prompting(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    env.update(CI="true", HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf-home"))
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "login.py")],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,  # a prompt would hang: fail instead
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "input hidden" not in proc.stdout + proc.stderr
    assert "error:" in proc.stderr
    assert not (tmp_path / "hf-home" / "token").exists()
