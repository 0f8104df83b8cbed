"""Talk to the Hugging Face Hub without ever waiting forever.

huggingface_hub 2.x sends every request through one shared `httpx2.Client` made with `timeout=None`, and
some calls (`whoami`, `model_info`, which `from_pretrained` makes first) pass `timeout=None` themselves. On a
network that accepts the connection but never answers (a captive portal, a broken proxy) they hang.

`install_timeouts()` gives that client a transport that fills in a connect and a read timeout wherever a
request has none; `hub_call(fn, ...)` runs one Hub call and turns a timeout into `HubTimeoutError`, whose
message says the Hub did not answer and what to do. Every network call of this project goes through both:

    from helpers.hub import hub_call
    info = hub_call(whoami, token=token, what="checking your token")

Seconds: `SD_HUB_CONNECT_TIMEOUT` (default 10) and `SD_HUB_READ_TIMEOUT` (default 30) in the environment.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable
from typing import Any, TypeVar

CONNECT_TIMEOUT = 10.0  # seconds to open a connection: the Hub answers in < 1 s on a working network
READ_TIMEOUT = 30.0  # seconds of silence while waiting for bytes (a large file keeps sending, so it never trips)
STATUS_URL = "https://status.huggingface.co"

T = TypeVar("T")
_installed: tuple[float, float] | None = None
_install_lock = threading.Lock()


class HubTimeoutError(TimeoutError):
    """The Hugging Face Hub accepted no connection or sent no answer in time; the message names the fixes."""


def timeouts() -> tuple[float, float]:
    """(connect, read) seconds, from SD_HUB_CONNECT_TIMEOUT / SD_HUB_READ_TIMEOUT or the defaults."""
    out = []
    for name, default in (("SD_HUB_CONNECT_TIMEOUT", CONNECT_TIMEOUT), ("SD_HUB_READ_TIMEOUT", READ_TIMEOUT)):
        raw = os.environ.get(name, "").strip()
        try:
            value = float(raw) if raw else default
        except ValueError:
            raise ValueError(f"{name}={raw!r} is not a number of seconds: set it like {name}={default:g}.") from None
        if not 0 < value < 3600:
            raise ValueError(f"{name}={raw!r} must be between 0 and 3600 seconds (default {default:g}).")
        out.append(value)
    return out[0], out[1]


def install_timeouts() -> tuple[float, float]:
    """Make every request of huggingface_hub (and so of diffusers and transformers) time out; idempotent.

    Returns the (connect, read) seconds in force. Call it before any Hub call; `hub_call` does.
    """
    global _installed
    connect, read = timeouts()
    with _install_lock:
        if _installed == (connect, read):
            return connect, read
        import httpx2
        from huggingface_hub import constants
        from huggingface_hub.utils import _http

        class TimeoutTransport(httpx2.HTTPTransport):
            """Fills in our timeouts where a request carries none (`timeout=None` means "wait forever")."""

            def handle_request(self, request):
                given = dict(request.extensions.get("timeout") or {})
                for key, value in (("connect", connect), ("read", read), ("write", read), ("pool", connect)):
                    if given.get(key) is None:
                        given[key] = value
                request.extensions = {**request.extensions, "timeout": given}
                return super().handle_request(request)

        def client_factory() -> httpx2.Client:
            return httpx2.Client(
                transport=TimeoutTransport(),
                event_hooks={"request": [_http.hf_request_event_hook]},  # the library's own headers hook
                follow_redirects=True,
                timeout=httpx2.Timeout(read, connect=connect),
            )

        _http.set_client_factory(client_factory)
        constants.HF_HUB_ETAG_TIMEOUT = int(max(1, round(read)))  # the metadata request before each download
        constants.HF_HUB_DOWNLOAD_TIMEOUT = int(max(1, round(read)))
        _installed = (connect, read)
    return connect, read


def is_timeout(err: BaseException) -> bool:
    """True if `err`, or any exception it was raised from, is a network timeout."""
    try:
        import httpx2

        kinds: tuple[type[BaseException], ...] = (httpx2.TimeoutException, socket.timeout, TimeoutError)
    except ImportError:  # pragma: no cover - huggingface_hub 2.x always brings httpx2
        kinds = (socket.timeout, TimeoutError)
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, kinds) or type(err).__name__ in ("ReadTimeout", "ConnectTimeout", "Timeout"):
            return True
        err = err.__cause__ or err.__context__
    return False


def timeout_message(what: str) -> str:
    connect, read = timeouts()
    return (
        f"The Hugging Face Hub did not answer while {what} (no connection within {connect:g} s, or no reply "
        f"within {read:g} s). Check your internet connection or proxy and retry in a minute (Hub status: "
        f"{STATUS_URL}); on a slow network raise SD_HUB_READ_TIMEOUT; offline, use a cached model with "
        "HF_HUB_OFFLINE=1, or the offline model with SD_MODEL=offline."
    )


def hub_call(fn: Callable[..., T], *args: Any, what: str = "contacting it", **kwargs: Any) -> T:
    """`fn(*args, **kwargs)` with timeouts installed; a timeout becomes `HubTimeoutError` (what to do).

    `what` completes "...did not answer while <what>", e.g. "loading CLIP 'openai/clip-vit-base-patch32'".
    Other errors pass through unchanged.
    """
    install_timeouts()
    try:
        return fn(*args, **kwargs)
    except HubTimeoutError:
        raise
    except Exception as err:
        if is_timeout(err):
            raise HubTimeoutError(timeout_message(what)) from None  # the chain holds URLs with tokens? never show it
        raise
