"""Running an orchestration to its end from synchronous code (``orch.run()``): in a
script, on a loop of its own; in a kernel, by re-entering the kernel's running loop with
nest-asyncio2's patch, and never under the original nest-asyncio's."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from durable_nb.errors import EventLoopError


def _patched_by_nest_asyncio(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether the original nest-asyncio patched ``loop`` (its ``apply()`` marks the
    loop's class ``_nest_patched``; nest-asyncio2 marks it ``_nest_asyncio2`` too). Once
    one of the two patched a loop class, the other's ``apply()`` leaves it alone."""
    return bool(getattr(loop, "_nest_patched", False)) and not hasattr(loop, "_nest_asyncio2")


def refuse_original_nest_asyncio(name: str) -> None:
    """``orch.run()`` on a running loop patched by the original nest-asyncio would
    re-enter it under that patch, which on ipykernel 7 completes the run but loses the
    cells queued behind it (nest-asyncio's bug); refuse before anything starts."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    if _patched_by_nest_asyncio(loop):
        raise EventLoopError(
            f"{name}.run() refused: this kernel's event loop was patched by the original "
            "nest_asyncio package (nest_asyncio.apply()), and re-entering the loop under "
            "that patch makes the kernel lose the cells queued after this one. Nothing was "
            f"started. In a notebook cell use `await {name}(...)` instead, which needs no "
            "nesting; or replace nest_asyncio with the maintained nest-asyncio2 "
            "(`import nest_asyncio2; nest_asyncio2.apply()`) and restart the kernel, since "
            "the original's patch cannot be undone in a running kernel"
        )


def block_on(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Run ``coroutine`` to its end, re-entering the running loop if there is one."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    if loop is None:  # outside the except block: errors get no misleading context
        return asyncio.run(coroutine)
    # Inside a kernel the loop is already running; re-entering it needs the
    # nested-loop patch. nest-asyncio2, not nest-asyncio: the original silently
    # drops queued cells on ipykernel 7 (refuse_original_nest_asyncio says so first).
    import nest_asyncio2

    nest_asyncio2.apply(loop)
    task = loop.create_task(coroutine)
    try:
        return loop.run_until_complete(task)
    except KeyboardInterrupt:
        task.cancel()
        try:
            loop.run_until_complete(task)
        except (asyncio.CancelledError, KeyboardInterrupt):
            pass
        raise
