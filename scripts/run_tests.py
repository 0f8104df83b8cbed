"""`make test`: the tests and the notebooks as two pytest sessions side by side, one per core.

    python scripts/run_tests.py [pytest options]     # what `make test` runs (PYTEST_ARGS are the options)
    python scripts/run_tests.py tests/test_pipeline.py -k seed   # a path given: one session, just that

Why two sessions: the suite's own work is single-threaded (the tiny models run fastest on one torch thread, and
nbval runs one notebook kernel at a time), so one session kept a core idle for most of its run once the background
set-up (tests/background.py) was done. Measured on the 2-core build machine on 2026-12-07, sampling /proc/stat
every 5 s through a fresh `make test`: 26 minutes of wall time, 1,990 CPU-seconds, both cores busy for the first
6 minutes and one core idle for the remaining 20. Here the notebooks and the site test (which renders the notebooks
as nbval executed them, so it belongs to their session) run in one session, and every other test in the other.
Split that way, a fresh clone's `make setup && make test` took 1,457 s, the tests' session 1,313 s and the notebooks'
718 s; so the toy family's training tests (232 s in the single session) moved to the notebooks' session. Now the
whole command took 1,234 s (setup 149 s, the tests' session 1,068 s, the notebooks' 1,021 s).

Options (-m, -k, -x, --durations, ...) go to both sessions. The tests' output streams as it comes; the notebooks'
is printed once the tests are done, then, when the tests failed, their short summary again (so that the tail of a
CI log shows every failure), then one line with both outcomes. The exit status is 0 only if both pass; a
session whose filter selected nothing (pytest's status 5) counts as passed when the other ran tests. Interrupted
(Ctrl-C, or `kill -INT` of this process alone), it stops both sessions and exits 130.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
COMMON = ["--nbval-lax", "--nbval-current-env", "-p", "no:cacheprovider"]
#: the site test reads nbval's own run of the notebooks; the toy family's training tests (about 4 minutes) join them
#: so that the two sessions take about as long (measured, see the docstring)
BESIDE = ["tests/test_site.py", "tests/test_toy_family.py"]
NOTEBOOKS = ["notebooks", *BESIDE]
TESTS = ["tests", *(f"--ignore={path}" for path in BESIDE)]
NO_TESTS_COLLECTED = 5  # pytest's exit status when the selection is empty
GRACE_S = 15.0  # after an interrupt, how long the sessions get to stop on their own before it is passed on


def names_a_path(args: list[str]) -> bool:
    """Does the command line name a test file, folder or node id (then it is run as given, in one session)?"""
    return any(not a.startswith("-") and (REPO / a.split("::")[0]).exists() for a in args)


def sessions(args: list[str]) -> dict[str, list[str]]:
    """The pytest command line of each session, by name."""
    pytest = [sys.executable, "-m", "pytest"]
    if names_a_path(args):
        return {"selected": [*pytest, *COMMON, *args]}
    return {"tests": [*pytest, *TESTS, *COMMON, *args], "notebooks": [*pytest, *NOTEBOOKS, *COMMON, *args]}


def combined_status(codes: dict[str, int]) -> int:
    """0 when every session passed; an empty selection (5) is fine as long as some session ran tests."""
    if all(c == NO_TESTS_COLLECTED for c in codes.values()):
        return NO_TESTS_COLLECTED
    bad = [c for c in codes.values() if c not in (0, NO_TESTS_COLLECTED)]
    return bad[0] if bad else 0


def summary(lines: list[str], keep: int = 200) -> str:
    """pytest's short summary (from its "short test summary info" line), else the last `keep` lines."""
    marks = [i for i, line in enumerate(lines) if "short test summary info" in line]
    return "".join(lines[marks[-1] :] if marks else lines[-keep:])


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    commands = sessions(args)
    if len(commands) == 1:
        return subprocess.call(commands["selected"], cwd=REPO)
    with tempfile.TemporaryFile("w+", encoding="utf-8") as log:
        beside = subprocess.Popen(commands["notebooks"], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        first = subprocess.Popen(
            commands["tests"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        )
        shown = []
        try:
            for line in first.stdout:  # stream it, and keep it for the summary at the end
                sys.stdout.write(line)
                sys.stdout.flush()
                shown.append(line)
            codes = {"tests": first.wait()}
            codes["notebooks"] = beside.wait()
        except KeyboardInterrupt:  # Ctrl-C reaches both sessions too (one process group): let them stop cleanly
            deadline = time.monotonic() + GRACE_S
            for proc in (first, beside):
                try:
                    proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:  # interrupted on its own (kill -INT): pass it on
                    proc.send_signal(signal.SIGINT)
                    proc.wait()
            print("\nmake test: interrupted; both sessions stopped", flush=True)
            return 130  # the shell's status for a command stopped by Ctrl-C
        log.seek(0)
        print("\n" + " the notebooks' session (ran beside the tests) ".center(100, "="), flush=True)
        sys.stdout.write(log.read())
    if codes["tests"] not in (0, NO_TESTS_COLLECTED):  # its failures again, last, where a log's tail shows them
        print("\n" + " the tests' session, again: ".center(100, "=") + "\n" + summary(shown), flush=True)
    print(f"\nmake test: tests exit {codes['tests']}, notebooks exit {codes['notebooks']}", flush=True)
    return combined_status(codes)


if __name__ == "__main__":
    sys.exit(main())
