"""How long a timeline chart takes, from a stored history to a PNG.

    python benchmarks/bench_timeline.py [--repeat 3] [--sizes 1000,10000]

Each size is a real fan-out of that many calls (plus one sequential call before and a
timer), run on the default thread pool into a new store; then the instance's history is
read, the chart built (``timeline.build``) and drawn to PNG and SVG. The floor is
matplotlib drawing an empty figure of the same size to PNG: what any chart costs.
Issue 13's target: under 2 s for 10,000 calls. A benchmark, not a test: it never fails.
"""

from __future__ import annotations

import argparse
import io
import shutil
import tempfile
import time

import durable_nb as dn
from durable_nb import timeline
from durable_nb.runtime import Runtime, _reset_for_tests
from durable_nb.store import DiskCacheStore

TARGET_SECONDS = 2.0  # issue 13, for 10,000 calls


@dn.activity
def work(i: int) -> int:
    return i


@dn.orchestrator
def fan(ctx, n):  # type: ignore[no-untyped-def]
    first = yield ctx.call_activity(work, -1)
    yield ctx.create_timer(0.05)
    values = yield ctx.task_all([ctx.call_activity(work, i) for i in range(n)])
    return first + sum(values)


def floor(chart: timeline.Timeline) -> float:
    """Seconds to draw an empty figure of the chart's size to PNG."""
    from matplotlib.figure import Figure

    started = time.perf_counter()
    fig = Figure(figsize=(11, min(2.0 + 0.32 * len(chart.lanes), 40.0)), layout="constrained")
    fig.add_subplot()
    fig.savefig(io.BytesIO(), format="png", dpi=100)
    return time.perf_counter() - started


def measure(n: int, repeat: int) -> dict[str, float]:
    folder = tempfile.mkdtemp()
    runtime = _reset_for_tests(lambda: Runtime(store=DiskCacheStore(folder), progress="none"))
    fan.run(n)
    instance_id = fan.instance_id_for(n)
    best: dict[str, float] = {}
    for _ in range(repeat):
        started = time.perf_counter()
        events = runtime.store.read_history(instance_id)
        read = time.perf_counter()
        chart = timeline.build(instance_id, events, runtime.store.read_history)
        built = time.perf_counter()
        png = timeline.TimelineChart(chart).image("png")
        drawn = time.perf_counter()
        svg = timeline.TimelineChart(chart).image("svg")
        svg_done = time.perf_counter()
        figures = {
            "read": read - started,
            "build": built - read,
            "png": drawn - built,
            "total": drawn - started,
            "svg": svg_done - drawn,
            "floor": floor(chart),
            "png bytes": float(len(png)),
            "svg bytes": float(len(svg)),
        }
        for key, value in figures.items():
            best[key] = min(best.get(key, value), value)
    runtime.close()
    shutil.rmtree(folder)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sizes", default="1000,10000")
    args = parser.parse_args()
    floor(timeline.Timeline("warm-up", 0.0, 1.0))  # import matplotlib, fonts
    rows = []
    for n in (int(size) for size in args.sizes.split(",")):
        r = measure(n, args.repeat)
        verdict = ""
        if n == 10_000:
            verdict = f"{'met' if r['total'] <= TARGET_SECONDS else 'MISSED'} (<= 2 s)"
        rows.append(
            (
                f"{n:,} calls",
                f"{r['read']:.3f}",
                f"{r['build']:.3f}",
                f"{r['png']:.3f}",
                f"{r['total']:.3f} s",
                f"{r['total'] / r['floor']:.1f}x",
                f"{r['svg']:.3f} s",
                f"{r['png bytes'] / 1024:.0f} KiB",
                verdict,
            )
        )
    header = (
        "history",
        "read",
        "build",
        "draw PNG",
        "total",
        "vs floor",
        "SVG",
        "PNG size",
        "target",
    )
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    print(f"\nbest of {args.repeat}; floor: an empty figure of the same size drawn to PNG")


if __name__ == "__main__":
    main()
