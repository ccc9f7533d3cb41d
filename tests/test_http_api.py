"""The HTTP management API: a real ``jupyter server`` with the extension enabled by the
config file the package ships, stores filled by real runs in this process, and requests
made with urllib as any client would."""

from __future__ import annotations

import asyncio
import http.cookiejar
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jupyter_server_harness import Server, jupyter_server

import durable_nb as dn
from durable_nb import runtime as runtime_module
from durable_nb import server_urls
from durable_nb.runtime import Runtime
from durable_nb.store import DiskCacheStore

pytest.importorskip("jupyter_server")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with jupyter_server(tmp_path_factory.mktemp("jupyter")) as served:
        yield served


@pytest.fixture
def store_in(server: Server, request: pytest.FixtureRequest) -> Iterator[str]:
    """A store under the server's root, this process's runtime on it; its URL path."""
    rel = f"{request.node.name}/.durable_nb"
    runtime_module._reset_for_tests(
        lambda: Runtime(store=DiskCacheStore(server.root / rel), progress="none")
    )
    yield urllib.parse.quote(rel, safe="")
    runtime_module.get_runtime().close()
    runtime_module._reset_for_tests()


@dn.orchestrator
def double(ctx, x):  # type: ignore[no-untyped-def]
    ctx.set_custom_status({"step": "doubling"})
    return x * 2
    yield  # an orchestrator is a generator


@dn.orchestrator
def broken(ctx):  # type: ignore[no-untyped-def]
    raise KeyError("no such thing")
    yield


@dn.orchestrator
def gate(ctx):  # type: ignore[no-untyped-def]
    approval = yield ctx.wait_for_external_event("approval")
    return approval


def _waiting(instance_id: str) -> None:
    """An instance left waiting for its event, with nothing running it (interrupted)."""

    async def start_and_stop() -> None:
        handle = gate.start(instance_id=instance_id)
        await asyncio.sleep(0.3)
        handle.cancel()
        await asyncio.sleep(0.05)

    asyncio.run(start_and_stop())


def _status(server: Server, store: str, instance_id: str) -> str:
    stored = DiskCacheStore(server.root / urllib.parse.unquote(store))
    try:
        record = stored.get_instance(instance_id)
        return "purged" if record is None else str(record.status)
    finally:
        stored.close()


def test_requests_without_jupyters_credentials_are_refused(server: Server, store_in: str) -> None:
    assert double.run(2, instance_id="done") == 4
    for method, path in (
        ("GET", "stores"),
        ("GET", f"stores/{store_in}/instances/done"),
        ("POST", f"stores/{store_in}/instances/done/terminate"),
        ("DELETE", f"stores/{store_in}/instances/done"),
    ):
        body = b"" if method == "POST" else None
        for token in (None, "wrong"):
            code, _ = server.call(method, f"/durable-nb/api/{path}", body, token=token)
            assert code == 403, (method, path, token)
    assert _status(server, store_in, "done") == "completed"


def test_a_browser_session_needs_the_xsrf_token_to_post(server: Server, store_in: str) -> None:
    _waiting("w")
    jar = http.cookiejar.CookieJar()
    browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    server.call("GET", "/login", token=None, opener=browser)
    xsrf = next(cookie.value for cookie in jar if cookie.name == "_xsrf")
    form = urllib.parse.urlencode({"_xsrf": xsrf, "password": server.token}).encode()
    server.call("POST", "/login", form, token=None, opener=browser)
    path = f"/durable-nb/api/stores/{store_in}/instances/w"
    assert server.call("GET", path, token=None, opener=browser)[0] == 202  # the cookie works
    assert server.call("POST", f"{path}/suspend", b"", token=None, opener=browser)[0] == 403
    assert _status(server, store_in, "w") == "interrupted"
    code, _ = server.call(
        "POST", f"{path}/suspend", b"", None, {"X-XSRFToken": xsrf}, opener=browser
    )
    assert code == 202 and _status(server, store_in, "w") == "suspended"


