"""What a durable entity operation costs, next to the floor it cannot go below.

    python benchmarks/bench_entities.py [--repeat 3] [--n 1000]

Rows (each on a new store, best of ``--repeat``):

* ``signals``: one orchestration sends ``n`` signals ``add 1`` to one counter, then
  calls ``get``, which is applied after them (every message queued with its step,
  then applied).
* ``calls``: one orchestration makes ``n`` sequential ``ctx.call_entity`` (each waits for
  its result, recorded in history as an activity result is).
* ``client``: ``durable_nb.signal_entity`` ``n`` times from plain code (queued, applied
  at once).

The floor is the least an applied message must do: two SQLite transactions in the
store's database (queue it; apply it and mark it done), measured as bare
``INSERT``/``UPDATE`` statements on the same database file. A benchmark, not a test:
it never fails.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable

import durable_nb as dn
from durable_nb.runtime import Runtime, _reset_for_tests
from durable_nb.store import DiskCacheStore

COUNTER = dn.EntityId("counter", "bench")


@dn.entity(name="counter")
def counter(ctx: dn.EntityContext) -> None:
    value = ctx.get_state(lambda: 0)
    if ctx.operation_name == "add":
        ctx.set_state(value + ctx.get_input())
    ctx.set_result(ctx.get_state(lambda: 0))


@dn.orchestrator
def signals(ctx, n):  # type: ignore[no-untyped-def]
    for _ in range(n):
        ctx.signal_entity(COUNTER, "add", 1)
    return (yield ctx.call_entity(COUNTER, "get"))  # queued after them: answers n


@dn.orchestrator
def calls(ctx, n):  # type: ignore[no-untyped-def]
    for _ in range(n):
        yield ctx.call_entity(COUNTER, "add", 1)
    return n


def _timed(folder: str, body: Callable[[], None]) -> float:
    runtime = _reset_for_tests(lambda: Runtime(store=DiskCacheStore(folder), progress="none"))
    try:
        started = time.perf_counter()
        body()
        return time.perf_counter() - started
    finally:
        runtime.close()
        _reset_for_tests()


def _expect(got: object, want: object) -> None:
    if got != want:
        raise SystemExit(f"bench_entities: got {got!r}, expected {want!r}")


def floor(folder: str, n: int) -> float:
    """Two bare transactions per message on a database in the same folder."""
    path = os.path.join(folder, "floor.db")
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    db.execute("CREATE TABLE q (id INTEGER PRIMARY KEY, v BLOB, done REAL)")
    db.execute("CREATE TABLE s (k TEXT PRIMARY KEY, v INTEGER)")
    db.execute("INSERT INTO s VALUES ('c', 0)")
    started = time.perf_counter()
    for i in range(n):
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO q (v) VALUES (?)", (b"x",))
        db.execute("COMMIT")
        db.execute("BEGIN IMMEDIATE")
        db.execute("UPDATE s SET v = v + 1 WHERE k = 'c'")
        db.execute("UPDATE q SET done = 1 WHERE id = ?", (i + 1,))
        db.execute("COMMIT")
    elapsed = time.perf_counter() - started
    db.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--n", type=int, default=1000)
    args = parser.parse_args()
    n = args.n
    cases: dict[str, Callable[[], None]] = {
        "signals": lambda: _expect(signals.run(n), n),
        "calls": lambda: _expect(calls.run(n), n),
        "client": lambda: [dn.signal_entity(COUNTER, "add", 1) for _ in range(n)] and None,
    }
    best: dict[str, float] = {}
    floors = []
    for _ in range(args.repeat):
        for name, body in cases.items():
            folder = tempfile.mkdtemp(prefix="durable-nb-bench-entities-")
            try:
                elapsed = _timed(os.path.join(folder, "store"), body)
                best[name] = min(best.get(name, elapsed), elapsed)
            finally:
                shutil.rmtree(folder, ignore_errors=True)
        folder = tempfile.mkdtemp(prefix="durable-nb-bench-floor-")
        try:
            floors.append(floor(folder, n))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    per_floor = min(floors) / n * 1e6
    print(f"{n} messages, best of {args.repeat}")
    print(f"{'case':<10}{'total s':>10}{'µs/message':>12}{'x floor':>10}")
    for name, elapsed in best.items():
        per = elapsed / n * 1e6
        print(f"{name:<10}{elapsed:>10.3f}{per:>12.1f}{per / per_floor:>10.1f}")
    print(f"{'floor':<10}{min(floors):>10.3f}{per_floor:>12.1f}{1.0:>10.1f}")


if __name__ == "__main__":
    main()
