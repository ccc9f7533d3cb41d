"""What an orchestrator waited on when it was not a durable task, in the user's words.

An orchestrator may wait only on ctx tasks. When it awaits ``asyncio.sleep``, a future,
a coroutine or calls another orchestrator directly, the error names that thing as the
user wrote it and says the durable way: ``ctx.create_timer`` to pause, activities for
I/O, ``ctx.call_sub_orchestrator`` for a child.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import os
from collections.abc import Callable
from typing import Any, TypeVar

from durable_nb.errors import OrchestratorError

_F = TypeVar("_F", bound=Callable[..., Any])

# The code of each coroutine function that runs an orchestrator (the runtime's
# ``run``), and the name of its parameter holding that orchestrator.
_ORCHESTRATOR_RUNS: dict[Any, str] = {}


def runs_an_orchestrator(parameter: str) -> Callable[[_F], _F]:
    """Mark a coroutine function that runs the orchestrator passed as ``parameter``.

    An orchestrator that waits on such a coroutine called another orchestrator
    directly (``await child(...)``, ``yield child(...)``); the error then names the
    child and says ``ctx.call_sub_orchestrator``.
    """

    def mark(function: _F) -> _F:
        _ORCHESTRATOR_RUNS[function.__code__] = parameter
        return function

    return mark


def not_a_task(name: str, instance_id: str, coroutine: Any, yielded: Any) -> OrchestratorError:
    """The error for orchestrator ``name`` (its ``coroutine``) having yielded ``yielded``."""
    # What the orchestrator awaits, outermost first: an ``await helper()`` in an
    # async def delegates, so the engine only sees what the innermost one yields.
    chain = [*_awaited_chain(coroutine)[1:], yielded]
    what = _describe_awaited(yielded, chain)
    hint = _WAIT_HINT
    if isinstance(yielded, (list, tuple)):
        hint = "to wait for several tasks, yield ctx.task_all([...])"
    elif _direct_call(chain) is not None:
        hint = (
            "to run one orchestrator from another, yield "
            "ctx.call_sub_orchestrator(child, ...); calling it starts a separate run"
        )
    elif what.startswith("asyncio.sleep"):
        hint = (
            "to pause, wait on ctx.create_timer(seconds) instead (a durable timer that "
            "survives a restart); do I/O inside activities"
        )
    if inspect.iscoroutine(yielded):
        yielded.close()  # it will never run: no "never awaited" warning on top
    return OrchestratorError(
        f"orchestrator {name!r} (instance {instance_id}) waited on {what}, "
        f"which is not a durable task; {hint}",
        orchestrator=name,
        instance_id=instance_id,
    )


_WAIT_HINT = (
    "wait on ctx tasks only: ctx.create_timer(seconds) to pause, and activities "
    "(ctx.call_activity) for I/O and any other real waiting"
)


def _awaited_chain(coroutine: Any) -> list[Any]:
    """``coroutine``, what it awaits (or yields from), what that awaits, and so on."""
    chain: list[Any] = []
    current = coroutine
    while current is not None and len(chain) < 64:
        chain.append(current)
        current = getattr(current, "cr_await", None) or getattr(current, "gi_yieldfrom", None)
    return chain


def _code_of(obj: Any) -> Any:
    return getattr(obj, "cr_code", None) or getattr(obj, "gi_code", None)


def _is_asyncio_sleep(obj: Any) -> bool:
    # By code, not by name: asyncio.sleep(d) awaits a bare Future (d > 0) or yields
    # None (d <= 0), neither of which says where it came from.
    code = _code_of(obj)
    return code is not None and (
        code is asyncio.tasks.sleep.__code__
        or (code.co_name == "sleep" and code.co_filename == asyncio.tasks.__file__)
    )


def _is_users(obj: Any) -> bool:
    """A coroutine or generator of the user's code (not asyncio's, not durable_nb's)."""
    code = _code_of(obj)
    if code is None:
        return False
    folder = os.path.dirname(code.co_filename)
    return not any(folder == f or folder.startswith(f + os.sep) for f in _NOT_USERS)


_NOT_USERS = (
    os.path.dirname(asyncio.tasks.__file__),
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),  # durable_nb
)


def _coroutine_name(coroutine: Any) -> str:
    return f"{getattr(coroutine, '__qualname__', type(coroutine).__name__)}()"


def _direct_call(chain: list[Any]) -> str | None:
    """``child(...)`` when the orchestrator called (and awaited) an orchestrator itself."""
    for coroutine in chain:
        parameter = _ORCHESTRATOR_RUNS.get(_code_of(coroutine))
        if parameter is not None:
            frame = getattr(coroutine, "cr_frame", None)
            orch = frame.f_locals.get(parameter) if frame is not None else None
            name = getattr(orch, "name", None)
            if not isinstance(name, str):
                name = "orchestrator"
            return f"{name}(...), a direct call of orchestrator {name!r}"
    return None


def _describe_awaited(yielded: Any, chain: list[Any]) -> str:
    """What the orchestrator waited on, in the user's words."""
    direct = _direct_call(chain)
    if direct is not None:
        return direct
    if any(_is_asyncio_sleep(c) for c in chain):
        what = "asyncio.sleep(...)"
    elif isinstance(yielded, asyncio.Task):
        what = f"an asyncio task of {_coroutine_name(yielded.get_coro())}"
    elif asyncio.isfuture(yielded):
        what = "an asyncio future (from loop.create_future, loop.run_in_executor, asyncio.sleep...)"
    elif isinstance(yielded, concurrent.futures.Future):
        what = "a concurrent.futures future (an executor's submit)"
    elif inspect.iscoroutine(yielded):
        what = f"the coroutine {_coroutine_name(yielded)}"
    else:
        return repr(yielded)
    inside = [c for c in chain if c is not yielded and _is_users(c)]
    if inside:
        what += f" inside {_coroutine_name(inside[-1])}"
    return what
