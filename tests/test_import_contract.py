"""The walls between durable_nb's modules: the import-linter contracts in pyproject.toml.

Each contract is checked by ``lint-imports`` in a subprocess (run ``lint-imports`` in the
repository for the same report); a broken contract fails its test with that report.
"""

from __future__ import annotations

import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import durable_nb

ROOT = Path(__file__).resolve().parent.parent

# The engine's own modules and what it may import (contract "engine").
_ENGINE_MAY_IMPORT = {
    "durable_nb.history",
    "durable_nb.errors",
    "durable_nb.fingerprint",
    "durable_nb.fingerprint_v1",
    "durable_nb.fingerprint_values",
}


def _lint(contract: str) -> tuple[bool, str]:
    """Whether ``contract`` is kept, and import-linter's report."""
    pytest.importorskip("importlinter")  # the `test` extra has it (Python 3.10+: 2.6 and on)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "COLUMNS": "200",  # one line per import chain
        "NO_COLOR": "1",
    }
    command = "from importlinter.cli import lint_imports_command; lint_imports_command()"
    done = subprocess.run(
        [sys.executable, "-c", command, "--no-cache", "--no-logo", "--contract", contract],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = done.stdout + done.stderr
    if "Contracts:" not in report:  # no verdict, e.g. an ignore_imports line matches nothing
        pytest.fail(
            f"lint-imports gave no verdict on contract {contract!r} (an ignored import that "
            f"is gone must be deleted from pyproject.toml):\n{report}"
        )
    return done.returncode == 0, report


def test_the_engine_imports_only_history_errors_and_the_fingerprint() -> None:
    kept, report = _lint("engine")
    assert kept, report


def test_the_layers_hold() -> None:
    kept, report = _lint("layers")
    assert kept, report


def test_no_import_cycles() -> None:
    kept, report = _lint("acyclic")
    assert kept, report


def test_the_engine_contract_forbids_every_other_module() -> None:
    """A module added to durable_nb is forbidden to the engine until someone decides otherwise."""
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (engine,) = [c for c in config["contracts"] if c["id"] == "engine"]
    forbidden = {m for m in engine["forbidden_modules"] if m.startswith("durable_nb")}
    modules = {
        info.name
        for info in pkgutil.walk_packages(durable_nb.__path__, "durable_nb.")
        if info.name != "durable_nb.engine" and not info.name.startswith("durable_nb.engine.")
    }
    assert forbidden == modules - _ENGINE_MAY_IMPORT
