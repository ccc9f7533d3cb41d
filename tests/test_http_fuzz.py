"""The HTTP API fuzzed from its OpenAPI document (durable_nb/openapi.json) with
schemathesis, against a real ``jupyter server`` on loopback whose root holds real stores
filled by real runs, and a decoy store in a sibling folder outside the root.

The server runs under an audit hook (``sys.addaudithook``) that logs every path it opens,
lists or connects to, so that "no path outside the server root is ever opened" is
checked on what the process did, not on what the replies say: after the fuzz and the
crafted path-traversal cases, every path the server touched while answering is under
the root or on an explicit allowlist (the interpreter, its packages, the package's own
source, /proc, /dev), and nothing under the decoy.
"""

from __future__ import annotations

import json
import sys
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402
from jupyter_server_harness import ROOT, Server, jupyter_server  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from test_http_api import _waiting, broken, double  # noqa: E402
from test_http_spec import SPEC_PATH  # noqa: E402

import durable_nb as dn  # noqa: E402
from durable_nb import runtime as runtime_module  # noqa: E402
from durable_nb.runtime import Runtime  # noqa: E402
from durable_nb.store import DiskCacheStore  # noqa: E402

API = "/durable-nb/api"

# The server process, with every path it opens logged (one JSON line per event, the path
# resolved, symlinks followed) to the file named by DURABLE_NB_AUDIT_LOG. The events are
# those of opening, listing, connecting to and changing files and folders; a stat is not
# an event (Python audits none), and learns nothing but whether a path exists.
_AUDITED = """
import json, os, sys, threading
_log = os.open(os.environ["DURABLE_NB_AUDIT_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
_events = frozenset({
    "open", "os.listdir", "os.scandir", "sqlite3.connect", "os.mkdir", "os.remove",
    "os.rename", "os.rmdir", "os.truncate", "os.chmod", "os.symlink", "os.link",
    "os.utime", "shutil.rmtree", "os.chdir", "os.chown",
})
_two_paths = frozenset({"os.rename", "os.symlink", "os.link"})
_inside = threading.local()

def _audit(event, args):
    if event not in _events or getattr(_inside, "yes", False):
        return
    _inside.yes = True
    try:
        # open's other arguments are its mode and flags; the two-path events name both
        for arg in args[:2] if event in _two_paths else args[:1]:
            if isinstance(arg, (str, bytes, os.PathLike)):
                path = os.path.realpath(os.fsdecode(arg))
                line = json.dumps({"event": event, "path": path}) + "\\n"
                os.write(_log, line.encode("utf-8", "surrogateescape"))
    finally:
        _inside.yes = False

sys.addaudithook(_audit)
# `python -c` puts the working folder first on sys.path, which `jupyter server` does not
if sys.path and sys.path[0] == "":
    del sys.path[0]
from jupyter_server.serverapp import main
sys.exit(main())
"""


@dataclass
class Fuzzed:
    """The server, its root, the decoy outside it, and the audit log of the server."""

    server: Server
    root: Path
    decoy: Path
    allowed: tuple[Path, ...]
    log: Path
    since: int  # the log's size once the server was up: startup is not checked

    def opened(self, start: int | None = None) -> list[dict[str, str]]:
        with self.log.open("rb") as log:
            log.seek(self.since if start is None else start)
            return [json.loads(line) for line in log.read().splitlines()]

    def mark(self) -> int:
        return self.log.stat().st_size


def outside_the_root(
    events: list[dict[str, str]], root: Path, allowed: tuple[Path, ...]
) -> list[str]:
    """The paths of ``events`` neither under ``root`` nor under an allowed folder."""
    return sorted(
        {
            e["path"]
            for e in events
            if not any(Path(e["path"]).is_relative_to(folder) for folder in (root, *allowed))
        }
    )


