"""durable-nb: store verbs in-process, `run` through the installed console script."""

from __future__ import annotations

import asyncio
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

import durable_nb as dn
from durable_nb.cli import main
from durable_nb.runtime import Runtime
from durable_nb.store import DiskCacheStore


def cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    try:
        code = main(list(argv), out=out)
    except SystemExit as exc:  # argparse: --help and usage errors
        code = int(exc.code or 0)
    return code, out.getvalue()


@pytest.fixture
def filled_store(rt: Runtime, store_dir: Path) -> str:
    @dn.activity
    def one(i: int) -> int:
        return i

    @dn.orchestrator
    def orch(ctx, n):  # type: ignore[no-untyped-def]
        return sum((yield ctx.task_all([ctx.call_activity(one, i) for i in range(n)])))

    orch.run(3)
    orch.run(4)
    rt.close()
    return str(store_dir)


@pytest.mark.parametrize("verb", ["run", "list", "show", "purge"])
def test_every_verb_has_help(verb: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = cli(verb, "--help")
    assert code == 0 and "usage: durable-nb " + verb in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [
        ["frobnicate"],
        ["run"],
        ["show"],
        ["list", "--bogus"],
        ["run", "x.ipynb", "--timeout", "soon"],
    ],
)
def test_bad_arguments_give_one_line_and_exit_2(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, _ = cli(*argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "error:" in err[0] and "--help" in err[0]


def test_list_show_purge(filled_store: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, listing = cli("list", "--store", filled_store)
    assert code == 0 and listing.count("completed") == 2 and "orch-" in listing
    iid = next(line.split()[0] for line in listing.splitlines() if line.startswith("orch-"))
    code, shown = cli("show", iid, "--store", filled_store)
    assert code == 0 and f"instance:      {iid}" in shown and "one" in shown
    code, _ = cli("show", "ghost", "--store", filled_store)
    assert code == 1 and "no instance 'ghost'" in capsys.readouterr().err
    code, text = cli("purge", iid, "--store", filled_store)
    assert code == 0 and "purged 1" in text
    code, _ = cli("purge", "--store", filled_store)
    assert code == 2
    code, text = cli("purge", "--all", "--store", filled_store)
    assert code == 0 and "purged 1" in text
    assert "no instances" in cli("list", "--store", filled_store)[1]


def test_raise_parses_the_value_as_json_unless_text(
    rt: Runtime, store_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    @dn.orchestrator
    def gate(ctx):  # type: ignore[no-untyped-def]
        a = yield ctx.wait_for_external_event("a")
        b = yield ctx.wait_for_external_event("b")
        return [a, b]

    async def start_and_stop() -> str:  # an instance that waits, with nothing running it
        h = gate.start()
        await asyncio.sleep(0.2)
        h.cancel()
        return h.instance_id

    iid = asyncio.run(start_and_stop())
    code, text = cli("raise", iid, "a", "9361", "--text", "--store", str(store_dir))
    assert code == 0 and "raised 'a' = '9361'" in text, text
    code, text = cli("raise", iid, "b", "9361", "--store", str(store_dir))
    assert code == 0 and "raised 'b' = 9361" in text, text
    assert gate.run() == ["9361", 9361]
    code, _ = cli("raise", "--help")
    helped = " ".join(capsys.readouterr().out.split())
    assert code == 0 and "parsed as JSON first" in helped and "--text sends it as text" in helped


def test_missing_store_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = cli("list", "--store", str(tmp_path / "nowhere"))
    assert code == 1 and "no checkpoint store" in capsys.readouterr().err


def _notebook(path: Path, fail: bool) -> None:
    cells = [
        new_code_cell("%load_ext durable_nb"),
        new_code_cell(
            "%%activity\ndef mark(i):\n    with open('effects.log', 'a') as f:\n"
            "        f.write(f'{i}\\n')\n    return i"
        ),
        new_code_cell(
            "%%orchestrator\ndef orch(ctx, n):\n"
            "    xs = yield ctx.task_all([ctx.call_activity(mark, i) for i in range(n)])\n"
            "    return sum(xs)"
        ),
        new_code_cell("total = await orch(12)\nprint('total', total)"),
    ]
    if fail:
        cells.append(new_code_cell("raise ValueError('the fourth cell broke')"))
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(nb, str(path))


@pytest.mark.kernel
def test_run_twice_resumes_and_writes_the_notebook(tmp_path: Path) -> None:
    path = tmp_path / "nb.ipynb"
    _notebook(path, fail=False)
    store = tmp_path / "store"
    command = [
        "durable-nb",
        "run",
        str(path),
        "--store",
        str(store),
        "-o",
        str(tmp_path / "out.ipynb"),
    ]
    env = {k: v for k, v in os.environ.items() if k != "DURABLE_NB_STORE"}
    first = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "[4/4] total = await orch(12)" in first.stdout
    assert "12 ran" in first.stdout and "total 66" in first.stdout
    second = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert second.returncode == 0 and "12 cached" in second.stdout
    assert len((tmp_path / "effects.log").read_text().splitlines()) == 12  # ran once in all
    written = nbformat.read(str(tmp_path / "out.ipynb"), as_version=4)
    assert "total 66" in written.cells[3].outputs[-1]["text"]


@pytest.mark.kernel
def test_run_names_the_failing_cell_and_exits_1(tmp_path: Path) -> None:
    path = tmp_path / "nb.ipynb"
    _notebook(path, fail=True)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "durable_nb.cli",
            "run",
            str(path),
            "--store",
            str(tmp_path / "s"),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "cell 5 failed" in result.stdout and "ValueError: the fourth cell broke" in result.stdout
    written = nbformat.read(str(tmp_path / "nb.out.ipynb"), as_version=4)
    assert written.cells[4].outputs[0]["ename"] == "ValueError"  # the partial notebook was written


@pytest.mark.kernel
def test_run_leaves_the_notebook_untouched_unless_inplace(tmp_path: Path) -> None:
    path = tmp_path / "nb.ipynb"
    _notebook(path, fail=False)
    before = path.read_bytes()
    base = ["durable-nb", "run", str(path), "--store", str(tmp_path / "store"), "--quiet"]
    env = {k: v for k, v in os.environ.items() if k != "DURABLE_NB_STORE"}
    result = subprocess.run(base, capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert path.read_bytes() == before, "the source notebook was rewritten"
    assert f"wrote {tmp_path / 'nb.out.ipynb'}" in result.stdout
    written = nbformat.read(str(tmp_path / "nb.out.ipynb"), as_version=4)
    assert "total 66" in written.cells[3].outputs[-1]["text"]

    result = subprocess.run([*base, "--inplace"], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    rewritten = nbformat.read(str(path), as_version=4)
    assert "total 66" in rewritten.cells[3].outputs[-1]["text"]
    # Written over a tracked file: nothing that changes on every run but the outputs.
    assert "widgets" not in rewritten.metadata
    assert all("execution" not in cell.metadata for cell in rewritten.cells)

    code, _ = cli("run", str(path), "--inplace", "--output", str(tmp_path / "x.ipynb"))
    assert code == 2


@pytest.mark.kernel
def test_saved_notebook_shows_the_final_summary_without_widgets(tmp_path: Path) -> None:
    from durable_nb.notebook_runner import run_notebook

    path = tmp_path / "nb.ipynb"
    _notebook(path, fail=False)
    env = dict(os.environ, DURABLE_NB_STORE=str(tmp_path / "store"))
    outcome = run_notebook(
        path, output=tmp_path / "out.ipynb", timeout=120, env=env, out=io.StringIO()
    )
    assert outcome.failed_cell is None, outcome.error
    outputs = nbformat.read(str(tmp_path / "out.ipynb"), as_version=4).cells[3].outputs
    static = [o for o in outputs if "text/html" in o.get("data", {})]
    assert len(static) == 1, outputs
    html, text = static[0]["data"]["text/html"], static[0]["data"]["text/plain"]
    assert "<table>" in html and "<code>mark</code>" in html and "12/12" in html
    assert "completed" in html and "orch-" in html
    assert text.splitlines() == [
        text.splitlines()[0],
        "  mark: 12/12 (12 ran)",
    ]
    assert text.startswith("orch [orch-") and text.splitlines()[0].endswith(
        "] completed: 12/12 calls done (12 ran)"
    )
    assert not re.search(r"\d s\b", text + html), "durations would break nbval"
    # The live widget's own output keeps its fixed text.
    (widget,) = [o for o in outputs if "text/html" not in o.get("data", {}) and "data" in o]
    assert widget["data"]["text/plain"].startswith("<durable_nb progress: orch [orch-")


@pytest.mark.kernel
def test_a_run_started_in_one_cell_shows_its_summary_where_it_is_awaited(
    tmp_path: Path,
) -> None:
    """``h = orch.start()`` then ``await h`` in a later cell: the cell that showed the
    widget is over when the run ends, so the summary comes with the awaiting cell."""
    from durable_nb.notebook_runner import run_notebook

    path = tmp_path / "nb.ipynb"
    _notebook(path, fail=False)
    nb = nbformat.read(str(path), as_version=4)
    nb.cells[3] = new_code_cell("import time\nh = orch.start(12)\ntime.sleep(0.2)")
    nb.cells.append(new_code_cell("total = await h\nprint('total', total)"))
    nbformat.write(nb, str(path))
    env = dict(os.environ, DURABLE_NB_STORE=str(tmp_path / "store"))
    outcome = run_notebook(
        path, output=tmp_path / "out.ipynb", timeout=120, env=env, out=io.StringIO()
    )
    assert outcome.failed_cell is None, outcome.error
    cells = nbformat.read(str(tmp_path / "out.ipynb"), as_version=4).cells
    started = [o for o in cells[3].outputs if "text/html" in o.get("data", {})]
    awaited = [o for o in cells[4].outputs if "text/html" in o.get("data", {})]
    assert started == [] and len(awaited) == 1, (cells[3].outputs, cells[4].outputs)
    assert "12/12" in awaited[0]["data"]["text/html"]
    assert awaited[0]["data"]["text/plain"].splitlines()[1] == "  mark: 12/12 (12 ran)"


def test_store_folder_is_created_by_the_run_not_by_list(tmp_path: Path) -> None:
    DiskCacheStore(tmp_path / "made").close()
    code, text = cli("list", "--store", str(tmp_path / "made"))
    assert code == 0 and "no instances" in text


def _parameterized(path: Path) -> None:
    nb = nbformat.v4.new_notebook()
    tagged = new_code_cell("n = 1\ncity = 'nowhere'")
    tagged.metadata["tags"] = ["parameters"]
    nb.cells = [
        new_code_cell("import durable_nb as dn"),
        tagged,
        new_code_cell("print(f'{city}: {n * 10}')"),
    ]
    kernelspec = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["kernelspec"] = kernelspec
    nbformat.write(nb, str(path))


@pytest.mark.kernel
def test_run_injects_parameters_after_the_tagged_cell(tmp_path: Path) -> None:
    """papermill's convention: a cell after the one tagged `parameters` sets them."""
    path = tmp_path / "nb.ipynb"
    _parameterized(path)
    out = tmp_path / "out.ipynb"
    command = [sys.executable, "-m", "durable_nb.cli", "run", str(path), "-o", str(out)]
    env = {**os.environ, "DURABLE_NB_STORE": str(tmp_path / "store")}
    given = [*command, "--parameters", '{"n": 2, "city": "Oslo"}', "-p", "n", "4"]
    result = subprocess.run(given, capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    written = nbformat.read(str(out), as_version=4)
    injected = written.cells[2]
    assert injected.metadata["tags"] == ["injected-parameters"]
    assert "n = 4\n" in injected.source and "city = 'Oslo'\n" in injected.source  # -p wins
    assert written.cells[3].outputs[0]["text"] == "Oslo: 40\n"
    assert nbformat.read(str(path), as_version=4).cells[2].source.startswith("print")  # untouched
    bad = subprocess.run([*command, "-p", "not a name", "1"], capture_output=True, text=True)
    assert bad.returncode == 2 and "parameter names must be Python names" in bad.stderr
    bad = subprocess.run([*command, "--parameters", "[1]"], capture_output=True, text=True)
    assert bad.returncode == 2 and "must be a JSON object" in bad.stderr
