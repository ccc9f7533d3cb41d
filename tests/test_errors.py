"""The error tree: grouped by cause, drawn in errors.py's docstring, with the builtin
bases code written before the groups catches, context kept as attributes, and no
builtin or bare root error raised to users from durable_nb's own code."""

from __future__ import annotations

import ast
import asyncio
import pickle
import re
from pathlib import Path
from typing import Any

import pytest

import durable_nb as dn
from durable_nb import errors, management
from durable_nb.definitions import resolve_activity, resolve_orchestrator
from durable_nb.errors import DurableNbError
from durable_nb.executors import as_executor
from durable_nb.memory_store import MemoryStore
from durable_nb.runtime import Runtime
from durable_nb.store import InstanceRecord

PACKAGE = Path(dn.__file__).parent


def all_error_classes() -> list[type[DurableNbError]]:
    found: list[type[DurableNbError]] = [DurableNbError]
    for cls in found:
        found.extend(sub for sub in cls.__subclasses__() if sub not in found)
    return found


def drawn_tree() -> dict[str, tuple[str | None, set[str]]]:
    """Each class drawn in errors.py's docstring: its parent there, and the builtin
    bases written after it in parentheses."""
    doc = errors.__doc__ or ""
    block = doc.split("The tree (builtin bases in parentheses)::\n\n", 1)[1].split("\n\n")[0]
    drawn: dict[str, tuple[str | None, set[str]]] = {}
    parents: list[str] = []
    for line in block.splitlines():
        match = re.search(r"(\w+)(?: \(([^)]*)\))?", line)
        assert match is not None, line
        depth = (match.start() - 4) // 4
        del parents[depth:]
        bases = {b.strip() for b in match.group(2).split(",")} if match.group(2) else set()
        drawn[match.group(1)] = (parents[-1] if parents else None, bases)
        parents.append(match.group(1))
    return drawn


def builtin_bases(cls: type[BaseException]) -> set[str]:
    """The builtin exceptions mixed into ``cls`` or any durable_nb class it derives from."""
    return {
        base.__name__
        for klass in cls.__mro__
        if isinstance(klass, type) and issubclass(klass, DurableNbError)
        for base in klass.__bases__
        if not issubclass(base, DurableNbError) and base is not Exception
    }


def test_every_error_class_is_drawn_in_the_tree_under_its_parent() -> None:
    drawn = drawn_tree()
    classes = all_error_classes()
    assert sorted(drawn) == sorted(cls.__name__ for cls in classes)
    for cls in classes:
        parent, bases = drawn[cls.__name__]
        expected = cls.__bases__[0].__name__ if cls is not DurableNbError else None
        assert parent == expected, f"{cls.__name__} is drawn under {parent}, not {expected}"
        assert bases == builtin_bases(cls), f"{cls.__name__}'s builtin bases are drawn wrong"
        assert cls.__module__ == "durable_nb.errors"
        assert cls.__doc__, f"{cls.__name__} says what causes it"


def test_every_error_is_public_and_existing_names_are_kept() -> None:
    for name in errors.__all__:
        if name != "VerbUsageError":  # the CLI's and %durable's, shown as a usage message
            assert getattr(dn, name) is getattr(errors, name)
            assert name in dn.__all__
    released = {
        "ActivityArgumentsError",
        "ActivityNotFoundError",
        "ActivityTimeoutError",
        "ContinueAsNew",
        "DefinitionError",
        "DurableNbError",
        "EventTimeoutError",
        "FingerprintError",
        "InstanceBusyError",
        "InstanceNotFinishedError",
        "InstanceNotFoundError",
        "InstanceTerminatedError",
        "NonDeterminismError",
        "OrchestratorError",
        "OrchestratorInputError",
        "ResultNotStorableError",
        "StoreError",
    }
    assert released <= set(dn.__all__)


@pytest.mark.parametrize(
    ("cls", "builtin"),
    [
        (errors.ActivityTimeoutError, TimeoutError),
        (errors.EventTimeoutError, TimeoutError),
        (errors.DefinitionError, TypeError),
        (errors.ActivityArgumentsError, TypeError),
        (errors.OrchestratorInputError, TypeError),
        (errors.FingerprintError, TypeError),
        (errors.ResultNotStorableError, TypeError),
        (errors.ActivityNotFoundError, LookupError),
        (errors.OrchestratorNotFoundError, LookupError),
        (errors.InstanceNotFoundError, LookupError),
        (errors.ConfigurationError, ValueError),
        (errors.VerbUsageError, ValueError),
        (errors.EventLoopError, RuntimeError),
    ],
)
def test_the_builtin_bases_users_catch(cls: type[DurableNbError], builtin: type) -> None:
    assert issubclass(cls, builtin) and issubclass(cls, DurableNbError)


