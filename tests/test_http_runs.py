"""``POST /durable-nb/api/runs``: notebooks started over HTTP on a real ``jupyter
server``, run by real runner processes in real kernels, followed through the URLs the
reply gives, as a Durable Functions client follows them."""

from __future__ import annotations

import io
import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import test_http_api
from jupyter_server_harness import Server
from test_notebook_runs import write_notebook

from durable_nb import cli
from durable_nb.processes import process_exists

pytest.importorskip("jupyter_server")

RUNS = "/durable-nb/api/runs"
server = test_http_api.server  # the real jupyter server fixture, one for this module


def post_run(server: Server, body: Any, token: str | None = "") -> tuple[int, Any, dict[str, str]]:
    """The status, JSON body and headers of ``POST runs`` (``body`` as JSON unless bytes)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(server.url + RUNS, data=data, method="POST")
    if token is not None:
        request.add_header("Authorization", f"token {token or server.token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, json.loads(reply.read()), dict(reply.headers)
    except urllib.error.HTTPError as error:
        content = error.read()
        try:
            parsed = json.loads(content)
        except ValueError:
            parsed = content
        return error.code, parsed, dict(error.headers)


def poll(server: Server, url: str, seconds: float = 90) -> dict[str, Any]:
    """GET the status URL until the run ended (DF's 200; 202 while it runs)."""
    deadline = time.monotonic() + seconds
    while True:
        code, body = server.call("GET", url)
        if code == 200:
            return dict(body)
        assert code == 202, (code, body)
        assert time.monotonic() < deadline, f"still {body['runtimeStatus']}: {body}"
        time.sleep(0.3)


def _job(server: Server, folder: str) -> Path:
    """A notebook with parameters that writes a file and runs a durable orchestration."""
    return write_notebook(
        server.root / folder / "job.ipynb",
        "%load_ext durable_nb",
        "%%activity\ndef shout(text):\n    return text.upper()",
        "%%orchestrator\ndef greeting(ctx, city, n):\n"
        "    return (yield ctx.call_activity(shout, f'{city}:{n}'))",
        "open('effect.txt', 'w').write(await greeting(city, n))",
        parameters="n = 1\ncity = 'nowhere'",
    )


@pytest.mark.kernel
def test_a_run_started_over_http_completes_as_a_listed_instance(server: Server) -> None:
    notebook = _job(server, "job")
    body = {"notebook": "job/job.ipynb", "parameters": {"n": 3, "city": "Oslo"}}
    code, reply, headers = post_run(server, body)
    assert code == 202, reply
    run_id = reply["id"]
    base = f"{server.url}/durable-nb/api/stores/job%2F.durable_nb/instances/{run_id}"
    assert reply["statusQueryGetUri"] == base == headers["Location"]
    assert reply["sendEventPostUri"] == f"{base}/raiseEvent/{{eventName}}"
    assert reply["terminatePostUri"] == f"{base}/terminate?reason={{text}}"
    assert reply["purgeHistoryDeleteUri"] == base

    status = poll(server, reply["statusQueryGetUri"])
    assert status["runtimeStatus"] == "Completed", status
    assert status["name"] == "notebook" and status["instanceId"] == run_id
    assert status["input"] == {
        "notebook": str(notebook),
        "parameters": {"n": 3, "city": "Oslo"},
        "origin": "http",
    }
    assert (server.root / "job" / "effect.txt").read_text() == "OSLO:3"  # parameters arrived
    written = Path(status["output"]["output"])
    assert written == server.root / "job" / "job.runs" / f"{run_id}.ipynb" and written.is_file()
    assert status["output"]["cells"] == 6
    assert (server.root / "job" / "job.runs" / f"{run_id}.log").is_file()

    code, listed = server.api("GET", "stores/job%2F.durable_nb/instances")
    assert code == 200
    by_name = {item["name"]: item for item in listed}
    assert by_name["notebook"]["instanceId"] == run_id  # the notebook's orchestration too:
    assert by_name["greeting"]["runtimeStatus"] == "Completed"  # same store as the kernel's
    out = io.StringIO()
    assert cli.main(["list", "--store", str(server.root / "job" / ".durable_nb")], out=out) == 0
    assert run_id in out.getvalue() and "greeting" in out.getvalue()

    # Events go to the orchestration, not to the run; suspend does not apply to a kernel.
    event = reply["sendEventPostUri"].replace("{eventName}", "go")
    code, refused = server.call("POST", event, b"1")
    assert code == 409 and "notebook run, which takes no raiseEvent" in refused["message"]
    code, refused = server.call("POST", f"{base}/suspend", b"")
    assert code == 409 and "takes no suspend" in refused["message"]
    code, purged = server.call("DELETE", reply["purgeHistoryDeleteUri"])
    assert (code, purged) == (200, {"instancesDeleted": 1})
    assert server.call("GET", base)[0] == 404


@pytest.mark.kernel
def test_a_failing_notebook_is_a_failed_run_naming_the_cell(server: Server) -> None:
    write_notebook(server.root / "bad" / "bad.ipynb", "x = 1", "raise ValueError('no luck')")
    code, reply, _ = post_run(server, {"notebook": "bad/bad.ipynb", "store": "bad/runs-store"})
    assert code == 202, reply
    assert "bad%2Fruns-store" in reply["statusQueryGetUri"]
    status = poll(server, reply["statusQueryGetUri"])
    assert status["runtimeStatus"] == "Failed"
    assert status["output"] == "cell 2 failed: ValueError: no luck"  # DF: output says why
    assert (server.root / "bad" / "runs-store" / "cache.db").is_file()


@pytest.mark.kernel
def test_terminate_stops_the_kernel_and_records_terminated(server: Server) -> None:
    folder = server.root / "slow"
    write_notebook(
        folder / "slow.ipynb",
        "import os, time\nopen('kernel.pid', 'w').write(str(os.getpid()))",
        "time.sleep(120)",
        "open('after.txt', 'w').write('ran on')",
    )
    asked = time.monotonic()
    code, reply, _ = post_run(server, {"notebook": "slow/slow.ipynb"})
    assert code == 202, reply
    assert time.monotonic() - asked < 2  # answered at once, not after the notebook
    deadline = time.monotonic() + 60
    while not (folder / "kernel.pid").is_file() or not (folder / "kernel.pid").read_text():
        assert time.monotonic() < deadline, "the kernel did not start"
        time.sleep(0.2)
    kernel = int((folder / "kernel.pid").read_text())
    code, status = server.call("GET", reply["statusQueryGetUri"])
    assert (code, status["runtimeStatus"]) == (202, "Running")
    code, busy = server.call("DELETE", reply["purgeHistoryDeleteUri"])
    assert code == 409, busy  # a running run is not purged

    started = time.monotonic()
    terminate = reply["terminatePostUri"].replace("{text}", "enough")
    assert server.call("POST", terminate, b"")[0] == 202
    status = poll(server, reply["statusQueryGetUri"], seconds=30)
    assert status["runtimeStatus"] == "Terminated" and status["output"] == "terminated: enough"
    assert time.monotonic() - started < 15  # interrupted at once, not after the sleep
    deadline = time.monotonic() + 10
    while process_exists(kernel):
        assert time.monotonic() < deadline, "the kernel outlived its terminated run"
        time.sleep(0.1)
    assert not (folder / "after.txt").exists()


def test_a_run_needs_jupyters_credentials(server: Server) -> None:
    write_notebook(server.root / "auth" / "nb.ipynb", "open('ran', 'w')")
    code, _, _ = post_run(server, {"notebook": "auth/nb.ipynb"}, token=None)
    assert code == 403
    code, _, _ = post_run(server, {"notebook": "auth/nb.ipynb"}, token="wrong")
    assert code == 403
    assert sorted(p.name for p in (server.root / "auth").iterdir()) == ["nb.ipynb"]


def test_nothing_outside_the_root_is_ever_run(server: Server) -> None:
    outside = server.root.parent / "outside"
    effect = outside / "escaped.txt"
    write_notebook(outside / "evil.ipynb", f"open({str(effect)!r}, 'a').write('ran')")
    inside = server.root / "paths"
    write_notebook(inside / "fine.ipynb", "open('fine-ran', 'w')")
    (inside / "link.ipynb").symlink_to(outside / "evil.ipynb")
    (inside / "linked").symlink_to(outside, target_is_directory=True)
    (inside / ".hidden").mkdir()
    write_notebook(inside / ".hidden" / "nb.ipynb", "open('hidden-ran', 'w')")
    refused = {
        "../outside/evil.ipynb": 400,
        "paths/../../outside/evil.ipynb": 400,
        str(outside / "evil.ipynb"): 400,
        "paths/link.ipynb": 404,
        "paths/linked/evil.ipynb": 404,
        "paths/.hidden/nb.ipynb": 404,
    }
    for path, expected in refused.items():
        code, reply, _ = post_run(server, {"notebook": path})
        assert (code, path) == (expected, path), reply
        assert "server root" in reply["message"]
    for store in ("../outside/store", str(outside / "store"), "paths/linked"):
        code, reply, _ = post_run(server, {"notebook": "paths/fine.ipynb", "store": store})
        assert code in (400, 404), (store, reply)
    time.sleep(1.5)  # long enough for a runner that was started to have run its cell
    assert not effect.exists() and not (inside / "fine-ran").exists()
    assert sorted(p.name for p in outside.iterdir()) == ["evil.ipynb"]
    assert not (inside / ".durable_nb").exists() and not (inside / "fine.runs").exists()


def test_bad_bodies_are_refused_with_what_to_send(server: Server) -> None:
    folder = server.root / "bodies"
    write_notebook(folder / "nb.ipynb", "open('ran', 'w')")
    (folder / "notes.txt").write_text("not a notebook")
    (folder / "data").mkdir()
    (folder / "data" / "file.csv").write_text("a,b\n")
    nb = "bodies/nb.ipynb"
    cases: list[tuple[Any, int, str]] = [
        (b"{not json", 400, "must be JSON"),
        (b"", 400, "must be a JSON object"),
        ([nb], 400, "must be a JSON object"),
        ({}, 400, '"notebook" must be a path'),
        ({"notebook": 3}, 400, '"notebook" must be a path'),
        ({"notebook": nb, "params": {}}, 400, "unknown fields ['params']"),
        ({"notebook": nb, "parameters": [1]}, 400, "parameters must be an object"),
        ({"notebook": nb, "parameters": {"a b": 1, "for": 2}}, 400, "'a b', 'for'"),
        ({"notebook": nb, "timeout": -1}, 400, "positive number of seconds"),
        ({"notebook": nb, "timeout": "soon"}, 400, "positive number of seconds"),
        ({"notebook": nb, "store": 5}, 400, '"store" must be'),
        ({"notebook": nb, "store": "bodies/data"}, 400, "holds no store"),
        ({"notebook": "bodies/missing.ipynb"}, 404, "no notebook"),
        ({"notebook": "bodies/notes.txt"}, 404, "no notebook"),
        ({"notebook": "bodies"}, 404, "no notebook"),
    ]
    for body, expected, words in cases:
        code, reply, _ = post_run(server, body)
        assert code == expected and words in reply["message"], (body, code, reply)
    time.sleep(1)
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["data", "nb.ipynb", "notes.txt"]  # no store made, no run started
