"""Cost of shared results (``share=True`` activities), against the floor of SQLite.

    python benchmarks/bench_shared.py [--rows 100000] [--repeat 3]

Prints one table: the lookup of a shared result by activity and digest in a table of
``--rows`` shared results (a hit, loading the result; a miss), against the floor of the
same indexed SELECT on a raw SQLite connection; then a 1,000-way fan-out of a shared
activity: fresh without and with sharing (what recording the shared rows costs), fully
answered from another instance's shared results, and replayed from its own history.
Each figure is the best of ``--repeat`` runs. This is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial

import durable_nb as dn
from durable_nb import history
from durable_nb.runtime import Runtime, _reset_for_tests
from durable_nb.store import DiskCacheStore, InstanceRecord

CODE = "0123456789abcdef"
LOOKUPS = 20_000
FAN_OUT = 1000
SELECT = (
    "SELECT finished, instance_id, large, data FROM durable_shared "
    "WHERE activity = ? AND digest = ?"
)


def digest(i: int) -> str:
    return f"{CODE}/{i:032x}"


def fill(store: DiskCacheStore, rows: int, batch: int = 10_000) -> float:
    """Share ``rows`` results through the store's own append, in chunks of ``batch``;
    returns the seconds it took."""
    store.put_instance(InstanceRecord("filler", "bench"))
    started = time.perf_counter()
    for first in range(0, rows, batch):
        events = [
            history.TaskCompleted(time.time(), f"square/{digest(i)}#0", "square", i * i, 1)
            for i in range(first, min(first + batch, rows))
        ]
        store.append("filler", events, share={event.key for event in events})
    return time.perf_counter() - started


def per_call(keys: list[str], lookup: Callable[[str], object]) -> float:
    started = time.perf_counter()
    for key in keys:
        lookup(key)
    return (time.perf_counter() - started) / len(keys) * 1e6


def lookups(rows: int, repeat: int) -> dict[str, float | str]:
    """µs per shared lookup (hit, miss) and per raw indexed SELECT, with ``rows`` stored."""
    folder = tempfile.mkdtemp()
    store = DiskCacheStore(folder)
    filled = fill(store, rows)
    rng = random.Random(1)
    hits = [digest(rng.randrange(rows)) for _ in range(LOOKUPS)]
    misses = [digest(rows + rng.randrange(rows)) for _ in range(LOOKUPS)]
    assert store.find_shared("square", hits[0], None) is not None
    assert store.find_shared("square", misses[0], None) is None
    raw = sqlite3.connect(os.path.join(folder, "cache.db"), isolation_level=None)
    (plan,) = [row[-1] for row in raw.execute("EXPLAIN QUERY PLAN " + SELECT, ("square", "x"))]

    def select(key: str) -> object:
        return raw.execute(SELECT, ("square", key)).fetchall()

    def find(key: str) -> object:
        return store.find_shared("square", key, None)

    def batched(keys: list[str]) -> float:
        """µs per call when a fan-out's calls are looked up together, as the run does."""
        started = time.perf_counter()
        for first in range(0, len(keys), FAN_OUT):
            store.find_shared_many("square", keys[first : first + FAN_OUT], None)
        return (time.perf_counter() - started) / len(keys) * 1e6

    result: dict[str, float | str] = {
        "fill": filled,
        "plan": plan,
        "floor hit": min(per_call(hits, select) for _ in range(repeat)),
        "floor miss": min(per_call(misses, select) for _ in range(repeat)),
        "hit": min(per_call(hits, find) for _ in range(repeat)),
        "miss": min(per_call(misses, find) for _ in range(repeat)),
        "batch hit": min(batched(hits) for _ in range(repeat)),
        "batch miss": min(batched(misses) for _ in range(repeat)),
    }
    raw.close()
    store.close()
    shutil.rmtree(folder)
    return result


@dn.activity(share=True)
def shared_square(i: int) -> int:
    return i * i


@dn.activity
def own_square(i: int) -> int:
    return i * i


@dn.orchestrator
def fan(ctx, n, offset, share, tag):  # type: ignore[no-untyped-def]
    act = shared_square if share else own_square
    values = yield ctx.task_all([ctx.call_activity(act, offset + i) for i in range(n)])
    return sum(values)


