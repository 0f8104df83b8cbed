"""Log in to the Hugging Face Hub, safely, from a terminal or a notebook.

    python login.py                  # use an existing token, else ask for one (input hidden)
    python login.py --token-stdin    # read the token from standard input: `pass hf | python login.py --token-stdin`
    python login.py --token hf_...   # the blog's form; works, but the token lands in your shell history
    python login.py --status         # who am I logged in as, and where does the token come from
    python login.py --logout         # forget the saved token

In a notebook: `import login; login.main()` (prompts with a hidden input box), or on Colab add a
secret named HF_TOKEN (key icon on the left) and nothing needs typing.

Order: an existing token (huggingface_hub.get_token(): the HF_TOKEN variable, the saved token, the
Colab secret) -> --token-stdin / --token -> an interactive hidden prompt. The token is checked with
`whoami` when the Hub is reachable; offline or in CI this never prompts and exits non-zero with a
message. The token itself is never printed, logged or written by this script: the hub library stores it.

Exit codes: 0 logged in (or logged out), 1 the token was rejected or is malformed, 2 no token could be had
or the Hub cannot be reached (every Hub call times out: helpers/hub.py), 3 bad usage, 130 cancelled (Ctrl-C).
Usage errors never repeat an argument (it could be a token); files the hub library writes are made 0600.
"""

from __future__ import annotations

import argparse
import getpass
import os
import re
import sys

from huggingface_hub import get_token, whoami
from huggingface_hub import login as hf_login
from huggingface_hub import logout as hf_logout

from helpers.hub import HubTimeoutError, hub_call

OK, REJECTED, UNAVAILABLE, USAGE, CANCELLED = 0, 1, 2, 3, 130
MAX_TOKEN_CHARS = 256  # real tokens are ~37 characters ("hf_" + 34); a 10 kB paste is a mistake, not a token
TOKEN_SHAPE = re.compile(r"hf_[A-Za-z0-9_-]{8,250}")
TOKENS_URL = "https://huggingface.co/settings/tokens"
LICENSE_URL = "https://huggingface.co/CompVis/stable-diffusion-v1-4"


class HubUnreachable(Exception):
    pass


class TokenRejected(Exception):
    pass


class UsageError(Exception):
    pass


class QuietParser(argparse.ArgumentParser):
    """argparse's errors quote the offending argument ("unrecognized arguments: hf_..."): ours never do."""

    def error(self, message: str):
        raise UsageError


def malformed(token: str) -> str | None:
    """Why `token` cannot be a Hugging Face token (never quoting it), or None if it looks like one."""
    if len(token) > MAX_TOKEN_CHARS:
        return f"it is {len(token)} characters long (a token is about 37)"
    if any(c.isspace() for c in token):
        return "it contains spaces or line breaks (pasted twice, or with other text?)"
    if not token.startswith("hf_"):
        return "it does not start with hf_"
    if not TOKEN_SHAPE.fullmatch(token):
        return "it holds characters other than letters and digits after hf_, or is too short"
    return None


def _say(msg: str) -> None:
    print(msg, file=sys.stderr if msg.startswith("error") else sys.stdout)


