"""``durable-nb schedule``: add, list, remove in-process; the foreground loop as a real
process stopped by signals; and, in real kernels, scheduled runs of a notebook that
leaves one file per run (counted), from ``schedule run --once`` and from a Jupyter
server with the extension enabled."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import nbformat
import pytest
from jupyter_server_harness import jupyter_server
from nbformat.v4 import new_code_cell, new_notebook
from test_cli import cli

from durable_nb.schedules import ScheduleBook

ROOT = Path(__file__).resolve().parent.parent


def add_every(notebook: Path, every: str, name: str, store: str | Path, *more: str) -> int:
    """The exit code of ``schedule add NOTEBOOK --every EVERY --name NAME MORE --store``."""
    argv = [str(notebook), "--every", every, "--name", name, *more, "--store", str(store)]
    return cli("schedule", "add", *argv)[0]


def effect_notebook(path: Path) -> Path:
    """A notebook whose run writes one new file into the folder ``out`` (a parameter),
    after ``pause`` seconds."""
    parameters = new_code_cell("out = 'effects'\npause = 0.0")
    parameters.metadata["tags"] = ["parameters"]
    work = new_code_cell(
        "import pathlib, time, uuid\n"
        "time.sleep(pause)\n"
        "pathlib.Path(out, uuid.uuid4().hex).write_text('ran')"
    )
    notebook = new_notebook(cells=[parameters, work])
    notebook.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(notebook, str(path))
    return path


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    effect_notebook(tmp_path / "report.ipynb")
    (tmp_path / "effects").mkdir()
    return tmp_path


# ------------------------------------------------------------------ add, list, remove


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["missing.ipynb", "--every", "1h"], "no notebook at missing.ipynb"),
        (["report.ipynb", "--cron", "61 * * * *"], "is not a cron expression"),
        (["report.ipynb", "--every", "0s"], "--every must be longer than zero"),
        (["report.ipynb", "--every", "soon"], "--every takes a duration such as 30s"),
        (["report.ipynb", "--every", "1h", "--cron", "0 * * * *"], "not allowed with"),
        (["report.ipynb"], "one of the arguments --every --cron is required"),
        (["report.ipynb", "--every", "1h", "-p", "not a name", "1"], "must be Python names"),
    ],
)
def test_add_refuses_what_it_cannot_schedule(
    project: Path,
    argv: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(project)
    code, _ = cli("schedule", "add", *argv, "--store", "store")
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (project / "store").exists() or ScheduleBook(project / "store").list() == []


def test_add_list_remove(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = str(project / ".durable_nb")
    notebook = str(project / "report.ipynb")
    code, out = cli("schedule", "add", notebook, "--every", "1h30m", "--store", store)
    assert code == 0
    match = re.fullmatch(
        r"(report-[0-9a-f]{6}): next run (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC)\n", out
    )
    assert match, out
    generated = match.group(1)
    code, out = cli(
        "schedule",
        "add",
        notebook,
        "--cron",
        "0 6 * * 1",
        "--name",
        "weekly",
        "-p",
        "pause",
        "2",
        "--parameters",
        '{"out": "elsewhere", "pause": 1}',
        "--store",
        store,
    )
    assert code == 0 and out.startswith("weekly: next run ") and " 06:00:00 UTC" in out
    weekly = ScheduleBook(Path(store)).get("weekly")
    assert weekly is not None and weekly.parameters == {"out": "elsewhere", "pause": 2}
    assert weekly.notebook == "report.ipynb"  # beside the store: kept relative
    code, _ = cli(
        "schedule", "add", notebook, "--every", "1h", "--name", "weekly", "--store", store
    )
    assert code == 2 and "already has a schedule named 'weekly'" in capsys.readouterr().err

    code, table = cli("schedule", "list", "--store", store)
    assert code == 0
    lines = table.splitlines()
    assert lines[0].split() == [
        "ID",
        "NOTEBOOK",
        "EVERY/CRON",
        "NEXT",
        "RUN",
        "LAST",
        "RUN",
        "STATUS",
    ]
    rows = {line.split()[0]: line for line in lines[2:]}
    assert set(rows) == {generated, "weekly"}
    assert "1h30m" in rows[generated] and "cron 0 6 * * 1" in rows["weekly"]
    assert rows["weekly"].split()[1] == "report.ipynb"

    assert cli("schedule", "remove", "weekly", "--store", store) == (0, "removed schedule weekly\n")
    code, out = cli("schedule", "remove", "weekly", "--store", store)
    assert code == 1 and "no schedule 'weekly'" in out
    assert cli("schedule", "remove", generated, "--store", store)[0] == 0
    assert cli("schedule", "list", "--store", store)[1].startswith("no schedules in the store")


def test_list_and_run_refuse_a_folder_without_a_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for action in ("list", "run"):
        code, _ = cli("schedule", action, "--store", str(tmp_path / "none"))
        assert code == 1 and "no checkpoint store at" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()


def test_run_once_with_nothing_due_says_so(project: Path) -> None:
    store = str(project / ".durable_nb")
    cli("schedule", "add", str(project / "report.ipynb"), "--every", "1h", "--store", store)
    assert cli("schedule", "run", "--once", "--store", store) == (0, "nothing due\n")
    assert list((project / "effects").iterdir()) == []


def test_a_run_that_cannot_start_is_told_and_listed(project: Path) -> None:
    store = str(project / ".durable_nb")
    add_every(project / "report.ipynb", "1s", "gone", store)
    (project / "report.ipynb").rename(project / "renamed.ipynb")
    time.sleep(1.1)
    code, out = cli("schedule", "run", "--once", "--store", store)
    assert code == 1 and "gone: failed no notebook at" in out and "moved or renamed" in out
    row = last_status(store, "gone")
    assert "failed to start: no notebook at" in row and str(project / "report.ipynb") in row


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_the_foreground_loop_stops_cleanly_on_a_signal(project: Path, signum: int) -> None:
    store = str(project / ".durable_nb")
    cli("schedule", "add", str(project / "report.ipynb"), "--every", "1h", "--store", store)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    loop = subprocess.Popen(
        [sys.executable, "-m", "durable_nb.cli", "schedule", "run", "--store", store],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert loop.stdout is not None
    assert "running the schedules of" in loop.stdout.readline()
    time.sleep(0.3)  # into its wait for the next tick (an hour away)
    loop.send_signal(signum)
    out, err = loop.communicate(timeout=10)
    assert loop.returncode == 0, err
    assert "scheduler stopped" in out and "Traceback" not in err


# ------------------------------------------------------------------ real runs


def files(folder: Path) -> int:
    return len(list(folder.iterdir()))


def last_status(store: str, name: str) -> str:
    table = cli("schedule", "list", "--store", store)[1]
    [row] = [line for line in table.splitlines() if line.startswith(name + " ")]
    return row


@pytest.mark.kernel
def test_run_once_runs_a_due_notebook_and_skips_a_tick_while_it_runs(project: Path) -> None:
    store = str(project / ".durable_nb")
    effects = str(project / "effects")
    added = add_every(
        project / "report.ipynb", "1s", "often", store, "-p", "out", effects, "-p", "pause", "3"
    )
    assert added == 0
    time.sleep(1.1)
    code, out = cli("schedule", "run", "--once", "--store", store)
    assert code == 0 and re.search(r"often: started report-\S+", out), out
    assert re.search(r"(pending|running) \(report-", last_status(store, "often"))
    time.sleep(1.1)  # the next tick, while the first run still sleeps in its kernel
    code, out = cli("schedule", "run", "--once", "--store", store)
    assert code == 0 and "often: skipped (its last run is still going)" in out
    assert "1 tick(s) skipped" in last_status(store, "often")
    wait_for(lambda: files(project / "effects") == 1, 90, "the first run's file")
    wait_for(lambda: "completed (report-" in last_status(store, "often"), 30, "the run to end")
    code, out = cli("schedule", "run", "--once", "--store", store)
    assert code == 0 and "often: started" in out
    wait_for(lambda: files(project / "effects") == 2, 90, "the second run's file")
    wait_for(lambda: "completed (report-" in last_status(store, "often"), 30, "the run to end")
    assert files(project / "effects") == 2  # one file per run, no more
    # Every run is an instance of the store, listed as any other.
    listed = cli("list", "--store", store)[1]
    assert listed.count("notebook") >= 2, listed


@pytest.mark.kernel
def test_a_jupyter_server_runs_a_due_schedule(tmp_path: Path) -> None:
    root = tmp_path / "root"
    project = root / "team" / "daily"
    project.mkdir(parents=True)
    effect_notebook(project / "report.ipynb")
    effects = tmp_path / "effects"
    effects.mkdir()
    store = project / ".durable_nb"
    code = add_every(project / "report.ipynb", "2s", "daily", store, "-p", "out", str(effects))
    assert code == 0
    with jupyter_server(tmp_path, root, env={"DURABLE_NB_SCHEDULE_INTERVAL": "0.5"}) as server:
        log = server.log
        started = time.monotonic()
        wait_for(lambda: files(effects) >= 1, 90, f"a scheduled run:\n{log.read_text()}")
        print(f"first scheduled run's file after {time.monotonic() - started:.1f} s")
        schedule = ScheduleBook(store).get("daily")
        assert schedule is not None and schedule.state["instance"].startswith("report-")
        assert "durable_nb: running schedules every 0.5 s" in log.read_text()
    # The server stopped by SIGTERM, Jupyter's own clean shutdown, which stops the schedules.
    assert "durable_nb: stopped running schedules" in log.read_text()
    # Nothing runs the schedule once the server is gone: its record stops moving.
    done = ScheduleBook(store).get("daily")
    time.sleep(2.5)
    assert ScheduleBook(store).get("daily") == done
