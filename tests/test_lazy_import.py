"""``durable_nb`` is a lazy facade: importing a part of it loads only what that part needs."""

from __future__ import annotations

import ast
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import durable_nb

_INIT = Path(durable_nb.__file__)

# What the engine may load: itself, history, errors and the fingerprint (with its helpers).
_ENGINE_MAY_LOAD = {
    "durable_nb",
    "durable_nb.history",
    "durable_nb.errors",
    "durable_nb.fingerprint",
    "durable_nb.fingerprint_v1",
    "durable_nb.fingerprint_values",
}


def _loaded_after(statement: str) -> list[str]:
    """The modules a fresh interpreter has loaded after running ``statement``."""
    code = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    env = {**os.environ, "PYTHONPATH": str(_INIT.parent.parent)}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    loaded: list[str] = json.loads(done.stdout.splitlines()[-1])
    return loaded


def test_import_durable_nb_loads_nothing_else() -> None:
    loaded = _loaded_after("import durable_nb")
    assert [m for m in loaded if m.startswith("durable_nb")] == ["durable_nb"]
    assert "diskcache" not in loaded


@pytest.mark.parametrize("module", ["durable_nb.engine", "durable_nb.history"])
def test_the_engine_and_history_load_no_runtime_store_or_diskcache(module: str) -> None:
    loaded = _loaded_after(f"import {module}")
    unwanted = {"diskcache", "durable_nb.runtime", "durable_nb.store", "ipywidgets", "IPython"}
    assert not unwanted & set(loaded), sorted(unwanted & set(loaded))


def test_a_run_on_threads_loads_no_dask() -> None:
    """distributed costs about half a second to import: a kernel that never uses Dask
    does not pay it (the worker plugin's class is made when a Dask executor asks)."""
    loaded = _loaded_after(
        "import tempfile, durable_nb as dn\n"
        "dn.configure(store=tempfile.mkdtemp(), progress='none')\n"
        "@dn.activity\ndef one(x): return x\n"
        "@dn.orchestrator\ndef orch(ctx): return (yield ctx.call_activity(one, 1))\n"
        "assert orch.run() == 1"
    )
    assert "durable_nb.runtime" in loaded
    assert not {"distributed", "dask"} & set(loaded)


def test_a_run_in_a_script_does_not_import_ipython() -> None:
    """A script is no kernel, which it can tell without importing IPython: that import
    cost a script's first run about 0.3 s (with progress shown as text, the default)."""
    loaded = _loaded_after(
        "import tempfile, durable_nb as dn\n"
        "dn.configure(store=tempfile.mkdtemp())\n"
        "@dn.activity\ndef one(x): return x\n"
        "@dn.orchestrator\ndef orch(ctx): return (yield ctx.call_activity(one, 1))\n"
        "assert orch.run() == 1"
    )
    assert "durable_nb.widgets" in loaded  # the progress view was chosen
    assert not {"IPython", "ipywidgets"} & set(loaded)


def test_the_engine_loads_only_history_errors_and_the_fingerprint() -> None:
    loaded = _loaded_after("import durable_nb.engine")
    ours = {
        m for m in loaded if m.startswith("durable_nb") and not m.startswith("durable_nb.engine")
    }
    assert ours <= _ENGINE_MAY_LOAD, sorted(ours - _ENGINE_MAY_LOAD)


def test_every_public_name_resolves_to_the_module_the_facade_names() -> None:
    lazy: dict[str, str] = durable_nb._LAZY
    eager = {"__version__", "load_ipython_extension", "unload_ipython_extension"}
    assert set(lazy) | eager == set(durable_nb.__all__)
    for name, module in lazy.items():
        value = getattr(importlib.import_module(f"durable_nb.{module}"), name)
        assert getattr(durable_nb, name) is value, name
    assert set(durable_nb.__all__) <= set(dir(durable_nb))


def test_the_type_checking_imports_match_the_lazy_table() -> None:
    """mypy and IDEs see the ``if TYPE_CHECKING:`` imports; they must say what _LAZY does."""
    tree = ast.parse(_INIT.read_text())
    typed: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            for statement in node.body:
                assert isinstance(statement, ast.ImportFrom), ast.unparse(statement)
                for alias in statement.names:
                    typed[alias.asname or alias.name] = str(statement.module)
    assert typed == {name: f"durable_nb.{module}" for name, module in durable_nb._LAZY.items()}


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="has no attribute 'no_such_thing'"):
        durable_nb.no_such_thing  # noqa: B018


def test_star_import_and_the_extension_hooks_work() -> None:
    loaded = _loaded_after(
        "from durable_nb import *\n"
        "assert callable(load_ipython_extension) and callable(unload_ipython_extension)\n"
        "assert orchestrator.__module__ == 'durable_nb.definitions'\n"
        "assert Runtime.__module__ == 'durable_nb.runtime'\n"
        "import durable_nb\n"
        "assert durable_nb.__version__"
    )
    assert "durable_nb.runtime" in loaded