def _allowlist(dirs: dict[str, Path]) -> tuple[Path, ...]:
    """What a Python process serving requests may open besides the root, each for a
    reason: the interpreter and its packages (lazy imports), durable_nb's own source (the
    server imports it from the work tree, and reads openapi.json from it), the kernel's
    views of the process and of devices (/proc, /dev: process checks, randomness), and
    Jupyter's folders (this server's config, data and runtime, and the system's and the
    user's that Jupyter reads settings and data from). Nothing that holds the root or
    the decoy (test_the_checker_flags_a_path_outside_the_root checks it)."""
    import sysconfig

    from jupyter_core.paths import jupyter_config_path, jupyter_path

    folders = {
        Path(sys.prefix),
        Path(sys.base_prefix),
        Path(sys.exec_prefix),
        *(Path(p) for p in sysconfig.get_paths().values()),
        ROOT / "durable_nb",
        Path("/proc"),
        Path("/dev"),
        *dirs.values(),
        *(Path(p) for p in (*jupyter_path(), *jupyter_config_path())),
    }
    return tuple(sorted(f.resolve() for f in folders))


def _fill(store: Path, work: Any) -> None:
    """Real runs in this process on the store at ``store``."""
    runtime_module._reset_for_tests(lambda: Runtime(store=DiskCacheStore(store), progress="none"))
    try:
        work()
    finally:
        runtime_module.get_runtime().close()
        runtime_module._reset_for_tests()


@dn.entity(name="counter")
def counter(ctx: dn.EntityContext) -> None:
    ctx.set_state(ctx.get_state(lambda: 0) + (ctx.get_input() or 0))


def _runs() -> None:
    dn.signal_entity(dn.EntityId("counter", "c1"), "add", 1)  # the document's example entity
    assert double.run(21, instance_id="done") == 42
    assert double.run(1, instance_id="old-run-1") == 2  # the document's purge example
    with pytest.raises(KeyError):
        broken.run(instance_id="bad")
    _waiting("approval-1")  # the id the document's examples use
    _waiting("batch/2")


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    base = tmp_path_factory.mktemp("fuzz")
    root, decoy = base / "root", base / "decoy"
    _fill(root / ".durable_nb", _runs)
    _fill(root / "work" / ".durable_nb", _runs)
    _fill(decoy / ".durable_nb", _runs)
    # Ways out of the root a request might try: symlinks to the decoy store (absolute and
    # relative), a folder whose cache.db is a symlink to the decoy's; and one symlink that
    # stays inside the root.
    (root / "escape").symlink_to(decoy / ".durable_nb")
    (root / "escape_rel").symlink_to(Path("..") / "decoy" / ".durable_nb")
    (root / "fake").mkdir()
    (root / "fake" / "cache.db").symlink_to(decoy / ".durable_nb" / "cache.db")
    (root / "inside").symlink_to(root / "work")
    (root / "loop").symlink_to(root / "loop")  # links that lead nowhere, in a circle
    (root / "ping").symlink_to(root / "pong")
    (root / "pong").symlink_to(root / "ping")

    audit_log = base / "audit.jsonl"
    env = {
        "DURABLE_NB_AUDIT_LOG": str(audit_log),
        # No periodic pass over the root's stores (the schedules, where the extension
        # runs them): what the log shows is then only what the requests did.
        "DURABLE_NB_SCHEDULE_INTERVAL": "off",
    }
    with jupyter_server(base, root, env=env, program=("-c", _AUDITED)) as served:
        # One request of each kind first, so that what the first request imports lazily
        # is loaded before the mark (it would be allowed anyway: the interpreter's own).
        served.call("GET", f"{API}/stores")
        yield Fuzzed(
            served,
            root.resolve(),
            decoy.resolve(),
            _allowlist(served.folders),
            audit_log,
            audit_log.stat().st_size,
        )


def _records(store: Path) -> dict[str, str]:
    opened = DiskCacheStore(store)
    try:
        return {r.instance_id: str(r.status) for r in opened.list_instances()}
    finally:
        opened.close()


# --- the spec, served --------------------------------------------------------------------