def test_stores_are_found_under_the_root_and_nothing_outside_it(
    server: Server, store_in: str, tmp_path: Path
) -> None:
    assert double.run(1) == 2
    outside = tmp_path / "outside"
    DiskCacheStore(outside).close()
    (server.root / "link").symlink_to(outside)
    (server.root / "plain").mkdir()
    try:
        code, stores = server.api("GET", "stores")
        assert code == 200
        names = [entry["store"] for entry in stores]
        assert urllib.parse.unquote(store_in) in names and "link" not in names
        (mine,) = [e for e in stores if e["store"] == urllib.parse.unquote(store_in)]
        assert mine["instancesGetUri"] == f"/durable-nb/api/stores/{store_in}/instances"
        for store, expected in (
            ("link", 404),  # a symlink out of the root
            ("plain", 404),  # not a store: never opened, so never made one
            ("nowhere", 404),
            (urllib.parse.quote(str(outside), safe=""), 400),  # absolute
            (urllib.parse.quote("../outside", safe=""), 400),
            (urllib.parse.quote(f"{store_in}/../../link", safe=""), 400),
        ):
            code, reply = server.api("GET", f"stores/{store}/instances")
            assert code == expected, (store, reply)
        assert list((server.root / "plain").iterdir()) == []
        assert not (server.root / "nowhere").exists()
    finally:
        (server.root / "link").unlink()


def test_list_filters_and_status_in_durable_functions_shape(server: Server, store_in: str) -> None:
    assert double.run(21, instance_id="batch/1") == 42
    with pytest.raises(KeyError):
        broken.run(instance_id="bad")
    _waiting("waits")
    instances = f"stores/{store_in}/instances"

    code, listed = server.api("GET", instances)
    assert code == 200
    assert {i["instanceId"]: i["runtimeStatus"] for i in listed} == {
        "batch/1": "Completed",
        "bad": "Failed",
        "waits": "Pending",  # interrupted: no DF equivalent
    }
    assert all("input" not in i for i in listed)  # DF's list shows input when asked
    for query, expected in (
        ("name=double", {"batch/1"}),
        ("status=interrupted", {"waits"}),
        ("runtimeStatus=Failed,Completed", {"bad", "batch/1"}),
        ("older-than=1h", set()),
        ("newer-than=1h&name=broken", {"bad"}),
    ):
        code, listed = server.api("GET", f"{instances}?{query}")
        assert code == 200 and {i["instanceId"] for i in listed} == expected, query
    assert server.api("GET", f"{instances}?status=done")[0] == 400
    assert server.api("GET", f"{instances}?older-than=soon")[0] == 400

    code, status = server.api("GET", f"{instances}/{urllib.parse.quote('batch/1', safe='')}")
    assert code == 200
    assert status["name"] == "double" and status["instanceId"] == "batch/1"
    assert status["runtimeStatus"] == "Completed" and status["durableNbStatus"] == "completed"
    assert status["input"] == {"x": 21} and status["output"] == 42
    assert status["customStatus"] == {"step": "doubling"}
    assert status["createdTime"].endswith("Z") and status["lastUpdatedTime"].endswith("Z")
    code, status = server.api("GET", f"{instances}/bad")
    assert code == 200 and status["runtimeStatus"] == "Failed" and "KeyError" in status["output"]
    code, status = server.api("GET", f"{instances}/waits")
    assert code == 202 and status["durableNbStatus"] == "interrupted"
    assert server.api("GET", f"{instances}/ghost")[0] == 404


def test_an_event_raised_over_http_reaches_a_waiting_run(server: Server, store_in: str) -> None:
    path = f"stores/{store_in}/instances/live/raiseEvent/approval"

    async def run_and_approve() -> Any:
        handle = gate.start(instance_id="live")
        await asyncio.sleep(0.3)
        purge = f"stores/{store_in}/instances/live"
        code, _ = await asyncio.to_thread(server.api, "DELETE", purge)
        assert code == 409  # running: not purged
        code, _ = await asyncio.to_thread(server.api, "POST", path, b'{"by": "ana"}')
        assert code == 202
        return await asyncio.wait_for(handle, 20)

    assert asyncio.run(run_and_approve()) == {"by": "ana"}
    code, reply = server.api("POST", path, b"true")
    assert code == 410, reply  # completed: the event would never be received
    assert server.api("POST", f"stores/{store_in}/instances/ghost/raiseEvent/x", b"1")[0] == 404
    assert server.api("POST", path.replace("live", "x"), b"{not json")[0] == 400


