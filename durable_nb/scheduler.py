"""Running the due ticks of the schedules of stores (:mod:`durable_nb.schedules`).

A pass (:func:`run_due`) reads a store's schedules and, for each one whose latest tick
has not been handled, either starts its notebook or, when the run it started last is
still going, skips the tick (one run at a time per schedule; the skip is recorded and
logged). Several ticks missed while no scheduler ran give one run. Taking a tick is a
compare-and-set in the store, so two schedulers on one store never both launch it.

Runs are started by a :class:`Launcher`, the seam between deciding and running:
``durable-nb schedule run`` and the Jupyter server extension use
:func:`default_launcher`. Passes are cheap (one small query per store), so the loops
simply repeat them: the terminal's until the next tick, the server's every N seconds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from durable_nb import notebook_runs
from durable_nb.errors import DurableNbError
from durable_nb.schedule_times import iso
from durable_nb.schedules import Schedule, ScheduleBook, claimer

logger = logging.getLogger(__name__)


class Launcher(Protocol):
    """Starts a notebook run and tells when it is over."""

    def start(self, notebook: Path, store: Path, parameters: dict[str, Any], origin: str) -> str:
        """Start running ``notebook`` against ``store`` without waiting; the run's id."""
        ...

    def finished(self, store: Path, instance_id: str) -> bool:
        """Whether the run ``instance_id`` is over (ended, failed, or its runner died)."""
        ...


class NotebookRunLauncher:
    """Starts each run with :func:`durable_nb.notebook_runs.start_run`: an instance of the
    store (listed by ``durable-nb list``, with the HTTP API's status and terminate),
    whose runner runs the notebook headless in a process of its own session (a Ctrl-C
    of the scheduler's terminal does not reach it, and it outlives the scheduler)."""

    def start(self, notebook: Path, store: Path, parameters: dict[str, Any], origin: str) -> str:
        run_id = notebook_runs.start_run(
            notebook, store=store, parameters=parameters, origin=f"schedule {origin}"
        )
        logger.info("schedule %s: started %s as run %s", origin, notebook, run_id)
        return run_id

    def finished(self, store: Path, instance_id: str) -> bool:
        return notebook_runs.is_finished(store, instance_id)


@dataclass(frozen=True)
class CallLauncher:
    """A launcher made of two functions: ``start_run(notebook, *, store, parameters,
    origin) -> id`` (the shape of ``notebook_runs.start_run``) and ``is_finished(store,
    id) -> bool``."""

    start_run: Callable[..., str]
    is_finished: Callable[[Path, str], bool]

    def start(self, notebook: Path, store: Path, parameters: dict[str, Any], origin: str) -> str:
        return self.start_run(notebook, store=store, parameters=parameters, origin=origin)

    def finished(self, store: Path, instance_id: str) -> bool:
        return self.is_finished(store, instance_id)


# The one place that chooses how scheduled runs start (the terminal's loop, the server
# extension and `schedule list` all call it).
def default_launcher() -> Launcher:
    return NotebookRunLauncher()


@dataclass(frozen=True)
class TickOutcome:
    """What a pass did with one due tick: ``started`` (with ``instance_id``),
    ``skipped`` (the last run still going), ``failed`` (the launch raised: ``error``)."""

    schedule_id: str
    tick: float
    action: str
    instance_id: str | None = None
    error: str | None = None


def run_due(store: Path, launcher: Launcher, now: float | None = None) -> list[TickOutcome]:
    """Handle the due tick of every schedule of ``store``; what was done, by schedule.
    A tick another scheduler took first is left out."""
    from durable_nb.schedule_times import due_tick

    book = ScheduleBook(store)
    moment = time.time() if now is None else now
    outcomes: list[TickOutcome] = []
    for schedule in book.list():
        tick = due_tick(schedule.timing, schedule.done, moment)
        if tick is None:
            continue
        outcome = _handle(book, schedule, tick, launcher, moment)
        if outcome is not None:
            outcomes.append(outcome)
    return outcomes


