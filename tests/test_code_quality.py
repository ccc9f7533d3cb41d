"""The code stays lint-clean, formatted and strictly typed, and mirrored signatures agree."""

from __future__ import annotations

import dataclasses
import inspect
import subprocess
import sys
from pathlib import Path
from typing import Any

from durable_nb import activity, configure
from durable_nb.options import ActivityOptions
from durable_nb.runtime import Runtime

ROOT = Path(__file__).resolve().parent.parent


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_ruff_lint_and_format() -> None:
    lint = _run("ruff", "check", "durable_nb", "tests", "benchmarks")
    assert lint.returncode == 0, lint.stdout + lint.stderr
    fmt = _run("ruff", "format", "--check", "durable_nb", "tests", "benchmarks")
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_mypy_strict() -> None:
    result = _run(sys.executable, "-m", "mypy")
    assert result.returncode == 0, result.stdout + result.stderr


def _keywords(fn: Any) -> dict[str, Any]:
    return {
        name: param.default
        for name, param in inspect.signature(fn).parameters.items()
        if param.kind is inspect.Parameter.KEYWORD_ONLY
    }


def test_the_activity_decorator_offers_every_activity_option_with_its_default() -> None:
    """``@activity(...)`` spells out ActivityOptions' fields so editors and help() show
    them; this keeps the two copies in step."""
    fields = {f.name: f.default for f in dataclasses.fields(ActivityOptions)}
    # Besides the options: the registered name, and max_attempts (another way to say
    # retries, as %%activity --max-attempts).
    assert _keywords(activity) == {**fields, "name": None, "max_attempts": None}


def test_module_configure_mirrors_runtime_configure() -> None:
    """``durable_nb.configure`` spells out Runtime.configure's keywords for the same reason."""
    assert _keywords(configure) == _keywords(Runtime.configure)
    assert inspect.signature(configure).parameters.keys() == _keywords(configure).keys()
