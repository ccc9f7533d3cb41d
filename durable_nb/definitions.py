"""Activities and orchestrators: what ``%%activity``, ``%%orchestrator``, ``@activity``
and ``@orchestrator`` make, and the registry of activities by name."""

from __future__ import annotations

import ast
import datetime as _dt
import functools
import inspect
import weakref
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar, cast, overload

from durable_nb.engine.context import CLIENT_INPUT
from durable_nb.errors import (
    ActivityNotFoundError,
    DefinitionError,
    OrchestratorInputError,
    OrchestratorNotFoundError,
)
from durable_nb.fingerprint import KEY_SCHEME, arguments_digest, function_digest, node_digest
from durable_nb.options import ActivityOptions

if TYPE_CHECKING:
    from durable_nb.engine import ActivityCall, OrchestrationEngine, Step, SubOrchestrationCall
    from durable_nb.handles import InstanceHandle

    # The engine's generic parts, made of this module's definitions.
    ScheduledCall: TypeAlias = "ActivityCall[Activity]"
    ChildCall: TypeAlias = "SubOrchestrationCall[Orchestrator]"
    Engine: TypeAlias = "OrchestrationEngine[Activity, Orchestrator]"
    EngineStep: TypeAlias = "Step[Activity, Orchestrator]"

F = TypeVar("F", bound=Callable[..., Any])


class _CodeDigests:
    """The digests of a function's code under each key scheme, computed when first asked.

    The current scheme's digest keys new results; an older scheme's is asked for only
    when a history written by an older release is replayed (see :mod:`fingerprint`).
    """

    __slots__ = ("_digests", "_fn", "_node", "_version")

    def __init__(
        self,
        fn: Callable[..., Any],
        node: ast.FunctionDef | ast.AsyncFunctionDef | None,
        version: str | None,
        current: str | None,
    ) -> None:
        self._fn, self._node, self._version = fn, node, version
        self._digests: dict[int, str] = {KEY_SCHEME: current} if current else {}

    def get(self, scheme: int) -> str:
        found = self._digests.get(scheme)
        if found is None:
            if self._node is not None:
                found = node_digest(self._node, self._version, scheme=scheme)
            else:
                found = function_digest(self._fn, self._version, scheme=scheme)
            self._digests[scheme] = found
        return found


