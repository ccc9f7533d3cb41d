from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from durable_nb import runtime as runtime_module
from durable_nb.runtime import Runtime
from durable_nb.store import DiskCacheStore


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def rt(store_dir: Path) -> Iterator[Runtime]:
    """A fresh process-wide runtime on a real diskcache folder, no progress output."""
    runtime = runtime_module._reset_for_tests(
        lambda: Runtime(store=DiskCacheStore(store_dir), progress="none")
    )
    yield runtime
    runtime.close()
    runtime_module._reset_for_tests()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "crash_matrix: SIGKILL-and-resume seeds of tests/test_crash_matrix.py; "
        "`-m crash_matrix` runs all 20 (3 run by default)",
    )