def token_source() -> str | None:
    """Where the existing token comes from (never the token itself)."""
    if os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN"):
        return "the HF_TOKEN environment variable"
    if get_token() is None:
        return None
    from huggingface_hub import constants

    if os.path.exists(constants.HF_TOKEN_PATH):
        return f"the token saved in {constants.HF_TOKEN_PATH}"
    return "the Colab secret HF_TOKEN"


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def non_interactive() -> bool:
    """CI, or no terminal and no notebook to type into: never prompt."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        return True
    in_notebook = "ipykernel" in sys.modules
    return not (in_notebook or (sys.stdin is not None and sys.stdin.isatty()))


def check_token(token: str) -> str:
    """The account name for `token`; raises TokenRejected, HubUnreachable or HubTimeoutError."""
    if hub_offline():
        raise HubUnreachable("HF_HUB_OFFLINE is set")
    try:
        info = hub_call(whoami, token=token, what="checking your token")
    except HubTimeoutError:
        raise
    except Exception as err:  # noqa: BLE001 - classify, never echo the token
        status = getattr(getattr(err, "response", None), "status_code", None)
        if status in (401, 403):
            raise TokenRejected(f"the Hub answered {status}") from None
        raise HubUnreachable(type(err).__name__) from None
    return info.get("name", "?") if isinstance(info, dict) else "?"


def _replace_hint(source: str) -> str:
    """How to replace an expired or revoked token, by where it came from."""
    if source.startswith("the HF_TOKEN"):
        return "then put the new one in HF_TOKEN (or unset HF_TOKEN and run `python login.py`)."
    if source.startswith("the token saved"):
        return "then replace the saved one: `python login.py --logout`, then `python login.py`."
    if source.startswith("the Colab secret"):
        return "then paste it into the Colab secret HF_TOKEN (key icon on the left) and restart the runtime."
    return "then run `python login.py` again with it."


def _validated(token: str, source: str) -> int:
    why = malformed(token)
    if why is not None:
        _say(
            f"error: the token from {source} is malformed: {why}. Nothing was sent to the Hub. "
            f"Copy the token again from {TOKENS_URL} (it looks like hf_ followed by 34 letters and digits)."
        )
        return REJECTED
    try:
        name = check_token(token)
    except TokenRejected as err:
        _say(
            f"error: the token from {source} was rejected ({err}): it may have expired or been revoked. "
            f"Make a new one at {TOKENS_URL} (role: read), {_replace_hint(source)}"
        )
        return REJECTED
    except HubTimeoutError as err:
        _say(f"error: {err}")
        return UNAVAILABLE
    except HubUnreachable as err:
        _say(
            f"error: cannot reach the Hugging Face Hub to check the token from {source} ({err}). "
            "Connect to the internet and retry; offline, use the offline model (SD_MODEL=offline)."
        )
        return UNAVAILABLE
    _say(f"Logged in as {name} (token from {source}).")
    _say(f"To use Stable Diffusion v1-4, accept its license once at {LICENSE_URL}.")
    return OK


def status() -> int:
    source = token_source()
    if source is None:
        _say("Not logged in: no HF_TOKEN variable, no saved token, no Colab secret. Run `python login.py`.")
        return UNAVAILABLE
    return _validated(get_token(), source)


def logout() -> int:
    env = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    try:
        hf_logout()
    except Exception:  # noqa: BLE001 - nothing saved is not an error
        pass
    if env:
        _say("Removed the saved token, but HF_TOKEN is set in your environment: unset it to log out fully.")
    else:
        _say("Logged out: the saved token is removed.")
    return OK


def save_token(token: str) -> None:
    """Have the hub library store the token, with files readable by you alone (0600) whatever it does."""
    from huggingface_hub import constants

    old = os.umask(0o077)  # anything created meanwhile is owner-only
    try:
        hub_call(hf_login, token=token, add_to_git_credential=False, what="saving your token")
    finally:
        os.umask(old)
    for path in (constants.HF_TOKEN_PATH, getattr(constants, "HF_STORED_TOKENS_PATH", None)):
        if path and os.path.isfile(path):
            os.chmod(path, 0o600)


def _ask_hidden() -> str | None:
    """The token typed at a hidden prompt; None after Ctrl-D or Ctrl-C."""
    try:
        return getpass.getpass(f"Hugging Face token (from {TOKENS_URL}; input hidden): ")
    except (EOFError, KeyboardInterrupt):
        print(file=sys.stderr)  # end the prompt's line
        return None


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:
        _say("error: cancelled (Ctrl-C); nothing was saved.")
        return CANCELLED


def _main(argv: list[str] | None = None) -> int:
    ap = QuietParser(description="Log in to the Hugging Face Hub without exposing your token.")
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--token-stdin", action="store_true", help="read the token from standard input")
    group.add_argument("--token", help="the token itself (lands in your shell history: prefer --token-stdin)")
    group.add_argument("--status", action="store_true", help="show who you are logged in as")
    group.add_argument("--logout", action="store_true", help="forget the saved token")
    try:
        args = ap.parse_args(argv if argv is not None else ([] if "ipykernel" in sys.modules else None))
    except UsageError:
        _say(
            "error: unknown, missing or conflicting arguments (not repeated here, in case one is a token). "
            "Use one of: (nothing), --token-stdin, --token TOKEN, --status, --logout; see `python login.py --help`."
        )
        return USAGE
    except SystemExit as exc:  # --help
        return OK if exc.code == 0 else USAGE
    if args.status:
        return status()
    if args.logout:
        return logout()

    if args.token is None and not args.token_stdin:
        source = token_source()
        if source is not None:
            return _validated(get_token(), source)

    if args.token is not None:
        _say("warning: --token puts your token in your shell history; next time use --token-stdin or the prompt.")
        token, source = args.token.strip(), "--token"
    elif args.token_stdin:
        token, source = sys.stdin.readline().strip(), "standard input"
    elif hub_offline():
        _say(
            "error: no Hugging Face token found and HF_HUB_OFFLINE is set, so it could not be checked: I will not "
            "prompt. Unset HF_HUB_OFFLINE and retry online, or use the offline model (SD_MODEL=offline)."
        )
        return UNAVAILABLE
    elif non_interactive():
        _say(
            "error: no Hugging Face token found and this is not an interactive session (CI, or no terminal), so "
            "I will not prompt. Set HF_TOKEN, or pipe it in: `... | python login.py --token-stdin`."
        )
        return UNAVAILABLE
    else:
        typed = _ask_hidden()
        if typed is None:
            _say("error: cancelled at the prompt (Ctrl-D or Ctrl-C); nothing was saved. Run `python login.py` again.")
            return UNAVAILABLE
        token, source = typed.strip(), "the prompt"
    if not token:
        _say(f"error: the token from {source} is empty. Copy it from {TOKENS_URL}.")
        return REJECTED

    code = _validated(token, source)
    if code == OK:
        try:
            save_token(token)  # the hub library stores it (HF_HOME/token)
        except HubTimeoutError as err:
            _say(f"error: the token is valid but could not be saved: {err}")
            return UNAVAILABLE
        _say("Token saved by huggingface_hub (readable by you only); notebooks will find it with no further typing.")
    return code


if __name__ == "__main__":
    sys.exit(main())
