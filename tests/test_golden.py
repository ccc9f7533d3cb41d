"""Stores and histories written by earlier releases replay on this code: no activity
whose success the writing release recorded runs again, the unfinished work runs exactly
once, and every instance ends with the output that release gave.

Every fixture set in tests/golden/ is tested: ``stores/<tag>/``, ``stores/<tag>.expected.json``
and ``histories/<tag>/``, where the tag (the test id) names the release or commit that
wrote it, e.g. ``v0.1.0-py3.11`` (release 0.1.0) or ``format2-keys2-0247524-py3.11``
(commit 0247524: store format 2, key scheme 2). See tests/golden/README.md."""

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
from durable_nb.store_versions import peek_versions

GOLDEN = Path(__file__).resolve().parent / "golden"


def _fixture_sets() -> dict[str, dict[str, Any]]:
    """Each fixture set's expected.json, by tag."""
    sets = {}
    for path in sorted((GOLDEN / "stores").glob("*.expected.json")):
        tag = path.name.removesuffix(".expected.json")
        sets[tag] = json.loads(path.read_text())
    return sets


SETS = _fixture_sets()
TAGS = sorted(SETS)
# Every set the README lists; a set that is not found is a failure, not a skipped test.
assert {"v0.1.0-py3.11", "format2-keys2-0247524-py3.11", "format3-keys2-472cae6-py3.11"} <= set(
    TAGS
), TAGS
HISTORIES = [
    pytest.param(tag, label, id=f"{tag}-{label}")
    for tag in TAGS
    for label, entry in sorted(SETS[tag]["instances"].items())
    if entry["history"]
]


def _history_path(tag: str, entry: dict[str, Any]) -> Path:
    """Where a set's history file is: ``histories/<tag>/<label>.json``. (0.1.0's
    expected.json names it ``histories/<label>.json``, where it was before each set had
    its own folder.)"""
    return GOLDEN / "histories" / tag / Path(entry["history"]).name


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


@pytest.fixture(params=TAGS)
def tag(request: pytest.FixtureRequest) -> str:
    """The fixture set: the release or commit that wrote it, and the Python."""
    return str(request.param)


@pytest.fixture
def golden_store(tmp_path: Path, tag: str) -> Iterator[Path]:
    """A private copy of the set's committed store (opening a store writes to it, and
    even reading it with sqlite leaves -wal and -shm files)."""
    copy = tmp_path / "store"
    assert SETS[tag]["store"] == f"stores/{tag}"
    shutil.copytree(GOLDEN / SETS[tag]["store"], copy)
    copy.chmod(0o700)  # a checkout may leave it group-writable, which the store refuses
    runtime_module._reset_for_tests()
    yield copy
    runtime_module._reset_for_tests()


def test_default_instance_ids_are_those_the_writing_release_gave(
    workload: ModuleType, tag: str
) -> None:
    """The instance id digests the input: a rerun finds the old instance only if it is
    the same."""
    instances = SETS[tag]["instances"]
    ids = {label: workload.instance_id(label) for label in workload.CASES}
    assert ids == {label: instances[label]["instance_id"] for label in workload.CASES}


def test_a_golden_store_holds_the_versions_its_release_wrote(golden_store: Path, tag: str) -> None:
    """The fixture is what it says it is: a store of the writing code's format and key
    scheme, not yet opened (so not upgraded) by a later release. 0.1.0's expected.json
    predates these two fields; 0.1.0 wrote format 2 and key scheme 1."""
    written_by = SETS[tag]["written_by"]
    expected = (written_by.get("store_format", 2), (written_by.get("key_scheme", 1),))
    assert peek_versions(golden_store) == expected


# The golden stores were written with pandas 3, whose pickles of DataFrames pandas 2
# cannot load (pandas supports no pickle from a newer release), and pandas 2 is all
# Python 3.10 can install. Call keys do not depend on pickling; stored values do. There,
# the two instances holding DataFrames are left out, and only there.
PANDAS_VALUES = ("data_report", "data_pending")


def _pandas_major(version: str) -> int:
    return int(version.split(".")[0])


def _reads_stored_frames(tag: str) -> bool:
    """Whether this pandas can load the DataFrames the set's release pickled."""
    return _pandas_major(pd.__version__) >= _pandas_major(SETS[tag]["written_by"]["pandas"])


def _replay(workload: ModuleType, store: Path, effects: Path, tag: str) -> dict[str, Any]:
    """workload.replay, but for the instances this pandas can read."""
    if _reads_stored_frames(tag):
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


def test_a_golden_store_replays_without_rerunning_recorded_work(
    workload: ModuleType, golden_store: Path, effects: Path, tag: str
) -> None:
    instances = SETS[tag]["instances"]
    reads_frames = _reads_stored_frames(tag)
    outputs = _replay(workload, golden_store, effects, tag)
    labels = [label for label in workload.CASES if reads_frames or label not in PANDAS_VALUES]
    assert len(labels) >= len(workload.CASES) - len(PANDAS_VALUES)

    ran = _executions(effects)
    # 0.1.0 itself reran the failure that "careful" handled (its expected.json allows 0 or
    # 1); this release must not: a completed instance is final.
    expected: dict[str, Any] = {**SETS[tag]["replay_executions"], "always_fails": 0}
    if not reads_frames:
        expected["publish"] = 0  # the unfinished work of data_pending, left out
    wrong = {
        name: f"ran {ran.get(name, 0)}, expected {want}"
        for name, want in expected.items()
        if ran.get(name, 0) not in (want if isinstance(want, list) else [want])
    }
    wrong.update(
        {name: f"ran {n}, never ran in {tag}" for name, n in ran.items() if name not in expected}
    )
    assert not wrong, f"activity executions on replay of the {tag} store: {wrong}"

    assert {label: _json(value) for label, value in outputs.items()} == {
        label: instances[label]["output"] for label in labels
    }
    store = runtime_module.get_runtime().store
    statuses = {label: store.get_instance(instances[label]["instance_id"]) for label in labels}
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
        return history.TaskFailed(clock, call.key, name, type(exc).__name__, str(exc), 1, error=exc)
    return history.TaskCompleted(clock, call.key, name, result, 1)


@pytest.mark.parametrize(("tag", "label"), HISTORIES)
def test_a_golden_history_replays_in_the_engine(
    tag: str, label: str, workload: ModuleType, effects: Path
) -> None:
    entry = SETS[tag]["instances"][label]
    document = json.loads(_history_path(tag, entry).read_text())
    assert (document["label"], document["instance_id"]) == (label, entry["instance_id"])
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
    assert _json(engine.output) == entry["output"]
