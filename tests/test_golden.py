"""Stores and histories written by release 0.1.0 replay on this code: no activity whose
success 0.1.0 recorded runs again, the unfinished work runs exactly once, and every
instance ends with the output 0.1.0 gave. See tests/golden/README.md for the fixtures."""

from __future__ import annotations

import asyncio
import collections
import importlib.util
import inspect
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pandas as pd
import pytest
from builders import new_engine

from durable_nb import history
from durable_nb import runtime as runtime_module

GOLDEN = Path(__file__).resolve().parent / "golden"
EXPECTED: dict[str, Any] = json.loads((GOLDEN / "stores" / "expected.json").read_text())
INSTANCES: dict[str, dict[str, Any]] = EXPECTED["instances"]
HISTORIES = sorted(label for label, entry in INSTANCES.items() if entry["history"])

# What an engine replay of each golden history may schedule (activity names, in order):
# only work whose success is not in the history. "careful" handled a failure in a
# completed instance: 0.1.0 reruns the failed call, a release where a completed
# instance is final need not.
ENGINE_RERUNS: dict[str, list[list[str]]] = {
    "flaky": [["step_three"]],
    "approval_interrupted": [["apply_decision"]],
    "approval_killed": [["apply_decision"]],
    "careful": [[], ["always_fails"]],
}
# Events the unfinished instances wait for, given by the engine test as replay() does.
ENGINE_EVENTS = {"approval_interrupted": "approve", "approval_killed": "approve"}


def _json(value: Any) -> Any:
    """The value as JSON would give it back (tuples become lists)."""
    return json.loads(json.dumps(value))


