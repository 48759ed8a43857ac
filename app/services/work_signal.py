"""How a command tells this process's worker pool that items may have become claimable (an
evaluation created or reopened), so it claims at once instead of at its next poll."""

from __future__ import annotations

import asyncio
import contextlib


class WorkSignal:
    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()

    async def wait(self, timeout: float) -> None:
        """Until notified or `timeout` seconds passed; a notification is consumed."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), timeout)
        self._event.clear()
