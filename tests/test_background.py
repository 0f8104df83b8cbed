"""tests/background.py: a job runs once per key, in another thread, and its result (or error) reaches the test
that asks for it; conftest starts only what the selected tests need."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import background
import pytest


def test_a_job_runs_once_in_the_background_and_errors_reach_the_caller(monkeypatch):
    # a pool of its own: the session's may be busy with the real jobs
    monkeypatch.setattr(background, "_POOL", ThreadPoolExecutor(max_workers=1, thread_name_prefix="early"))
    calls, release = [], threading.Event()

    def job():
        release.wait(10)
        calls.append(threading.current_thread().name)
        return 42

    background.start("test-background-once", job)
    assert background.started("test-background-once") and not calls  # running, not finished: start did not wait
    release.set()
    assert background.result("test-background-once", job) == 42
    assert background.result("test-background-once", job) == 42 and len(calls) == 1  # not run again
    assert calls[0].startswith("early")  # it ran in the pool, not in the test's thread

    def broken():
        raise ValueError("the registry said no")

    with pytest.raises(ValueError, match="the registry said no"):
        background.result("test-background-broken", broken)


def test_selected_reads_test_names_and_fixtures(request):
    items = [request.node]
    assert background.selected(items, "test_selected_reads_test_names_and_fixtures")
    assert background.selected(items, "request")  # a fixture it uses
    assert not background.selected(items, "smoke_runs")