def fan_outs(repeat: int, runs: int = 3) -> dict[str, list[float]]:
    """Seconds for 1,000-way fan-outs (``runs`` of each per round, a new store each
    round): fresh without and with sharing (new arguments each time, so no call is
    shared), answered from another instance's shared results, and replayed from the
    instance's own history."""
    times: dict[str, list[float]] = {}

    def timed(name: str, offset: int, share: bool, tag: str) -> None:
        started = time.perf_counter()
        total = fan.run(FAN_OUT, offset, share, tag)
        times.setdefault(name, []).append(time.perf_counter() - started)
        assert total == sum((offset + i) ** 2 for i in range(FAN_OUT))

    for _ in range(repeat):
        runtime = _reset_for_tests(
            partial(Runtime, store=DiskCacheStore(tempfile.mkdtemp()), progress="none")
        )
        store = runtime.store
        fan.run(10, -100, False, "warm-up")  # the thread pool starts its threads
        for k in range(runs):  # interleaved, so the machine's moods hit both alike
            timed("fresh, unshared", FAN_OUT * (2 * k + 1), False, "")
            timed("fresh, shared", FAN_OUT * (2 * k + 2), True, "")
        for k in range(runs):
            timed("shared", FAN_OUT * 2, True, f"reuse-{k}")  # the first fresh shared run's
            source = fan.instance_id_for(FAN_OUT, FAN_OUT * 2, True, "")
            record = store.get_instance(source)
            assert record is not None
            record.status = "interrupted"  # so the next run replays instead of returning
            store.put_instance(record)  # the recorded outcome of a completed instance
            timed("replay", FAN_OUT * 2, True, "")
        reused = store.get_instance(fan.instance_id_for(FAN_OUT, FAN_OUT * 2, True, "reuse-0"))
        assert reused is not None and reused.counts["cached"] == FAN_OUT
        runtime.close()
        shutil.rmtree(store.location)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="shared results stored")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (best is kept)")
    options = parser.parse_args()

    found = lookups(options.rows, options.repeat)
    fans = fan_outs(options.repeat)
    floor_hit, floor_miss = float(found["floor hit"]), float(found["floor miss"])
    hit, miss = float(found["hit"]), float(found["miss"])
    rows: list[tuple[str, str, str]] = [
        (f"fill {options.rows:,} shared results", f"{found['fill']:.2f} s", "10k per chunk"),
        ("floor: indexed SELECT, hit", f"{floor_hit:.1f} µs", "1.0"),
        ("floor: indexed SELECT, miss", f"{floor_miss:.1f} µs", "1.0"),
        ("find_shared hit", f"{hit:.1f} µs/call", f"{hit / floor_hit:.1f}x SELECT"),
        ("find_shared miss", f"{miss:.1f} µs/call", f"{miss / floor_miss:.1f}x SELECT"),
    ]
    for name in ("hit", "miss"):
        value, floor = float(found[f"batch {name}"]), float(found[f"floor {name}"])
        rows.append(
            (
                f"find_shared_many {name}, {FAN_OUT:,} a batch",
                f"{value:.1f} µs/call",
                f"{value / floor:.1f}x SELECT",
            )
        )
    replay = min(fans["replay"])
    labels = {
        "fresh, unshared": "fresh, share=False",
        "fresh, shared": "fresh, share=True (all miss)",
        "shared": "answered from shared results",
        "replay": "replay of its own history",
    }
    for name, label in labels.items():
        best, median = min(fans[name]), statistics.median(fans[name])
        per_call = best / FAN_OUT * 1e6
        result = f"{best * 1e3:.0f} ms ({per_call:.1f} µs/call), median {median * 1e3:.0f} ms"
        rows.append((f"fan-out {FAN_OUT:,} {label}", result, f"{best / replay:.1f}x replay"))
    header = ("measure", "result", "vs floor")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    print(f"\nquery plan: {found['plan']}")
    print(
        f"best of {options.repeat} runs each ({LOOKUPS:,} random keys a run); fan-outs: "
        f"best and median of {3 * options.repeat} runs, trivial activities, default thread pool"
    )


if __name__ == "__main__":
    main()
