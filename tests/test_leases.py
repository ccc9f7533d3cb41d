"""A run's lease while it runs: renewed by its ticks (a sub-orchestration's too), lost to
another kernel (the run stops), and kept through a heartbeat that fails once.

Real stores and event loops; the heartbeat is shortened, and a fault is injected at the
store's seam (``swap_lease``) for the last test.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

import durable_nb as dn
from durable_nb import leases
from durable_nb.errors import InstanceTerminatedError
from durable_nb.runtime import Runtime, _reset_for_tests
from durable_nb.store import DiskCacheStore


@pytest.fixture(autouse=True)
def short_heartbeat(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(leases, "HEARTBEAT", 0.05)


@dn.orchestrator
def waits(ctx, seconds):  # type: ignore[no-untyped-def]
    yield ctx.create_timer(seconds)
    return "waited"


@dn.orchestrator
def parent_of_waiting(ctx, seconds):  # type: ignore[no-untyped-def]
    return (yield ctx.call_sub_orchestrator(waits, seconds, instance_id="child"))


def heartbeats(store: DiskCacheStore, instance_id: str, until: threading.Event) -> list[float]:
    """The lease's heartbeats seen every 50 ms while ``until`` is not set."""
    seen: list[float] = []

    def watch() -> None:
        while not until.is_set():
            lease = store.get_lease(instance_id)
            if lease is not None and (not seen or seen[-1] != lease["heartbeat"]):
                seen.append(float(lease["heartbeat"]))
            time.sleep(0.05)

    threading.Thread(target=watch, daemon=True).start()
    return seen


def test_a_waiting_childs_ticks_renew_its_lease(rt: Runtime) -> None:
    assert isinstance(rt.store, DiskCacheStore)
    done = threading.Event()
    seen = heartbeats(rt.store, "child", done)
    try:
        assert parent_of_waiting.run(1.6) == "waited"
    finally:
        done.set()
    assert len(seen) >= 3, seen  # taken, then renewed at its ticks (every 0.5 s)
    assert rt.store.get_lease("child") is None  # given back at its end


def test_a_run_whose_lease_another_kernel_took_stops(rt: Runtime) -> None:
    def take_over() -> None:
        while (lease := rt.store.get_lease("taken")) is None:
            time.sleep(0.01)
        other = {**lease, "owner": "elsewhere:1:00000000", "pid": 1, "host": "elsewhere"}
        assert rt.store.swap_lease("taken", lease["owner"], other)

    thief = threading.Thread(target=take_over, daemon=True)
    thief.start()
    with pytest.raises(InstanceTerminatedError, match="lease lost"):
        waits.run(30.0, instance_id="taken")
    thief.join()
    record = rt.status("taken")
    assert record is not None and record.status == "terminated"
    assert (rt.store.get_lease("taken") or {}).get("owner") == "elsewhere:1:00000000"


def test_a_heartbeat_that_fails_once_is_tried_again(tmp_path: Path) -> None:
    class FailsOnce(DiskCacheStore):
        failed = 0

        def swap_lease(self, instance_id: str, expected: Any, lease: Any) -> bool:
            if expected is not None and lease is not None and not FailsOnce.failed:
                FailsOnce.failed += 1  # a renewal: the disk is full, for a moment
                raise OSError(28, "No space left on device")
            return super().swap_lease(instance_id, expected, lease)

    store = FailsOnce(tmp_path / "s")
    runtime = _reset_for_tests(lambda: Runtime(store=store, progress="none"))
    done = threading.Event()
    seen = heartbeats(store, "steady", done)
    try:
        assert waits.run(1.2, instance_id="steady") == "waited"
    finally:
        done.set()
        runtime.close()
    assert FailsOnce.failed == 1
    assert len(seen) >= 3, seen  # renewed after the failure too


@dn.orchestrator
def many_waiting(ctx, n, seconds):  # type: ignore[no-untyped-def]
    calls = [ctx.call_sub_orchestrator(waits, seconds, instance_id=f"w{i}") for i in range(n)]
    return len((yield ctx.task_all(calls)))


def test_the_ticks_of_many_waiting_children_fall_due_together(rt: Runtime) -> None:
    """Each child ticks twice a second; on a common grid of the loop's clock, so that a
    fan-out of waiting children wakes the loop once per tick, not once per child."""
    from durable_nb.execution import TICK_GRID

    seen: dict[str, float] = {}

    def sample() -> None:
        while len(seen) < 40:
            for instance_id, execution in list(rt._executions.items()):
                ticker = execution._ticker
                if instance_id.startswith("w") and ticker is not None:
                    seen[instance_id] = ticker.when()
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    assert many_waiting.run(40, 1.5) == 40
    sampler.join(timeout=5)
    assert len(seen) == 40
    for when in seen.values():
        assert abs(when / TICK_GRID - round(when / TICK_GRID)) < 1e-6, when
    assert len({round(when / TICK_GRID) for when in seen.values()}) < 10  # not 40
