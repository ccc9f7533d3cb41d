from __future__ import annotations

from collections.abc import Iterator
from fnmatch import fnmatch
from pathlib import Path

import pytest

from durable_nb import runtime as runtime_module
from durable_nb.memory_store import MemoryStore
from durable_nb.runtime import Runtime
from durable_nb.store import CheckpointStore, DiskCacheStore


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


@pytest.fixture(params=["disk", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CheckpointStore]:
    """Each store, for tests of the ``CheckpointStore`` contract both must keep."""
    made: CheckpointStore = (
        DiskCacheStore(tmp_path / "s") if request.param == "disk" else MemoryStore()
    )
    yield made
    made.close()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "crash_matrix: SIGKILL-and-resume seeds of tests/test_crash_matrix.py; "
        "`-m crash_matrix` runs all 20 (3 run by default)",
    )


# The fast subset .ci/run runs on every other Python it finds (`pytest tests -m compat`):
# the engine, the fingerprints, the golden fixtures with key schemes and finality, and the
# store. Defined here only.
COMPAT_MODULES = (
    "test_engine*.py",
    "test_fingerprint.py",
    "test_golden*.py",
    "test_key_schemes.py",
    "test_finality.py",
    "test_store*.py",
    "test_entity_store.py",
    "test_errors.py",
    "test_lazy_import.py",
    "test_threads.py",
    "test_history_timings.py",
)


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if any(fnmatch(item.path.name, pattern) for pattern in COMPAT_MODULES):
            item.add_marker(pytest.mark.compat)
