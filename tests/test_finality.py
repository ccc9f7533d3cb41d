"""A completed instance is final: running it again returns its recorded outcome, handled
failures included, until its input or its code changes. Side effects counted in files."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from pathlib import Path

import pytest

import durable_nb as dn
from durable_nb import history
from durable_nb.runtime import Runtime


class Effects:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._lock = threading.Lock()
        self._n = 0

    def write(self, name: str) -> None:
        with self._lock:
            self._n += 1
            (self.folder / f"{name}.{self._n}").touch()

    def count(self, name: str | None = None) -> int:
        return sum(1 for p in self.folder.iterdir() if name is None or p.name.split(".")[0] == name)


@pytest.fixture
def effects(tmp_path: Path) -> Effects:
    folder = tmp_path / "effects"
    folder.mkdir()
    return Effects(folder)


def flaky_pipeline(effects: Effects, attempts_before_ok: list[int]) -> dn.Orchestrator:
    """An orchestrator that handles the failure of ``flaky`` (which fails on its first
    call and works on later ones)."""

    @dn.activity
    def fetch(i: int) -> int:
        effects.write("fetch")
        return i * 10

    @dn.activity
    def flaky(i: int) -> str:
        effects.write("flaky")
        attempts_before_ok[0] -= 1
        if attempts_before_ok[0] >= 0:
            raise ConnectionError("upstream down")
        return "ok"

    @dn.orchestrator
    def pipeline(ctx, n):  # type: ignore[no-untyped-def]
        # By name, as a notebook's globals are: a redefined activity is the one called.
        values = yield ctx.task_all([ctx.call_activity("fetch", i) for i in range(n)])
        try:
            note = yield ctx.call_activity("flaky", n)
        except ConnectionError as exc:
            note = f"handled: {exc}"
        return sum(values), note

    return pipeline


def test_a_handled_failure_stays_handled_on_rerun(rt: Runtime, effects: Effects) -> None:
    pipeline = flaky_pipeline(effects, [1])
    first = pipeline.run(5)
    assert first == (100, "handled: upstream down")
    assert effects.count("fetch") == 5 and effects.count("flaky") == 1
    again = pipeline.run(5)
    assert again == first  # not "ok": the outcome was recorded and is final
    assert effects.count() == 6  # nothing ran
    record = rt.status(pipeline.instance_id_for(5))
    assert record is not None and record.status == "completed" and record.runs == 2
    assert record.counts["ran"] == 0 and record.counts["cached"] == record.counts["calls"]


def test_awaiting_and_start_give_the_recorded_outcome(rt: Runtime, effects: Effects) -> None:
    pipeline = flaky_pipeline(effects, [1])

    async def cells() -> None:
        first = await pipeline(3)
        assert await pipeline(3) == first
        handle = pipeline.start(3)
        assert await handle == first

    asyncio.run(cells())
    assert effects.count() == 4


def test_a_failed_instance_retries_its_failures(rt: Runtime, effects: Effects) -> None:
    @dn.activity
    def fetch(i: int) -> int:
        effects.write("fetch")
        return i

    failures = [1]

    @dn.activity
    def fragile(total: int) -> int:
        effects.write("fragile")
        failures[0] -= 1
        if failures[0] >= 0:
            raise ValueError("not yet")
        return total

    @dn.orchestrator
    def unhandled(ctx, n):  # type: ignore[no-untyped-def]
        values = yield ctx.task_all([ctx.call_activity(fetch, i) for i in range(n)])
        return (yield ctx.call_activity(fragile, sum(values)))

    with pytest.raises(ValueError, match="not yet"):
        unhandled.run(4)
    assert unhandled.run(4) == 6
    assert effects.count("fetch") == 4 and effects.count("fragile") == 2


def test_an_edited_activity_reruns_exactly_its_calls(rt: Runtime, effects: Effects) -> None:
    pipeline = flaky_pipeline(effects, [1])
    pipeline.run(4)
    assert effects.count() == 5

    @dn.activity
    def fetch(i: int) -> int:  # the same name, another body: its results are stale
        effects.write("fetch")
        return i * 100

    assert pipeline.run(4)[0] == 600
    # 4 new fetches, and the handled failure is retried (a run after an edit retries
    # failures, as any run that is not final does), now succeeding
    assert effects.count("fetch") == 8 and effects.count("flaky") == 2


def test_an_edited_orchestrator_runs_again_over_its_history(rt: Runtime, effects: Effects) -> None:
    @dn.activity
    def step(i: int) -> int:
        effects.write("step")
        return i

    @dn.orchestrator
    def chain(ctx):  # type: ignore[no-untyped-def]
        a = yield ctx.call_activity(step, 1)
        return a

    instance = chain.instance_id_for()
    assert chain.run() == 1

    @dn.orchestrator  # type: ignore[no-redef]
    def chain(ctx):  # type: ignore[no-untyped-def]
        a = yield ctx.call_activity(step, 1)
        b = yield ctx.call_activity(step, 2)
        return a + b

    assert chain.instance_id_for() == instance
    assert chain.run() == 3
    assert effects.count("step") == 2  # step(1) replayed, step(2) new


def test_another_input_under_an_explicit_id_runs(rt: Runtime, effects: Effects) -> None:
    pipeline = flaky_pipeline(effects, [0])
    assert pipeline.run(3, instance_id="mine") == (30, "ok")
    assert pipeline.run(5, instance_id="mine") == (100, "ok")
    assert effects.count("fetch") == 5 and effects.count("flaky") == 2  # fetch 0-2 replayed


def test_an_output_that_cannot_be_stored_is_not_final(rt: Runtime, effects: Effects) -> None:
    @dn.activity
    def step() -> int:
        effects.write("step")
        return 1

    @dn.orchestrator
    def unpicklable(ctx):  # type: ignore[no-untyped-def]
        yield ctx.call_activity(step)
        return threading.Lock()  # works live, cannot be stored

    assert unpicklable.run() is not None
    again = unpicklable.run()  # replayed, not a recorded None
    assert again is not None and effects.count("step") == 1
    record = rt.status(unpicklable.instance_id_for())
    assert record is not None and record.completed_with is None


def test_a_completed_record_of_release_010_is_final(rt: Runtime, effects: Effects) -> None:
    """0.1.0 kept no completed_with: what its run was made of is read off the history,
    whose keys carry scheme-1 code digests."""
    pipeline = flaky_pipeline(effects, [1])
    first = pipeline.run(2)
    instance = pipeline.instance_id_for(2)
    events = rt.store.read_history(instance)
    record = rt.status(instance)
    assert record is not None
    rt.store.purge(instance)

    def as_010(event: history.Event) -> history.Event:
        """The event as release 0.1.0 wrote it: scheme-1 code digests in the keys
        (plain arguments digest alike in both schemes), no key scheme on a start."""
        if isinstance(event, history.ExecutionStarted):
            return history.ExecutionStarted(event.timestamp, event.orchestrator, event.run)
        key = getattr(event, "key", None)
        if key is None:
            return event
        name, _, rest = key.split("/", 2)
        act = dn.definitions.find_activity(name)
        assert act is not None
        return dataclasses.replace(event, key=f"{name}/{act.code_digest(1)[:16]}/{rest}")  # type: ignore[arg-type]

    record.completed_with = None
    rt.store.put_instance(record)
    rt.store.append(instance, [as_010(e) for e in events])

    assert pipeline.run(2) == first  # the handled failure stays handled
    assert effects.count() == 3  # nothing ran

    record.runs = 1
    rt.store.put_instance(record)  # completed_with is None again, as 0.1.0 left it

    @dn.activity
    def flaky(i: int) -> str:  # edited after the upgrade: seen, and run again
        effects.write("flaky")
        return "fixed"

    assert pipeline.run(2) == (10, "fixed")
    assert effects.count("fetch") == 2 and effects.count("flaky") == 2
