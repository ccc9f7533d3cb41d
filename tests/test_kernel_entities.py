"""Durable entities in real kernels: one entity shared by two kernels on one store at
once, and its state kept across a kernel's SIGKILL and restart."""

from __future__ import annotations

from pathlib import Path

import pytest
from kernel_harness import KernelSession, define

pytestmark = pytest.mark.kernel

SETUP = "%load_ext durable_nb\nimport durable_nb as dn\ndn.configure(progress='none')"
COUNTER = """
%%entity
def counter(ctx):
    value = ctx.get_state(lambda: 0)
    if ctx.operation_name == "add":
        ctx.set_state(value + ctx.get_input())
    ctx.set_result(ctx.get_state(lambda: 0))
"""
SENDER = """
%%orchestrator
def sender(ctx, who, n):
    for i in range(n):
        ctx.signal_entity(dn.EntityId("counter", "shared"), "add", 1)
        yield ctx.create_timer(0.001)  # steps apart, so both kernels' signals interleave
    return (yield ctx.call_entity(dn.EntityId("counter", "shared"), "get"))
"""


def test_two_kernels_share_one_entity_and_it_survives_a_kill(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with (
        KernelSession(cwd=tmp_path, store=store) as k1,
        KernelSession(cwd=tmp_path, store=store) as k2,
    ):
        for k in (k1, k2):
            define(k, SETUP, COUNTER, SENDER)
        running = [
            k.run_async(f"seen = await sender({who!r}, 40)") for who, k in enumerate((k1, k2))
        ]
        for k, msg_id in zip((k1, k2), running, strict=True):
            k.wait(msg_id, timeout=90, allow_error=False)
        seen = [k.eval("seen") for k in (k1, k2)]
        # Each kernel's last call came after its own 40 signals: it saw them all, and
        # the later one saw all 80.
        assert min(seen) >= 40 and max(seen) == 80, seen
        k1.kill()  # the entity's state is in the store, not in a kernel
    with KernelSession(cwd=tmp_path, store=store) as k3:
        define(k3, SETUP, COUNTER)
        state = k3.eval("dn.read_entity_state(dn.EntityId('counter', 'shared')).entity_state")
        assert state == 80
        listed = k3.run("%durable entity list")
        assert "@counter@shared" in listed and "80" in listed
