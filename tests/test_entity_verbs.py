"""Durable entities' user-facing surfaces: the ``%%entity`` cell magic, and the
``entity list|show|signal|purge`` verbs through ``durable-nb`` (in-process, on a real
store folder) and through ``%durable`` in an IPython shell. What an operation did is
counted in the entity's state, so an operation applied twice, or not at all, shows."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import test_magics
from IPython.core.error import UsageError
from test_cli import cli

import durable_nb as dn
from durable_nb import entities
from durable_nb.report import STATE_LIMIT
from durable_nb.runtime import Runtime
from durable_nb.store import DiskCacheStore

COUNTER_CELL = """
def counter(ctx):
    value = ctx.get_state(lambda: 0)
    if ctx.operation_name == "add":
        ctx.set_state(value + ctx.get_input())
    elif ctx.operation_name == "get":
        ctx.set_result(value)
    else:
        raise ValueError(f"no operation {ctx.operation_name}")
"""


@pytest.fixture(autouse=True)
def no_entities() -> Iterator[None]:
    """Each test defines its own: the registry is the process's."""
    saved = dict(entities._ENTITIES)
    entities._ENTITIES.clear()
    yield
    entities._ENTITIES.clear()
    entities._ENTITIES.update(saved)


ip = test_magics.ip  # a real IPython shell with the extension loaded


# ------------------------------------------------------------------ %%entity


def test_the_entity_magic_defines_a_function_entity(ip: Any) -> None:
    ip.run_cell_magic("entity", "", COUNTER_CELL)
    counter = ip.user_ns["counter"]
    assert isinstance(counter, dn.Entity) and not counter.is_class
    assert entities.find_entity("counter") is counter
    dn.signal_entity("@counter@c1", "add", 4)
    dn.signal_entity("@counter@c1", "add", 3)
    assert dn.read_entity_state("@counter@c1").entity_state == 7


def test_the_entity_magic_defines_a_class_entity_under_another_name(ip: Any) -> None:
    ip.run_cell_magic(
        "entity",
        "--name Account",
        "class Wallet:\n    def __init__(self):\n        self.balance = 0\n\n"
        "    def deposit(self, amount):\n        self.balance += amount\n"
        "        return self.balance\n",
    )
    wallet = ip.user_ns["Wallet"]
    assert isinstance(wallet, dn.Entity) and wallet.is_class and wallet.name == "Account"
    assert entities.find_entity("Wallet") is None
    assert wallet.operations() == ["deposit"]
    dn.signal_entity("@Account@a", "deposit", 5)
    assert dn.read_entity_state("@Account@a").entity_state == {"balance": 5}


def test_an_entity_cell_defined_again_replaces_the_definition(ip: Any) -> None:
    ip.run_cell_magic("entity", "", COUNTER_CELL)
    dn.signal_entity("@counter@c1", "add", 1)
    ip.run_cell_magic("entity", "", COUNTER_CELL.replace("value + ctx", "value + 10 * ctx"))
    dn.signal_entity("@counter@c1", "add", 1)
    assert dn.read_entity_state("@counter@c1").entity_state == 11  # the state is kept


@pytest.mark.parametrize(
    ("cell", "says"),
    [
        ("x = 1\n", "defines none"),
        ("def a(ctx):\n    pass\n\ndef b(ctx):\n    pass\n", "defines 2 (a, b)"),
        ("def a(ctx):\n    pass\n\nclass B:\n    pass\n", "defines 2 (a, B)"),
        ("async def a(ctx):\n    pass\n", "async def"),
        ("def a(ctx):\n    yield 1\n", "no yield"),
        ("def a(ctx) pass\n", "syntax error"),
    ],
)
def test_an_entity_cell_must_define_one_plain_function_or_class(
    ip: Any, cell: str, says: str
) -> None:
    with pytest.raises(UsageError, match=f"%%entity: .*{re.escape(says)}"):
        ip.run_cell_magic("entity", "", cell)
    assert entities.defined_entities() == []


def test_an_entity_name_with_at_is_refused(ip: Any) -> None:
    with pytest.raises(UsageError, match="entity name 'a@b' cannot be used"):
        ip.run_cell_magic("entity", "--name a@b", COUNTER_CELL)
    assert entities.defined_entities() == []


