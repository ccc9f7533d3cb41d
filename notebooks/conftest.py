"""nbval runs of the example notebooks get a fresh checkpoint store each session.

The kernels nbval starts inherit this process's environment, so pointing
DURABLE_NB_STORE at a new folder makes every test run start from no checkpoints,
whatever earlier runs (or `durable-nb run`) left in notebooks/.durable_nb.

The executed copies `durable-nb run` writes beside a notebook (NAME.out.ipynb, ignored
by git) are not examples: nbval does not collect them.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

collect_ignore_glob = ["*.out.ipynb"]

_FOLDER = tempfile.mkdtemp(prefix="durable_nb_nbval_")


def pytest_configure(config: pytest.Config) -> None:
    os.environ["DURABLE_NB_STORE"] = _FOLDER


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(_FOLDER, ignore_errors=True)