class Activity:
    """A unit of real work whose results are checkpointed.

    Called directly it is the plain function, for easy debugging; passed to
    ``ctx.call_activity`` it is scheduled, checkpointed and retried.
    """

    takes_message_id = False  # entity calls (entity_calls.py): passed their message's id

    def __init__(
        self,
        fn: Callable[..., Any],
        options: ActivityOptions | None = None,
        *,
        source_digest: str | None = None,
        name: str | None = None,
        source_node: ast.FunctionDef | ast.AsyncFunctionDef | None = None,
    ) -> None:
        if not callable(fn) or inspect.isclass(fn):
            raise DefinitionError(f"an activity must be a function, got {fn!r}")
        if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
            raise DefinitionError(
                f"activity {getattr(fn, '__name__', fn)!r} is a generator; activities must "
                "return their result (did you mean %%orchestrator?)",
                activity=getattr(fn, "__name__", None),
            )
        self.fn = fn
        self.name: str = _checked_name(name, fn, "activity")
        self.options = options or ActivityOptions()
        # ``source_node``: the function's AST as the cell defined it (%%activity), which
        # digests faster and more faithfully than source looked up again.
        self._code = _CodeDigests(fn, source_node, self.options.version, source_digest)
        self.source_digest = self._code.get(KEY_SCHEME)
        self.is_async = inspect.iscoroutinefunction(fn)
        functools.update_wrapper(self, fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def code_digest(self, scheme: int = KEY_SCHEME) -> str:
        """The digest of the normalised source under key ``scheme``."""
        return self._code.get(scheme)

    def arguments_mismatch(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
        """Why the signature cannot take these arguments, or None if it can (or has none
        to check). Asked only after a call failed with TypeError: the happy path pays
        nothing."""
        try:
            inspect.signature(self.fn).bind(*args, **kwargs)
        except TypeError as why:
            return str(why)
        except ValueError:  # no signature to check (some builtins)
            return None
        return None

    def __repr__(self) -> str:
        opts = self.options
        extras = [f"retries={opts.retries}"] if opts.retries else []
        if opts.timeout:
            extras.append(f"timeout={opts.timeout:g}s")
        if opts.concurrency:
            extras.append(f"concurrency={opts.concurrency}")
        return f"<activity {self.name}{' ' if extras else ''}{' '.join(extras)}>"


def _checked_name(name: str | None, fn: Callable[..., Any], kind: str) -> str:
    """The name to register ``fn`` under: ``name`` (``@activity(name=...)``), else its own."""
    if name is None:
        return str(getattr(fn, "__name__", repr(fn)))
    if not isinstance(name, str) or not name.strip() or "/" in name or name.startswith("sub:"):
        raise DefinitionError(
            f"{kind} name {name!r} cannot be used: give a non-empty string without '/' "
            "and not starting with 'sub:', e.g. name='SayHello'",
            **{kind: str(name)},
        )
    return name


_REGISTRY: dict[str, Activity] = {}
_WRAPPED: weakref.WeakKeyDictionary[Callable[..., Any], Activity] = weakref.WeakKeyDictionary()
# The plain function last called as an activity under each name, for find_activity.
_LAST_WRAPPED: dict[str, weakref.ref[Activity]] = {}


def register(act: Activity) -> Activity:
    """Make ``act`` reachable by name from ``ctx.call_activity("name")``; latest wins.
    Its plain function, passed to ``ctx.call_activity``, means it too (its name and
    options), registered under another name or not."""
    _REGISTRY[act.name] = act
    try:
        _WRAPPED[act.fn] = act
    except TypeError:  # a callable that takes no weak reference: found by name only
        pass
    return act


T = TypeVar("T")


def _by_name(registry: dict[str, T], name: str, kind: str) -> T:
    found = registry.get(name)
    if found is None:
        known = ", ".join(sorted(registry)) or "none yet"
        message = (
            f"no {kind} is registered under the name {name!r} (registered: {known}); "
            f"run its %%{kind} cell first, or pass the {kind} itself"
        )
        if kind == "orchestrator":
            raise OrchestratorNotFoundError(message, orchestrator=name)
        raise ActivityNotFoundError(message, activity=name)
    return found


def find_activity(name: str) -> Activity | None:
    """The activity this process knows under ``name`` (registered, or a plain function
    called as one), or None."""
    found = _REGISTRY.get(name)
    if found is None and (ref := _LAST_WRAPPED.get(name)) is not None:
        found = ref()
    return found


def resolve_activity(ref: Any) -> Activity:
    """The activity meant by ``ref``: an Activity, a registered name, or a plain function."""
    if isinstance(ref, Activity):
        return ref
    if isinstance(ref, str):
        return _by_name(_REGISTRY, ref, "activity")
    if isinstance(ref, Orchestrator):
        raise DefinitionError(
            f"{ref.name!r} is an orchestrator, not an activity; orchestrators cannot be "
            "called with ctx.call_activity",
            orchestrator=ref.name,
        )
    if callable(ref):
        wrapped = _WRAPPED.get(ref)
        if wrapped is None:
            wrapped = Activity(ref)
            _WRAPPED[ref] = wrapped
            _LAST_WRAPPED[wrapped.name] = weakref.ref(wrapped)
        return wrapped
    raise DefinitionError(
        f"ctx.call_activity expects an activity, its name or a function, got {ref!r}"
    )


_ORCHESTRATORS: dict[str, Orchestrator] = {}


def register_orchestrator(orch: Orchestrator) -> Orchestrator:
    """Make ``orch`` reachable by name (sub-orchestrations, ``%durable rewind``)."""
    _ORCHESTRATORS[orch.name] = orch
    return orch


def find_orchestrator(name: str) -> Orchestrator | None:
    return _ORCHESTRATORS.get(name)


def resolve_orchestrator(ref: Any) -> Orchestrator:
    """The orchestrator meant by ``ref``: an Orchestrator or a registered name."""
    if isinstance(ref, Orchestrator):
        return ref
    if isinstance(ref, str):
        return _by_name(_ORCHESTRATORS, ref, "orchestrator")
    if isinstance(ref, Activity):
        raise DefinitionError(
            f"{ref.name!r} is an activity; call it with ctx.call_activity, not "
            "ctx.call_sub_orchestrator",
            activity=ref.name,
        )
    raise DefinitionError(
        f"ctx.call_sub_orchestrator expects an orchestrator or its name, got {ref!r}"
    )


_INPUT_HINTS = {
    "": (
        "Pass the input as its parameters after ctx take it; the options of a run are "
        'keywords: instance_id="...", fresh=True'
    ),
    "ctx.continue_as_new": (
        "ctx.continue_as_new(...) takes the new input as the parameters after ctx take it"
    ),
    "ctx.call_sub_orchestrator": (
        "Pass the child's input as its parameters after ctx take it; instance_id is a "
        'keyword: ctx.call_sub_orchestrator(child, ..., instance_id="...")'
    ),
}


def bind_orchestrator_input(
    name: str,
    signature: inspect.Signature,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    via: str = "",
) -> dict[str, Any]:
    """An orchestrator's input by parameter name (defaults applied, ctx left out), or
    an error saying what the orchestrator takes. ``via``: the ctx method that passed
    the input ("ctx.continue_as_new", "ctx.call_sub_orchestrator"); empty for a run."""
    try:
        bound = signature.bind(None, *args, **kwargs)
    except TypeError as exc:
        params = [p.replace(annotation=p.empty) for p in signature.parameters.values()]
        shown = str(signature.replace(parameters=params, return_annotation=signature.empty))
        takes = f"{shown} and no input" if len(params) == 1 else shown
        source = f"{via}(...)" if via else "the call that runs it"
        raise OrchestratorInputError(
            f"orchestrator {name!r} takes {takes}: {exc} in {source}. {_INPUT_HINTS[via]}",
            orchestrator=name,
        ) from None
    bound.apply_defaults()
    arguments = dict(bound.arguments)
    arguments.pop(next(iter(signature.parameters)))
    return arguments


class Orchestrator:
    """Durable orchestration code: a generator or ``async def`` taking ``ctx`` first."""

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        strict: bool = False,
        source_digest: str | None = None,
        source_node: ast.FunctionDef | ast.AsyncFunctionDef | None = None,
        name: str | None = None,
    ) -> None:
        name = _checked_name(name, fn, "orchestrator")
        if not (inspect.isgeneratorfunction(fn) or inspect.iscoroutinefunction(fn)):
            raise DefinitionError(
                f"orchestrator {name!r} must be a generator function (using yield ctx....) "
                "or an async def (using await ctx....); a plain function cannot be replayed",
                orchestrator=name,
            )
        params = list(inspect.signature(fn).parameters.values())
        if not params or params[0].kind not in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        ):
            raise DefinitionError(
                f"orchestrator {name!r} must take the context as its first parameter, "
                f"e.g. def {name}(ctx, ...)",
                orchestrator=name,
            )
        self.fn = fn
        self.name: str = name
        self.strict = strict
        self._code = _CodeDigests(fn, source_node, None, source_digest)
        self._signature = inspect.signature(fn)
        # Takes only the context and calls get_input (Durable Functions' style): it takes
        # one input, kept aside. Any other ctx-only orchestrator refuses input.
        code = getattr(fn, "__code__", None)
        self._reads_input = len(params) == 1 and "get_input" in getattr(code, "co_names", ())
        functools.update_wrapper(self, fn)

    @property
    def source_digest(self) -> str:
        """Digest of the normalised source; part of the key of its sub-orchestration calls."""
        return self._code.get(KEY_SCHEME)

    def code_digest(self, scheme: int = KEY_SCHEME) -> str:
        """The digest of the normalised source under key ``scheme``."""
        return self._code.get(scheme)

    def bind_input(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], via: str = ""
    ) -> dict[str, Any]:
        """The arguments by name (defaults applied), checked against the signature;
        ``via`` names the ctx method that passed them (none: a run of the instance)."""
        if self._reads_input and len(args) == 1 and not kwargs:
            return {CLIENT_INPUT: args[0]}  # read with ctx.get_input()
        return bind_orchestrator_input(self.name, self._signature, args, kwargs, via)

    def instance_id_for(self, *args: Any, **kwargs: Any) -> str:
        """The default instance id: the name plus a digest of the input, so reruns resume."""
        return self.instance_ids_for(args, kwargs)[0]

    def instance_ids_for(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], schemes: Sequence[int] = ()
    ) -> list[str]:
        """The default instance id under the current key scheme, then under each of
        ``schemes`` where it differs (an instance started by an older release is found
        under the id that release gave it)."""
        arguments = self.bind_input(args, kwargs)
        ids: list[str] = []
        for scheme in (KEY_SCHEME, *(s for s in schemes if s != KEY_SCHEME)):
            digest = arguments_digest(f"orchestrator {self.name}", (), arguments, scheme=scheme)
            if (found := f"{self.name}-{digest[:12]}") not in ids:
                ids.append(found)
        return ids

    def __call__(
        self, *args: Any, instance_id: str | None = None, fresh: bool = False, **kwargs: Any
    ) -> Coroutine[Any, Any, Any]:
        """``await orch(...)``: run or resume the instance on the running event loop."""
        __tracebackhide__ = True
        from durable_nb.runtime import get_runtime

        return get_runtime().run(self, args, kwargs, instance_id=instance_id, fresh=fresh)

    def run(
        self, *args: Any, instance_id: str | None = None, fresh: bool = False, **kwargs: Any
    ) -> Any:
        """Run or resume the instance and block until it ends (scripts, papermill)."""
        __tracebackhide__ = True
        from durable_nb.runtime import get_runtime

        return get_runtime().run_blocking(self, args, kwargs, instance_id=instance_id, fresh=fresh)

    def start(
        self, *args: Any, instance_id: str | None = None, fresh: bool = False, **kwargs: Any
    ) -> InstanceHandle:
        """Start the instance in the background and return its handle at once."""
        __tracebackhide__ = True
        from durable_nb.runtime import get_runtime

        return get_runtime().start(self, args, kwargs, instance_id=instance_id, fresh=fresh)

    def __repr__(self) -> str:
        return f"<orchestrator {self.name}{' strict' if self.strict else ''}>"