def test_unload_removes_the_entity_magic(ip: Any) -> None:
    ip.run_line_magic("unload_ext", "durable_nb")
    assert "entity" not in ip.magics_manager.magics["cell"]
    ip.run_line_magic("load_ext", "durable_nb")
    assert "entity" in ip.magics_manager.magics["cell"]


# ------------------------------------------------------------------ durable-nb entity


@pytest.fixture
def entity_store(rt: Runtime, store_dir: Path) -> str:
    """A store with @counter@c1 = 7 (two adds), @counter@c2 = 1 and a dict-state entity;
    the runtime closed and the definitions gone, as for a command in another process."""
    dn.entity(name="counter")(_counter)
    dn.entity(_Ledger)
    dn.signal_entity("@counter@c1", "add", 3)
    dn.signal_entity("@counter@c1", "add", 4)
    dn.signal_entity("counter/c2", "add", 1)
    dn.signal_entity("@_Ledger@big", "write", 500)
    rt.close()
    entities._ENTITIES.clear()
    return str(store_dir)


def _counter(ctx: dn.EntityContext) -> None:
    value = ctx.get_state(lambda: 0)
    if ctx.operation_name == "add":
        ctx.set_state(value + ctx.get_input())
    elif ctx.operation_name == "get":
        ctx.set_result(value)


class _Ledger:
    def __init__(self) -> None:
        self.lines: dict[str, int] = {}

    def write(self, n: int) -> None:
        self.lines = {f"line-{i}": i for i in range(n)}


def test_entity_list_shows_every_entity_with_a_preview_of_its_state(entity_store: str) -> None:
    code, out = cli("entity", "list", "--store", entity_store)
    assert code == 0, out
    header, _rule, *rows = out.strip().splitlines()
    assert header.split()[:4] == ["entity", "exists", "state", "waiting"]
    assert "locked by" in header and "version" in header and "updated" in header
    assert [row.split()[:5] for row in rows] == [
        ["@_Ledger@big", "yes", "dict[1]", "0", "-"],
        ["@counter@c1", "yes", "7", "0", "-"],
        ["@counter@c2", "yes", "1", "0", "-"],
    ]
    code, out = cli("entity", "--store", entity_store, "list", "--name", "counter")
    assert code == 0 and "@counter@c1" in out and "_Ledger" not in out


def test_entity_signal_from_the_command_line_waits_for_a_kernel_that_defines_it(
    entity_store: str,
) -> None:
    code, out = cli("entity", "signal", "@counter@c1", "add", "5", "--store", entity_store)
    assert code == 0
    assert "signaled 'add' = 5 to @counter@c1: queued (1 waiting)" in out
    assert "does not define entity 'counter'" in out
    code, out = cli(
        "entity", "signal", "counter/c1", "add", "10", "--text", "--store", entity_store
    )
    assert "'add' = '10'" in out and "(2 waiting)" in out
    code, out = cli("entity", "show", "counter/c1", "--store", entity_store)
    assert code == 0
    assert "state:\n  7\n" in out  # not applied: nothing here defines the entity
    assert "waiting messages: 2 (applied in this order)" in out
    lines = out.splitlines()
    waiting = lines[lines.index(next(ln for ln in lines if ln.startswith("#  operation"))) + 2 :]
    assert [ln.split()[1:4] for ln in waiting] == [
        ["add", "5", "client"],
        ["add", "'10'", "client"],
    ]
    # A kernel that defines it applies the queue when it touches the entity, once.
    store = DiskCacheStore(entity_store)
    try:
        dn.entity(name="counter")(_counter)
        dn.signal_entity("@counter@c1", "add", 100, store=store)  # applied after the two
        # 7 + 5 + 100: '10' is text, so that operation failed and kept the state it had.
        assert dn.read_entity_state("@counter@c1", store=store).entity_state == 112
        assert dn.read_entity_state("@counter@c1", store=store).waiting == 0
    finally:
        store.close()


