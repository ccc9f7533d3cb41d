"""What replaying a history an older release wrote costs, against one of this release.

    python benchmarks/bench_key_schemes.py [--repeat 3] [--calls 10000]

A fan-out runs once; its history is then rewritten as release 0.1.0 would have written
it (key scheme 1: the code digests of Python 3.11's ``ast.dump``, ``joblib.hash`` for
arrays; runs that say nothing of their scheme) and the instance replays from it. Every
call then misses under its scheme-2 key and is found again under its scheme-1 key.
Two workloads: plain arguments (the same digest in both schemes, so the second lookup
costs one more digest of the arguments) and small numpy arrays (scheme 1 hashes them
with joblib). The floor is the replay of the same history written by this release.
This is a benchmark, not a test: it reports, it never fails.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import tempfile
import time
from typing import Any

import numpy as np

import durable_nb as dn
from durable_nb import history
from durable_nb.definitions import find_activity
from durable_nb.runtime import Runtime, _reset_for_tests
from durable_nb.store import DiskCacheStore


@dn.activity
def scaled(i: int) -> int:
    return i * 2


@dn.activity
def summed(values: Any) -> float:
    return float(np.sum(values))


@dn.orchestrator
def plain_fan(ctx, n):  # type: ignore[no-untyped-def]
    return sum((yield ctx.task_all([ctx.call_activity(scaled, i) for i in range(n)])))


@dn.orchestrator
def array_fan(ctx, n):  # type: ignore[no-untyped-def]
    calls = [ctx.call_activity(summed, np.full(8, i, dtype=np.int64)) for i in range(n)]
    return sum((yield ctx.task_all(calls)))


def as_release_010(event: history.Event, arguments: dict[str, Any]) -> history.Event:
    """The event as 0.1.0 wrote it: scheme-1 keys, runs without a key scheme."""
    if isinstance(event, history.ExecutionStarted):
        return history.ExecutionStarted(event.timestamp, event.orchestrator, event.run)
    key = getattr(event, "key", None)
    if key is None or key.count("/") < 2:
        return event
    name = key.split("/", 1)[0]
    act = find_activity(name)
    assert act is not None
    old_args = arguments[key]
    digest = dn.fingerprint.arguments_digest("b", old_args, {}, scheme=1)
    occurrence = key.rpartition("#")[2]
    old_key = f"{name}/{act.code_digest(1)[:16]}/{digest}#{occurrence}"
    return dataclasses.replace(event, key=old_key)  # type: ignore[call-arg]


def replay_seconds(orch: dn.Orchestrator, n: int, rewrite: bool) -> float:
    """Seconds to replay a completed fan-out of ``n`` from its history, as this release
    wrote it or rewritten as 0.1.0 would have."""
    folder = tempfile.mkdtemp()
    runtime = _reset_for_tests(lambda: Runtime(store=DiskCacheStore(folder), progress="none"))
    first = orch.run(n)
    instance = orch.instance_id_for(n)
    store = runtime.store
    record = store.get_instance(instance)
    assert record is not None
    if rewrite:
        # The arguments of each call, by its scheme-2 key, to digest them under scheme 1.
        arguments = {}
        for i in range(n):
            args = (i,) if orch is plain_fan else (np.full(8, i, dtype=np.int64),)
            act = scaled if orch is plain_fan else summed
            digest = dn.fingerprint.arguments_digest("b", args, {})
            arguments[f"{act.name}/{act.code_digest()[:16]}/{digest}#0"] = args
        events = [as_release_010(e, arguments) for e in store.read_history(instance)]
        store.purge(instance)
        store.put_instance(record)
        store.append(instance, events)
    record.status, record.completed_with = "interrupted", None  # replayed, not final
    store.put_instance(record)
    started = time.perf_counter()
    assert orch.run(n) == first
    seconds = time.perf_counter() - started
    record = store.get_instance(instance)
    assert record is not None and record.counts["ran"] == 0, record.counts
    runtime.close()
    shutil.rmtree(folder)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (best is kept)")
    parser.add_argument("--calls", type=int, default=10_000, help="calls of each fan-out")
    options = parser.parse_args()
    n = options.calls
    rows = []
    for label, orch in (("plain arguments", plain_fan), ("numpy arguments", array_fan)):
        now = min(replay_seconds(orch, n, False) for _ in range(options.repeat))
        old = min(replay_seconds(orch, n, True) for _ in range(options.repeat))
        rows.append(
            (
                f"replay {n:,}, {label}",
                f"{now / n * 1e6:.1f} µs/call",
                f"{old / n * 1e6:.1f} µs/call",
                f"{old / now:.2f}x",
            )
        )
    header = ("measure", "this release's history", "0.1.0's history", "ratio to floor")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    print(f"\nbest of {options.repeat} runs each; nothing ran again in any replay")


if __name__ == "__main__":
    main()