def test_terminate_suspend_resume_rewind_and_purge_change_the_store(
    server: Server, store_in: str
) -> None:
    _waiting("w")
    assert double.run(1, instance_id="done") == 2
    with pytest.raises(KeyError):
        broken.run(instance_id="bad")
    at = f"stores/{store_in}/instances"
    for action, status in (("suspend", "suspended"), ("resume", "pending")):
        assert server.api("POST", f"{at}/w/{action}?reason=test")[0] == 202
        assert _status(server, store_in, "w") == status
    assert server.api("POST", f"{at}/w/rewind")[0] == 409  # pending: nothing to rewind
    assert server.api("POST", f"{at}/w/terminate?reason=no+longer+needed")[0] == 202
    assert _status(server, store_in, "w") == "terminated"
    code, status = server.api("GET", f"{at}/w")
    assert code == 200 and status["runtimeStatus"] == "Terminated"
    assert "no longer needed" in status["output"]
    assert server.api("POST", f"{at}/done/terminate")[0] == 410
    assert server.api("POST", f"{at}/done/rewind")[0] == 410
    assert server.api("POST", f"{at}/ghost/suspend")[0] == 404
    assert server.api("POST", f"{at}/bad/rewind")[0] == 202
    assert _status(server, store_in, "bad") == "pending"
    assert server.api("DELETE", f"{at}/done") == (200, {"instancesDeleted": 1})
    assert _status(server, store_in, "done") == "purged"
    assert server.api("DELETE", f"{at}/done")[0] == 404


def test_a_handle_gives_its_urls_on_the_server_found_by_itself(
    server: Server, store_in: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server's runtime file is found as a kernel finds it (here by its root holding
    the store: this test process is not the server's child), and the URLs work."""
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(server.runtime_dir))
    servers = server_urls.running_servers()
    assert [s["pid"] for s in servers] == [server.pid]
    assert server_urls.kernel_server(servers, "/elsewhere", parent_pid=server.pid) == servers[0]
    assert server_urls.kernel_server(servers, "/elsewhere", parent_pid=1) is None

    async def run_and_approve() -> tuple[dict[str, str], Any]:
        handle = gate.start(instance_id="with/urls")
        await asyncio.sleep(0.2)
        urls = handle.http_urls()
        code, status = await asyncio.to_thread(server.call, "GET", urls["statusQueryGetUri"])
        assert code == 202 and status["instanceId"] == "with/urls", status
        send = urls["sendEventPostUri"].replace("{eventName}", "approval")
        code, _ = await asyncio.to_thread(server.call, "POST", send, b'"yes"')
        assert code == 202
        return urls, await asyncio.wait_for(handle, 20)

    urls, output = asyncio.run(run_and_approve())
    assert output == "yes"
    instance = f"/durable-nb/api/stores/{store_in}/instances/with%2Furls"
    assert urls["statusQueryGetUri"] == server.url + "/" + instance.lstrip("/")
    assert urls["terminatePostUri"].endswith(f"{instance}/terminate?reason={{text}}")
    for key in ("id", "sendEventPostUri", "purgeHistoryDeleteUri"):
        assert key in urls
    assert server.call("DELETE", urls["purgeHistoryDeleteUri"])[0] == 200
    with pytest.raises(dn.ConfigurationError, match="outside the server's root"):
        server_urls.http_urls("/elsewhere", "x", server.url, str(server.root))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(server.root / "no-servers"))
    with pytest.raises(dn.ConfigurationError, match="which Jupyter server"):
        server_urls.http_urls(str(server.root / "s"), "x")


_IN_KERNEL = """
import asyncio, json, os
import durable_nb as dn
from durable_nb import server_urls
dn.configure(store={store!r}, progress="none")

@dn.orchestrator
def hello(ctx):
    return "hi"
    yield

h = hello.start(instance_id="from-kernel")
await h
found = server_urls.kernel_server(server_urls.running_servers(), "/elsewhere")
print(json.dumps({{"urls": h.http_urls(), "parent": found and found["pid"]}}))
"""


