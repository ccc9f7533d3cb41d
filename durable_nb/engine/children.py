"""``ctx.call_sub_orchestrator`` and ``ctx.call_sub_orchestrator_with_retry``: the
engine's part that calls child orchestrations (:class:`ChildCalls`, a base of
:class:`~durable_nb.engine.replay.OrchestrationEngine`), and the timers it arms of its
own (a retry's wait)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic

from durable_nb.engine.protocols import A, O
from durable_nb.engine.results import ResultBook
from durable_nb.engine.retry import RecordedFailures, RetryingTask
from durable_nb.engine.retry_options import RetryOptions
from durable_nb.engine.step import Step
from durable_nb.engine.tasks import (
    ActivityTask,
    SubOrchestrationCall,
    SubOrchestrationTask,
    Task,
    TimerCall,
    TimerTask,
)
from durable_nb.engine.waits import TimerBook
from durable_nb.fingerprint import KEY_SCHEME, arguments_digest


class ChildCalls(Generic[A, O]):
    """Child orchestrations of the engine's run; the engine provides what is declared."""

    instance_id: str
    now: float
    code_used: dict[str, A | O]
    _resolve_sub: Callable[[Any], O]
    _step: Step[A, O]
    _pending: dict[str, ActivityTask | SubOrchestrationTask]
    _results: ResultBook
    _timers: TimerBook
    _failures: RecordedFailures

    def _next_call(self, triple: str, name: str) -> tuple[str, int, int]:
        raise NotImplementedError

    def _answer(
        self,
        task: ActivityTask | SubOrchestrationTask,
        key: str,
        name: str,
        triple: Callable[[int], str],
        occurrence: int,
    ) -> bool:
        raise NotImplementedError

    def call_sub_orchestrator(
        self,
        ref: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        instance_id: str | None,
        retry: RetryOptions | None = None,
    ) -> Task:
        orch = self._resolve_sub(ref)
        arguments = orch.bind_input(args, kwargs, via="ctx.call_sub_orchestrator")
        owner = f"sub-orchestrator {orch.name!r} (instance {self.instance_id})"
        name = f"sub:{orch.name}"

        def triple(scheme: int) -> str:
            digest = arguments_digest(owner, (), arguments, scheme=scheme)
            return f"{name}/{orch.code_digest(scheme)[:16]}/{digest}"

        current = triple(KEY_SCHEME)
        arg_digest = current.rsplit("/", 1)[1]
        self.code_used[name] = orch
        key, occurrence, position = self._next_call(current, name)
        if instance_id is None:
            suffix = f"#{occurrence}" if occurrence else ""
            instance_id = f"{self.instance_id}:{orch.name}-{arg_digest[:8]}{suffix}"
        call = SubOrchestrationCall(key, orch, arguments, instance_id, position)
        task = SubOrchestrationTask(call)
        if self._answer(task, key, name, triple, occurrence):
            if retry is not None:
                del self._pending[key]
                failures = self._failures.by_key.get(key, [])
                return RetryingTask(call, retry, self.now, failures, self._sub, self._timer)
            self._step.subs.append(call)
        return task

    def _sub(self, call: SubOrchestrationCall[O]) -> SubOrchestrationTask:
        """Start (an attempt of) a child: it is pending under its key until it ends."""
        self._pending[call.key] = task = SubOrchestrationTask(call)
        self._step.subs.append(call)
        return task

    def _timer(self, key: str, fire_at: float) -> Task:
        """A timer of the engine's own (a retry's wait) under ``key``: done if history
        says it fired, else armed at the fire time history recorded or ``fire_at``."""
        fired = self._timers.fired.get(key)
        recorded = self._timers.created.get(key)
        task = TimerTask(TimerCall(key, fire_at if recorded is None else recorded, not recorded))
        if fired is not None:
            task._complete(None, task.timer.fire_at, True, fired)
        else:
            self._timers.waiting[key] = task
            self._step.timers.append(task.timer)
        return task
