"""Where synchronous activities run: threads (default), processes, or Dask.

Every executor is anything with ``submit(fn, *args, **kwargs)`` returning a
``concurrent.futures.Future``: the dispatcher needs nothing else, so failures,
retries, timeouts and concurrency limits behave the same everywhere. ``async def``
activities always run on the event loop.

Worker processes started from a kernel are in the kernel's process group, so the
interrupt button's SIGINT would kill them: the process pool and Dask workers (and
their nannies) are made to ignore SIGINT. The orchestration stops; the workers finish
what they run, and the results are kept.
"""

from __future__ import annotations

import collections
import concurrent.futures
import linecache
import multiprocessing
import os
import re
import signal
import time
import types
import uuid
from typing import Any, Generic, Protocol, TypeVar

from durable_nb.errors import ActivityLostError, ConfigurationError, ResultNotStorableError
from durable_nb.threads import ActivityThreads

T = TypeVar("T")


class ActivityExecutor(Protocol):
    """The seam between the dispatcher and whatever runs activities."""

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]: ...

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None: ...


def ignore_sigint() -> None:
    """Run in worker processes: the kernel's interrupt is not for them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def unsendable_result(fn: Any, type_name: str, why: object) -> ResultNotStorableError:
    """The error for a result that cannot travel back from a worker process."""
    name = getattr(fn, "__name__", repr(fn))
    return ResultNotStorableError(
        f"activity {name!r} returned a {type_name}, which cannot be sent back from its "
        f"worker process ({why}); return plain data (numbers, strings, lists, dicts, "
        "arrays, DataFrames), or run this activity on threads (configure(executors=...) "
        "and %%activity --executor NAME)",
        activity=name,
    )


_DYNAMIC_CODE = "<dynamic-code>"  # what cloudpickle names the file of code sent by value


def source_file(fn: Any) -> str | None:
    """The file a function's code comes from (a notebook cell's, for cell functions)."""
    code = getattr(fn, "__code__", None)
    return code.co_filename if isinstance(code, types.CodeType) else None


def cell_source(filename: str | None) -> list[str] | None:
    """The source lines of a file that exists only in this process's line cache (a
    notebook cell's), for a worker to format tracebacks with; None for real files."""
    if not filename or os.path.exists(filename):
        return None
    return linecache.getlines(filename) or None


def call_from_source(
    fn: Any, filename: str | None, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """In a worker: call ``fn`` after giving its code back the file name that
    cloudpickle replaced, so a traceback names the cell and the kernel, which has the
    cell's source, shows the failing line. Arguments travel as one tuple and one dict
    so that no keyword of the activity is taken for one of the executor's."""
    code = getattr(fn, "__code__", None)
    if filename and isinstance(code, types.CodeType) and code.co_filename == _DYNAMIC_CODE:
        fn.__code__ = _renamed(code, filename)
    return fn(*args, **kwargs)


def _renamed(code: types.CodeType, filename: str) -> types.CodeType:
    consts = tuple(
        _renamed(c, filename) if isinstance(c, types.CodeType) else c for c in code.co_consts
    )
    return code.replace(co_filename=filename, co_consts=consts)


def _call_pickled(payload: bytes) -> bytes:
    """In a worker process: run a cloudpickled call and cloudpickle its result."""
    import cloudpickle

    fn, filename, lines, args, kwargs = cloudpickle.loads(payload)
    if filename and lines:  # the traceback text is written here, from these lines
        linecache.cache[filename] = (sum(map(len, lines)), None, lines, filename)
    result = call_from_source(fn, filename, args, kwargs)
    try:
        return bytes(cloudpickle.dumps(result))
    except Exception as exc:
        raise unsendable_result(fn, type(result).__qualname__, exc) from None


def _nothing_to_cancel() -> bool:
    return False


class _RelayFuture(concurrent.futures.Future[Any]):
    """The kernel-side future of work running elsewhere. ``cancel()`` succeeds only if
    the work had not started, so a run that ends keeps (and checkpoints) what runs."""

    def __init__(self, cancel_remote: Any) -> None:
        super().__init__()
        self._cancel_remote = cancel_remote

    cancelling = False  # set while we cancel it ourselves

    def cancel(self) -> bool:
        if self.done():
            return False
        self.cancelling = True
        if not self._cancel_remote():
            self.cancelling = False
            return False
        return super().cancel()

    def settle(self) -> None:
        """Forget the remote work once done: it refers back to this future."""
        self._cancel_remote = _nothing_to_cancel


class ProcessExecutor:
    """A process pool that also runs functions defined in notebook cells.

    Functions from ``__main__`` (a kernel's cells) cannot be pickled by reference,
    so calls and results travel as cloudpickle payloads. Workers are spawned (not
    forked from a multi-threaded kernel) and ignore SIGINT.
    """

    def __init__(self, max_workers: int | None = None) -> None:
        self.max_workers = max_workers or os.cpu_count() or 2
        self._pool = concurrent.futures.ProcessPoolExecutor(
            self.max_workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=ignore_sigint,
        )

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        import cloudpickle

        filename = source_file(fn)
        payload = cloudpickle.dumps((fn, filename, cell_source(filename), args, kwargs))
        inner = self._pool.submit(_call_pickled, payload)
        outer = _RelayFuture(inner.cancel)

        def relay(done: concurrent.futures.Future[bytes]) -> None:
            outer.settle()
            if done.cancelled() or outer.done():
                return
            error = done.exception()
            if error is not None:
                outer.set_exception(error)
            else:
                try:
                    outer.set_result(cloudpickle.loads(done.result()))
                except Exception as exc:  # a result class the kernel cannot import
                    outer.set_exception(exc)

        inner.add_done_callback(relay)
        return outer

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=cancel_futures)

    def __repr__(self) -> str:
        return f"<ProcessExecutor {self.max_workers} workers>"