@overload
def activity(fn: F, /) -> Activity: ...
@overload
def activity(
    *,
    retries: int = 0,
    backoff: float = 1.0,
    backoff_coefficient: float = 2.0,
    max_backoff: float = 300.0,
    retry_timeout: float | None = None,
    retry_on: tuple[type[BaseException], ...] = (Exception,),
    no_retry_on: tuple[type[BaseException], ...] = (),
    timeout: float | None = None,
    concurrency: int | None = None,
    version: str | None = None,
    executor: str | None = None,
    share: bool = False,
    ttl: float | _dt.timedelta | str | None = None,
    name: str | None = None,
    max_attempts: int | None = None,
) -> Callable[[F], Activity]: ...


def activity(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    retries: int = 0,
    backoff: float = 1.0,
    backoff_coefficient: float = 2.0,
    max_backoff: float = 300.0,
    retry_timeout: float | None = None,
    retry_on: tuple[type[BaseException], ...] = (Exception,),
    no_retry_on: tuple[type[BaseException], ...] = (),
    timeout: float | None = None,
    concurrency: int | None = None,
    version: str | None = None,
    executor: str | None = None,
    share: bool = False,
    ttl: float | _dt.timedelta | str | None = None,
    name: str | None = None,
    max_attempts: int | None = None,
) -> Activity | Callable[[Callable[..., Any]], Activity]:
    """Decorator: ``@activity`` or ``@activity(retries=3, timeout=30)``.

    Retry policy: ``retries`` extra attempts after the first; waits of ``backoff``
    seconds, multiplied by ``backoff_coefficient`` each time, at most ``max_backoff``;
    no attempt starts later than ``retry_timeout`` seconds after the first; only
    exceptions in ``retry_on`` and not in ``no_retry_on`` are retried. ``timeout`` bounds
    each attempt.

    ``share=True`` answers a call from any instance's success in the same store with
    the same activity name, code and arguments (by default results belong to their
    instance); ``ttl`` (seconds, a timedelta, or text like ``"12h"``) reruns shared
    results older than that.

    ``name`` registers it under another name than the function's (``ctx.call_activity(
    "name")``; Durable Functions' samples name every activity function ``main``);
    ``max_attempts`` is ``retries + 1``, as ``%%activity --max-attempts``: give one of them.
    """
    if max_attempts is not None:
        whole = isinstance(max_attempts, int) and not isinstance(max_attempts, bool)
        if retries or not whole or max_attempts < 1:
            raise DefinitionError(
                f"@activity(retries={retries!r}, max_attempts={max_attempts!r}): give one of "
                "them; max_attempts is a whole number >= 1 that counts the first attempt",
                activity=name,
            )
        retries = max_attempts - 1
    options = ActivityOptions(
        retries=retries,
        backoff=backoff,
        backoff_coefficient=backoff_coefficient,
        max_backoff=max_backoff,
        retry_timeout=retry_timeout,
        retry_on=retry_on,
        no_retry_on=no_retry_on,
        timeout=timeout,
        concurrency=concurrency,
        version=version,
        executor=executor,
        share=share,
        ttl=cast("float | None", ttl),  # ActivityOptions normalises it to seconds
    )

    def wrap(target: Callable[..., Any]) -> Activity:
        return register(Activity(target, options, name=name))

    return wrap(fn) if fn is not None else wrap


@overload
def orchestrator(fn: F, /) -> Orchestrator: ...
@overload
def orchestrator(
    *, strict: bool = False, name: str | None = None
) -> Callable[[F], Orchestrator]: ...


def orchestrator(
    fn: Callable[..., Any] | None = None, /, *, strict: bool = False, name: str | None = None
) -> Orchestrator | Callable[[Callable[..., Any]], Orchestrator]:
    """Decorator: ``@orchestrator``, ``@orchestrator(strict=True)``, or
    ``@orchestrator(name="...")`` to register it under another name than the function's
    (``ctx.call_sub_orchestrator("name")``, ``%durable rewind``, default instance ids)."""

    def wrap(target: Callable[..., Any]) -> Orchestrator:
        return register_orchestrator(Orchestrator(target, strict=strict, name=name))

    return wrap(fn) if fn is not None else wrap
