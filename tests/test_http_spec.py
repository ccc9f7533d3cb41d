"""The OpenAPI document of the HTTP API (durable_nb/openapi.json): valid OpenAPI, loaded
by schemathesis as the fuzz loads it, and in step with the routes the server extension
registers, both ways, so that neither can change without the other."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from durable_nb import http_api, server_extension, server_urls
from durable_nb.server_urls import API_PATH

SPEC_PATH = Path(http_api.__file__).with_name("openapi.json")
METHODS = ("get", "post", "put", "patch", "delete")


# THE SWITCH: operations the document describes that this branch does not serve yet.
def spec() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(SPEC_PATH.read_text(encoding="utf-8"))
    return document


def _spec_routes() -> dict[tuple[str, str], str]:
    """(METHOD, path with every {parameter} as {}) → operationId."""
    routes = {}
    for path, item in spec()["paths"].items():
        for method in METHODS:
            if method in item:
                shape = re.sub(r"\{[^}/]+\}", "{}", path)
                routes[(method.upper(), shape)] = item[method]["operationId"]
    return routes


def _served_routes() -> set[tuple[str, str]]:
    """(METHOD, path) of every handler method the extension registers, an alternation of
    words (the actions) expanded to one path each, a URL segment group as {}."""
    prefix = "/" + API_PATH
    served = set()
    for pattern, handler, _options in server_extension.handlers("/", Path("/")):
        assert pattern.startswith(prefix), pattern
        path = pattern[len(prefix) :].replace(server_extension._SEGMENT, "{}")
        choices = re.search(r"\(([\w|]+)\)", path)
        paths = (
            [path.replace(choices.group(0), word) for word in choices.group(1).split("|")]
            if choices
            else [path]
        )
        for method in METHODS:
            if method in vars(handler):  # defined by the handler itself, not inherited
                served.update((method.upper(), p) for p in paths)
    return served


def test_the_document_is_valid_openapi_and_schemathesis_loads_it() -> None:
    document = spec()
    pytest.importorskip("openapi_spec_validator").validate(document)
    schemathesis = pytest.importorskip("schemathesis")
    loaded = schemathesis.openapi.from_path(SPEC_PATH)
    operations = [result.ok() for result in loaded.get_all_operations()]
    assert {op.definition.raw["operationId"] for op in operations} == set(_spec_routes().values())
    # Every operation says what an unauthenticated request gets.
    for op in operations:
        assert "403" in op.definition.raw["responses"], op.label


def test_every_route_is_in_the_spec_and_every_spec_route_is_served() -> None:
    described = _spec_routes()
    served = _served_routes()
    assert served, "no routes found: the pattern parsing above no longer fits handlers()"
    missing_from_spec = served - described.keys()
    assert not missing_from_spec, f"served but not in durable_nb/openapi.json: {missing_from_spec}"
    not_served = {described[route] for route in described.keys() - served}
    assert not not_served, f"in the spec but not served: {not_served}"


def test_the_drift_check_sees_a_missing_route(monkeypatch: pytest.MonkeyPatch) -> None:
    """The comparison above can fail: a route added to handlers() without the spec."""
    original = server_extension.handlers

    def with_extra(base_url: str, root: Path) -> list[tuple[str, Any, dict[str, Any]]]:
        routes: list[tuple[str, Any, dict[str, Any]]] = list(original(base_url, root))
        extra = f"/{API_PATH}/stores/{server_extension._SEGMENT}/compact"
        return [*routes, (extra, server_extension.InstancesHandler, {})]

    monkeypatch.setattr(server_extension, "handlers", with_extra)
    with pytest.raises(AssertionError, match="compact"):
        test_every_route_is_in_the_spec_and_every_spec_route_is_served()


def test_the_status_shapes_name_every_status_the_code_maps() -> None:
    """The enums of the document are http_api's mapping, so a new status cannot be
    served unseen by clients that validate."""
    schemas = spec()["components"]["schemas"]["InstanceStatus"]["properties"]
    assert set(schemas["durableNbStatus"]["enum"]) == set(http_api.RUNTIME_STATUS)
    assert set(schemas["runtimeStatus"]["enum"]) == set(http_api.RUNTIME_STATUS.values())


def test_the_served_document_names_the_servers_base_url() -> None:
    reply = http_api.openapi_document("/lab/base/durable-nb/api")
    assert reply.code == 200
    assert reply.body["servers"] == [{"url": "/lab/base/durable-nb/api"}]
    assert reply.body["paths"] == spec()["paths"]


def test_a_started_run_answers_the_urls_a_handle_gives() -> None:
    """POST runs answers an instance's URLs under Durable Functions' names: the same set
    ``h.http_urls()`` gives (server_urls.instance_urls), all of them required."""
    urls = spec()["components"]["schemas"]["InstanceUrls"]
    assert set(urls["required"]) == set(urls["properties"])
    assert set(urls["required"]) == set(server_urls.instance_urls("/api", "s", "i"))
    started = spec()["paths"]["/runs"]["post"]
    assert set(started["responses"]) == {"202", "400", "403", "404"}
    assert "Location" in started["responses"]["202"]["headers"]
    body = spec()["components"]["schemas"]["RunRequest"]
    assert body["required"] == ["notebook"]
    assert set(body["properties"]) == {"notebook", "parameters", "store", "timeout"}
