"""Notebook runs recorded as instances (durable_nb.notebook_runs), without a server:
real runner processes, real stores, a real kernel where the notebook must run."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from durable_nb import cli, management, notebook_runs
from durable_nb.errors import ConfigurationError, InstanceBusyError, InstanceConflictError
from durable_nb.history import Status
from durable_nb.notebook_runs import NOTEBOOK_RUN, is_finished, start_run
from durable_nb.processes import process_exists, this_process
from durable_nb.store import DiskCacheStore, InstanceRecord
from durable_nb.store_folder import STORE_ENV

ROOT = Path(__file__).resolve().parent.parent


def write_notebook(path: Path, *cells: str, parameters: str | None = None) -> Path:
    """A notebook of code cells; ``parameters``: a first cell tagged as papermill's."""
    nb = new_notebook(cells=[new_code_cell(source) for source in cells])
    if parameters is not None:
        tagged = new_code_cell(parameters)
        tagged.metadata["tags"] = ["parameters"]
        nb.cells.insert(0, tagged)
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))
    return path


def wait_finished(store: Path, instance_id: str, seconds: float = 90) -> InstanceRecord:
    deadline = time.monotonic() + seconds
    while not is_finished(store, instance_id):
        assert time.monotonic() < deadline, f"run {instance_id} did not end"
        time.sleep(0.2)
    opened = DiskCacheStore(store)
    try:
        record = opened.get_instance(instance_id)
        assert record is not None
        return record
    finally:
        opened.close()


@pytest.fixture(autouse=True)
def _runner_finds_this_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    """The runner is ``python -m durable_nb.cli``: it imports this checkout."""
    path = os.environ.get("PYTHONPATH", "")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), path]))
    monkeypatch.delenv(STORE_ENV, raising=False)


def test_the_default_store_is_the_one_the_notebooks_kernel_uses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    notebook = tmp_path / "work" / "nb.ipynb"
    assert notebook_runs.default_store(notebook) == tmp_path / "work" / ".durable_nb"
    monkeypatch.setenv(STORE_ENV, "stores/mine")  # a kernel starts in the notebook's folder
    assert notebook_runs.default_store(notebook) == tmp_path / "work" / "stores" / "mine"
    monkeypatch.setenv(STORE_ENV, str(tmp_path / "elsewhere"))
    assert notebook_runs.default_store(notebook) == tmp_path / "elsewhere"
    output, log = notebook_runs.run_files(notebook, "../a/b:c")
    assert output == tmp_path / "work" / "nb.runs" / "_a_b_c.ipynb"
    assert log == tmp_path / "work" / "nb.runs" / "_a_b_c.log"


def test_start_run_checks_everything_before_it_writes_or_starts(tmp_path: Path) -> None:
    notebook = write_notebook(tmp_path / "nb.ipynb", "open('ran', 'w')")
    store = tmp_path / "store"
    with pytest.raises(ConfigurationError, match="Python names: 'not a name', 'class'"):
        start_run(notebook, store=store, parameters={"not a name": 1, "class": 2, "ok": 3})
    with pytest.raises(ConfigurationError, match="positive number of seconds"):
        start_run(notebook, store=store, timeout=0)
    with pytest.raises(ConfigurationError, match="must be JSON data"):
        start_run(notebook, store=store, parameters={"when": object()})
    with pytest.raises(ConfigurationError, match="instance_id must be a non-empty string"):
        start_run(notebook, store=store, instance_id="")
    with pytest.raises(ConfigurationError, match="no notebook at"):
        start_run(tmp_path / "missing.ipynb", store=store)
    assert not store.exists() and not (tmp_path / "nb.runs").exists()
    assert not (tmp_path / "ran").exists()


def test_a_run_terminated_before_its_runner_starts_never_starts_a_kernel(tmp_path: Path) -> None:
    notebook = write_notebook(tmp_path / "nb.ipynb", "open('ran', 'w').write('x')")
    store = tmp_path / "store"
    run_id = start_run(notebook, store=store, origin="test", instance_id="early")
    assert run_id == "early"
    opened = DiskCacheStore(store)
    try:
        record = opened.get_instance(run_id)
        assert record is not None and record.orchestrator == NOTEBOOK_RUN
        assert record.input == {"notebook": str(notebook), "parameters": {}, "origin": "test"}
        # The launcher took the lease in the runner's name: it counts as running.
        assert not is_finished(opened, run_id)
        assert management.purge(opened, [run_id]) == ([], ["early (running)"])
        assert "asked the running" in management.request(opened, run_id, "terminate", "no")
        with pytest.raises(InstanceBusyError, match="still pending"):
            start_run(notebook, store=store, instance_id=run_id)
    finally:
        opened.close()
    record = wait_finished(store, run_id)
    assert (record.status, record.error) == ("terminated", "terminated: no")
    assert not (tmp_path / "ran").exists()
    log = (tmp_path / "nb.runs" / "early.log").read_text()
    assert "early was terminated before it started" in log
    assert not (tmp_path / "nb.runs" / "early.ipynb").exists()


