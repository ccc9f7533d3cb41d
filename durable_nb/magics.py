"""IPython magics: ``%%activity``, ``%%orchestrator``, ``%%entity`` and ``%durable``."""

from __future__ import annotations

import argparse
import ast
import builtins
import shlex
from typing import Any, NoReturn

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class

from durable_nb.definitions import (
    Activity,
    Orchestrator,
    register,
    register_orchestrator,
)
from durable_nb.entities import Entity, register_entity
from durable_nb.errors import DefinitionError, DurableNbError
from durable_nb.options import ActivityOptions
from durable_nb.runtime import get_runtime
from durable_nb.verbs import add_verbs, run_verb

_FunctionNode = ast.FunctionDef | ast.AsyncFunctionDef
_DefinitionNode = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef


class _Parser(argparse.ArgumentParser):
    """argparse that reports mistakes as a one-line UsageError instead of exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        raise UsageError(message or self.format_usage())

    def parse_line(self, line: str) -> argparse.Namespace:
        try:
            words = shlex.split(line)
        except ValueError as exc:
            raise UsageError(f"{self.prog}: {exc}") from None
        return self.parse_args(words)


def _positive_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds as a number, got {text!r}") from None


_ACTIVITY_PARSER = _Parser(prog="%%activity", add_help=False)
_ACTIVITY_PARSER.add_argument("--retries", type=int, default=None)
_ACTIVITY_PARSER.add_argument("--max-attempts", type=int, default=None)
_ACTIVITY_PARSER.add_argument("--backoff", type=_positive_float, default=1.0)
_ACTIVITY_PARSER.add_argument("--backoff-coefficient", type=_positive_float, default=2.0)
_ACTIVITY_PARSER.add_argument("--max-backoff", type=_positive_float, default=300.0)
_ACTIVITY_PARSER.add_argument("--retry-timeout", type=_positive_float, default=None)
_ACTIVITY_PARSER.add_argument("--retry-on", default=None)
_ACTIVITY_PARSER.add_argument("--no-retry-on", default=None)
_ACTIVITY_PARSER.add_argument("--timeout", type=_positive_float, default=None)
_ACTIVITY_PARSER.add_argument("--concurrency", type=int, default=None)
_ACTIVITY_PARSER.add_argument("--version", default=None)
_ACTIVITY_PARSER.add_argument("--executor", default=None)
_ACTIVITY_PARSER.add_argument("--share", action="store_true")
_ACTIVITY_PARSER.add_argument("--ttl", default=None)  # parsed by ActivityOptions: 90s, 12h, 1d
_ACTIVITY_PARSER.add_argument("--name", default=None)  # register under another name

_ORCHESTRATOR_PARSER = _Parser(prog="%%orchestrator", add_help=False)
_ORCHESTRATOR_PARSER.add_argument("--strict", action="store_true")
_ORCHESTRATOR_PARSER.add_argument("--name", default=None)

_ENTITY_PARSER = _Parser(prog="%%entity", add_help=False)
_ENTITY_PARSER.add_argument("--name", default=None)


@magics_class
class DurableMagics(Magics):
    """Turn notebook cells into durable activities and orchestrators."""

    def _run_definitions(self, cell: str, magic: str) -> tuple[dict[str, Any], list[_FunctionNode]]:
        """Execute the cell in the user namespace; return it and the top-level functions."""
        tree = self._parsed(cell, magic)
        functions = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        if not functions:
            raise UsageError(f"%%{magic}: the cell defines no top-level function (def ...)")
        return self._run_tree(cell, tree), functions

    def _parsed(self, cell: str, magic: str) -> ast.Module:
        assert self.shell is not None
        source: str = self.shell.transform_cell(cell)
        try:
            return ast.parse(source)
        except SyntaxError as exc:
            raise UsageError(f"%%{magic}: the cell has a syntax error: {exc}") from None

    def _run_tree(self, cell: str, tree: ast.Module) -> dict[str, Any]:
        shell = self.shell
        assert shell is not None
        # Compile through IPython's cache so tracebacks and inspect.getsource show
        # the cell's lines.
        filename = shell.compile.cache(
            shell.transform_cell(cell), shell.execution_count, raw_code=cell
        )
        code = shell.compile(tree, filename, "exec")
        namespace: dict[str, Any] = shell.user_ns
        exec(code, shell.user_global_ns, namespace)
        return namespace

    @cell_magic
    def activity(self, line: str, cell: str) -> None:
        """Turn every top-level function of the cell into a checkpointed activity.

        Options: --retries N, --backoff SECONDS, --timeout SECONDS, --concurrency N,
        --version TAG (change it to invalidate cached results), --share (answer calls
        from any instance's results), --ttl DURATION (shared results older than that rerun),
        --name NAME (register the cell's one function under NAME, as @activity(name=...)).
        """
        opts = _ACTIVITY_PARSER.parse_line(line)
        if opts.retries is not None and opts.max_attempts is not None:
            raise UsageError("%%activity: give --retries or --max-attempts, not both")
        retries = opts.retries if opts.retries is not None else 0
        if opts.max_attempts is not None:
            retries = opts.max_attempts - 1
        try:
            options = ActivityOptions(
                retries=retries,
                backoff=opts.backoff,
                backoff_coefficient=opts.backoff_coefficient,
                max_backoff=opts.max_backoff,
                retry_timeout=opts.retry_timeout,
                retry_on=self._exception_types(opts.retry_on, "--retry-on") or (Exception,),
                no_retry_on=self._exception_types(opts.no_retry_on, "--no-retry-on"),
                timeout=opts.timeout,
                concurrency=opts.concurrency,
                version=opts.version,
                executor=opts.executor,
                share=opts.share,
                ttl=opts.ttl,
            )
        except DefinitionError as exc:
            raise UsageError(f"%%activity: {exc}") from None
        namespace, functions = self._run_definitions(cell, "activity")
        _one_function_for_a_name("activity", opts.name, functions)
        for node in functions:
            fn = namespace[node.name]
            if isinstance(fn, Activity):
                fn = fn.fn
            try:
                made = Activity(fn, options, source_node=node, name=opts.name)
            except DefinitionError as exc:
                raise UsageError(f"%%activity: {exc}") from None
            namespace[node.name] = register(made)

    def _exception_types(self, names: str | None, option: str) -> tuple[type[BaseException], ...]:
        """Exception classes named in a comma-separated option, looked up in the notebook."""
        if not names:
            return ()
        assert self.shell is not None
        found: list[type[BaseException]] = []
        for name in (n.strip() for n in names.split(",") if n.strip()):
            kind = self.shell.user_ns.get(name, getattr(builtins, name, None))
            if not (isinstance(kind, type) and issubclass(kind, BaseException)):
                raise UsageError(f"%%activity: {option}: {name!r} is not an exception class")
            found.append(kind)
        return tuple(found)

    @cell_magic
    def orchestrator(self, line: str, cell: str) -> None:
        """Turn every top-level function of the cell into an orchestrator.

        Options: --strict (the recorded calls must come again in the same order), --name
        NAME (register the cell's one function under NAME, as @orchestrator(name=...)).
        """
        opts = _ORCHESTRATOR_PARSER.parse_line(line)
        namespace, functions = self._run_definitions(cell, "orchestrator")
        _one_function_for_a_name("orchestrator", opts.name, functions)
        for node in functions:
            fn = namespace[node.name]
            if isinstance(fn, Orchestrator):
                fn = fn.fn
            try:
                orch = Orchestrator(fn, strict=opts.strict, source_node=node, name=opts.name)
            except DefinitionError as exc:
                raise UsageError(f"%%orchestrator: {exc}") from None
            namespace[node.name] = register_orchestrator(orch)

    @cell_magic
    def entity(self, line: str, cell: str) -> None:
        """Turn the cell's one top-level function (of an entity context) or class (whose
        public methods are the operations) into a durable entity.

        Options: --name NAME (register it under NAME, as @entity(name=...); the default
        is the function's or class's name).
        """
        opts = _ENTITY_PARSER.parse_line(line)
        tree = self._parsed(cell, "entity")
        defined = [
            n
            for n in tree.body
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
        ]
        if len(defined) != 1:
            # One cell, one entity: its name (or --name) is the entity's, and a helper
            # function beside it would be taken for a second entity.
            names = ", ".join(node.name for node in defined)
            raise UsageError(
                "%%entity: the cell must define exactly one top-level function (taking an "
                "entity context) or class (whose public methods are the operations); it "
                + (f"defines {len(defined)} ({names}): " if defined else "defines none: ")
                + "put each entity in a %%entity cell of its own, and helpers in another cell"
            )
        if isinstance(defined[0], ast.AsyncFunctionDef):
            raise UsageError(
                f"%%entity: {defined[0].name} is an async def; an entity operation runs to its "
                "end without awaiting: make it a plain def"
            )
        namespace = self._run_tree(cell, tree)
        target = namespace[defined[0].name]
        if isinstance(target, Entity):  # the cell also used @entity: define it once
            target = target.fn
        try:
            made = register_entity(Entity(target, name=opts.name))
        except DefinitionError as exc:
            raise UsageError(f"%%entity: {exc}") from None
        namespace[defined[0].name] = made

    @line_magic
    def durable(self, line: str) -> None:
        """Manage instances: %durable list | show ID [--calls] | timeline ID [-o FILE] |
        purge ... | raise ID NAME [VALUE] | terminate ID | suspend ID | resume ID |
        rewind ID; and durable entities: %durable entity list | show ENTITY |
        signal ENTITY OPERATION [VALUE] | purge ENTITY  (each takes --help)"""
        args = _DURABLE_PARSER.parse_line(line or "list")
        runtime = get_runtime()
        try:
            if args.verb == "timeline" and not args.output:
                from IPython.display import display

                from durable_nb.timeline import chart_of

                display(chart_of(runtime.store, args.instance_id))  # the chart, inline
                return
            print(run_verb(args, runtime.store, runtime))
        except (DurableNbError, ValueError) as exc:
            raise UsageError(f"%durable {args.verb}: {exc}") from None


def _one_function_for_a_name(kind: str, name: str | None, functions: list[_FunctionNode]) -> None:
    """--name names one function: refused for a cell that defines several (checked after
    the cell ran, as its functions are known only then)."""
    if name is not None and len(functions) != 1:
        defined = ", ".join(node.name for node in functions)
        raise UsageError(
            f"%%{kind} --name {name}: names one function, but this cell defines "
            f"{len(functions)} ({defined}); put the one to rename in a cell of its own"
        )


_DURABLE_PARSER = _Parser(prog="%durable", add_help=False)
add_verbs(_DURABLE_PARSER.add_subparsers(dest="verb", required=True, parser_class=_Parser))


def register_magics(ipython: Any) -> None:
    ipython.register_magics(DurableMagics)


def unregister_magics(ipython: Any) -> None:
    manager = ipython.magics_manager
    magics = (("cell", "activity"), ("cell", "orchestrator"), ("cell", "entity"))
    for kind, name in (*magics, ("line", "durable")):
        manager.magics[kind].pop(name, None)
    manager.registry.pop("DurableMagics", None)
