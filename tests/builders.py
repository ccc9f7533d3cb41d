"""Event builders for engine tests, in the style of the Durable Task SDK's executor tests."""

from __future__ import annotations

from typing import Any

from durable_nb import history
from durable_nb.engine import OrchestrationEngine, Step

T0 = 1_700_000_000.0


def started(t: float = T0, run: int = 1, name: str = "orch") -> history.ExecutionStarted:
    return history.ExecutionStarted(t, name, run)


def completed(key: str, result: Any, t: float = T0 + 1, attempts: int = 1) -> history.TaskCompleted:
    return history.TaskCompleted(t, key, key.split("/", 1)[0], result, attempts)


def failed(key: str, error: BaseException, t: float = T0 + 1) -> history.TaskFailed:
    return history.TaskFailed(
        t, key, key.split("/", 1)[0], type(error).__name__, str(error), 1, error
    )


def finished(
    status: str = "completed", calls: tuple[str, ...] | None = None
) -> history.ExecutionFinished:
    return history.ExecutionFinished(T0 + 100, status, "", calls)


def engine(fn: Any, strict: bool = False, **arguments: Any) -> OrchestrationEngine:
    return OrchestrationEngine(fn, arguments, name=fn.__name__, instance_id="inst-1", strict=strict)


def run_to_end(
    fn: Any, respond: Any, strict: bool = False, **arguments: Any
) -> tuple[OrchestrationEngine, list[history.Event]]:
    """Run ``fn`` live, answering every scheduled call with ``respond(call)``.

    Returns the engine and the history the run produced (as the runtime would record it).
    """
    eng = engine(fn, strict=strict, **arguments)
    events: list[history.Event] = [started()]
    step = eng.start(events[0])
    clock = T0
    while not eng.done:
        assert step.scheduled, "the orchestrator waits but nothing is scheduled"
        batch = []
        for call in step.scheduled:
            clock += 1
            batch.append(completed(call.key, respond(call), t=clock))
        events.extend(batch)
        step = eng.apply(batch)
    events.append(finished(eng.status, tuple(eng.calls) if strict else None))
    return eng, events


def keys(step: Step) -> list[str]:
    return [call.key for call in step.scheduled]
