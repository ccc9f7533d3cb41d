"""Write one golden fixture set with the durable_nb that is imported (an older release
or commit, put first on PYTHONPATH from a worktree of its own):

    git -C /work/main worktree add --detach /tmp/nb020 0247524
    cd /work/main && PYTHONPATH=/tmp/nb020 python tests/golden/generate.py [--tag TAG]

The set is named by its tag, by default ``format<F>-keys<K>-<commit>-py<major>.<minor>``
(the store format and key scheme of the writing code, its commit, the Python), e.g.
``format2-keys2-0247524-py3.11``; ``--tag v0.2.0-py3.11`` names a release's. It writes

* ``stores/<tag>/``: the store ``workload.main`` wrote,
* ``stores/<tag>.expected.json``: instances, outputs, executions,
* ``histories/<tag>/<label>.json``: the encoded history of each instance whose values
  are JSON data,

and touches no other set. It then checks its own fixtures: a copy of the store is
replayed by the same code, and the outputs and executions of that replay are what
``expected.json`` records.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import importlib.util
import json
import os
import platform
import shutil
import sqlite3
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
from durable_nb import store as store_module
from durable_nb.store import DiskCacheStore

HERE = Path(__file__).resolve().parent
# Instances whose histories hold numpy arrays or DataFrames: no history file for them.
NOT_JSON = ("data_report", "data_pending")
# The completed instance with a handled failure: 0.1.0 reruns its failed call on every
# replay (failures are never replayed); a release where a completed instance is final
# runs nothing. Both are accepted; a release that reruns it is recorded as [0, 1].
MAY_RERUN = {"always_fails": [0, 1]}
# What a replay of the store runs: the unfinished work once each, and always_fails as
# MAY_RERUN allows.
DESIGNED = {"step_three": [1], "publish": [1], "apply_decision": [2], **MAY_RERUN}


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


def code_versions() -> tuple[int, int]:
    """The store format and key scheme of the imported durable_nb (0.1.0 kept its format
    in store.py and had one key scheme)."""
    try:
        from durable_nb.store_versions import FORMAT_VERSION as store_format
    except ImportError:
        store_format = store_module.FORMAT_VERSION  # type: ignore[attr-defined]
    try:
        from durable_nb.fingerprint import KEY_SCHEME as key_scheme
    except ImportError:
        key_scheme = 1
    return int(store_format), int(key_scheme)


def store_versions(folder: Path) -> tuple[int, list[int]]:
    """The format and key schemes a store folder records, read as raw diskcache settings
    (no key_schemes setting: release 0.1.0, scheme 1)."""
    with contextlib.closing(sqlite3.connect(f"file:{folder / 'cache.db'}?mode=ro", uri=True)) as db:
        rows = dict(
            db.execute(
                "SELECT key, value FROM Cache WHERE key IN ('format', 'key_schemes') AND raw = 1"
            ).fetchall()
        )
    schemes = str(rows.get("key_schemes") or "1")
    return int(rows["format"]), [int(s) for s in schemes.split(",")]


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tag", help="the fixture set's name (default: format, keys, commit)")
    options = parser.parse_args(argv)
    version = durable_nb.__version__
    store_format, key_scheme = code_versions()
    python = f"py{sys.version_info.major}.{sys.version_info.minor}"
    tag = options.tag or f"format{store_format}-keys{key_scheme}-{commit()}-{python}"
    print(f"durable_nb {version} from {durable_nb.__file__} ({commit()}), Python {sys.version}")
    print(f"store format {store_format}, key scheme {key_scheme}: fixture set {tag}")
    store_dir = HERE / "stores" / tag
    histories_dir = HERE / "histories" / tag
    expected_path = HERE / "stores" / f"{tag}.expected.json"
    existing = [p for p in (store_dir, histories_dir, expected_path) if p.exists()]
    if existing:
        sys.exit(f"the fixture set {tag} exists; remove {', '.join(map(str, existing))} first")
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
        # Read from the copy: even a read-only sqlite connection leaves -wal and -shm.
        found_versions = store_versions(copy)
        replay_effects = Path(scratch) / "replay_effects"
        replay_effects.mkdir()
        outputs = workload.replay(copy, replay_effects)
        replayed = count_effects(replay_effects)
        runtime_module._reset_for_tests()

    instances: dict[str, Any] = {}
    written_by = f"durable_nb {version} ({commit()}), Python {platform.python_version()}"
    histories_dir.mkdir(parents=True)
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
            "history": f"histories/{tag}/{label}.json" if rows is not None else None,
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
    for name in names:
        assert replayed.get(name, 0) in DESIGNED.get(name, [0]), (name, replayed)
        if name in MAY_RERUN and replayed.get(name, 0):
            replay_expected[name] = MAY_RERUN[name]
    assert found_versions == (store_format, [key_scheme]), (
        f"the store says format {found_versions[0]}, key schemes {found_versions[1]}"
    )
    expected = {
        "format": 2,
        "tag": tag,
        "written_by": {
            "durable_nb": version,
            "commit": commit(),
            "store_format": store_format,
            "key_scheme": key_scheme,
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
    assert not list(store_dir.glob("cache.db-*")), "the store was not closed cleanly"
    print(json.dumps({"generated": generated, "replayed": replayed}, indent=1))


if __name__ == "__main__":
    main()