class DaskExecutor:
    """Activities on a Dask ``distributed.Client`` (a LocalCluster or a remote scheduler).

    The checkpoint store stays with the kernel: only calls and results travel.
    """

    def __init__(self, client: Any) -> None:
        self.client = client
        self._protect_workers()
        self._running: set[str] = set()
        self._running_at = float("-inf")

    def _protect_workers(self) -> None:
        """Workers ignore SIGINT now, and (through a worker plugin) whenever they are
        started again: client.restart(), a memory limit, a crash."""
        try:
            register = getattr(self.client, "register_plugin", None)
            if register is not None:
                register(_ignore_sigint_plugin()(), name="durable_nb-ignore-sigint")
            else:  # distributed before 2023.9
                self.client.register_worker_plugin(
                    _ignore_sigint_plugin()(), name="durable_nb-ignore-sigint"
                )
        except Exception as exc:
            raise ConfigurationError(
                f"could not make the Dask workers ignore the kernel's interrupt ({exc}); "
                "start the cluster with durable_nb.executors.local_cluster() instead",
                setting="executor",
                value=self.client,
            ) from exc

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        # The key names the activity on Dask's dashboard (its prefix before the dash).
        key = f"{getattr(fn, '__name__', 'activity')}-{uuid.uuid4().hex}"
        remote = self.client.submit(
            call_from_source, fn, source_file(fn), args, kwargs, key=key, pure=False
        )
        outer = _RelayFuture(lambda: self._cancel_if_queued(remote))

        def relay(done: Any) -> None:
            outer.settle()
            if outer.done() or outer.cancelling:
                return
            try:
                if done.status == "cancelled":
                    # Not our doing: client.restart() or a lost worker. Fail the attempt,
                    # so the retry policy decides, instead of waiting forever.
                    outer.set_exception(
                        ActivityLostError(
                            "the Dask task was cancelled by the cluster (client.restart(), "
                            "or its worker was lost); give the activity --retries to rerun it",
                            activity=getattr(fn, "__name__", None),
                        )
                    )
                    return
                error = done.exception()
                if error is not None:
                    outer.set_exception(_unsendable_on_dask(fn, error) or error)
                else:
                    outer.set_result(done.result())
            except Exception as exc:  # the scheduler went away, a result that won't travel
                if not outer.done():
                    outer.set_exception(_unsendable_on_dask(fn, exc) or exc)

        remote.add_done_callback(relay)
        return outer

    def _cancel_if_queued(self, remote: Any) -> bool:
        """Cancel a task the workers have not started; one scheduler query per burst."""
        now = time.monotonic()
        if now - self._running_at > 0.5:
            processing = self.client.processing()
            self._running = {key for keys in processing.values() for key in keys}
            self._running_at = now
        if remote.key in self._running:
            return False
        remote.cancel()
        return True

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        pass  # the client belongs to the user

    def __repr__(self) -> str:
        return f"<DaskExecutor {self.client.scheduler_info().get('address', '?')}>"


_DASK_UNSERIALIZABLE = re.compile(r"Could not serialize object of type (\S+)")


def _unsendable_on_dask(fn: Any, error: BaseException) -> ResultNotStorableError | None:
    """Dask's own error for a result it cannot serialize, in durable_nb's words."""
    found = _DASK_UNSERIALIZABLE.match(str(error)) if isinstance(error, TypeError) else None
    if found is None:
        return None
    cause = str(error).splitlines()[-1] if "\n" in str(error) else str(error)
    return unsendable_result(fn, found.group(1), cause)


