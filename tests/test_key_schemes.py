"""Key schemes: results keyed by an older release's digests replay, in the engine (event
builders) and in a store, which records the schemes it holds."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import diskcache
import numpy as np
import pytest
from builders import T0, completed, engine, started

from durable_nb import history
from durable_nb.definitions import Activity, Orchestrator
from durable_nb.doctor import diagnose
from durable_nb.errors import StoreError
from durable_nb.fingerprint import KEY_SCHEME, arguments_digest
from durable_nb.store import DiskCacheStore
from durable_nb.store_versions import FORMAT_VERSION, peek_versions


def _scale(values: Any, factor: int) -> float:
    return float(np.asarray(values).sum() * factor)


def _label(i: int) -> str:
    return f"#{i}"


scale = Activity(_scale, name="scale")
label = Activity(_label, name="label")
ARRAY = np.arange(12, dtype=np.float64).reshape(3, 4)


def report(ctx):  # type: ignore[no-untyped-def]
    total = yield ctx.call_activity(scale, ARRAY, 2)
    names = yield ctx.task_all([ctx.call_activity(label, i) for i in range(3)])
    return total, names


def key_in(scheme: int, act: Activity, *args: Any, occurrence: int = 0) -> str:
    """The call key an older (or this) release gave the call."""
    digest = arguments_digest("t", args, {}, scheme=scheme)
    return f"{act.name}/{act.code_digest(scheme)[:16]}/{digest}#{occurrence}"


def old_history(scheme: int = 1, said: int | None = None) -> list[history.Event]:
    """A run keyed by ``scheme`` whose start says it used ``said`` (default: the same)."""
    return [
        started(key_scheme=scheme if said is None else said),
        completed(key_in(scheme, scale, ARRAY, 2), 132.0),
        *(completed(key_in(scheme, label, i), f"#{i}", t=T0 + 2) for i in range(3)),
    ]


def test_the_schemes_digest_arrays_apart_and_plain_values_alike() -> None:
    """What makes a lookup under the old scheme necessary, and cheap for plain data."""
    assert key_in(1, scale, ARRAY, 2) != key_in(KEY_SCHEME, scale, ARRAY, 2)
    assert key_in(1, label, 1).split("/")[2] == key_in(KEY_SCHEME, label, 1).split("/")[2]


def test_a_history_of_an_older_scheme_replays_without_scheduling() -> None:
    eng = engine(report)
    eng.load(old_history())
    step = eng.start(started(run=2))
    assert step.scheduled == [] and eng.output == (132.0, ["#0", "#1", "#2"])
    assert step.replayed == ["scale", "label", "label", "label"]


def test_a_history_of_both_schemes_replays_without_scheduling() -> None:
    """An old run recorded the array call; a run of this release recorded the rest."""
    events = [
        *old_history()[:2],
        started(T0 + 10, run=2),
        *(completed(key_in(KEY_SCHEME, label, i), f"#{i}", t=T0 + 11) for i in range(3)),
    ]
    eng = engine(report)
    eng.load(events)
    assert eng.start(started(run=3)).scheduled == []
    assert eng.output == (132.0, ["#0", "#1", "#2"])


def test_old_keys_count_only_under_the_scheme_their_run_recorded() -> None:
    """Keys of scheme 1 in a run that says it used this release's scheme are not looked
    up as scheme 1: the array call, whose digest differs, runs again."""
    eng = engine(report)
    eng.load(old_history(scheme=1, said=KEY_SCHEME))
    step = eng.start(started(run=2))
    assert [call.activity.name for call in step.scheduled] == ["scale"]


def test_a_scheme_this_release_does_not_know_is_not_looked_up() -> None:
    eng = engine(report)
    events = old_history()
    eng.load([started(key_scheme=99), *events[1:]])
    step = eng.start(started(run=2))
    assert [call.activity.name for call in step.scheduled] == ["scale"]


def test_an_edit_made_during_the_upgrade_is_seen() -> None:
    """Old keys are reproduced, not matched by name: an edited body misses them."""
    edited = Activity(lambda values, factor: 0.0, name="scale")

    def report_edited(ctx):  # type: ignore[no-untyped-def]
        total = yield ctx.call_activity(edited, ARRAY, 2)
        return total

    report_edited.__name__ = "report"
    eng = engine(report_edited)
    eng.load(old_history())
    assert [call.activity.name for call in eng.start(started(run=2)).scheduled] == ["scale"]


def test_a_sub_orchestration_of_an_older_scheme_replays() -> None:
    def child(ctx, values):  # type: ignore[no-untyped-def]
        return (yield ctx.call_activity(scale, values, 1))

    child_orch = Orchestrator(child)

    def parent(ctx):  # type: ignore[no-untyped-def]
        return (yield ctx.call_sub_orchestrator(child_orch, ARRAY))

    digest = arguments_digest("t", (), {"values": ARRAY}, scheme=1)
    key = f"sub:child/{child_orch.code_digest(1)[:16]}/{digest}#0"
    eng = engine(parent)
    eng.load([started(key_scheme=1), history.SubOrchestrationCompleted(T0 + 1, key, "c", 66.0)])
    step = eng.start(started(run=2))
    assert step.subs == [] and eng.output == 66.0


# ---------------------------------------------------------------------------- store


def test_a_new_store_records_this_release_s_scheme(tmp_path: Path) -> None:
    store = DiskCacheStore(tmp_path / "s")
    assert store.key_schemes == (KEY_SCHEME,)
    store.close()
    assert peek_versions(tmp_path / "s") == (FORMAT_VERSION, (KEY_SCHEME,))


def test_a_store_of_release_010_records_both_schemes_once_opened(tmp_path: Path) -> None:
    folder = tmp_path / "old"
    with diskcache.Cache(str(folder), eviction_policy="none") as cache:
        cache.set("format", 2)  # 0.1.0: format 2, no key_schemes setting
        cache.set("serializer", "pickle")
    folder.chmod(0o700)
    assert peek_versions(folder) == (2, (1,))
    report = diagnose(folder).text()
    assert "key scheme(s) 1: results keyed by scheme 1 (an older release) replay" in report
    assert "nothing checkpointed runs again" in report
    assert peek_versions(folder) == (FORMAT_VERSION, (1, KEY_SCHEME))  # the doctor opened it
    assert f"key scheme(s) 1, {KEY_SCHEME}" in diagnose(folder).text()


def test_the_golden_store_of_release_010_reports_its_versions(tmp_path: Path) -> None:
    golden = Path(__file__).parent / "golden" / "stores" / "v0.1.0-py3.11"
    copy = tmp_path / "golden"
    shutil.copytree(golden, copy)
    copy.chmod(0o700)
    assert peek_versions(copy) == (2, (1,))
    text = diagnose(copy).text()
    assert "format 2: opening it with this release marks it format 4" in text
    assert "key scheme(s) 1: results keyed by scheme 1" in text
    assert "FAIL" not in text


def test_a_store_with_a_newer_scheme_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "newer"
    DiskCacheStore(folder).close()
    with diskcache.Cache(str(folder)) as cache:
        cache.set("key_schemes", f"{KEY_SCHEME},{KEY_SCHEME + 1}")
    with pytest.raises(StoreError, match=r"key scheme 3, newer than this durable_nb .*upgrade"):
        DiskCacheStore(folder)


def test_instance_ids_of_an_older_scheme_are_kept(tmp_path: Path) -> None:
    """An instance 0.1.0 started with an array input is found under the id it gave."""

    def summed(ctx, values):  # type: ignore[no-untyped-def]
        return (yield ctx.call_activity(scale, values, 1))

    orch = Orchestrator(summed)
    now_id, old_id = orch.instance_ids_for((ARRAY,), {}, (1,))
    assert now_id == orch.instance_id_for(ARRAY) and old_id != now_id
    assert orch.instance_ids_for(([1, 2],), {}, (1,)) == [orch.instance_id_for([1, 2])]
