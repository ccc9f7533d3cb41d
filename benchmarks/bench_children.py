"""Cost of sub-orchestrations: fan-outs of 1,000 to 10,000 children, and children waiting.

    python benchmarks/bench_children.py [--sizes 1000,3000,10000] [--repeat 2]
        [--idle 1000] [--idle-seconds 6]

Each child is an instance of its own (its lease, record and history), so a child costs
far more than an activity; what must hold is that the cost per child stays flat as a
fan-out grows (within 1.3x from the smallest size to the largest, as issue 12 asks of
activities). For each size, one parent fans out ``size`` children, each of which calls
one trivial activity, and sums them: fresh, then replayed from the parent's history (a
child that completed is final: the replay reads its outcome from the parent's history).
The same fan-out of plain activities is measured beside it, for scale. Figures are the
best of ``--repeat`` runs, each on a new store folder. The largest size runs once more
with Python's cyclic garbage collector off: the collector's full passes go over every
live child (about 120 tracked objects each), which is what makes a child cost more in
a larger fan-out.

Then the cost of children that wait (``--idle`` children, each on a durable timer of
``--idle-seconds``): the share of a core the process uses while all of them wait,
from the moment the last child has written its timer to a second before the timers
fire. Each waiting run ticks (its lease, the events others raise, its view), which is
what this measures.
This is a benchmark, not a test: it reports, it never fails.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

from bench_scale import print_table  # a sibling script: its folder is on sys.path

import durable_nb as dn
from durable_nb.runtime import Runtime, _reset_for_tests
from durable_nb.store import DiskCacheStore

SIZES = (1_000, 3_000, 10_000)
TARGET_FLAT = 1.3  # cost per child, largest size / smallest


@dn.activity
def trivial(i: int) -> int:
    return i


@dn.orchestrator
def child(ctx, i):  # type: ignore[no-untyped-def]
    return (yield ctx.call_activity(trivial, i))


@dn.orchestrator
def children(ctx, n):  # type: ignore[no-untyped-def]
    results = yield ctx.task_all([ctx.call_sub_orchestrator(child, i) for i in range(n)])
    return sum(results)


@dn.orchestrator
def activities(ctx, n):  # type: ignore[no-untyped-def]
    results = yield ctx.task_all([ctx.call_activity(trivial, i) for i in range(n)])
    return sum(results)


@dn.orchestrator
def waiter(ctx, seconds):  # type: ignore[no-untyped-def]
    yield ctx.create_timer(ctx.current_utc_datetime + datetime.timedelta(seconds=seconds))
    return 1


@dn.orchestrator
def waiting_children(ctx, n, seconds):  # type: ignore[no-untyped-def]
    results = yield ctx.task_all(
        [ctx.call_sub_orchestrator(waiter, seconds, instance_id=f"w{i}") for i in range(n)]
    )
    return sum(results)


def on_new_store(measure: Callable[[Runtime], Any]) -> Any:
    folder = tempfile.mkdtemp()
    runtime = _reset_for_tests(lambda: Runtime(store=DiskCacheStore(folder), progress="none"))
    try:
        return measure(runtime)
    finally:
        runtime.close()
        shutil.rmtree(folder)


def fresh_and_replay(orch: dn.Orchestrator, n: int) -> tuple[float, float]:
    """Seconds of a fresh run of ``orch(n)`` and of its replay, on a new store folder."""

    def measure(runtime: Runtime) -> tuple[float, float]:
        started = time.perf_counter()
        first = orch.run(n)
        fresh = time.perf_counter() - started
        record = runtime.store.get_instance(orch.instance_id_for(n))
        assert record is not None and record.status == "completed"
        record.status = "interrupted"  # as a dead kernel leaves it: the next run replays
        runtime.store.put_instance(record)
        started = time.perf_counter()
        assert orch.run(n) == first == sum(range(n))
        return fresh, time.perf_counter() - started

    result: tuple[float, float] = on_new_store(measure)
    return result


def idle_cpu(n: int, seconds: float) -> tuple[float, float]:
    """CPU seconds per second of the process while ``n`` children wait on timers of
    ``seconds``: sampled from the moment every child waits (its timer is in its history)
    to a second before the first timer fires; and the seconds the window lasted."""

    def measure(runtime: Runtime) -> tuple[float, float]:
        window: list[tuple[float, float]] = []

        def sample() -> None:
            while runtime.store.history_chunks(f"w{n - 1}") == 0:
                time.sleep(0.01)  # the last child has not written its timer yet
            window.append((time.perf_counter(), time.process_time()))
            time.sleep(max(0.0, started + seconds - 1.0 - time.perf_counter()))
            window.append((time.perf_counter(), time.process_time()))

        sampler = threading.Thread(target=sample, daemon=True)
        started = time.perf_counter()
        sampler.start()
        assert waiting_children.run(n, seconds) == n
        sampler.join()
        (wall0, cpu0), (wall1, cpu1) = window
        return (cpu1 - cpu0) / (wall1 - wall0), wall1 - wall0

    result: tuple[float, float] = on_new_store(measure)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="children per fan-out")
    parser.add_argument("--repeat", type=int, default=2, help="runs per figure (best is kept)")
    parser.add_argument("--idle", type=int, default=1000, help="children that wait (0: skip)")
    parser.add_argument("--idle-seconds", type=float, default=6.0, help="how long they wait")
    args = parser.parse_args()
    sizes = sorted(int(size) for size in args.sizes.split(","))
    on_new_store(lambda _runtime: children.run(10))  # imports and first calls

    rows: list[tuple[str, ...]] = []
    per_child: dict[int, float] = {}
    for n in sizes:
        runs = [fresh_and_replay(children, n) for _ in range(args.repeat)]
        plain = [fresh_and_replay(activities, n) for _ in range(args.repeat)]
        fresh, replay = min(r[0] for r in runs), min(r[1] for r in runs)
        plain_fresh = min(r[0] for r in plain)
        per_child[n] = fresh / n * 1e6
        rows.append(
            (
                f"{n:,}",
                f"{fresh:.3f} s",
                f"{per_child[n]:.0f} µs",
                f"{per_child[n] / per_child[sizes[0]]:.2f}x",
                f"{replay / n * 1e6:.1f} µs",
                f"{plain_fresh / n * 1e6:.1f} µs",
                f"{fresh / plain_fresh:.0f}x",
            )
        )
    print_table(
        (
            "children",
            "fresh",
            "per child",
            f"vs {sizes[0]:,}",
            "replay per child",
            "per activity (same fan-out)",
            "child / activity",
        ),
        rows,
    )
    flat = per_child[sizes[-1]] / per_child[sizes[0]]
    verdict = "met" if flat <= TARGET_FLAT else "MISSED"
    print(f"flat cost per child, {sizes[-1]:,} vs {sizes[0]:,}: {flat:.2f}x ({verdict}, target")
    print(f"<= {TARGET_FLAT}x); best of {args.repeat}, each on a new store folder")
    gc.disable()
    try:
        without_gc = min(fresh_and_replay(children, sizes[-1])[0] for _ in range(args.repeat))
    finally:
        gc.enable()
    print(
        f"{sizes[-1]:,} children with the cyclic collector off: "
        f"{without_gc / sizes[-1] * 1e6:.0f} µs per child "
        f"({without_gc / sizes[-1] * 1e6 / per_child[sizes[0]]:.2f}x the {sizes[0]:,}'s cost)"
    )

    if args.idle:
        busy, window = idle_cpu(args.idle, args.idle_seconds)
        print()
        print(
            f"{args.idle:,} children waiting on timers: {busy * 100:.1f} % of a core "
            f"({busy / args.idle * 1e6:.0f} µs of CPU per child per second, over "
            f"{window:.1f} s of waiting)"
        )


if __name__ == "__main__":
    main()