def test_the_document_is_served_behind_the_token_and_schemathesis_loads_it(
    fuzzed: Fuzzed,
) -> None:
    server = fuzzed.server
    code, document = server.call("GET", f"{API}/openapi.json")
    assert code == 200
    assert document["servers"] == [{"url": f"{API}"}]
    assert document["paths"] == json.loads(SPEC_PATH.read_text())["paths"]
    assert server.call("GET", f"{API}/openapi.json", token=None)[0] == 403
    loaded = schemathesis.openapi.from_url(
        f"{server.url}{API}/openapi.json", headers={"Authorization": f"token {server.token}"}
    )
    assert loaded.get_base_url() == f"{server.url}{API}"


# --- authentication ----------------------------------------------------------------------

_EVERY_ROUTE = (
    ("GET", "stores"),
    ("GET", "openapi.json"),
    ("GET", "stores/work%2F.durable_nb/instances"),
    ("GET", "stores/work%2F.durable_nb/instances/done"),
    ("DELETE", "stores/work%2F.durable_nb/instances/done"),
    ("POST", "stores/work%2F.durable_nb/instances/batch%2F2/raiseEvent/approval"),
    ("POST", "stores/work%2F.durable_nb/instances/batch%2F2/terminate?reason=x"),
    ("POST", "stores/work%2F.durable_nb/instances/batch%2F2/suspend"),
    ("POST", "stores/work%2F.durable_nb/instances/batch%2F2/resume"),
    ("POST", "stores/work%2F.durable_nb/instances/bad/rewind"),
)


def test_every_route_refuses_no_token_and_a_wrong_one_and_opens_no_store(
    fuzzed: Fuzzed,
) -> None:
    server = fuzzed.server
    before = _records(fuzzed.root / "work" / ".durable_nb")
    mark = fuzzed.mark()
    for method, path in _EVERY_ROUTE:
        body = b"true" if method == "POST" else None
        url = f"{API}/{path}"
        wrong_query = url + ("&" if "?" in url else "?") + "token=wrong"
        for token, at in ((None, url), ("wrong", url), (None, wrong_query)):
            code, reply = server.call(method, at, body, token=token)
            assert code == 403, (method, at, token, reply)
            assert isinstance(reply, dict) and "message" in reply
    touched = [e["path"] for e in fuzzed.opened(mark)]
    assert not [p for p in touched if Path(p).is_relative_to(fuzzed.root)], touched
    assert _records(fuzzed.root / "work" / ".durable_nb") == before


def test_the_token_works_in_the_header_and_in_the_query(fuzzed: Fuzzed) -> None:
    server = fuzzed.server
    path = f"{API}/stores/work%2F.durable_nb/instances/done"
    code, status = server.call("GET", path)  # Authorization: token ...
    assert code == 200 and status["output"] == 42
    code, status = server.call("GET", f"{path}?token={server.token}", token=None)
    assert code == 200 and status["instanceId"] == "done"
    code, stores = server.call("GET", f"{API}/stores?token={server.token}", token=None)
    assert code == 200
    assert [s["store"] for s in stores] == [".durable_nb", "work/.durable_nb"]


# --- crafted path traversal --------------------------------------------------------------


def _traversals(fuzzed: Fuzzed) -> list[tuple[str, int]]:
    """A ``{store}`` segment as sent (already URL-encoded) and the status it must get."""
    q = lambda text: urllib.parse.quote(text, safe="")  # noqa: E731
    decoy = str(fuzzed.decoy / ".durable_nb")
    return [
        (q(".."), 400),
        (q("../.."), 400),
        (q("../decoy/.durable_nb"), 400),
        ("%2e%2e", 400),  # "..", encoded by hand
        ("%252e%252e", 404),  # a folder named "%2e%2e": there is none
        (q("work/../../decoy/.durable_nb"), 400),
        (q(decoy), 400),  # absolute
        (q("//" + decoy), 400),
        (q("..\\decoy\\.durable_nb"), 400),
        (q("C:\\decoy"), 400),
        (q("work\x00"), 400),
        (q("escape"), 404),  # symlink to the decoy store
        (q("escape_rel"), 404),  # the same, relative
        (q("escape/"), 404),
        (q("fake"), 404),  # its cache.db is a symlink to the decoy's
        (q("~"), 404),
        (q("."), 404),  # the root itself holds no store
        (q("a" * 300), 404),  # a name longer than a file system takes
        (q("a/" * 2500), 404),  # a path longer than a file system takes
        (q("work/" * 40 + ".durable_nb"), 404),
        (q("loop"), 404),
        (q("ping/.durable_nb"), 404),
        (q("./.durable_nb"), 200),
        (q("inside/.durable_nb"), 200),  # a symlink that stays in the root
    ]


