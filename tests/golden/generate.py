"""Write the golden fixtures with the durable_nb that is imported (meant: release 0.1.0).

    git -C /work/main worktree add --detach /tmp/nb010 69abd6c
    cd /work/main && PYTHONPATH=/tmp/nb010 python tests/golden/generate.py

writes ``stores/v<version>-py<major>.<minor>/`` (the store ``workload.main`` wrote),
``expected.json`` (instances, outputs, executions) and ``histories/<label>.json`` (the
encoded history of each instance whose values are JSON data). It then checks its own
fixtures: a copy of the store is replayed by the same release, and the outputs and
executions of that replay are what ``expected.json`` records.
"""

from __future__ import annotations

import collections
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd

import durable_nb
from durable_nb import history
from durable_nb import runtime as runtime_module
from durable_nb.store import DiskCacheStore

HERE = Path(__file__).resolve().parent
# Instances whose histories hold numpy arrays or DataFrames: no history file for them.
NOT_JSON = ("data_report", "data_pending")
# The completed instance with a handled failure: 0.1.0 reruns its failed call on every
# replay (failures are never replayed); a release where a completed instance is final
# runs nothing. Both are accepted.
MAY_RERUN = {"always_fails": [0, 1]}


def load_workload() -> Any:
    spec = importlib.util.spec_from_file_location("golden_workload", HERE / "workload.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def count_effects(folder: Path) -> dict[str, int]:
    counts = collections.Counter(p.name.rsplit("-", 1)[0] for p in folder.iterdir())
    return dict(sorted(counts.items()))


def commit() -> str:
    package = Path(durable_nb.__file__).resolve().parent.parent
    found = subprocess.run(
        ["git", "-C", str(package), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
    )
    return found.stdout.strip() or "unknown"


def lossless_rows(events: list[history.Event]) -> list[list[Any]] | None:
    """The encoded events as JSON lists, or None if JSON would change any of them."""
    rows = []
    for event in events:
        try:
            row = json.loads(json.dumps(list(history.encode(event)), allow_nan=False))
        except (TypeError, ValueError):
            return None
        if history.decode(tuple(row)) != event:
            return None
        rows.append(row)
    return rows


def history_json(document: dict[str, Any], rows: list[list[Any]]) -> str:
    """The document with an ``events`` list of one encoded event per line."""
    head = json.dumps(document, indent=1)[:-2]
    events = ",\n".join("  " + json.dumps(row) for row in rows)
    return f'{head},\n "events": [\n{events}\n ]\n}}\n'


def main() -> None:
    version = durable_nb.__version__
    tag = f"v{version}-py{sys.version_info.major}.{sys.version_info.minor}"
    print(f"durable_nb {version} from {durable_nb.__file__} ({commit()}), Python {sys.version}")
    store_dir = HERE / "stores" / tag
    histories_dir = HERE / "histories"
    expected_path = HERE / "stores" / "expected.json"
    if store_dir.exists() or histories_dir.exists():
        sys.exit(f"remove {store_dir} and {histories_dir} first")
    workload = load_workload()

    with tempfile.TemporaryDirectory() as scratch:
        effects = Path(scratch) / "effects"
        effects.mkdir()
        workload.main(store_dir, effects)
        generated = count_effects(effects)
        runtime_module._reset_for_tests()

        store = DiskCacheStore(store_dir)
        records = {r.instance_id: r for r in store.list_instances()}
        labels = {workload.instance_id(label): label for label in workload.CASES}
        parent_id = workload.instance_id("parent")
        children = [iid for iid, r in records.items() if r.parent == parent_id]
        for iid in children:
            labels[iid] = f"parent.child{records[iid].input['base']}"
        assert set(labels) == set(records), (sorted(labels), sorted(records))
        histories = {label: store.read_history(iid) for iid, label in labels.items()}
        store.close()

        copy = Path(scratch) / "replayed"
        shutil.copytree(store_dir, copy)
        replay_effects = Path(scratch) / "replay_effects"
        replay_effects.mkdir()
        outputs = workload.replay(copy, replay_effects)
        replayed = count_effects(replay_effects)
        runtime_module._reset_for_tests()

    instances: dict[str, Any] = {}
    written_by = f"durable_nb {version} ({commit()}), Python {platform.python_version()}"
    histories_dir.mkdir()
    for iid, label in sorted(labels.items(), key=lambda item: item[1]):
        record = records[iid]
        case = workload.CASES.get(label)
        output = outputs[label] if case is not None else record.output
        if record.status == "completed":
            assert output == record.output, (label, output, record.output)
        rows = None if label in NOT_JSON else lossless_rows(histories[label])
        assert (rows is None) == (label in NOT_JSON), label
        entry = {
            "instance_id": iid,
            "orchestrator": record.orchestrator,
            "args": list(case[1]) if case is not None else None,
            "input": record.input,
            "status": record.status,
            "generation": record.generation,
            "output": output,
            "history": f"histories/{label}.json" if rows is not None else None,
        }
        instances[label] = entry
        if rows is not None:
            document = {
                "format": 1,
                "written_by": written_by,
                "label": label,
                "instance_id": iid,
                "orchestrator": record.orchestrator,
                "input": record.input,
                "status": record.status,
                "generation": record.generation,
                "output": record.output,
            }
            (histories_dir / f"{label}.json").write_text(history_json(document, rows))

    names = sorted({*generated, *replayed})
    replay_expected: dict[str, Any] = {name: replayed.get(name, 0) for name in names}
    replay_expected.update(MAY_RERUN)
    designed = {"step_three": 1, "publish": 1, "apply_decision": 2, "always_fails": 1}
    for name in names:
        assert replayed.get(name, 0) == designed.get(name, 0), (name, replayed)
    expected = {
        "format": 1,
        "written_by": {
            "durable_nb": version,
            "commit": commit(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "pandas": pd.__version__,
            "joblib": joblib.__version__,
        },
        "store": f"stores/{tag}",
        "instances": instances,
        "generation_executions": generated,
        "replay_executions": replay_expected,
    }
    expected_path.write_text(json.dumps(expected, indent=1, sort_keys=False) + "\n")
    size = sum(p.stat().st_size for p in store_dir.rglob("*") if p.is_file())
    print(f"store {store_dir}: {size / 2**20:.2f} MiB, files: {sorted(os.listdir(store_dir))}")
    print(json.dumps({"generated": generated, "replayed": replayed}, indent=1))


if __name__ == "__main__":
    main()
