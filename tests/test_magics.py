"""%%activity, %%orchestrator and %durable through a real IPython InteractiveShell."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

import durable_nb as dn
from durable_nb.runtime import Runtime


@pytest.fixture
def ip(rt: Runtime) -> Iterator[Any]:
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "durable_nb")
    yield shell
    shell.run_line_magic("unload_ext", "durable_nb")


def test_activity_magic_binds_every_top_level_function(ip: Any) -> None:
    ip.run_cell_magic(
        "activity",
        "--retries 2 --backoff 0.5 --timeout 30 --concurrency 4",
        "def first(x):\n    def helper(y):\n        return y\n    return helper(x)\n\n"
        "async def second(x):\n    return x\n",
    )
    first, second = ip.user_ns["first"], ip.user_ns["second"]
    assert isinstance(first, dn.Activity) and isinstance(second, dn.Activity)
    assert "helper" not in ip.user_ns
    assert first(5) == 5  # called directly it is the plain function
    assert first.options.retries == 2 and first.options.timeout == 30
    assert first.options.concurrency == 4 and first.options.backoff == 0.5
    assert second.is_async


def test_activity_digest_ignores_formatting_but_not_logic(ip: Any) -> None:
    ip.run_cell_magic("activity", "", "def work(x):\n    return x + 1\n")
    before = ip.user_ns["work"].source_digest
    ip.run_cell_magic(
        "activity",
        "--retries 3",
        "# comment\ndef work(x):\n    '''doc'''\n    return (x +\n      1)\n",
    )
    assert ip.user_ns["work"].source_digest == before
    ip.run_cell_magic("activity", "", "def work(x):\n    return x + 2\n")
    assert ip.user_ns["work"].source_digest != before
    ip.run_cell_magic("activity", "--version 2", "def work(x):\n    return x + 2\n")
    assert ip.user_ns["work"].source_digest != before


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("--retries x", "invalid int value"),
        ("--retries -1", "retries must be"),
        ("--timeout 0", "timeout must be"),
        ("--concurrency 0", "concurrency must be"),
        ("--bogus 1", "unrecognized arguments"),
        ("--backoff soon", "expected seconds"),
    ],
)
def test_bad_activity_options_are_one_line_usage_errors(ip: Any, line: str, reason: str) -> None:
    with pytest.raises(UsageError) as info:
        ip.run_cell_magic("activity", line, "def f():\n    return 1\n")
    message = str(info.value)
    assert reason in message and "\n" not in message.strip()


def test_cells_without_functions_or_with_plain_orchestrators_are_refused(ip: Any) -> None:
    with pytest.raises(UsageError, match="defines no top-level function"):
        ip.run_cell_magic("activity", "", "x = 1\n")
    with pytest.raises(UsageError, match="generator function"):
        ip.run_cell_magic("orchestrator", "", "def plain(ctx):\n    return 1\n")
    with pytest.raises(UsageError, match="syntax error"):
        ip.run_cell_magic("activity", "", "def broken(:\n")


def test_orchestrator_magic_and_a_full_run(ip: Any, tmp_path: Any) -> None:
    log = tmp_path / "calls.txt"
    ip.user_ns["LOG"] = str(log)
    ip.run_cell_magic(
        "activity",
        "",
        "def sq(x):\n    open(LOG, 'a').write(f'{x}\\n')\n    return x * x\n",
    )
    ip.run_cell_magic(
        "orchestrator",
        "--strict",
        "def total(ctx, n):\n"
        "    xs = yield ctx.task_all([ctx.call_activity(sq, i) for i in range(n)])\n"
        "    return sum(xs)\n",
    )
    orch = ip.user_ns["total"]
    assert isinstance(orch, dn.Orchestrator) and orch.strict
    assert ip.run_cell("result = total.run(4)").success
    assert ip.user_ns["result"] == 14
    assert ip.run_cell("result = total.run(4)").success
    assert len(log.read_text().splitlines()) == 4


def test_durable_line_magic_lists_shows_and_purges(
    ip: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    ip.run_cell_magic("activity", "", "def one():\n    return 1\n")
    ip.run_cell_magic(
        "orchestrator", "", "def orch(ctx):\n    return (yield ctx.call_activity(one))\n"
    )
    ip.run_cell("orch.run()")
    iid = ip.user_ns["orch"].instance_id_for()
    capsys.readouterr()
    ip.run_line_magic("durable", "list")
    listing = capsys.readouterr().out
    assert iid in listing and "completed" in listing and "instance" in listing
    ip.run_line_magic("durable", f"show {iid}")
    shown = capsys.readouterr().out
    assert "status:        completed" in shown and "one" in shown and "output:        1" in shown
    with pytest.raises(UsageError, match="no instance"):
        ip.run_line_magic("durable", "show nope")
    with pytest.raises(UsageError, match="invalid choice: 'explode'"):
        ip.run_line_magic("durable", "explode")
    ip.run_line_magic("durable", f"purge {iid} ghost")
    assert "purged 1 instance(s); not purged: ghost (not found)" in capsys.readouterr().out
    ip.run_line_magic("durable", "purge --all")
    ip.run_line_magic("durable", "list")
    assert "no instances" in capsys.readouterr().out


def test_reload_and_unload_are_safe(ip: Any) -> None:
    ip.run_line_magic("reload_ext", "durable_nb")
    ip.run_cell_magic("activity", "", "def again():\n    return 2\n")
    ip.run_line_magic("unload_ext", "durable_nb")
    assert "activity" not in ip.magics_manager.magics["cell"]
    assert ip.user_ns["again"]() == 2  # definitions made stay usable
    ip.run_line_magic("load_ext", "durable_nb")
    assert "activity" in ip.magics_manager.magics["cell"]


def test_durable_raise_terminate_and_rewind_in_the_kernel(
    ip: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    ip.run_cell_magic("activity", "", "def shout(x):\n    return str(x).upper()\n")
    ip.run_cell_magic(
        "orchestrator",
        "",
        "def gate(ctx, who):\n"
        "    value = yield ctx.wait_for_external_event('go')\n"
        "    return (yield ctx.call_activity(shout, value))\n",
    )
    orch = ip.user_ns["gate"]
    iid = orch.instance_id_for("x")
    with pytest.raises(UsageError, match="no instance"):
        ip.run_line_magic("durable", f"raise {iid} go hello")
    # Create the instance, stop it while it waits, raise while nothing runs, resume.
    import asyncio

    async def start_and_stop() -> None:
        task = asyncio.ensure_future(orch("x"))
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(start_and_stop())
    ip.run_line_magic("durable", f'raise {iid} go "hello there"')
    assert "raised 'go' = 'hello there'" in capsys.readouterr().out
    assert orch.run("x") == "HELLO THERE"
    ip.run_line_magic("durable", f"terminate {iid}")
    assert "already completed" in capsys.readouterr().out
    ip.run_line_magic("durable", "list --status completed --name gate")
    assert iid in capsys.readouterr().out
    with pytest.raises(UsageError, match="15m"):
        ip.run_line_magic("durable", "list --older-than soon")


def test_the_activity_magic_takes_share_and_ttl(ip: Any) -> None:
    from IPython.core.error import UsageError

    ip.run_cell_magic("activity", "--share --ttl 1d", "def cached_fetch(x):\n    return x\n")
    options = ip.user_ns["cached_fetch"].options
    assert options.share is True and options.ttl == 86400.0
    ip.run_cell_magic("activity", "", "def per_instance(x):\n    return x\n")
    assert ip.user_ns["per_instance"].options.share is False
    with pytest.raises(UsageError, match="ttl applies to shared results only"):
        ip.run_cell_magic("activity", "--ttl 1d", "def nope(x):\n    return x\n")
    with pytest.raises(UsageError, match="is not a duration"):
        ip.run_cell_magic("activity", "--share --ttl soon", "def nope(x):\n    return x\n")


def test_name_registers_the_cells_function_under_another_name(ip: Any) -> None:
    """Durable Functions' samples name every function `main`: --name tells them apart."""
    hello, bye = (
        "def main(city):\n    return f'Hello {city}'\n",
        "def main(city):\n    return f'Bye {city}'\n",
    )
    ip.run_cell_magic("activity", "--name SayHello", hello)
    ip.run_cell_magic("activity", "--name SayBye", bye)
    ip.run_cell_magic(
        "orchestrator",
        "--name HelloCities",
        "def main(ctx):\n"
        "    a = yield ctx.call_activity('SayHello', 'Tokyo')\n"
        "    b = yield ctx.call_activity('SayBye', 'Seattle')\n"
        "    return [a, b]\n",
    )
    orch = ip.user_ns["main"]
    assert isinstance(orch, dn.Orchestrator) and orch.name == "HelloCities"
    assert orch.run() == ["Hello Tokyo", "Bye Seattle"]
    assert orch.instance_id_for().startswith("HelloCities-")
    with pytest.raises(UsageError, match="names one function, but this cell defines 2"):
        ip.run_cell_magic("activity", "--name Both", "def a():\n    pass\n\ndef b():\n    pass\n")
    with pytest.raises(UsageError, match="name 'sub:x' cannot be used"):
        ip.run_cell_magic("activity", "--name sub:x", "def c():\n    pass\n")