def test_groups_by_cause() -> None:
    groups = {
        errors.DefinitionError: ["ActivityNotFoundError", "OrchestratorNotFoundError"],
        errors.OrchestrationError: ["OrchestratorError", "NonDeterminismError"],
        errors.ActivityError: ["ActivityTimeoutError", "ActivityInterruptError"],
        errors.InstanceError: ["InstanceBusyError", "SubOrchestrationEndedError"],
        errors.ConfigurationError: ["VerbUsageError"],
    }
    for group, members in groups.items():
        for name in members:
            assert issubclass(getattr(errors, name), group)
    # Not an Exception: ``except Exception`` in an orchestrator must not swallow it.
    assert not issubclass(errors.ContinueAsNew, Exception)


def test_context_is_keyword_only_defaults_to_none_and_survives_pickling() -> None:
    plain = errors.ActivityTimeoutError("text")
    assert str(plain) == "text"
    assert (plain.instance_id, plain.activity, plain.call, plain.attempt, plain.timeout) == (
        None,
        None,
        None,
        None,
        None,
    )
    error = errors.ActivityTimeoutError(
        "slow", activity="fetch", call="k1", attempt=2, timeout=1.5, instance_id="i-1"
    )
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is errors.ActivityTimeoutError and str(again) == "slow"
    assert vars(again) == vars(error)
    assert vars(error) == {
        "instance_id": "i-1",
        "activity": "fetch",
        "call": "k1",
        "attempt": 2,
        "timeout": 1.5,
    }
    for cls in all_error_classes():
        made = cls("text")
        assert str(made) == "text" and made.instance_id is None


# ------------------------------------------------------------------ no builtin raises

BANNED = {"ValueError", "RuntimeError", "TypeError", "DurableNbError"}

# Files this branch did not own: the lead replaces their raises (listed in the
# errors-tree report) and then empties this allow-list.
NOT_YET_CONVERTED: set[str] = set()


