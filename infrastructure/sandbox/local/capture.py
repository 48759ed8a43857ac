"""Reading a command's output pipes with a cap, and feeding its stdin."""

from __future__ import annotations

import asyncio
import contextlib


class OutputCapture(asyncio.Protocol):
    """Reads one output pipe, keeping the first `limit` bytes and counting the rest."""

    def __init__(self, limit: int, done: asyncio.Future[None]) -> None:
        self._limit = limit
        self._chunks: list[bytes] = []
        self._kept = 0
        self.dropped = 0
        self.done = done

    def data_received(self, data: bytes) -> None:
        room = self._limit - self._kept
        if room > 0:
            self._chunks.append(data[:room])
            self._kept += min(room, len(data))
        self.dropped += max(0, len(data) - max(room, 0))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)

    def text(self) -> str:
        text = b"".join(self._chunks).decode("utf-8", "replace")
        if self.dropped:
            text += f"\n[assay: output truncated, {self.dropped} more bytes not kept]\n"
        return text


async def feed_stdin(proc: asyncio.subprocess.Process, data: bytes) -> None:
    assert proc.stdin is not None
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        proc.stdin.write(data)
        await proc.stdin.drain()
    proc.stdin.close()
