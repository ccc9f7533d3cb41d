"""Entities through SIGKILL: 10 instances each signal ``add 1`` ten times (and record
each step with a call to a second entity), in a process killed at seeded random
moments and run again until it finishes. The counter must end at exactly 100 and the
ledger must hold each of the 100 steps once: no message lost, none applied twice.

Operations sleep a little and log each execution, so kills land between an
operation's execution and its commit too; executions may then exceed the 200
messages (an operation cut short runs again), the states may not.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

FLOW = textwrap.dedent(
    """
    import asyncio, json, os, random, sys, time
    import durable_nb as dn

    store, effects, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    dn.configure(store=store, progress="none")

    def log(line):
        fd = os.open(effects, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.write(fd, (line + "\\n").encode())
        os.close(fd)

    @dn.entity(name="counter")
    def counter(ctx):
        log(f"counter {ctx.operation_name}")
        time.sleep(random.uniform(0, 0.003))
        value = ctx.get_state(lambda: 0)
        if ctx.operation_name == "add":
            ctx.set_state(value + ctx.get_input())
        ctx.set_result(ctx.get_state(lambda: 0))

    @dn.entity
    class Ledger:
        def __init__(self):
            self.entries = []

        def record(self, entry):
            log(f"ledger {entry}")
            time.sleep(random.uniform(0, 0.003))
            self.entries.append(entry)
            return len(self.entries)

    @dn.activity
    def step(i, j):
        time.sleep(random.uniform(0.001, 0.008))
        return j

    TOTAL = dn.EntityId("counter", "total")
    LEDGER = dn.EntityId("Ledger", "all")

    @dn.orchestrator
    def sender(ctx, i):
        for j in range(10):
            ctx.signal_entity(TOTAL, "add", 1)
            yield ctx.call_entity(LEDGER, "record", f"{i}-{j}")
            yield ctx.call_activity(step, i, j)
        return i

    async def main():
        handles = [sender.start(i) for i in range(10)]
        return await asyncio.gather(*handles)

    if mode == "run":
        print("RESULT", json.dumps(asyncio.run(main())), flush=True)
    else:
        total = dn.read_entity_state(TOTAL)
        ledger = dn.read_entity_state(LEDGER)
        print("STATE", json.dumps({
            "total": total.entity_state, "total_waiting": total.waiting,
            "entries": ledger.entity_state["entries"], "ledger_waiting": ledger.waiting,
        }), flush=True)
    """
)

KILLS = 8
# One seed by default; five with -m crash_matrix (or DURABLE_NB_CRASH_MATRIX=all), as
# tests/test_crash_matrix.py does with its seeds.
SEEDS = (14, 3, 7, 21, 42)
_ONLY_IN_FULL = pytest.mark.skipif(
    "not ('crash_matrix' in config.getoption('markexpr') or "
    "__import__('os').environ.get('DURABLE_NB_CRASH_MATRIX') == 'all')",
    reason="entity crash seed: run all with -m crash_matrix or DURABLE_NB_CRASH_MATRIX=all",
)


def _run(script: Path, store: Path, effects: Path, mode: str, kill_at: int | None) -> str:
    """Run the flow; with ``kill_at``, SIGKILL it as soon as the operations log has that
    many lines (at a random moment of the work, whatever Python's start-up takes)."""
    process = subprocess.Popen(
        [sys.executable, str(script), str(store), str(effects), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    if kill_at is not None:
        deadline = time.monotonic() + 60
        while process.poll() is None and time.monotonic() < deadline:
            if _lines(effects) >= kill_at:
                process.send_signal(signal.SIGKILL)
                process.communicate()
                return "killed"
            time.sleep(0.002)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err[-3000:]
    return out


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.mark.parametrize(
    "seed",
    [
        pytest.param(seed, marks=[pytest.mark.crash_matrix, *([_ONLY_IN_FULL] if n else [])])
        for n, seed in enumerate(SEEDS)
    ],
)
def test_entities_apply_every_message_exactly_once_through_kills(tmp_path: Path, seed: int) -> None:
    script, store, effects = tmp_path / "flow.py", tmp_path / "store", tmp_path / "ops.log"
    script.write_text(FLOW)
    rng = random.Random(seed)
    kills = 0
    for _ in range(KILLS):
        # The next kill comes a random number of operations later: anywhere in the run.
        outcome = _run(script, store, effects, "run", _lines(effects) + rng.randint(1, 40))
        if outcome != "killed":
            break
        kills += 1
    final = _run(script, store, effects, "run", None)
    assert json.loads(final.split("RESULT", 1)[1]) == list(range(10))
    state = json.loads(_run(script, store, effects, "check", None).split("STATE", 1)[1])
    assert kills >= 3, f"only {kills} runs were killed: the test proved little"
    assert state["total"] == 100 and state["total_waiting"] == 0
    entries = state["entries"]
    assert sorted(entries) == sorted(f"{i}-{j}" for i in range(10) for j in range(10))
    assert len(entries) == len(set(entries)) == 100 and state["ledger_waiting"] == 0
    executions = effects.read_text().splitlines()
    adds = sum(1 for line in executions if line == "counter add")
    records = sum(1 for line in executions if line.startswith("ledger "))
    # Every message ran at least once; a kill between an execution and its commit
    # makes an operation run again, bounded by the kills (one in flight per entity).
    assert 100 <= adds <= 100 + kills and 100 <= records <= 100 + kills
    print(f"kills={kills} adds run={adds} records run={records}")