def builtin_errors_made(source: str) -> list[tuple[int, str]]:
    """Where ``source`` raises or builds a ValueError, RuntimeError, TypeError or a
    bare DurableNbError."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):  # raise X(...), and X(...) kept to raise later
            target: ast.expr | None = node.func
        elif isinstance(node, ast.Raise) and not isinstance(node.exc, ast.Call):
            target = node.exc  # raise X
        else:
            continue
        name = getattr(target, "id", None) or getattr(target, "attr", None)
        if name in BANNED:
            found.append((node.lineno, str(name)))
    return sorted(found)


def test_the_scan_finds_builtin_raises() -> None:
    source = (
        "raise ValueError('x')\nraise errors.DurableNbError\n"
        "error = RuntimeError('y')\nraise ConfigurationError('z')\n"
    )
    assert builtin_errors_made(source) == [
        (1, "ValueError"),
        (2, "DurableNbError"),
        (3, "RuntimeError"),
    ]


def test_no_builtin_or_bare_root_error_is_raised_to_users() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative in NOT_YET_CONVERTED:
            continue
        for line, name in builtin_errors_made(path.read_text(encoding="utf-8")):
            offenders.append(f"durable_nb/{relative}:{line}: {name}")
    assert offenders == [], "raise a class from durable_nb.errors instead"


# ------------------------------------------------------------------ through real code


def test_instance_not_found_names_the_instance() -> None:
    store = MemoryStore()
    with pytest.raises(LookupError) as info:
        management.request(store, "nobody", "terminate")
    assert isinstance(info.value, errors.InstanceNotFoundError)
    assert isinstance(info.value, errors.InstanceError)
    assert info.value.instance_id == "nobody"


def test_management_errors_carry_their_context() -> None:
    store = MemoryStore()
    store.put_instance(InstanceRecord("done-1", "orch", status="completed"))
    with pytest.raises(errors.InstanceFinishedError) as finished:
        management.raise_event(store, "done-1", "go")
    assert (finished.value.instance_id, finished.value.status) == ("done-1", "completed")
    with pytest.raises(ValueError) as action:
        management.request(store, "done-1", "explode")
    assert isinstance(action.value, errors.ConfigurationError)
    assert (action.value.setting, action.value.value) == ("action", "explode")
    with pytest.raises(errors.ConfigurationError, match="an age looks like") as age:
        management.parse_age("soon")
    assert (age.value.setting, age.value.value) == ("age", "soon")


def test_rewinding_an_orchestrator_this_kernel_lacks() -> None:
    store = MemoryStore()
    store.put_instance(InstanceRecord("old-1", "gone_orchestrator", input={}))
    # Caught as ActivityNotFoundError too, as releases before the tree raised that.
    with pytest.raises(errors.ActivityNotFoundError) as info:
        management.rewind_target(store, "old-1")
    error = info.value
    assert isinstance(error, errors.OrchestratorNotFoundError)
    assert (error.orchestrator, error.instance_id) == ("gone_orchestrator", "old-1")


def test_an_unknown_name_says_which_kind_it_lacks() -> None:
    with pytest.raises(errors.ActivityNotFoundError) as orchestrator:
        resolve_orchestrator("never_defined_orchestrator")
    assert isinstance(orchestrator.value, errors.OrchestratorNotFoundError)
    assert orchestrator.value.orchestrator == "never_defined_orchestrator"
    with pytest.raises(LookupError) as activity:
        resolve_activity("never_defined_activity")
    assert type(activity.value) is errors.ActivityNotFoundError
    assert activity.value.activity == "never_defined_activity"


def test_bad_settings_are_configuration_errors(rt: Runtime) -> None:
    with pytest.raises(ValueError, match="max_workers must be >= 1") as info:
        dn.configure(max_workers=0)
    assert isinstance(info.value, errors.ConfigurationError)
    assert (info.value.setting, info.value.value) == ("max_workers", 0)
    before = rt.runaway_calls
    with pytest.raises(errors.ConfigurationError) as runaway:
        dn.configure(runaway_calls=-1, max_in_flight=0)
    assert runaway.value.setting == "runaway_calls"
    assert rt.runaway_calls == before  # nothing is changed when a value is refused
    with pytest.raises(errors.ConfigurationError, match="unknown executor") as executor:
        as_executor("gpu")
    assert (executor.value.setting, executor.value.value) == ("executor", "gpu")


def test_a_bad_instance_id_and_a_missing_loop(rt: Runtime) -> None:
    @dn.orchestrator
    def some_orch(ctx):  # type: ignore[no-untyped-def]
        yield ctx.create_timer(0)

    with pytest.raises(errors.ConfigurationError) as info:
        some_orch.run(instance_id="")
    assert (info.value.setting, info.value.value) == ("instance_id", "")
    with pytest.raises(RuntimeError, match="needs a running event loop") as loop:
        some_orch.start()
    assert isinstance(loop.value, errors.EventLoopError)


def test_definition_errors_name_what_they_concern(rt: Runtime) -> None:
    with pytest.raises(errors.DefinitionError) as info:

        @dn.orchestrator
        def plain(ctx):  # type: ignore[no-untyped-def]
            return 1

    assert info.value.orchestrator == "plain"

    @dn.orchestrator
    def takes_one(ctx, n):  # type: ignore[no-untyped-def]
        yield ctx.create_timer(0)

    with pytest.raises(TypeError) as bad_input:
        takes_one.run()
    assert isinstance(bad_input.value, errors.OrchestratorInputError)
    assert bad_input.value.orchestrator == "takes_one"


def test_a_terminated_instance_names_itself(rt: Runtime) -> None:
    @dn.orchestrator
    def waits(ctx):  # type: ignore[no-untyped-def]
        yield ctx.wait_for_external_event("never")

    async def main() -> Any:
        handle = waits.start(instance_id="waits-1")
        await asyncio.sleep(0.05)
        with pytest.raises(errors.InstanceNotFinishedError) as early:
            handle.result()
        assert early.value.instance_id == "waits-1"
        handle.terminate("enough")
        return await handle

    with pytest.raises(errors.InstanceTerminatedError) as info:
        asyncio.run(main())
    assert (info.value.instance_id, info.value.status) == ("waits-1", "terminated")
