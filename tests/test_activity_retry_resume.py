"""An activity's retries survive a killed kernel: the run that goes on after a kill
during a backoff starts the next attempt when it is due, not the first one again, so an
activity never runs more times than its policy allows. A rerun after a run that ended
(failed) retries afresh, as before."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from builders import T0, engine, started

from durable_nb import Activity, history
from durable_nb.store import DiskCacheStore


def _flaky(x: int) -> int:
    return x


flaky = Activity(_flaky, name="flaky")


def one_call(ctx):  # type: ignore[no-untyped-def]
    return (yield ctx.call_activity(flaky, 1))


def _key() -> str:
    step = engine(one_call).start(started(T0))
    (call,) = step.scheduled
    return call.key


def test_a_call_cut_short_in_its_backoff_resumes_at_its_next_attempt() -> None:
    key = _key()
    earlier = [
        started(T0),
        history.TaskScheduled(T0, key, "flaky", "1"),
        history.TaskRetried(T0 + 2, key, "flaky", 1, "ValueError", "x", 5.0, T0 + 1),
        history.TaskRetried(T0 + 9, key, "flaky", 2, "ValueError", "x", 10.0, T0 + 7),
    ]  # and then the kernel died: no ExecutionFinished
    eng = engine(one_call)
    eng.load(earlier)
    (call,) = eng.start(started(T0 + 100)).scheduled
    assert call.resume == (2, T0 + 19, T0 + 1)  # 2 failed; the third due at 19; first at 1


@pytest.mark.parametrize(
    ("after", "why"),
    [
        (history.ExecutionFinished(T0 + 20, "failed", "ValueError"), "the run ended failed"),
        (history.TaskFailed(T0 + 20, "KEY", "flaky", "ValueError", "x", 3), "the call failed"),
    ],
)
def test_a_call_whose_run_or_attempts_ended_starts_afresh(after: history.Event, why: str) -> None:
    key = _key()
    if isinstance(after, history.TaskFailed):
        after = history.TaskFailed(after.timestamp, key, "flaky", "ValueError", "x", 3)
    eng = engine(one_call)
    eng.load(
        [
            started(T0),
            history.TaskRetried(T0 + 2, key, "flaky", 1, "ValueError", "x", 5.0, T0 + 1),
            after,
        ]
    )
    (call,) = eng.start(started(T0 + 100)).scheduled
    assert call.resume is None, why


def test_an_interrupted_run_does_not_end_the_count() -> None:
    key = _key()
    eng = engine(one_call)
    eng.load(
        [
            started(T0),
            history.TaskRetried(T0 + 2, key, "flaky", 1, "ValueError", "x", 5.0, T0 + 1),
            history.ExecutionFinished(T0 + 3, "interrupted", "KeyboardInterrupt"),
        ]
    )
    (call,) = eng.start(started(T0 + 100)).scheduled
    assert call.resume == (1, T0 + 7, T0 + 1)


_SCRIPT = """
import os, sys, tempfile
import durable_nb as dn

store, runs = sys.argv[1], sys.argv[2]
dn.configure(store=store, progress="none")

@dn.activity(retries=2, backoff=%(backoff)s)
def always_fails():
    fd, _ = tempfile.mkstemp(dir=runs)
    os.close(fd)
    raise ValueError(f"attempt {len(os.listdir(runs))} failed")

@dn.orchestrator
def calls_it(ctx):
    return (yield ctx.call_activity(always_fails))

try:
    calls_it.run(instance_id="killed")
except ValueError as exc:
    print("FAILED:", exc)
"""


def _retries_recorded(store: Path) -> int:
    if not (store / "cache.db").exists():
        return 0
    opened = DiskCacheStore(store)
    try:
        return sum(isinstance(e, history.TaskRetried) for e in opened.read_history("killed"))
    finally:
        opened.close()


def test_a_kernel_killed_during_a_backoff_never_runs_the_activity_more_than_allowed(
    tmp_path: Path,
) -> None:
    store, runs = tmp_path / "store", tmp_path / "runs"
    runs.mkdir()
    script = tmp_path / "kernel.py"
    script.write_text(textwrap.dedent(_SCRIPT % {"backoff": 2.0}))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    first = subprocess.Popen([sys.executable, str(script), str(store), str(runs)], env=env)
    try:
        deadline = time.time() + 120
        while _retries_recorded(store) < 1:  # on disk before the run waits its backoff
            assert first.poll() is None, "kernel 1 ended before its first backoff"
            assert time.time() < deadline, "kernel 1 never recorded its retry"
            time.sleep(0.05)
    finally:
        first.kill()  # SIGKILL, during the 2 s backoff
        first.wait()
    assert len(os.listdir(runs)) == 1
    # Kernel 2 goes on: the second attempt when due, then the third and last. Had the
    # count been lost, it would run three more (four in all).
    second = subprocess.run(
        [sys.executable, str(script), str(store), str(runs)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "FAILED: attempt 3 failed" in second.stdout, second.stdout + second.stderr
    assert len(os.listdir(runs)) == 3  # retries=2: three attempts in all, across kernels
    assert _retries_recorded(store) == 2
