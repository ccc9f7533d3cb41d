"""``durable-nb``: run notebooks headless and manage the instances in a store folder."""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

from durable_nb.errors import ConfigurationError, DurableNbError, StoreError, VerbUsageError
from durable_nb.store import DiskCacheStore
from durable_nb.store_folder import STORE_ENV, default_location
from durable_nb.verbs import add_verbs, parse_value, run_verb

if TYPE_CHECKING:
    from durable_nb.notebook_runner import RunOutcome

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    """Mistakes print one line (plus where to get help) and exit with status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _subcommands(parser: argparse.ArgumentParser, dest: str) -> Any:
    """A required choice of sub-commands (in ``dest``), each one reporting a mistake as
    :class:`_Parser` does."""
    choices = parser.add_subparsers(dest=dest, metavar=dest.upper(), parser_class=_Parser)
    choices.required = True
    return choices


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="durable-nb",
        description="Run notebooks headless and manage durable_nb instances.",
    )
    verbs = _subcommands(parser, "verb")

    run = verbs.add_parser(
        "run",
        help="execute a notebook in a real kernel, resuming its durable work",
        description="Execute NOTEBOOK top to bottom in a Jupyter kernel of this Python, "
        "printing each cell's progress. NOTEBOOK itself is left untouched: the executed "
        "copy goes to NAME.out.ipynb beside it (or --output PATH); --inplace writes it "
        "over NOTEBOOK instead, without execution timestamps or widget state.",
    )
    run.add_argument("notebook", type=Path, help="the .ipynb file to execute")
    where = run.add_mutually_exclusive_group()
    where.add_argument(
        "-o",
        "--output",
        type=Path,
        help="write the executed notebook here (default: NAME.out.ipynb beside NOTEBOOK)",
    )
    where.add_argument(
        "--inplace",
        action="store_true",
        help="write the executed notebook over NOTEBOOK (volatile metadata stripped)",
    )
    run.add_argument("--store", type=Path, help=f"checkpoint folder (default ${STORE_ENV})")
    run.add_argument("--timeout", type=float, default=None, help="seconds a cell may take")
    run.add_argument("--quiet", action="store_true", help="print only failures and the end")
    _parameter_options(
        run,
        "set NAME in a cell injected after the cell tagged 'parameters' (papermill's "
        "convention); VALUE is JSON if it parses (3, true, [1, 2]), else text",
        'several at once, as a JSON object: --parameters \'{"n": 3, "city": "Oslo"}\'',
    )
    run.add_argument(
        "--as-instance",
        default=None,
        metavar="ID",
        help="record the run as instance ID of the store (listed, shown, terminated and "
        "purged like an orchestration's): what POST /durable-nb/api/runs starts",
    )

    add_verbs(verbs, _store_option)
    doctor = verbs.add_parser(
        "doctor",
        help="check a store: integrity, format, dead runners' leases, size",
        description="Check a checkpoint store and say what to do about what is wrong.",
    )
    _store_option(doctor)
    doctor.add_argument("--fix", action="store_true", help="release leases of dead runners")
    _add_schedule_verb(verbs)
    return parser


def _store_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store",
        type=Path,
        default=None,
        help=f"checkpoint folder (default ${STORE_ENV} or ./.durable_nb)",
    )


# ------------------------------------------------------------------ store verbs


def _open_store(folder: Path | None) -> DiskCacheStore:
    path = folder or default_location()
    if not path.is_dir():
        raise StoreError(
            f"no checkpoint store at {path.resolve()}; pass --store DIR",
            location=str(path.resolve()),
        )
    return DiskCacheStore(path)


def _cmd_store_verb(args: argparse.Namespace, out: TextIO) -> int:
    store = _open_store(args.store)
    try:
        text = run_verb(args, store, None)
    except VerbUsageError as exc:
        raise _UsageProblem(str(exc)) from None
    finally:
        store.close()
    print(text, file=out)
    return EXIT_FAILED if "not purged" in text and "not found" in text else EXIT_OK


# ------------------------------------------------------------------ run


def _cmd_run(args: argparse.Namespace, out: TextIO) -> int:
    from durable_nb.notebook_runner import default_output, run_notebook

    notebook: Path = args.notebook
    if not notebook.is_file():
        raise _UsageProblem(f"no notebook at {notebook}")
    env = dict(os.environ)
    if args.store is not None:
        env[STORE_ENV] = str(args.store.resolve())
    output: Path = notebook if args.inplace else args.output or default_output(notebook)
    parameters = _parameters(args.parameters, args.parameter)
    started = time.monotonic()

    def execute(stop: threading.Event | None = None) -> RunOutcome:
        return run_notebook(
            notebook,
            output=output,
            timeout=args.timeout,
            env=env,
            out=out,
            quiet=args.quiet,
            strip=args.inplace,
            parameters=parameters,
            stop=stop,
        )

    if args.as_instance is None:
        outcome: RunOutcome | None = execute()
    else:
        from durable_nb.notebook_runs import run_recorded

        outcome = run_recorded(
            notebook,
            store=args.store or default_location(),
            instance_id=args.as_instance,
            execute=execute,
            parameters=parameters,
            output=output,
        )
    elapsed = time.monotonic() - started
    if outcome is None:
        print(f"durable-nb: {args.as_instance} was terminated before it started", file=out)
        return EXIT_FAILED
    if outcome.stopped:
        print(f"durable-nb: {args.as_instance} was terminated after {elapsed:.1f} s", file=out)
        return EXIT_FAILED
    if outcome.failed_cell is not None:
        print(
            f"durable-nb: cell {outcome.failed_cell} failed after {elapsed:.1f} s: "
            f"{outcome.error}\n  the partial notebook was written to {outcome.written}",
            file=out,
        )
        return EXIT_FAILED
    print(
        f"durable-nb: {outcome.cells} cells ran in {elapsed:.1f} s; wrote {outcome.written}",
        file=out,
    )
    return EXIT_OK


def _parameter_options(parser: argparse.ArgumentParser, one: str, several: str) -> None:
    """``-p NAME VALUE`` (repeatable) and ``--parameters JSON``, read by :func:`_parameters`."""
    parser.add_argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help=one,
    )
    parser.add_argument("--parameters", default=None, metavar="JSON", help=several)


def _parameters(whole: str | None, pairs: list[list[str]]) -> dict[str, Any]:
    """--parameters JSON, then each -p NAME VALUE (which win); names must be identifiers."""
    from durable_nb.notebook_runner import check_parameters

    found: dict[str, Any] = {}
    if whole is not None:
        try:
            loaded = json.loads(whole)
        except ValueError as exc:
            raise _UsageProblem(f"--parameters is not JSON ({exc}): {whole!r}") from None
        if not isinstance(loaded, dict):
            raise _UsageProblem(f"--parameters must be a JSON object, got {whole!r}")
        found.update(loaded)
    found.update({name: parse_value(value) for name, value in pairs})
    try:
        return check_parameters(found)
    except ConfigurationError as exc:
        raise _UsageProblem(str(exc)) from None


class _UsageProblem(Exception):
    """A mistake in the command line found after parsing."""


def _cmd_doctor(args: argparse.Namespace, out: TextIO) -> int:
    from durable_nb.doctor import diagnose

    report = diagnose(args.store or default_location(), fix=args.fix)
    print(report.text(), file=out)
    return EXIT_OK if report.healthy else EXIT_FAILED


# ------------------------------------------------------------------ schedule


def _add_schedule_verb(verbs: Any) -> None:
    schedule = verbs.add_parser(
        "schedule",
        help="run notebooks on a timer: add, list, remove, run",
        description="Schedules are kept in the store and run by the Jupyter server "
        "extension while a server runs, or by `durable-nb schedule run` in a terminal. "
        "Times are UTC.",
    )
    actions = _subcommands(schedule, "action")
    add = actions.add_parser(
        "add",
        help="run NOTEBOOK every DURATION or at the times of a cron expression",
        description="Keep a schedule in the store: NOTEBOOK runs headless (as `durable-nb "
        "run`) every DURATION counted from now, or at the times of a cron expression "
        "evaluated in UTC. Prints the schedule's id and its next run.",
    )
    add.add_argument("notebook", type=Path, help="the .ipynb file to run")
    timing = add.add_mutually_exclusive_group(required=True)
    timing.add_argument("--every", metavar="DURATION", help="30s, 15m, 1h, 1d, 1h30m ...")
    timing.add_argument("--cron", metavar="EXPRESSION", help='e.g. "0 * * * *" (UTC)')
    add.add_argument("--name", default=None, help="the schedule's id (default: NOTEBOOK-xxxxxx)")
    _parameter_options(
        add, "a parameter of every run, as for `durable-nb run -p`", "several, as JSON"
    )
    _store_option(add)
    listing = actions.add_parser("list", help="the schedules of a store, with their runs")
    _store_option(listing)
    remove = actions.add_parser("remove", help="delete a schedule (a run it started goes on)")
    remove.add_argument("schedule_id", metavar="ID")
    _store_option(remove)
    loop = actions.add_parser(
        "run",
        help="run the schedules of a store in this terminal until Ctrl-C",
        description="Sleep until the next tick of a schedule, start its run, repeat; "
        "Ctrl-C or SIGTERM stops (runs already started go on). --once runs what is due "
        "now and exits, for a crontab or a test.",
    )
    _store_option(loop)
    loop.add_argument("--once", action="store_true", help="run what is due now, then exit")


def _existing_store(folder: Path | None) -> Path:
    """The folder of an existing store (opened once: checked, upgraded if old)."""
    store = _open_store(folder)
    store.close()
    return Path(store.location)


def _cmd_schedule(args: argparse.Namespace, out: TextIO) -> int:
    action: Callable[[argparse.Namespace, TextIO], int] = {
        "add": _schedule_add,
        "list": _schedule_list,
        "remove": _schedule_remove,
        "run": _schedule_run,
    }[args.action]
    return action(args, out)


def _schedule_add(args: argparse.Namespace, out: TextIO) -> int:
    from durable_nb.schedule_times import Timing, check_cron, iso, parse_every
    from durable_nb.schedules import ScheduleBook

    notebook: Path = args.notebook
    if not notebook.is_file():
        raise _UsageProblem(f"no notebook at {notebook}")
    parameters = _parameters(args.parameters, args.parameter)
    try:
        every = None if args.every is None else parse_every(args.every)
        cron = None if args.cron is None else check_cron(args.cron)
    except ConfigurationError as exc:
        raise _UsageProblem(str(exc)) from None
    folder: Path = args.store or default_location()
    DiskCacheStore(folder).close()  # creates the store if there is none yet
    timing = Timing(created=time.time(), every=every, cron=cron)
    try:
        schedule = ScheduleBook(folder).add(notebook, timing, parameters, args.name)
    except ConfigurationError as exc:
        raise _UsageProblem(str(exc)) from None
    print(
        f"{schedule.schedule_id}: next run {iso(timing.next_tick(timing.created))}",
        file=out,
    )
    return EXIT_OK


def _schedule_list(args: argparse.Namespace, out: TextIO) -> int:
    from durable_nb.report import format_table
    from durable_nb.schedule_times import format_every, iso
    from durable_nb.scheduler import default_launcher, run_status
    from durable_nb.schedules import ScheduleBook

    folder = _existing_store(args.store)
    schedules = ScheduleBook(folder).list()
    if not schedules:
        print(f"no schedules in the store at {folder}", file=out)
        return EXIT_OK
    launcher = default_launcher()
    rows: list[list[str]] = []
    now = time.time()
    for schedule in schedules:
        timing = schedule.timing
        when = format_every(timing.every) if timing.every is not None else f"cron {timing.cron}"
        state = schedule.state
        instance = state.get("instance")
        if state.get("error"):
            status = f"failed to start: {state['error']}"
        elif instance:
            status = f"{run_status(folder, instance, launcher)} ({instance})"
        else:
            status = "-"
        if state.get("skipped"):
            status += f"; {state['skipped']} tick(s) skipped, last {iso(state['skipped_tick'])}"
        rows.append(
            [
                schedule.schedule_id,
                schedule.notebook,
                when,
                iso(timing.next_tick(max(now, schedule.done or 0.0))),
                iso(state.get("tick")),
                status,
            ]
        )
    headers = ["ID", "NOTEBOOK", "EVERY/CRON", "NEXT RUN", "LAST RUN", "STATUS"]
    print(format_table(headers, rows), file=out)
    return EXIT_OK


def _schedule_remove(args: argparse.Namespace, out: TextIO) -> int:
    from durable_nb.schedules import ScheduleBook

    folder = _existing_store(args.store)
    if not ScheduleBook(folder).remove(args.schedule_id):
        print(f"no schedule {args.schedule_id!r} in the store at {folder}", file=out)
        return EXIT_FAILED
    print(f"removed schedule {args.schedule_id}", file=out)
    return EXIT_OK


def _schedule_run(args: argparse.Namespace, out: TextIO) -> int:
    import signal
    import threading

    from durable_nb.schedule_times import iso
    from durable_nb.scheduler import TickOutcome, default_launcher, run_due, run_forever

    folder = _existing_store(args.store)
    launcher = default_launcher()

    def tell(store: Path, outcome: TickOutcome) -> None:
        what = outcome.instance_id or outcome.error or "(its last run is still going)"
        print(f"{iso(outcome.tick)}  {outcome.schedule_id}: {outcome.action} {what}", file=out)
        out.flush()

    if args.once:
        outcomes = run_due(folder, launcher)
        for outcome in outcomes:
            tell(folder, outcome)
        if not outcomes:
            print("nothing due", file=out)
        return EXIT_FAILED if any(o.action == "failed" for o in outcomes) else EXIT_OK
    stop = threading.Event()

    def stop_on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, stop_on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    print(f"durable-nb: running the schedules of {folder}; Ctrl-C stops", file=out)
    out.flush()
    try:
        run_forever(lambda: [folder], launcher, stop, on_outcome=tell)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("durable-nb: scheduler stopped (runs already started go on)", file=out)
    return EXIT_OK


_COMMANDS: dict[str, Callable[[argparse.Namespace, TextIO], int]] = {
    "run": _cmd_run,
    "doctor": _cmd_doctor,
    "schedule": _cmd_schedule,
}


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Entry point of the ``durable-nb`` console script; returns the exit status."""
    stream = out or sys.stdout
    args: Any = build_parser().parse_args(argv)
    try:
        return _COMMANDS.get(args.verb, _cmd_store_verb)(args, stream)
    except _UsageProblem as exc:
        print(f"durable-nb {args.verb}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except DurableNbError as exc:
        print(f"durable-nb {args.verb}: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