def test_a_runner_that_was_killed_counts_as_finished(tmp_path: Path) -> None:
    """A record left ``pending`` or ``running`` is finished once the pid its lease names
    is gone: a runner SIGKILLed as it starts, then a lease of a process that exited."""
    notebook = write_notebook(tmp_path / "nb.ipynb", "open('ran', 'w')")
    run_id = start_run(notebook, store=tmp_path / "store")
    store = DiskCacheStore(tmp_path / "store")
    try:
        lease = store.get_lease(run_id)
        assert lease is not None and lease["owner"].startswith("launch:")
        os.kill(lease["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 10
        while process_exists(lease["pid"]):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        record = store.get_instance(run_id)
        assert record is not None and record.status in ("pending", "running")
        assert is_finished(store, run_id)
        assert management.purge(store, [run_id]) == ([run_id], [])
        assert not (tmp_path / "ran").exists()

        store.put_instance(InstanceRecord("killed", NOTEBOOK_RUN, status=Status.RUNNING.value))
        now = time.time()
        alive = {"owner": "me", **this_process(), "since": now, "heartbeat": now}
        store.swap_lease("killed", None, alive)
        assert not is_finished(store, "killed")
        dead = subprocess.run(
            [sys.executable, "-c", "import os; print(os.getpid())"],
            capture_output=True,
            text=True,
            check=True,
        )
        gone = {**alive, "owner": "gone", "pid": int(dead.stdout)}
        assert store.swap_lease("killed", "me", gone)
        assert is_finished(store, "killed")
        assert is_finished(store, "never-there")
        assert management.purge(store, ["killed"]) == (["killed"], [])
        # An orchestration's id is not taken over by a run.
        store.put_instance(InstanceRecord("taken", "orch", status=Status.COMPLETED.value))
        notebook = write_notebook(tmp_path / "nb.ipynb", "1")
        with pytest.raises(InstanceConflictError, match="belongs to orchestrator 'orch'"):
            start_run(notebook, store=tmp_path / "store", instance_id="taken")
    finally:
        store.close()


@pytest.mark.kernel
def test_durable_nb_run_as_instance_runs_a_run_again_by_hand(tmp_path: Path) -> None:
    """A run terminated before it started, run again by hand with other parameters: the
    terminate an earlier run obeyed is not obeyed again, the record says what ran, and
    the notebook's orchestration lands in the same store."""
    notebook = write_notebook(
        tmp_path / "nb.ipynb",
        "%load_ext durable_nb",
        "%%activity\ndef twice(x):\n    return 2 * x",
        "%%orchestrator\ndef doubling(ctx, n):\n    return (yield ctx.call_activity(twice, n))",
        "open('effect.txt', 'w').write(str(await doubling(n)))",
        parameters="n = 1",
    )
    store = tmp_path / "store"
    start_run(notebook, store=store, parameters={"n": 2}, origin="test", instance_id="again")
    opened = DiskCacheStore(store)
    try:
        management.request(opened, "again", "terminate", "not now")
    finally:
        opened.close()
    assert wait_finished(store, "again").status == "terminated"
    assert not (tmp_path / "effect.txt").exists()

    command = [sys.executable, "-m", "durable_nb.cli", "run", str(notebook), "--quiet"]
    command += ["--store", str(store), "--as-instance", "again", "-p", "n", "21"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "effect.txt").read_text() == "42"
    opened = DiskCacheStore(store)
    try:
        record = opened.get_instance("again")
        # Two runs: the launched runner's (stopped before its first cell) and this one.
        assert record is not None and record.status == "completed" and record.runs == 2
        given = {"notebook": str(notebook), "parameters": {"n": 21}, "origin": "test"}
        assert record.input == given
        assert record.output == {"output": str(tmp_path / "nb.out.ipynb"), "cells": 6}
        assert opened.get_lease("again") is None
        names = sorted(r.orchestrator for r in opened.list_instances())
        assert names == ["doubling", NOTEBOOK_RUN]  # the notebook's own, in the same store
    finally:
        opened.close()
    out = io.StringIO()
    assert cli.main(["list", "--store", str(store)], out=out) == 0
    assert "again" in out.getvalue() and NOTEBOOK_RUN in out.getvalue()