@pytest.fixture(scope="module")
def workload() -> ModuleType:
    spec = importlib.util.spec_from_file_location("golden_workload", GOLDEN / "workload.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def effects(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workload: ModuleType) -> Path:
    """The folder the workload's activities write one file per execution into."""
    folder = tmp_path / "effects"
    folder.mkdir()
    monkeypatch.setenv(workload.EFFECTS_ENV, str(folder))
    monkeypatch.delenv(workload.FAIL_ENV, raising=False)
    return folder


def _executions(folder: Path) -> dict[str, int]:
    return dict(collections.Counter(p.name.rsplit("-", 1)[0] for p in folder.iterdir()))


@pytest.fixture
def golden_store(tmp_path: Path) -> Iterator[Path]:
    """A private copy of the committed store (opening a store writes to it)."""
    copy = tmp_path / "store"
    shutil.copytree(GOLDEN / EXPECTED["store"], copy)
    copy.chmod(0o700)  # a checkout may leave it group-writable, which the store refuses
    runtime_module._reset_for_tests()
    yield copy
    runtime_module._reset_for_tests()


def test_default_instance_ids_are_those_0_1_0_gave(workload: ModuleType) -> None:
    """The instance id digests the input: a rerun finds the old instance only if it is
    the same."""
    ids = {label: workload.instance_id(label) for label in workload.CASES}
    assert ids == {label: INSTANCES[label]["instance_id"] for label in workload.CASES}


# The golden store was written with pandas 3, whose pickles of DataFrames pandas 2 cannot
# load (pandas supports no pickle from a newer release), and pandas 2 is all Python 3.10
# can install. Call keys do not depend on pickling; stored values do. There, the two
# instances holding DataFrames are left out, and only there.
PANDAS_VALUES = ("data_report", "data_pending")
READS_PANDAS_3 = int(pd.__version__.split(".")[0]) >= 3


def _replay(workload: ModuleType, store: Path, effects: Path) -> dict[str, Any]:
    """workload.replay, but for the instances this pandas can read."""
    if READS_PANDAS_3:
        return dict(workload.replay(store, effects))
    workload._use(store, effects)
    outputs: dict[str, Any] = {}
    for label, (orch, args) in workload.CASES.items():
        if label in PANDAS_VALUES:
            continue
        pending = workload.PENDING_EVENTS.get(label)
        if pending is not None:
            runtime_module.get_runtime().raise_event(workload.instance_id(label), *pending)
        outputs[label] = orch.run(*args)
    return outputs


def test_a_store_written_by_0_1_0_replays_without_rerunning_recorded_work(
    workload: ModuleType, golden_store: Path, effects: Path
) -> None:
    outputs = _replay(workload, golden_store, effects)
    labels = [label for label in workload.CASES if READS_PANDAS_3 or label not in PANDAS_VALUES]
    assert len(labels) >= len(workload.CASES) - len(PANDAS_VALUES)

    ran = _executions(effects)
    # 0.1.0 itself reran the failure that "careful" handled; this release must not: a
    # completed instance is final.
    expected: dict[str, Any] = {**EXPECTED["replay_executions"], "always_fails": 0}
    if not READS_PANDAS_3:
        expected["publish"] = 0  # the unfinished work of data_pending, left out
    wrong = {
        name: f"ran {ran.get(name, 0)}, expected {want}"
        for name, want in expected.items()
        if ran.get(name, 0) not in (want if isinstance(want, list) else [want])
    }
    wrong.update(
        {name: f"ran {n}, never ran in 0.1.0" for name, n in ran.items() if name not in expected}
    )
    assert not wrong, f"activity executions on replay of the 0.1.0 store: {wrong}"

    assert {label: _json(value) for label, value in outputs.items()} == {
        label: INSTANCES[label]["output"] for label in labels
    }
    store = runtime_module.get_runtime().store
    statuses = {label: store.get_instance(INSTANCES[label]["instance_id"]) for label in labels}
    assert {label: r.status if r else None for label, r in statuses.items()} == {
        label: "completed" for label in labels
    }


def _answer(call: Any, clock: float) -> history.Event:
    """Run an activity call the engine scheduled and give its outcome as the runtime would."""
    name = call.activity.name
    try:
        result = call.activity.fn(*call.args, **call.kwargs)
        if inspect.iscoroutine(result):
            result = asyncio.run(result)
    except Exception as exc:
        return history.TaskFailed(clock, call.key, name, type(exc).__name__, str(exc), 1, exc)
    return history.TaskCompleted(clock, call.key, name, result, 1)


@pytest.mark.parametrize("label", HISTORIES)
def test_a_history_written_by_0_1_0_replays_in_the_engine(
    label: str, workload: ModuleType, effects: Path
) -> None:
    document = json.loads((GOLDEN / "histories" / f"{label}.json").read_text())
    events = [history.decode(tuple(row)) for row in document["events"]]
    orch = getattr(workload, document["orchestrator"])
    engine = new_engine(
        orch.fn,
        dict(document["input"]),
        name=orch.name,
        instance_id=document["instance_id"],
        strict=orch.strict,
    )
    engine.load(events)
    clock = max(e.timestamp for e in events) + 1000.0
    runs = sum(isinstance(e, history.ExecutionStarted) for e in events)
    step = engine.start(history.ExecutionStarted(clock, orch.name, runs + 1))

    scheduled: list[str] = []
    waited: list[str] = []
    while not engine.done:
        assert not step.subs, f"sub-orchestrations started again: {step.subs}"
        assert not [t for t in step.timers if t.new], f"new timers: {step.timers}"
        if step.scheduled:
            clock += 1.0
            scheduled += [call.activity.name for call in step.scheduled]
            step = engine.apply([_answer(call, clock) for call in step.scheduled])
        elif step.waiting_events and not waited:
            waited += step.waiting_events
            clock += 1.0
            value = workload.PENDING_EVENTS[label][1]
            step = engine.apply([history.EventRaised(clock, step.waiting_events[0], value)])
        else:
            pytest.fail(f"{label}: the engine waits on {step.waiting_events or 'nothing'}")

    allowed = ENGINE_RERUNS.get(label, [[]])
    assert scheduled in allowed, f"{label}: replay ran {scheduled}; only one of {allowed} may run"
    assert waited == ([ENGINE_EVENTS[label]] if label in ENGINE_EVENTS else [])
    assert engine.status == "completed", engine.failure
    assert _json(engine.output) == INSTANCES[label]["output"]
