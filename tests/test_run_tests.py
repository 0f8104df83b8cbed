"""`make test` runs two pytest sessions side by side (scripts/run_tests.py): every test and every notebook is in
exactly one of them, options reach both, and the exit status fails when either session fails."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.paths import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "scripts"))
import run_tests  # noqa: E402


def test_the_two_sessions_cover_the_configured_test_paths_once():
    """Every path pytest is configured to collect (pyproject's testpaths) is in one session; the site test, which
    renders nbval's run of the notebooks, is in theirs and not in the other (so is the toy family's, for balance)."""
    import tomllib

    testpaths = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["testpaths"]
    both = run_tests.sessions([])
    assert sorted(testpaths) == ["notebooks", "tests"]
    assert "tests" in both["tests"] and "notebooks" not in both["tests"]
    assert "notebooks" in both["notebooks"] and "tests" not in both["notebooks"]
    for path in ("tests/test_site.py", "tests/test_toy_family.py"):
        assert path in both["notebooks"] and f"--ignore={path}" in both["tests"]


def test_options_go_to_both_sessions_and_a_path_runs_alone():
    both = run_tests.sessions(["-m", "not slow", "-x"])
    for command in both.values():
        assert command[-3:] == ["-m", "not slow", "-x"]
    assert not run_tests.names_a_path(["-m", "not slow", "-k", "seed"])
    one = run_tests.sessions(["tests/test_pipeline.py::test_load_from_a_local_folder", "-x"])
    assert list(one) == ["selected"] and one["selected"][-2:] == [
        "tests/test_pipeline.py::test_load_from_a_local_folder",
        "-x",
    ]


@pytest.mark.parametrize(
    ("codes", "expected"),
    [
        ({"tests": 0, "notebooks": 0}, 0),
        ({"tests": 1, "notebooks": 0}, 1),
        ({"tests": 0, "notebooks": 1}, 1),
        ({"tests": 0, "notebooks": 5}, 0),  # a filter that selects no notebook cell
        ({"tests": 5, "notebooks": 5}, 5),  # nothing selected anywhere
        ({"tests": 5, "notebooks": 2}, 2),  # interrupted
    ],
)
def test_exit_status_fails_when_either_session_fails(codes, expected):
    assert run_tests.combined_status(codes) == expected


def test_both_sessions_run_and_report():
    """A real run: a filter that selects one quick test here and no notebook cell."""
    run = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "run_tests.py"), "-k", "exit_status_fails_when_either", "-q"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "6 passed" in run.stdout
    assert "the notebooks' session (ran beside the tests)" in run.stdout
    assert "tests exit 0, notebooks exit 5" in run.stdout


def test_a_failing_tests_session_shows_its_summary_last(monkeypatch, capsys):
    """The notebooks' log comes after the tests' stream; a failure of the tests is repeated at the very end, where the
    tail of a CI log shows it, and the exit status is the failing session's."""
    tests = (
        "print('collected 2 items'); print('=== short test summary info ==='); print('FAILED tests/t.py::a'); exit(1)"
    )
    fake = {"tests": [sys.executable, "-c", tests], "notebooks": [sys.executable, "-c", "print('notebooks: 3 passed')"]}
    monkeypatch.setattr(run_tests, "sessions", lambda args: fake)
    assert run_tests.main([]) == 1
    out = capsys.readouterr().out
    assert out.index("collected 2 items") < out.index("notebooks: 3 passed") < out.rindex("FAILED tests/t.py::a")
    assert out.rstrip().endswith("make test: tests exit 1, notebooks exit 0")
    assert run_tests.summary(["a\n", "b\n"], keep=1) == "b\n"


def test_an_interrupted_run_stops_both_sessions():
    """`kill -INT` of the runner alone (Ctrl-C also reaches the sessions themselves): it passes the interrupt on,
    leaves no session running and exits 130."""
    import signal
    import tempfile
    import time

    code = (
        "import signal, sys; sys.path.insert(0, 'scripts'); import run_tests\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)  # even where the shell ignores it (a background job)\n"
        "nap = [sys.executable, '-c', 'import time, os; open(os.environ[\"MARK\"] + str(os.getpid()), \"w\"); time.sleep(300)']\n"
        "run_tests.sessions = lambda args: {'tests': nap, 'notebooks': nap}; run_tests.GRACE_S = 1.0\n"
        "sys.exit(run_tests.main([]))\n"
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as marks:
        env = {**os.environ, "MARK": f"{marks}/session-"}
        runner = subprocess.Popen(
            [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        deadline = time.time() + 60
        while len(list(Path(marks).iterdir())) < 2 and time.time() < deadline:
            time.sleep(0.2)
        pids = [int(p.name.split("-")[1]) for p in Path(marks).iterdir()]
        assert len(pids) == 2
        runner.send_signal(signal.SIGINT)
        out, _ = runner.communicate(timeout=60)
    assert runner.returncode == 130
    assert "interrupted; both sessions stopped" in out
    for pid in pids:  # the runner waited for both: gone, not left running
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
