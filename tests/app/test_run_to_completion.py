"""The runner's clean-up survives a cancellation that arrives while it runs."""

from __future__ import annotations

import asyncio

import pytest

from app.worker.runner import run_to_completion


async def test_a_caller_cancelled_midway_still_lets_the_work_finish_then_sees_the_cancel() -> None:
    finished = asyncio.Event()

    async def clean_up() -> str:
        await asyncio.sleep(0.05)
        finished.set()
        return "done"

    caller = asyncio.create_task(run_to_completion(clean_up()))
    await asyncio.sleep(0.01)
    caller.cancel()
    await asyncio.sleep(0)
    caller.cancel()  # a second cancel does not cut it short either

    with pytest.raises(asyncio.CancelledError):
        await caller
    assert finished.is_set()


async def test_without_a_cancel_the_result_is_returned() -> None:
    async def clean_up() -> str:
        await asyncio.sleep(0)
        return "done"

    assert await run_to_completion(clean_up()) == "done"
