"""When a chain's history (a chunk per step) is compacted: by the load of its second
replay, not its first (most interrupted runs are replayed once, then complete and are
final), and never by a fresh run. A real store and real threads."""

from __future__ import annotations

from pathlib import Path

import durable_nb as dn
from durable_nb.journal import COMPACT_AFTER_CHUNKS
from durable_nb.runtime import Runtime


def interrupt(rt: Runtime, instance_id: str) -> None:
    """Mark the instance interrupted, as a kill mid-run leaves it: the next run replays."""
    record = rt.store.get_instance(instance_id)
    assert record is not None
    record.status = "interrupted"
    rt.store.put_instance(record)


def test_a_chain_is_compacted_by_its_second_replay_and_nothing_runs_again(
    rt: Runtime, tmp_path: Path
) -> None:
    effects = tmp_path / "effects"
    effects.mkdir()
    steps = COMPACT_AFTER_CHUNKS + 8

    @dn.activity
    def step(i: int) -> int:
        (effects / f"{i}").touch(exist_ok=False)  # a second run of a step fails here
        return i

    @dn.orchestrator
    def chain(ctx, n):  # type: ignore[no-untyped-def]
        total = 0
        for i in range(n):
            total += yield ctx.call_activity(step, i)
        return total

    expected = sum(range(steps))
    assert chain.run(steps) == expected
    iid = chain.instance_id_for(steps)
    fresh = rt.store.history_chunks(iid)
    assert fresh > COMPACT_AFTER_CHUNKS  # a chunk per step

    interrupt(rt, iid)
    assert chain.run(steps) == expected  # the first replay: read as it is
    assert rt.store.history_chunks(iid) == fresh + 1  # its own ExecutionStarted/end

    interrupt(rt, iid)
    assert chain.run(steps) == expected  # the second replay compacts what it read
    assert rt.store.history_chunks(iid) <= 2
    interrupt(rt, iid)
    assert chain.run(steps) == expected  # and the compacted history replays
    assert len(list(effects.iterdir())) == steps  # every step ran exactly once
