"""Event builders for engine tests, in the style of the Durable Task SDK's executor tests."""

from __future__ import annotations

from typing import Any

from durable_nb import history
from durable_nb.definitions import Activity, Orchestrator, resolve_activity, resolve_orchestrator
from durable_nb.engine import OrchestrationEngine, Step
from durable_nb.fingerprint import KEY_SCHEME

T0 = 1_700_000_000.0


def started(
    t: float = T0, run: int = 1, name: str = "orch", key_scheme: int = KEY_SCHEME
) -> history.ExecutionStarted:
    return history.ExecutionStarted(t, name, run, key_scheme)


def completed(key: str, result: Any, t: float = T0 + 1, attempts: int = 1) -> history.TaskCompleted:
    return history.TaskCompleted(t, key, key.split("/", 1)[0], result, attempts)


def failed(key: str, error: BaseException, t: float = T0 + 1) -> history.TaskFailed:
    return history.TaskFailed(
        t, key, key.split("/", 1)[0], type(error).__name__, str(error), 1, error=error
    )


def finished(
    status: str = "completed", calls: tuple[str, ...] | None = None
) -> history.ExecutionFinished:
    return history.ExecutionFinished(T0 + 100, status, "", calls)


def new_engine(
    fn: Any, arguments: dict[str, Any], **options: Any
) -> OrchestrationEngine[Activity, Orchestrator]:
    """An engine for ``fn`` that resolves definitions as the runtime does (the registry)."""
    options.setdefault("name", getattr(fn, "__name__", "orch"))
    options.setdefault("instance_id", "inst-1")
    return OrchestrationEngine(
        fn,
        arguments,
        resolve_activity=resolve_activity,
        resolve_orchestrator=resolve_orchestrator,
        **options,
    )


def engine(
    fn: Any, strict: bool = False, **arguments: Any
) -> OrchestrationEngine[Activity, Orchestrator]:
    return new_engine(fn, arguments, strict=strict)


def run_to_end(
    fn: Any, respond: Any, strict: bool = False, **arguments: Any
) -> tuple[OrchestrationEngine[Activity, Orchestrator], list[history.Event]]:
    """Run ``fn`` live, answering every scheduled call with ``respond(call)``.

    Returns the engine and the history the run produced (as the runtime would record it).
    """
    eng = engine(fn, strict=strict, **arguments)
    events: list[history.Event] = [started()]
    step = eng.start(events[0])
    events += step.events  # the history the engine's decisions imply, as the runtime writes it
    clock = T0
    while not eng.done:
        assert step.scheduled, "the orchestrator waits but nothing is scheduled"
        batch = []
        for call in step.scheduled:
            clock += 1
            batch.append(completed(call.key, respond(call), t=clock))
        events.extend(batch)
        step = eng.apply(batch)
        events += step.events
    return eng, events


def keys(step: Step[Any, Any]) -> list[str]:
    return [call.key for call in step.scheduled]


# ----------------------------------------------------------------- timers, events, children


def timer_created(key: str, fire_at: float, t: float = T0) -> history.TimerCreated:
    return history.TimerCreated(t, key, fire_at)


def timer_fired(key: str, t: float) -> history.TimerFired:
    return history.TimerFired(t, key)


def raised(name: str, value: Any, t: float = T0 + 1) -> history.EventRaised:
    return history.EventRaised(t, name, value)


def sub_completed(
    key: str, child_id: str, result: Any, t: float = T0 + 1
) -> history.SubOrchestrationCompleted:
    return history.SubOrchestrationCompleted(t, key, child_id, result)


def sub_failed(
    key: str, child_id: str, error: BaseException, t: float = T0 + 1
) -> history.SubOrchestrationFailed:
    return history.SubOrchestrationFailed(t, key, child_id, type(error).__name__, str(error), error)


def control(action: str, reason: str = "", t: float = T0 + 1) -> history.ControlRequested:
    return history.ControlRequested(t, action, reason)


class LiveRun:
    """Drive ``fn`` live, recording the history in order as the runtime would.

    What each step emits (``TimerCreated``, ``TaskScheduled``...) is recorded right
    after the events that led to it; :meth:`replay` runs a second engine on that history.
    """

    def __init__(self, fn: Any, **arguments: Any) -> None:
        self.fn, self.arguments = fn, arguments
        self.engine = engine(fn, **arguments)
        self.history: list[history.Event] = [started()]
        self.step = self._record(self.engine.start(self.history[0]), T0)

    def _record(self, step: Step[Any, Any], t: float) -> Step[Any, Any]:
        self.history.extend(step.events)
        return step

    def apply(self, *events: history.Event) -> Step[Any, Any]:
        self.history.extend(events)
        t = max((e.timestamp for e in events), default=T0)
        self.step = self._record(self.engine.apply(events, t), t)
        return self.step

    def replay(self, t: float = T0 + 1000) -> tuple[OrchestrationEngine, Step]:
        """A new engine that loads the recorded history and starts run 2 at ``t``."""
        eng = engine(self.fn, **self.arguments)
        eng.load([*self.history, finished(self.engine.status)])
        return eng, eng.start(started(t, run=2))