def test_crafted_paths_out_of_the_root_are_refused_and_nothing_outside_is_opened(
    fuzzed: Fuzzed,
) -> None:
    server = fuzzed.server
    decoy_before = _records(fuzzed.decoy / ".durable_nb")
    mark = fuzzed.mark()
    for store, expected in _traversals(fuzzed):
        instance = f"{API}/stores/{store}/instances"
        for method, path, body in (
            ("GET", instance, None),
            ("GET", f"{instance}/done", None),
            ("POST", f"{instance}/approval-1/raiseEvent/approval", b"1"),
            ("POST", f"{instance}/approval-1/suspend", b""),
            ("POST", f"{instance}/bad/rewind", b""),
            ("DELETE", f"{instance}/ghost", None),
            ("GET", f"{API}/stores/{store}/entities", None),
            ("GET", f"{API}/stores/{store}/entities/counter/c1", None),
            ("POST", f"{API}/stores/{store}/entities/counter/c1?op=add", b"1"),
        ):
            code, reply = server.call(method, path, body)
            if expected == 200:  # a real store: each request gets its own answer
                assert code in (200, 202, 404), (method, path, code, reply)
            else:
                assert code == expected, (method, path[:200], code, reply)
                assert set(reply) == {"message"}, reply
    # Instance ids are never paths: any text is an id, looked up, not found.
    for instance_id in ("..", "%2e%2e", "..%2F..%2Fetc%2Fpasswd", "x%00y", "i" * 5000):
        code, reply = server.call("GET", f"{API}/stores/work%2F.durable_nb/instances/{instance_id}")
        assert code == 404, (instance_id[:50], reply)
    events = fuzzed.opened(mark)
    assert not outside_the_root(events, fuzzed.root, fuzzed.allowed)
    assert not [e for e in events if Path(e["path"]).is_relative_to(fuzzed.decoy)]
    # The real stores were opened: the log sees what the server does.
    assert any(e["event"] == "sqlite3.connect" for e in events)
    assert _records(fuzzed.decoy / ".durable_nb") == decoy_before


def test_bodies_and_segments_that_break_decoding_are_refused(fuzzed: Fuzzed) -> None:
    """Each of these was a 500, or accepted as something else: refused with 400 and a
    JSON message."""
    server = fuzzed.server
    at = f"{API}/stores/work%2F.durable_nb/instances"
    for method, path, body in (
        ("POST", f"{at}/batch%2F2/raiseEvent/x", b"[" * 100_000 + b"]" * 100_000),
        ("POST", f"{at}/batch%2F2/raiseEvent/x", b'"\xff\xfe"'),
        ("POST", f"{at}/batch%2F2/raiseEvent/x", b"\xff\xfe"),
        ("GET", f"{at}/%ED%A0%80", None),  # a surrogate, UTF-8 encoded
        ("GET", f"{at}/%FF", None),
        ("GET", f"{at}?name=%FF", None),
        ("POST", f"{at}/batch%2F2/suspend?reason=%FF", b""),
        ("GET", f"{at}?showInput=ture", None),  # yes or no, not a typo read as no
        ("GET", f"{at}/done?showInput=", None),
    ):
        code, reply = server.call(method, path, body)
        assert code == 400, (path, reply)
        assert isinstance(reply, dict) and isinstance(reply["message"], str), reply
    assert _records(fuzzed.root / "work" / ".durable_nb")["batch/2"] == "interrupted"


# --- the fuzz ----------------------------------------------------------------------------

