"""Slow set-up started as soon as collection ends, so that it overlaps with the rest of the session.

pip against the package registry mostly waits: this registry serves no wheel metadata on its own (PEP 658), so a
dry-run resolution downloads every wheel it considers (GBs of CUDA wheels for the Colab profile), and its time
depends on the network. Subprocess work (the benchmark smokes, the CLIP device workers) fills the cores that the
mostly single-threaded session leaves idle. A test module with such work defines `start_early(items)`, which calls
`start(key, fn)` for what its selected tests (`items`) need; tests/conftest.py calls it once collection is done.
The module's fixture calls `result(key, fn)`, which waits for the job, or runs `fn` there and then when nothing
started it.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

_POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="early")  # 4 at once: 2 cores
_JOBS: dict[str, Future] = {}
#: held while a wheel is built from the checkout (setuptools writes build/ and *.egg-info there): one at a time
SOURCE_TREE = threading.Lock()


def registry_reachable(host: str = "pypi.org", timeout: float = 5) -> bool:
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def selected(items, name: str) -> bool:
    """Is a test named `name` (or one that uses the fixture `name`) among the selected `items`?"""
    return any(name in (getattr(i, "originalname", None), *getattr(i, "fixturenames", ())) for i in items)


def start(key: str, fn: Callable[[], Any]) -> Future:
    """Run `fn` in a background thread (once per key per session)."""
    if key not in _JOBS:
        _JOBS[key] = _POOL.submit(fn)
    return _JOBS[key]


def started(key: str) -> bool:
    return key in _JOBS


def result(key: str, fn: Callable[[], Any]) -> Any:
    """`fn`'s result: the background job's (waiting for it), else `fn()` run now. Its exception is re-raised here."""
    return start(key, fn).result()
