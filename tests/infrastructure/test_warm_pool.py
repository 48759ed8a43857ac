"""Pre-started strict sandboxes (infrastructure/sandbox/local/warm_pool.py) against a hostile
agent: a sandbox handed out of the pool is as fresh as a new one, is handed out once, and an
item cannot reach the sandboxes still waiting in the pool nor leave anything for the next item.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from infrastructure.sandbox.local import StrictSandbox
from infrastructure.sandbox.local.warm_pool import WarmPool
from infrastructure.sandbox.protocol import EgressPolicy, SandboxError
from tests.infrastructure.strict_support import (
    IDLE_VIEW,
    commands_of_uid,
    require_root,
    spec,
    strict_provider,
)


def token(sandbox_id: str) -> str:
    """What stays of a sandbox's id when it is handed out (it then takes the item's name)."""
    return sandbox_id.rsplit("--", 1)[-1]


async def filled(pool: WarmPool, count: int) -> None:
    """Wait until `count` sandboxes wait in the pool (a first provision set it going)."""
    for _ in range(400):
        if len(pool.warm_ids()) >= count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the pool never held {count} sandboxes: {pool.warm_ids()}")


@pytest.fixture
async def pool(tmp_path: Path) -> AsyncIterator[WarmPool]:
    require_root()
    warm = WarmPool(strict_provider(tmp_path / "sandboxes"), 2)
    yield warm
    await warm.close()


async def take(pool: WarmPool, item_id: str) -> StrictSandbox:
    box = await pool.provision(spec(item_id=item_id))
    assert isinstance(box, StrictSandbox)
    return box


async def sh(box: StrictSandbox, command: str) -> str:
    return (await box.run(command, timeout_sec=20)).stdout


async def test_an_item_leaves_nothing_for_the_next_and_cannot_reach_the_waiting_sandboxes(
    pool: WarmPool,
) -> None:
    first = await take(pool, "item-a")  # fresh: the pool was empty; now it fills
    await filled(pool, 2)
    waiting = [token(sandbox_id) for sandbox_id in pool.warm_ids()]
    second = await take(pool, "item-b")
    assert pool.handed_out == 1 and token(second.id) in waiting
    # Handed out, it is named and recorded as the item's, like a fresh one.
    assert Path(second.location).name.startswith("item-b--") and second.id.startswith("item-b")
    # item-b, hostile: plants a detached process and files everywhere it can write, then
    # tries to find and hit the sandbox still waiting in the pool.
    await sh(
        second,
        "setsid nohup sleep 300 >/dev/null 2>&1 & "
        "echo planted > /workspace/planted; echo planted > /tmp/planted; "
        "mkdir -p /workspace/.config && echo planted > /workspace/.config/rc",
    )
    probe = await sh(
        second,
        "ls /proc | grep -c '^[0-9]'; ls /run /var/tmp 2>&1 | head -3; "
        "for port in 1 22 53 80 5432; do "
        "  (echo > /dev/tcp/10.0.2.2/$port) 2>/dev/null && echo reached $port; done; "
        "echo done",
    )
    assert "reached" not in probe and "done" in probe
    await second.run("kill -9 -1", timeout_sec=20)  # everything it can signal
    # Its PID namespace holds only its own processes (PID 1, the leader, bash, ls, grep...).
    assert int(probe.splitlines()[0]) < 10
    leftover_uid = second._agent.principal.uid
    await second.kill_all()
    await second.destroy()
    assert commands_of_uid(leftover_uid) == []

    third = await take(pool, "item-c")
    assert token(third.id) in waiting and third.id != second.id
    # The waiting sandbox was not hit: its view still serves, and it is as fresh as new.
    assert third._agent.principal.uid not in (first._agent.principal.uid, leftover_uid)
    seen = await sh(
        third,
        "ls -A /workspace /tmp; pgrep -a sleep || echo no-sleep; id -u; echo $USER",
    )
    assert "planted" not in seen and ".config" not in seen
    assert "no-sleep" in seen
    assert str(third._agent.principal.uid) in seen
    assert commands_of_uid(third._agent.principal.uid) == IDLE_VIEW
    for box in (first, third):
        await box.destroy()


async def test_a_warm_sandbox_is_handed_out_once_and_takes_the_items_spec(
    pool: WarmPool,
) -> None:
    first = await take(pool, "item-a")
    await filled(pool, 2)
    boxes = [await take(pool, f"item-{n}") for n in range(2)]
    assert len({token(box.id) for box in [first, *boxes]}) == 3
    # The item's environment reaches its commands; its id is in the metadata operators and
    # orphan reaping read.
    handed = await pool.provision(spec(item_id="item-env", env={"TASK_VAR": "from-item"}))
    assert isinstance(handed, StrictSandbox)
    assert (await sh(handed, "echo $TASK_VAR")).strip() == "from-item"
    recorded = {meta.id: meta.item_id for meta in pool.provider.sandboxes()}
    assert recorded[boxes[0].id] == "item-0"
    # The handed-out sandbox's files moved with its name; the view still works over them.
    await boxes[0].put_file("note.txt", b"kept")
    assert (boxes[0].workspace / "note.txt").read_bytes() == b"kept"
    assert (await sh(boxes[0], "cat note.txt")) == "kept"
    with pytest.raises(SandboxError, match="already handed out"):
        await boxes[0].adopt(spec(item_id="item-again"))
    for box in [first, *boxes, handed]:
        await box.destroy()


async def test_a_spec_the_pool_cannot_serve_gets_a_fresh_sandbox(pool: WarmPool) -> None:
    first = await take(pool, "item-a")
    await filled(pool, 2)
    waiting = pool.warm_ids()
    own_network = await pool.provision(spec(item_id="item-egress", egress=EgressPolicy(())))
    small = await pool.provision(spec(item_id="item-small", disk_bytes=8 * 1024**2))
    assert own_network.id not in waiting and small.id not in waiting
    assert pool.warm_ids() == waiting and pool.handed_out == 0
    for box in (first, own_network, small):
        await box.destroy()


async def test_close_destroys_the_sandboxes_never_handed_out(pool: WarmPool) -> None:
    first = await take(pool, "item-a")
    await filled(pool, 2)
    uids = [meta for meta in pool.provider.sandboxes() if meta.item_id == "warm"]
    assert len(uids) == 2
    await pool.close()
    assert [meta.item_id for meta in pool.provider.sandboxes()] == ["item-a"]
    fresh = await pool.provision(spec(item_id="item-after"))
    assert pool.warm_ids() == [] and pool.handed_out == 0
    for box in (first, fresh):
        await box.destroy()


async def test_the_pool_refills_after_each_hand_out_and_gives_back_what_nobody_asks_for(
    tmp_path: Path,
) -> None:
    require_root()
    pool = WarmPool(strict_provider(tmp_path / "sandboxes"), 2, idle_seconds=3.0)
    try:
        first = await take(pool, "item-a")
        await filled(pool, 2)
        second = await take(pool, "item-b")  # the filler waits, full: this must wake it
        await filled(pool, 2)
        assert pool.handed_out == 1
        for box in (first, second):
            await box.destroy()
        # Nobody asks for one for idle_seconds: the pool destroys what it holds.
        for _ in range(200):
            if not pool.warm_ids():
                break
            await asyncio.sleep(0.05)
        assert pool.warm_ids() == []
        assert [meta for meta in pool.provider.sandboxes() if meta.item_id == "warm"] == []
    finally:
        await pool.close()


async def test_closing_while_a_sandbox_is_being_started_leaves_no_sandbox_and_no_mount(
    pool: WarmPool,
) -> None:
    first = await take(pool, "item-a")  # the pool starts filling now
    await asyncio.sleep(0.02)  # a warm sandbox is half-way through its start
    await pool.close()
    await first.destroy()
    assert pool.provider.sandboxes() == []
    networks = str(pool.provider.networks_root)
    with open("/proc/self/mountinfo") as mounts:
        assert [line for line in mounts if networks in line] == []
