"""Entry points that run orchestrations: ``await orch(...)``, ``orch.run(...)``,
``orch.start(...)``, and the process-wide settings behind them (``configure``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from durable_nb import interrupts, management
from durable_nb.blocking import block_on, refuse_original_nest_asyncio
from durable_nb.engine import Outcome
from durable_nb.engine.awaited import runs_an_orchestrator
from durable_nb.engine.runaway import RUNAWAY_CALLS
from durable_nb.errors import (
    EventLoopError,
    FingerprintError,
    InstanceBusyError,
)
from durable_nb.execution import Execution
from durable_nb.finality import changes_since_completed, input_digest
from durable_nb.handles import InstanceHandle, interrupted_message, unwrap, user_frames
from durable_nb.history import Status
from durable_nb.progress import Progress
from durable_nb.resources import DEFAULT_MAX_WORKERS, Resources
from durable_nb.settings import check_instance_id, check_settings
from durable_nb.store import CheckpointStore, DiskCacheStore, InstanceRecord

if TYPE_CHECKING:
    from durable_nb.definitions import ChildCall, Orchestrator


logger = logging.getLogger(__name__)


class Runtime:
    """Process-wide settings and the instances running in this process."""

    def __init__(
        self,
        store: CheckpointStore | str | os.PathLike[str] | None = None,
        executor: Any = None,
        progress: str = "auto",
        max_workers: int = DEFAULT_MAX_WORKERS,
    ) -> None:
        self._store: CheckpointStore | None = None
        self._store_path: str | os.PathLike[str] | None = None
        self.resources = Resources(max_workers)
        if executor is not None:
            self.resources.set_executor(executor)
        self.progress_mode = "auto"
        self.busy_timeout = 0.0  # seconds to wait for another kernel's run of an instance
        # Rounds (resumes of the orchestrator) calling one activity with no durable timer
        # between them after which a RunawayOrchestratorWarning is issued; 0: never.
        self.runaway_calls = RUNAWAY_CALLS
        self._active: dict[str, asyncio.Task[Outcome]] = {}
        self._executions: dict[str, Execution] = {}
        # The progress of each top-level run, for its handles (a final summary to show).
        self.progress_of: weakref.WeakKeyDictionary[asyncio.Task[Outcome], Progress] = (
            weakref.WeakKeyDictionary()
        )
        self.configure(store=store, progress=progress)

    # ------------------------------------------------------------------ settings

    def configure(
        self,
        *,
        store: CheckpointStore | str | os.PathLike[str] | None = None,
        executor: Any = None,
        executors: dict[str, Any] | None = None,
        progress: str | None = None,
        max_workers: int | None = None,
        max_in_flight: int | None = None,
        busy_timeout: float | None = None,
        runaway_calls: int | None = None,
    ) -> None:
        """Change where checkpoints live, how activities run and how progress shows."""
        check_settings(
            progress=progress,
            max_workers=max_workers,
            max_in_flight=max_in_flight,
            busy_timeout=busy_timeout,
            runaway_calls=runaway_calls,
        )
        if runaway_calls is not None:
            self.runaway_calls = runaway_calls
        if busy_timeout is not None:
            self.busy_timeout = float(busy_timeout)
        if progress is not None:
            self.progress_mode = progress
        if store is not None:
            if self._store is not None:
                self._store.close()
            if isinstance(store, (str, os.PathLike)):
                self._store, self._store_path = None, store
            else:
                self._store, self._store_path = store, None
        if executor is not None:
            self.resources.set_executor(executor)
        for name, value in (executors or {}).items():
            self.resources.set_executor(value, name)
        if max_workers is not None:
            self.resources.max_workers = max_workers
        if max_in_flight is not None:
            self.resources.max_in_flight = max_in_flight

    @property
    def store(self) -> CheckpointStore:
        """The checkpoint store, opened on first use."""
        if self._store is None:
            self._store = DiskCacheStore(self._store_path)
        return self._store

    def close(self) -> None:
        """Release the store and the thread pool (running threads finish first)."""
        if self._store is not None:
            self._store.close()
            self._store = None
        self.resources.close()

    # ------------------------------------------------------------------ running

    def _prepare(
        self,
        orch: Orchestrator,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        instance_id: str | None,
    ) -> tuple[dict[str, Any], str]:
        arguments = orch.bind_input(args, kwargs)
        if instance_id is None:
            ids = orch.instance_ids_for(args, kwargs, self.store.key_schemes)
            # An instance an older release started keeps the id it gave it (the ids
            # differ only for inputs whose digest changed, such as arrays).
            instance_id = next(
                (found for found in ids[1:] if self.store.get_instance(found)), ids[0]
            )
        return arguments, check_instance_id(instance_id)

    def _launch(
        self,
        orch: Orchestrator,
        arguments: dict[str, Any],
        instance_id: str,
        fresh: bool,
        background: bool = False,
    ) -> asyncio.Task[Outcome]:
        """Start (or attach to) a run; ``background``: the caller gets a handle and its
        cell ends at once (start, rewind), so the final summary waits for ``await h``."""
        running = self._active.get(instance_id)
        if running is not None and not running.done():
            return self._attach(running, orch, arguments, instance_id, fresh)
        if fresh:
            _, refused = management.purge(self.store, [instance_id])
            if refused and "running" in refused[0]:
                raise InstanceBusyError(
                    f"instance {instance_id!r} is running in another kernel; fresh=True "
                    "cannot start it over while it runs",
                    instance_id=instance_id,
                )
        record = self.store.get_instance(instance_id)
        if record is None:
            # The record exists from the start, so status() and raise_event() work in
            # the same cell that started the run.
            now = time.time()
            record = InstanceRecord(
                instance_id, orch.name, created_at=now, updated_at=now, input=arguments
            )
            if not self.store.storable(arguments):
                record.input = None
            self.store.put_instance(record)
        progress = Progress(orch.name, instance_id)
        progress.summary_deferred = background
        progress.on_approval = lambda name, value: self.raise_event(instance_id, name, value)
        from durable_nb.widgets import attach_view

        attach_view(progress, self.progress_mode)
        task = asyncio.ensure_future(
            self._run_generations(orch, arguments, instance_id, progress, None, record)
        )
        self.progress_of[task] = progress
        self._active[instance_id] = task
        task.add_done_callback(lambda _t: self._forget(instance_id, task))
        interrupts.watch(task)
        return task

    def _attach(
        self,
        running: asyncio.Task[Outcome],
        orch: Orchestrator,
        arguments: dict[str, Any],
        instance_id: str,
        fresh: bool,
    ) -> asyncio.Task[Outcome]:
        """The live run of an instance already running in this process, for a caller
        that runs it again (the same cell run twice, a handle lost to an interrupt)."""
        if fresh:
            raise InstanceBusyError(
                f"instance {instance_id!r} is running in this process; fresh=True cannot "
                "start it over while it runs: cancel it (handle.cancel(), or interrupt the "
                "cell awaiting it) or wait for it to end, then start it fresh",
                instance_id=instance_id,
            )
        execution = self._executions.get(instance_id)
        if execution is not None:
            other = execution.orchestrator.name
            try:
                same_input = execution.caller_input in (None, input_digest(orch, arguments))
            except FingerprintError:
                same_input = True  # cannot tell: an explicit instance id was given
            if other != orch.name or not same_input:
                what = f"orchestrator {other!r}" if other != orch.name else "another input"
                raise InstanceBusyError(
                    f"instance {instance_id!r} is running in this process with {what}; "
                    "wait for it to end, or choose another instance_id",
                    instance_id=instance_id,
                )
        return running

    async def _run_generations(
        self,
        orch: Orchestrator,
        arguments: dict[str, Any],
        instance_id: str,
        progress: Progress,
        parent: str | None,
        record: InstanceRecord | None = None,
    ) -> Outcome:
        """Run an instance, again and again while it continues as new. ``record``: the
        instance's as the caller just read or made it (else read here)."""
        try:
            caller_input: str | None = input_digest(orch, arguments)
        except FingerprintError:  # an explicit instance id spared digesting the input
            caller_input = None
        if record is None:
            record = self.store.get_instance(instance_id)
        if record is not None and record.status == Status.COMPLETED:
            changed = changes_since_completed(
                record, orch, arguments, caller_input, self.store.read_history
            )
            if changed == []:
                return self._recorded_outcome(record, progress)
            if changed:
                logger.info(
                    "%s completed before, but %s changed since: running it again "
                    "(results whose calls did not change are replayed)",
                    instance_id,
                    ", ".join(changed),
                )
        while True:  # ``record``: as read above, or after the continue-as-new below
            if record is not None and record.generation > 0 and record.input is not None:
                arguments = record.input  # an eternal instance resumes with its latest input
            execution = Execution(
                self, orch, arguments, instance_id, progress, parent, caller_input
            )
            self._executions[instance_id] = execution
            try:
                outcome = await execution.run()
            finally:
                if self._executions.get(instance_id) is execution:
                    del self._executions[instance_id]
            if outcome.status != Status.CONTINUED_AS_NEW or outcome.new_input is None:
                return outcome
            arguments = orch.bind_input(*outcome.new_input)
            record = self.store.get_instance(instance_id)
            assert record is not None
            record.input, record.generation = arguments, record.generation + 1
            record.status = Status.RUNNING.value
            self.store.reset_history(record)

    def _recorded_outcome(self, record: InstanceRecord, progress: Progress) -> Outcome:
        """The outcome of a completed instance whose code and input did not change."""
        calls = record.counts.get("calls", 0)
        record.runs += 1
        record.counts = {"calls": calls, "cached": calls, "ran": 0, "failed": 0, "retried": 0}
        record.updated_at = time.time()
        self.store.put_instance(record)
        progress.custom_status = record.custom_status
        made_of = record.completed_with or {}
        for name, total in (made_of.get("rows") or {"(recorded outcome)": calls}).items():
            row = progress.row(name)
            row.total = row.cached = total
        progress.finish(Status.COMPLETED, "the recorded outcome: completed before, nothing changed")
        return Outcome(Status.COMPLETED, output=record.output)

    def start_child(self, parent: Execution, call: ChildCall) -> asyncio.Future[Outcome]:
        """Start a sub-orchestration as its own instance, its rows joining the parent's
        view; the run's own task (a child of a fan-out of thousands costs no other)."""
        instance_id = call.instance_id
        running = self._active.get(instance_id)
        if running is not None and not running.done():
            refused: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
            refused.set_exception(
                InstanceBusyError(
                    f"sub-orchestration {instance_id!r} is already running in this kernel",
                    instance_id=instance_id,
                )
            )
            return refused
        # A retried child (ctx.call_sub_orchestrator_with_retry) keeps its one row group.
        progress = parent.progress.child(call.orchestrator.name, instance_id)
        task = asyncio.ensure_future(
            self._run_generations(
                call.orchestrator, call.arguments, instance_id, progress, parent.instance_id
            )
        )
        self._active[instance_id] = task
        task.add_done_callback(lambda _t: self._forget(instance_id, task))
        return task

    # ------------------------------------------------------------------ management

    def raise_event(self, instance_id: str, name: str, value: Any = None) -> None:
        """Deliver an external event; a run waiting for it sees it at once."""
        management.raise_event(self.store, instance_id, name, value)
        self._nudge(instance_id)

    def request(self, instance_id: str, action: str, reason: str = "") -> str:
        """terminate, suspend or resume an instance (running here, elsewhere, or not)."""
        text = management.request(self.store, instance_id, action, reason)
        self._nudge(instance_id)
        return text

    def _nudge(self, instance_id: str) -> None:
        execution = self._executions.get(instance_id)
        if execution is not None:
            execution.nudge()

    def rewind(self, instance_id: str) -> InstanceHandle:
        """Run a failed (or terminated, or interrupted) instance again in the background:
        every success is replayed, the failures run again."""
        orch, arguments = management.rewind_target(self.store, instance_id)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            raise EventLoopError(
                "rewind needs a running event loop, as in a kernel", instance_id=instance_id
            ) from None
        task = self._launch(orch, arguments, instance_id, fresh=False, background=True)
        return InstanceHandle(instance_id, task, self)

    def _forget(self, instance_id: str, task: asyncio.Task[Outcome]) -> None:
        if self._active.get(instance_id) is task:
            del self._active[instance_id]

    @runs_an_orchestrator("orch")
    async def run(
        self,
        orch: Orchestrator,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        instance_id: str | None = None,
        fresh: bool = False,
    ) -> Any:
        """Run or resume an instance on the running loop; returns its output."""
        __tracebackhide__ = True
        arguments, instance_id = self._prepare(orch, args, kwargs, instance_id)
        task = self._launch(orch, arguments, instance_id, fresh)
        with interrupts.cancel_on_sigint(task) as by_ctrl_c:
            try:
                outcome = await task
            except asyncio.CancelledError:
                message = interrupted_message(self, instance_id)
                if by_ctrl_c():  # Ctrl-C outside a kernel (terminal IPython)
                    raise KeyboardInterrupt(message) from None
                raise asyncio.CancelledError(message) from None
        return unwrap(outcome, instance_id)

    def run_blocking(
        self,
        orch: Orchestrator,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        instance_id: str | None = None,
        fresh: bool = False,
    ) -> Any:
        """Run an instance to its end from synchronous code, in a kernel or not."""
        __tracebackhide__ = True
        refuse_original_nest_asyncio(orch.name)
        if instance_id is None:
            instance_id = self._prepare(orch, args, kwargs, None)[1]
        coroutine = self.run(orch, args, kwargs, instance_id=instance_id, fresh=fresh)
        try:
            return block_on(coroutine)
        except KeyboardInterrupt:
            raise KeyboardInterrupt(interrupted_message(self, instance_id)) from None
        except Exception as exc:
            # Drop the event loop's own frames; the user's frames stay.
            raise exc.with_traceback(user_frames(exc.__traceback__))  # noqa: B904

    def start(
        self,
        orch: Orchestrator,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        instance_id: str | None = None,
        fresh: bool = False,
    ) -> InstanceHandle:
        """Start an instance in the background on the running loop."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            raise EventLoopError(
                f"{orch.name}.start() needs a running event loop, as in a Jupyter kernel; "
                f"in a script use {orch.name}.run(...) or await {orch.name}(...)"
            ) from None
        arguments, instance_id = self._prepare(orch, args, kwargs, instance_id)
        task = self._launch(orch, arguments, instance_id, fresh, background=True)
        return InstanceHandle(instance_id, task, self)

    def status(self, instance_id: str) -> InstanceRecord | None:
        """The record of an instance (None if the store has never seen it), with live
        counts when it is running in this kernel."""
        record = self.store.get_instance(instance_id)
        execution = self._executions.get(instance_id)
        if record is not None and execution is not None:
            record.counts = execution.progress.totals().counts(live=True)
        return record


_runtime: Runtime | None = None


def get_runtime() -> Runtime:
    """The process-wide runtime, created on first use."""
    global _runtime
    if _runtime is None:
        _runtime = Runtime()
    return _runtime


def configure(
    *,
    store: CheckpointStore | str | os.PathLike[str] | None = None,
    executor: Any = None,
    executors: dict[str, Any] | None = None,
    progress: str | None = None,
    max_workers: int | None = None,
    max_in_flight: int | None = None,
    busy_timeout: float | None = None,
    runaway_calls: int | None = None,
) -> Runtime:
    """Set where checkpoints live (a folder or a store); the default executor for
    synchronous activities ("threads", "processes", any concurrent.futures.Executor or a
    distributed.Client) and named ones for ``%%activity --executor NAME``; the progress
    display (auto, widget, text, none); the thread count; the most activity calls in
    flight at once across the kernel; and how long to wait when another kernel is
    running the same instance (``busy_timeout``, default 0: refuse at once); after how
    many rounds calling one activity with no durable timer in between a run warns that it
    looks like a runaway loop (``runaway_calls``, default 100,000; a fan-out is one round;
    0 turns it off)."""
    runtime = get_runtime()
    runtime.configure(
        store=store,
        executor=executor,
        executors=executors,
        progress=progress,
        max_workers=max_workers,
        max_in_flight=max_in_flight,
        busy_timeout=busy_timeout,
        runaway_calls=runaway_calls,
    )
    return runtime


def _reset_for_tests(factory: Callable[[], Runtime] | None = None) -> Runtime:
    """Replace the process-wide runtime (tests only)."""
    global _runtime
    if _runtime is not None:
        _runtime.close()
    _runtime = factory() if factory is not None else Runtime()
    return _runtime