def _ignore_sigint_plugin() -> type:
    """``_IgnoreSigint``: a Dask worker plugin, so its base class is distributed's. Made
    when first asked for (a Dask executor registers it, a worker unpickles it by name):
    importing distributed costs about half a second, which a kernel that never uses
    Dask should not pay at every start."""
    global _PLUGIN
    if _PLUGIN is None:
        try:
            from distributed.diagnostics.plugin import WorkerPlugin

            base: type = WorkerPlugin
        except ImportError:  # no distributed: the plugin is never used
            base = object

        def setup(self: Any, worker: Any) -> None:
            try:
                ignore_sigint()
            except ValueError:  # not the main thread: a worker inside the kernel
                pass

        _PLUGIN = type(
            "_IgnoreSigint",
            (base,),
            {
                "__module__": __name__,
                "__qualname__": "_IgnoreSigint",
                "__doc__": "Runs in every Dask worker process when it starts.",
                "setup": setup,
            },
        )
    return _PLUGIN


_PLUGIN: type | None = None


def __getattr__(name: str) -> Any:
    # Pickle finds the plugin's class by its module and name (in the worker too).
    if name == "_IgnoreSigint":
        return _ignore_sigint_plugin()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def local_cluster(**kwargs: Any) -> Any:
    """A Dask ``Client`` on a new ``LocalCluster`` whose workers ignore SIGINT.

    Keyword arguments go to ``LocalCluster`` (n_workers, threads_per_worker,
    processes=True...). To use an existing scheduler instead, pass
    ``distributed.Client("tcp://host:8786")`` to ``durable_nb.configure(executor=...)``.
    """
    from distributed import Client, LocalCluster

    kwargs.setdefault("processes", True)
    kwargs.setdefault("dashboard_address", ":0")  # a free port: never a port-clash warning
    # Activity failures are reported by durable_nb; the workers' own error logs would
    # print into notebook cells.
    kwargs.setdefault("silence_logs", 50)
    cluster = LocalCluster(**kwargs)  # type: ignore[no-untyped-call, unused-ignore]
    return Client(cluster)  # type: ignore[no-untyped-call, unused-ignore]


WINDOW_PER_WORKER = 2  # attempts submitted per worker: one running, one ready to go
DASK_WINDOW = 4096  # the scheduler queues and balances; enough for a large cluster
UNKNOWN_WINDOW = 1024  # an executor that does not say how many workers it has


def submit_window(executor: Any) -> int:
    """How many attempts of one run to keep submitted to ``executor`` at once; the
    dispatcher holds the rest until submitted ones end. A few per worker keep every
    worker busy, without the executor's per-call machinery for a whole fan-out."""
    if isinstance(executor, DaskExecutor):
        return DASK_WINDOW
    workers = getattr(executor, "max_workers", None)
    if not isinstance(workers, int):
        workers = getattr(executor, "_max_workers", None)  # concurrent.futures' pools
    if isinstance(workers, int) and workers > 0:
        return WINDOW_PER_WORKER * workers
    return UNKNOWN_WINDOW


class SubmitWindow(Generic[T]):
    """At most ``size`` attempts of one run submitted to one executor at once; the
    others wait here, in order, and are submitted as submitted ones end. A huge fan-out
    then holds the executor's per-call machinery (future, condition, work item) for a
    few calls only, not for every pending one."""

    __slots__ = ("executor", "size", "start_call", "submitted", "waiting")

    def __init__(self, executor: Any) -> None:
        self.executor = executor
        # The default pool's call without a Future (threads.py); others get submit().
        self.start_call = executor.start_call if isinstance(executor, ActivityThreads) else None
        self.size = submit_window(executor)
        self.submitted = 0
        self.waiting: collections.deque[T] = collections.deque()


def as_executor(value: Any) -> Any:
    """An executor from what ``configure(executor=...)`` accepts: a
    ``concurrent.futures.Executor``, a ``distributed.Client``, or "threads"/"processes"."""
    if value == "processes":
        return ProcessExecutor()
    if isinstance(value, str):
        raise ConfigurationError(
            f"unknown executor {value!r}: use 'threads', 'processes', a "
            "concurrent.futures.Executor or a distributed.Client",
            setting="executor",
            value=value,
        )
    if type(value).__name__ == "Client" and hasattr(value, "get_executor"):
        return DaskExecutor(value)
    if callable(getattr(value, "submit", None)):
        return value
    raise ConfigurationError(
        f"{value!r} cannot run activities: an executor needs a submit(fn, *args) method "
        "returning a concurrent.futures.Future",
        setting="executor",
        value=value,
    )