# Every operation the document describes (tests/test_http_spec.py checks they are all
# served), each with a few generated requests of every phase (the document's examples,
# which name a real store and instance; boundary values; random ones), valid and invalid.
schema = schemathesis.openapi.from_path(SPEC_PATH)
# The status codes the fuzz got, by operation: what it reached is checked below.
ANSWERS: dict[str, Counter[int]] = {}
CHECKS = [
    not_a_server_error,
    negative_data_rejection,  # a request the document calls invalid is refused
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


@schema.parametrize()
@settings(
    max_examples=15,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_fuzz(case: Any, fuzzed: Fuzzed) -> None:
    server = fuzzed.server
    response = case.call_and_validate(
        base_url=f"{server.url}{API}",
        headers={"Authorization": f"token {server.token}"},
        checks=CHECKS,
        timeout=30,
    )
    ANSWERS.setdefault(case.operation.definition.raw["operationId"], Counter())[
        response.status_code
    ] += 1


def test_the_fuzz_reached_every_operation_and_the_real_stores() -> None:
    """The fuzz got through to the real stores: each operation was answered a success
    (the document's examples name a real store and instance, and the state-changing
    operations come in an order that leaves each something to do) and a refusal."""
    if not ANSWERS:
        pytest.skip("run with test_fuzz")
    served = {
        op.definition.raw["operationId"] for op in (r.ok() for r in schema.get_all_operations())
    }
    assert set(ANSWERS) == served
    for operation, codes in ANSWERS.items():
        assert any(200 <= code < 300 for code in codes), (operation, codes)
        assert any(400 <= code < 500 for code in codes), (operation, codes)


def test_the_fuzzing_server_opened_nothing_outside_its_root(fuzzed: Fuzzed) -> None:
    """Everything the server opened since it started answering (the fuzz and the tests
    above, when run with them): under the root or allowed, and nothing of the decoy."""
    # A request that opens a store, so that the log cannot be empty when run alone.
    assert fuzzed.server.call("GET", f"{API}/stores/.durable_nb/instances")[0] == 200
    events = fuzzed.opened()
    assert any(Path(e["path"]).is_relative_to(fuzzed.root) for e in events)
    assert outside_the_root(events, fuzzed.root, fuzzed.allowed) == []
    assert not [e for e in events if Path(e["path"]).is_relative_to(fuzzed.decoy)]
    # No store nor folder was made by a request: a folder is made only in a store.
    stores = [fuzzed.root / ".durable_nb", fuzzed.root / "work" / ".durable_nb"]
    made = {e["path"] for e in events if e["event"] == "os.mkdir"}
    assert made and all(any(Path(p).is_relative_to(s) for s in stores) for p in made), made
    assert set(_records(fuzzed.decoy / ".durable_nb")) == {
        "done",
        "old-run-1",
        "bad",
        "approval-1",
        "batch/2",
    }


def test_the_checker_flags_a_path_outside_the_root(fuzzed: Fuzzed) -> None:
    """The check above can fail: a logged path in the decoy, or anywhere not allowed."""
    inside = {"event": "open", "path": str(fuzzed.root / "work" / ".durable_nb" / "cache.db")}
    package = {"event": "open", "path": str(ROOT / "durable_nb" / "openapi.json")}
    decoy = {"event": "sqlite3.connect", "path": str(fuzzed.decoy / ".durable_nb" / "cache.db")}
    etc = {"event": "open", "path": "/etc/passwd"}
    assert outside_the_root([inside, package], fuzzed.root, fuzzed.allowed) == []
    assert outside_the_root([inside, decoy, etc], fuzzed.root, fuzzed.allowed) == [
        "/etc/passwd",
        decoy["path"],
    ]
    # And the hook logs what the server opens, symlinks resolved: the decoy is not in the
    # allowlist by way of a folder that holds it.
    assert not any(fuzzed.decoy.is_relative_to(folder) for folder in fuzzed.allowed)
    assert not any(fuzzed.root.is_relative_to(folder) for folder in fuzzed.allowed)
