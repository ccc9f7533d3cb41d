"""Browser tests: the progress widget in a real JupyterLab, in Debian's Chromium.

What runs: one ``jupyter lab`` server for the package (a subprocess of this interpreter, on
a free port with a random token, its root a temp folder), one headless Chromium
driven by Playwright's sync API (the system browser, ``/usr/bin/chromium``: none is
downloaded), and real kernels started by the server, of this interpreter, with this
worktree on PYTHONPATH. Each test gets its own folder under the server's root with
copies of the notebooks (outputs stripped) and the modules they import; the kernel's
working directory is that folder, so its checkpoint store (``.durable_nb`` there) is
fresh for every test and nothing is written into the repo.

Run them: ``python -m pytest tests/browser`` (they are part of the default run, marked
``browser``; ``-m "not browser"`` leaves them out). They need ``chromium`` (apt) and the
``playwright`` and ``jupyterlab`` packages (the ``test`` extra). Missing either, they
are skipped with the reason, except under CI (``$CI`` set), where they fail: a test
that silently never runs in CI is a defect.

On a failure the screenshot, page HTML, console messages and server log are saved to
``$DURABLE_NB_BROWSER_ARTIFACTS/<test>`` (default: the test's tmp_path), and the
failure report names the folder.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
CHROMIUM = os.environ.get("DURABLE_NB_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS_ENV = "DURABLE_NB_BROWSER_ARTIFACTS"
# Known good as root in a container with no network: without the background-networking
# flags Chromium keeps trying to reach Google and misbehaves.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Settings written for the session's JupyterLab: every cell stays in the DOM (the
# default windowing detaches cells out of view, which the tests read), and no news or
# update check, which would reach the network and put a toast over the page; and the
# notebook's kernel starts without the "Select Kernel" dialog JupyterLab 4 shows.
LAB_SETTINGS = {
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autoStartDefaultKernel": True},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
}


def _require_browser_stack() -> None:
    """Skip when Chromium or Playwright is missing; under CI, fail instead."""
    missing = []
    if not Path(CHROMIUM).exists():
        missing.append(f"{CHROMIUM} (apt-get install chromium; .ci/run does it)")
    for module in ("playwright", "jupyterlab"):
        try:
            __import__(module)
        except ImportError:
            missing.append(f"the {module} package (pip install -e '.[test]')")
    if missing:
        reason = "browser tests need " + " and ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; $CI is set, so this is a failure, not a skip")
        pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class LabServer:
    """A running ``jupyter lab`` and where to find it."""

    def __init__(self, home: Path, root: Path) -> None:
        self.root = root
        self.log_path = home / "server.log"
        self.port = _free_port()
        self.token = secrets.token_hex(16)
        self.base_url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ)
        for name, sub in [
            ("JUPYTER_CONFIG_DIR", "config"),
            ("JUPYTER_DATA_DIR", "data"),
            ("JUPYTER_RUNTIME_DIR", "runtime"),
            ("JUPYTERLAB_SETTINGS_DIR", "settings"),
            ("JUPYTERLAB_WORKSPACES_DIR", "workspaces"),
        ]:
            # Nothing from the user's own Jupyter setup, and nothing written to it.
            env[name] = str(home / sub)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
        # The store is then .durable_nb in the kernel's working directory: the test's own
        # folder. (notebooks/conftest.py sets it for the whole session, to a shared one.)
        env.pop("DURABLE_NB_STORE", None)
        self._write_setup(home)
        self._log: IO[bytes] = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jupyterlab",
                "--no-browser",
                "--ip=127.0.0.1",
                f"--port={self.port}",
                "--ServerApp.port_retries=0",
                "--allow-root",  # CI runs as root; elsewhere it changes nothing
                f"--IdentityProvider.token={self.token}",
                f"--ServerApp.root_dir={root}",
            ],
            cwd=root,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @staticmethod
    def _write_setup(home: Path) -> None:
        # The kernel the notebooks name (python3) is this interpreter, whatever else is
        # installed: the user data dir comes first in the kernelspec search.
        spec = home / "data" / "kernels" / "python3"
        spec.mkdir(parents=True)
        (spec / "kernel.json").write_text(
            json.dumps(
                {
                    "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                    "display_name": "Python 3 (durable_nb browser tests)",
                    "language": "python",
                }
            )
        )
        for name, values in LAB_SETTINGS.items():
            path = home / "settings" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(values))

    def api(self, path: str) -> Any:
        request = urllib.request.Request(
            f"{self.base_url}{path}", headers={"Authorization": f"token {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.load(response)

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"jupyter lab exited ({self.process.returncode}):\n{self.log()}")
            try:
                self.api("/api/status")
                return
            except OSError:
                if time.monotonic() > deadline:
                    log = self.log()
                    raise RuntimeError(f"jupyter lab not up after {timeout} s:\n{log}") from None
                time.sleep(0.2)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-20000:]

    def stop(self) -> None:
        # Its kernels are its children: a terminate lets it shut them down first.
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()


# Package scope (tests/browser is a package for it): one server and one browser for all
# browser tests, gone before any other test runs. Not session scope: while Playwright's
# sync API is started it marks its event loop as the thread's running loop, and the
# tests of durable_nb that check there is no running loop would then see one.
@pytest.fixture(scope="package")
def lab_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabServer]:
    _require_browser_stack()
    server = LabServer(tmp_path_factory.mktemp("lab_home"), tmp_path_factory.mktemp("lab_root"))
    try:
        server.wait_ready()
        argv = server.api("/api/kernelspecs")["kernelspecs"]["python3"]["spec"]["argv"]
        assert argv[0] == sys.executable, f"the python3 kernel is not this interpreter: {argv}"
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="package")
def chromium(lab_server: LabServer) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
    # Fail here, not later in some unrelated test, if Playwright left its loop behind.
    leaked = asyncio._get_running_loop()
    assert leaked is None, f"Playwright left a running event loop behind: {leaked}"


@pytest.fixture
def lab(
    request: pytest.FixtureRequest, lab_server: LabServer, chromium: Any, tmp_path: Path
) -> Iterator[Any]:
    """A fresh page on the server, in a folder of the test's own (see the docstring)."""
    from browser.lab_driver import Lab

    folder = lab_server.root / request.node.name.replace("[", "_").replace("]", "")
    folder.mkdir()
    for module in NOTEBOOKS.glob("*.py"):
        if module.name != "conftest.py":
            shutil.copy(module, folder)
    for notebook in NOTEBOOKS.glob("*.ipynb"):
        _copy_without_outputs(notebook, folder / notebook.name)
    context = chromium.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(30_000)
    driver = Lab(page, lab_server.base_url, lab_server.token, folder.name)
    artifacts = Path(os.environ.get(ARTIFACTS_ENV) or tmp_path / "artifacts") / folder.name
    request.node.stash[_LAB] = (driver, artifacts, lab_server)
    try:
        yield driver
    finally:
        context.close()
        _shut_down_kernels(lab_server)


def _copy_without_outputs(source: Path, target: Path) -> None:
    """The saved outputs hold widget views of models that no longer exist (they would
    render as errors) and results a broken run could pass for its own: drop them."""
    notebook = json.loads(source.read_text())
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
    target.write_text(json.dumps(notebook, indent=1))


def _shut_down_kernels(server: LabServer) -> None:
    """Each test's kernel goes with it: two CPU cores are not enough for idle ones."""
    for kernel in server.api("/api/kernels"):
        request = urllib.request.Request(
            f"{server.base_url}/api/kernels/{kernel['id']}",
            method="DELETE",
            headers={"Authorization": f"token {server.token}"},
        )
        urllib.request.urlopen(request, timeout=10).close()


_LAB = pytest.StashKey[tuple[Any, Path, LabServer]]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """On a failure, save what the browser shows while the page is still open, and name
    the folder in the report."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if report.when != "call" or not report.failed or _LAB not in item.stash:
        return
    driver, artifacts, server = item.stash[_LAB]
    saved = driver.save_artifacts(artifacts)
    (artifacts / "server.log").write_text(server.log())
    names = ", ".join(p.name for p in [*saved, artifacts / "server.log"])
    report.sections.append(("browser artifacts", f"saved in {artifacts}: {names}"))
