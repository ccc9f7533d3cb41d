"""What a caller gets back from a run: the handle of a started instance, and the
output or the failure of a finished one, presented with the user's frames only."""

from __future__ import annotations

import asyncio
import concurrent.futures
import sys
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from durable_nb.engine import Outcome
from durable_nb.errors import InstanceNotFinishedError, InstanceTerminatedError
from durable_nb.history import Status
from durable_nb.progress import Progress
from durable_nb.store import CheckpointStore, InstanceRecord

_PACKAGE_DIR = str(Path(__file__).resolve().parent)
_HIDDEN_DIRS = (
    _PACKAGE_DIR,
    str(Path(asyncio.__file__).resolve().parent),
    str(Path(concurrent.futures.__file__).resolve().parent),
)


class Host(Protocol):
    """What a handle needs of the runtime that started its run (runtime.py's ``Runtime``)."""

    @property
    def store(self) -> CheckpointStore: ...

    @property
    def progress_of(self) -> Mapping[asyncio.Task[Outcome], Progress]: ...

    def status(self, instance_id: str) -> InstanceRecord | None: ...

    def raise_event(self, instance_id: str, name: str, value: Any = None) -> None: ...

    def request(self, instance_id: str, action: str, reason: str = "") -> str: ...


class InstanceHandle:
    """A running (or finished) instance started with ``orch.start(...)``."""

    def __init__(self, instance_id: str, task: asyncio.Task[Outcome], runtime: Host) -> None:
        self.instance_id = instance_id
        self._task = task
        self._runtime = runtime

    def __await__(self) -> Any:
        # Shielded: interrupting the cell that awaits the handle stops the waiting,
        # not the run; use cancel() to stop the run.
        outcome = yield from asyncio.shield(self._task).__await__()
        progress = self._runtime.progress_of.get(self._task)
        if progress is not None and progress.summary_pending:
            from durable_nb.widgets import show_final_summary

            show_final_summary(progress)  # in this cell: the one that started it is over
        return unwrap(outcome, self.instance_id)

    def done(self) -> bool:
        return self._task.done()

    def result(self) -> Any:
        """The output, or the failure raised; InstanceNotFinishedError while running."""
        __tracebackhide__ = True
        if not self._task.done():
            raise InstanceNotFinishedError(
                f"instance {self.instance_id!r} is still running; await the handle or "
                "check handle.done() first",
                instance_id=self.instance_id,
            )
        return unwrap(self._task.result(), self.instance_id)

    def status(self) -> InstanceRecord:
        """The stored record: status, custom status, counts, times."""
        record = self._runtime.status(self.instance_id)
        assert record is not None, "a started instance always has a record"
        return record

    def cancel(self) -> bool:
        """Stop the run in this kernel now, as the interrupt button does; checkpoints
        are kept and the instance resumes when run again."""
        return self._task.cancel()

    def raise_event(self, name: str, value: Any = None) -> None:
        """Deliver an external event to the instance."""
        self._runtime.raise_event(self.instance_id, name, value)

    def terminate(self, reason: str = "") -> str:
        """Stop the instance at its next yield, for good (status terminated)."""
        return self._runtime.request(self.instance_id, "terminate", reason)

    def suspend(self, reason: str = "") -> str:
        """Start no new work until resume(); work in flight finishes and is kept."""
        return self._runtime.request(self.instance_id, "suspend", reason)

    def resume(self, reason: str = "") -> str:
        return self._runtime.request(self.instance_id, "resume", reason)

    def calls(
        self, status: str | Sequence[str] | None = None, activity: str | Sequence[str] | None = None
    ) -> Any:
        """The instance's calls, one row each (activity, call key, arguments preview,
        status, attempts, started, duration, error, cached): a pandas DataFrame when
        pandas is installed, else a list of dicts. Filter by ``status`` (completed,
        failed, running, retrying, waiting) and by ``activity`` name."""
        from durable_nb.calls import call_rows, calls_frame, select

        rows = call_rows(self._runtime.store.read_history(self.instance_id))
        return calls_frame(select(rows, status, activity))

    def timeline(self) -> Any:
        """A timeline chart of the instance's runs: shown as an image in a notebook,
        ``.save("run.html" | "run.svg" | "run.png")`` to write it. Needs matplotlib."""
        from durable_nb.timeline import chart_of

        return chart_of(self._runtime.store, self.instance_id, live=not self._task.done())

    def http_urls(self, base_url: str | None = None, root_dir: str | None = None) -> dict[str, str]:
        """The instance's URLs in the HTTP management API of the Jupyter server this
        kernel belongs to (found by itself; else pass the server's ``base_url`` and
        ``root_dir``), named as Durable Functions names them: statusQueryGetUri,
        sendEventPostUri, terminatePostUri, purgeHistoryDeleteUri... Requests need the
        server's token (``Authorization: token ...``); the URLs do not carry it."""
        from durable_nb.server_urls import http_urls

        return http_urls(self._runtime.store.location, self.instance_id, base_url, root_dir)

    def __repr__(self) -> str:
        state = "done" if self._task.done() else "running"
        return f"<InstanceHandle {self.instance_id} {state}>"


def interrupted_message(runtime: Host, instance_id: str) -> str:
    record = runtime.store.get_instance(instance_id)
    kept = f"{record.counts.get('ran', 0)} new result(s) were" if record else "results are"
    return (
        f"durable_nb: {instance_id} was interrupted; {kept} checkpointed and calls still "
        "running in threads will be kept when they finish. Run it again to resume."
    )


def unwrap(outcome: Outcome, instance_id: str | None = None) -> Any:
    """The output of a run, or the error it ended with."""
    __tracebackhide__ = True
    if outcome.status == Status.TERMINATED:
        raise InstanceTerminatedError(
            f"the instance was {outcome.message}; run it again to resume it, or pass "
            "fresh=True to start over",
            instance_id=instance_id,
            status=outcome.status,
        )
    if outcome.failure is not None:
        failure = outcome.failure
        raise failure.with_traceback(user_frames(failure.__traceback__))
    return outcome.output


def _hidden_dirs() -> tuple[str, ...]:
    """Our frames, asyncio's, and those of executors' libraries already imported."""
    hidden = list(_HIDDEN_DIRS)
    for name in ("distributed", "dask", "cloudpickle"):
        module = sys.modules.get(name)
        if module is not None and getattr(module, "__file__", None):
            hidden.append(str(Path(module.__file__).resolve().parent))  # type: ignore[arg-type]
    return tuple(hidden)


def user_frames(tb: types.TracebackType | None) -> types.TracebackType | None:
    """The traceback without durable_nb's, asyncio's and executor libraries' frames."""
    hidden = _hidden_dirs()
    kept: list[types.TracebackType] = []
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if not filename.startswith(hidden):
            kept.append(tb)
        tb = tb.tb_next
    rebuilt: types.TracebackType | None = None
    for entry in reversed(kept):
        rebuilt = types.TracebackType(rebuilt, entry.tb_frame, entry.tb_lasti, entry.tb_lineno)
    return rebuilt