def _still_running(book: ScheduleBook, schedule: Schedule, launcher: Launcher) -> bool:
    if schedule.launching:
        return True
    instance_id = schedule.state.get("instance")
    return isinstance(instance_id, str) and not launcher.finished(book.store, instance_id)


def _handle(
    book: ScheduleBook, schedule: Schedule, tick: float, launcher: Launcher, now: float
) -> TickOutcome | None:
    if _still_running(book, schedule, launcher):

        def skip(state: dict[str, Any]) -> None:
            state.update(skipped=int(state.get("skipped", 0)) + 1, skipped_tick=tick)

        if not book.take(schedule, tick, skip):
            return None
        logger.warning(
            "schedule %s: skipped the tick of %s: its last run %s is still going",
            schedule.schedule_id,
            iso(tick),
            schedule.state.get("instance") or "(being started)",
        )
        return TickOutcome(schedule.schedule_id, tick, "skipped")

    def claim(state: dict[str, Any]) -> None:
        state.update(tick=tick, instance=None, error=None, started=now, launching=claimer())

    if not book.take(schedule, tick, claim):
        return None  # another scheduler took this tick
    notebook = schedule.notebook_path(book.store)
    try:
        if notebook.is_file():
            instance_id = launcher.start(
                notebook, book.store, schedule.parameters, f"schedule:{schedule.schedule_id}"
            )
        else:
            instance_id, error = None, f"no notebook at {notebook} (was it moved or renamed?)"
    except (DurableNbError, OSError) as exc:
        instance_id, error = None, str(exc)
    if instance_id is None:
        book.settle(schedule.schedule_id, tick, {"error": error})
        logger.error(
            "schedule %s: the run of the tick of %s did not start: %s",
            schedule.schedule_id,
            iso(tick),
            error,
        )
        return TickOutcome(schedule.schedule_id, tick, "failed", error=error)
    book.settle(schedule.schedule_id, tick, {"instance": instance_id})
    logger.info("schedule %s: tick of %s started %s", schedule.schedule_id, iso(tick), instance_id)
    return TickOutcome(schedule.schedule_id, tick, "started", instance_id=instance_id)


def next_tick(store: Path, now: float | None = None) -> float | None:
    """When the next tick of any schedule of ``store`` is due (None: no schedules)."""
    moment = time.time() if now is None else now
    ticks = [s.timing.next_tick(max(moment, s.done or 0.0)) for s in ScheduleBook(store).list()]
    return min(ticks, default=None)


def run_status(store: Path, instance_id: str, launcher: Launcher) -> str:
    """The status of a run, for ``schedule list``: its instance record's when the store
    has one, else whether the launcher sees it going."""
    from durable_nb.store import DiskCacheStore

    opened = DiskCacheStore(store)
    try:
        record = opened.get_instance(instance_id)
    finally:
        opened.close()
    if record is not None:
        return str(record.status)
    return "ended" if launcher.finished(store, instance_id) else "running"


def run_forever(
    stores: Callable[[], list[Path]],
    launcher: Launcher,
    stop: threading.Event,
    poll: float = 30.0,
    on_outcome: Callable[[Path, TickOutcome], None] | None = None,
) -> None:
    """Passes over ``stores()`` until ``stop`` is set, sleeping until the next tick
    (at most ``poll`` seconds, so schedules added meanwhile are seen)."""
    while not stop.is_set():
        wake = time.time() + poll
        for store in stores():
            try:
                for outcome in run_due(store, launcher):
                    if on_outcome is not None:
                        on_outcome(store, outcome)
                upcoming = next_tick(store)
            except DurableNbError as exc:  # one bad store does not stop the others
                logger.error("schedules of the store at %s: %s", store, exc)
                continue
            if upcoming is not None:
                wake = min(wake, upcoming)
        stop.wait(max(0.0, wake - time.time()))