@pytest.mark.kernel
def test_a_kernel_the_server_started_finds_it_as_its_parent(server: Server) -> None:
    from jupyter_client import BlockingKernelClient

    code, kernel = server.call("POST", "/api/kernels", b"{}")
    assert code == 201, kernel
    client = BlockingKernelClient(
        connection_file=str(server.runtime_dir / f"kernel-{kernel['id']}.json")
    )
    client.load_connection_file()
    client.start_channels()
    printed: list[str] = []

    def collect(message: dict[str, Any]) -> None:
        if message["msg_type"] == "stream":
            printed.append(message["content"]["text"])
        elif message["msg_type"] == "error":
            printed.append("\n".join(message["content"]["traceback"]))

    try:
        client.wait_for_ready(timeout=60)
        store = server.root / "kernel" / ".durable_nb"
        client.execute_interactive(
            _IN_KERNEL.format(store=str(store)), timeout=60, output_hook=collect
        )
    finally:
        client.stop_channels()
        server.call("DELETE", f"/api/kernels/{kernel['id']}")
    seen = json.loads("".join(printed).strip().splitlines()[-1])
    assert seen["parent"] == server.pid  # found by its parent pid, not by its root
    assert seen["urls"]["statusQueryGetUri"].endswith(
        "/durable-nb/api/stores/kernel%2F.durable_nb/instances/from-kernel"
    )
    code, status = server.call("GET", seen["urls"]["statusQueryGetUri"])
    assert code == 200 and status["output"] == "hi"


@dn.entity(name="tally")
def tally(ctx: dn.EntityContext) -> None:
    ctx.set_state(ctx.get_state(lambda: 0) + (ctx.get_input() or 0))
    ctx.set_result(ctx.get_state())


@dn.orchestrator
def tallies(ctx, n):  # type: ignore[no-untyped-def]
    for _ in range(n):
        ctx.signal_entity(dn.EntityId("tally", "t/1"), "add", 1)
    return (yield ctx.call_entity(dn.EntityId("tally", "t/1"), "add", 0))


def test_history_in_durable_functions_shape_on_request(server: Server, store_in: str) -> None:
    assert tallies.run(2, instance_id="tallied") == 2
    path = f"stores/{store_in}/instances/tallied"
    code, status = server.api("GET", path)
    assert code == 200 and "historyEvents" not in status
    code, status = server.api("GET", f"{path}?showHistory=true")
    kinds = [e["EventType"] for e in status["historyEvents"]]
    assert kinds == [
        "ExecutionStarted",
        "EventSent",
        "EventSent",
        "TaskScheduled",
        "TaskCompleted",
        "ExecutionCompleted",
    ], kinds
    completed = status["historyEvents"][4]
    assert completed["Name"] == "@tally" and "Result" not in completed  # no output asked
    assert status["historyEvents"][1]["InstanceId"] == "@tally@t/1"
    assert status["historyEvents"][-1]["OrchestrationStatus"] == "Completed"
    assert all(e["Timestamp"].endswith("Z") for e in status["historyEvents"])
    code, status = server.api("GET", f"{path}?showHistory=true&showHistoryOutput=true")
    assert status["historyEvents"][4]["Result"] == 2
    assert server.api("GET", f"{path}?showHistory=maybe")[0] == 400


def test_entities_listed_read_and_signalled_over_http(server: Server, store_in: str) -> None:
    assert tallies.run(3, instance_id="feeds") == 3
    entities = f"stores/{store_in}/entities"
    code, listed = server.api("GET", entities)
    assert code == 200
    assert [(e["entityId"], e["state"], e["waiting"]) for e in listed] == [
        ({"name": "tally", "key": "t/1"}, 3, 0)
    ]
    assert server.api("GET", f"{entities}?name=other")[1] == []
    one = f"{entities}/tally/{urllib.parse.quote('t/1', safe='')}"
    assert server.api("GET", one) == (200, 3)  # the state itself, as DF answers
    assert server.api("GET", f"{entities}/tally/none")[0] == 404
    # A signal is queued: the server defines no entity; a kernel that does applies it.
    code, reply = server.api("POST", f"{one}?op=add", b"4")
    assert code == 202 and "queued" in reply["message"]
    assert server.api("GET", f"{entities}")[1][0]["waiting"] == 1
    assert dn.read_entity_state(dn.EntityId("tally", "t/1")).entity_state == 7  # applied here
    assert server.api("GET", one) == (200, 7)
    assert server.api("POST", one, b"1")[0] == 400  # no op
    assert server.api("POST", f"{one}?op=add", b"{not json")[0] == 400
    assert server.api("POST", f"{entities}/a@b/k?op=add", b"1")[0] == 400  # no such name
    assert server.api("GET", "stores/nowhere/entities")[0] == 404