def test_entity_show_prints_the_whole_state_but_bounded(entity_store: str) -> None:
    code, out = cli("entity", "show", "@_Ledger@big", "--store", entity_store)
    assert code == 0
    assert "exists:     yes" in out and "locked by:  -" in out
    assert "waiting messages: none" in out
    state = out.split("state:\n", 1)[1].split("\n\n", 1)[0]
    assert "'line-0': 0" in state and "'line-499'" not in state  # 500 lines: cut
    assert len(state) <= STATE_LIMIT + 200
    code, out = cli("entity", "show", "@counter@c2", "--store", entity_store)
    assert "state:\n  1\n" in out and "version:    1" in out


def test_entity_purge_says_what_it_removed_and_refuses_an_unknown_entity(
    entity_store: str, capsys: pytest.CaptureFixture[str]
) -> None:
    cli("entity", "signal", "@counter@c2", "add", "1", "--store", entity_store)
    code, out = cli("entity", "purge", "@counter@c2", "--store", entity_store)
    assert code == 0
    assert out.strip() == (
        "purged @counter@c2: its state; 1 waiting message(s) (not applied); "
        "the record of the messages applied to it"
    )
    code, out = cli("entity", "list", "--store", entity_store)
    assert "@counter@c2" not in out and "@counter@c1" in out
    capsys.readouterr()
    code, out = cli("entity", "purge", "@counter@c2", "--store", entity_store)
    err = capsys.readouterr().err
    assert code == 1 and out == ""
    assert "no entity @counter@c2 in" in err and "entity list" in err
    code, _ = cli("entity", "show", "@counter@zz", "--store", entity_store)
    assert code == 1 and "no entity @counter@zz" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["entity", "show", "counter"], "does not name an entity"),
        (["entity", "purge", "@@x"], "an entity name must be a non-empty string"),
        (["entity"], "the following arguments are required: ACTION"),
        (["entity", "signal", "@counter@c1"], "required: operation"),
    ],
)
def test_entity_usage_mistakes_exit_2_with_one_line(
    entity_store: str, argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _ = cli(*argv, "--store", entity_store) if len(argv) > 1 else cli(*argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and says in err[0], err


@pytest.mark.parametrize("action", ["list", "show", "signal", "purge"])
def test_every_entity_action_has_help(action: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = cli("entity", action, "--help")
    assert code == 0 and f"usage: durable-nb entity {action}" in capsys.readouterr().out


def test_an_empty_store_has_no_entities(rt: Runtime, store_dir: Path) -> None:
    rt.close()
    assert cli("entity", "list", "--store", str(store_dir)) == (0, "no entities in the store\n")


# ------------------------------------------------------------------ %durable entity


def test_durable_entity_in_a_kernel_that_defines_it_applies_at_once(
    ip: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    ip.run_cell_magic("entity", "", COUNTER_CELL)
    capsys.readouterr()
    ip.run_line_magic("durable", "entity signal @counter@c1 add 5")
    assert capsys.readouterr().out.strip() == "signaled 'add' = 5 to @counter@c1: applied"
    ip.run_line_magic("durable", "entity signal @counter@c1 add 2")
    ip.run_line_magic("durable", "entity signal @counter@c1 explode")
    assert "applied, and it failed (ValueError: no operation explode)" in capsys.readouterr().out
    assert dn.read_entity_state("@counter@c1").entity_state == 7
    ip.run_line_magic("durable", "entity list")
    listing = capsys.readouterr().out
    assert "@counter@c1" in listing and listing.splitlines()[2].split()[:4] == [
        "@counter@c1",
        "yes",
        "7",
        "0",
    ]
    ip.run_line_magic("durable", "entity show counter/c1")
    assert "state:\n  7\n" in capsys.readouterr().out
    ip.run_line_magic("durable", "entity purge @counter@c1")
    assert "purged @counter@c1: its state" in capsys.readouterr().out
    with pytest.raises(UsageError, match="%durable entity: no entity @counter@c1"):
        ip.run_line_magic("durable", "entity show @counter@c1")
    with pytest.raises(UsageError, match="does not name an entity"):
        ip.run_line_magic("durable", "entity show nonsense")
    assert not dn.read_entity_state("@counter@c1").entity_exists
