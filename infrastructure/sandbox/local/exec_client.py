"""The worker's side of a strict view: starts `bwrap` with the exec server as its PID 1 and
asks it to run commands and place files (see `programs/exec_server.py` for the protocol).

Output never travels over the control channel: the worker makes the pipes, hands their ends
to the server, and reads them itself with a cap (`OutputCapture`). Deadlines are enforced
from outside: the worker finds the command's leader among PID 1's children in the host's
/proc and kills its whole tree (`stop_and_kill`), so a sandbox that subverted its own server
still cannot outlive a deadline. Killing PID 1 ends the whole view.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import marshal
import os
import socket
import time
from collections.abc import Mapping, Sequence
from typing import Any

from infrastructure.sandbox.local.capture import OutputCapture
from infrastructure.sandbox.local.constants import (
    DRAIN_GRACE_SEC,
    HOLDER_START_SEC,
    KILL_WAIT_SEC,
)
from infrastructure.sandbox.local.processes import (
    child_of,
    host_pid_of,
    send_signal,
    stop_and_kill,
    wait_gone,
)
from infrastructure.sandbox.protocol import ExecResult, SandboxError

# A reply the server owes within this long (everything but a command's exit and wait_port).
REPLY_SEC = 10.0
# Files per write request: the server reads a request into 1 MiB, and 256 paths of up to a
# few KiB each stay below it.
WRITE_BATCH = 256


class ExecServer:
    """One running view: its bwrap process, its PID 1 (host pid), and the control channel."""

    def __init__(self, name: str, output_limit: int) -> None:
        self.name = name
        self._output_limit = output_limit
        self._process: asyncio.subprocess.Process | None = None
        self._channel: socket.socket | None = None
        self.init_pid: int | None = None
        self._replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._exits: dict[int, asyncio.Future[int]] = {}
        self._next_id = 0
        self._running: set[int] = set()  # host pids of leaders of commands still running

    @property
    def alive(self) -> bool:
        return self._channel is not None

    async def start(
        self, argv: Sequence[str], env: Mapping[str, str], pass_fds: Sequence[int] = ()
    ) -> int:
        """Start the view; return PID 1's host pid once the server said it is ready.
        `pass_fds` are the descriptors bwrap builds the view from."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                str(theirs.fileno()),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                pass_fds=(theirs.fileno(), *pass_fds),
                env=dict(env),
                cwd="/",
                start_new_session=True,
            )
        except OSError as exc:
            ours.close()
            raise SandboxError(f"cannot start the {self.name} view: {exc}") from exc
        finally:
            theirs.close()
        ours.setblocking(False)
        self._process, self._channel = process, ours
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[dict[str, Any]] = loop.create_future()
        self._replies[-1] = ready
        loop.add_reader(ours.fileno(), self._on_message)
        try:
            await asyncio.wait_for(asyncio.shield(ready), HOLDER_START_SEC)
        except (TimeoutError, SandboxError):
            await self.stop()
            assert process.stderr is not None
            with contextlib.suppress(TimeoutError):
                err = await asyncio.wait_for(process.stderr.read(), KILL_WAIT_SEC)
                raise SandboxError(
                    f"the {self.name} view did not start: "
                    + err.decode("utf-8", "replace").strip()[-500:]
                ) from None
            raise SandboxError(f"the {self.name} view did not start") from None
        except BaseException:
            # Cancelled while the view starts (an item cancelled, a warm pool closing): end
            # it rather than leave a view nobody will stop.
            await self.stop()
            raise
        init = child_of(process.pid)
        if init is None:
            await self.stop()
            raise SandboxError(f"the {self.name} view has no PID 1")
        self.init_pid = init
        return init

    def _on_message(self) -> None:
        channel = self._channel
        if channel is None:
            return
        while True:
            try:
                data = channel.recv(1 << 16)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._lost("the sandbox's server went away")
                return
            try:
                message = json.loads(data)
                assert isinstance(message, dict)
            except (ValueError, AssertionError):
                self._lost("the sandbox's server sent something that is not a reply")
                return
            if message.get("ready"):
                self._resolve(-1, message)
            elif "exit" in message:
                exited = self._exits.pop(int(message["id"]), None)
                if exited is not None and not exited.done():
                    exited.set_result(int(message["exit"]))
            else:
                self._resolve(int(message["id"]), message)

    def _resolve(self, ident: int, message: dict[str, Any]) -> None:
        waiter = self._replies.pop(ident, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(message)

    def _lost(self, why: str) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(channel.fileno())
            channel.close()
        waiters: list[asyncio.Future[Any]] = [*self._replies.values(), *self._exits.values()]
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(SandboxError(f"{self.name}: {why}"))
        self._replies.clear()
        self._exits.clear()

    async def _request(
        self,
        message: dict[str, Any],
        fds: Sequence[int] = (),
        timeout: float = REPLY_SEC,
        exited: asyncio.Future[int] | None = None,
    ) -> dict[str, Any]:
        """Send a request, await its reply. `exited` (a run's) is registered before sending:
        a fast command's exit may arrive in the same read as the reply."""
        channel = self._channel
        if channel is None:
            raise SandboxError(f"the {self.name} view is not running")
        self._next_id += 1
        ident = message["id"] = self._next_id
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[ident] = waiter
        if exited is not None:
            self._exits[ident] = exited
        try:
            socket.send_fds(channel, [marshal.dumps(message)], list(fds))
        except OSError as exc:
            self._replies.pop(ident, None)
            self._exits.pop(ident, None)
            raise SandboxError(f"{self.name}: cannot reach the sandbox's server: {exc}") from exc
        try:
            reply = await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            self._replies.pop(ident, None)
            raise SandboxError(f"{self.name}: the sandbox's server did not answer") from None
        if "error" in reply:
            raise SandboxError(f"{self.name}: {reply['error']}")
        return reply

    async def write(self, files: Sequence[tuple[str, int, bytes]]) -> None:
        """Place files (relative path, mode, content) below the view's working directory, as
        the view's own uid: one memory file holds every content, one request places them all
        (a task tree of 165 files cost 165 round trips on the worker's loop)."""
        for start in range(0, len(files), WRITE_BATCH):
            batch = files[start : start + WRITE_BATCH]
            fd = os.memfd_create("assay-files", os.MFD_CLOEXEC)
            try:
                listed, offset = [], 0
                for path, mode, content in batch:
                    listed.append([path, mode, offset, len(content)])
                    offset += len(content)
                _write_all(fd, b"".join(content for _, _, content in batch))
                await self._request({"op": "write", "files": listed}, [fd])
            finally:
                os.close(fd)

    async def wait_port(self, port: int, timeout: float, watch: int | None = None) -> bool:
        """Whether something listens on `port` of the view's network within `timeout`; False
        at once if the command `watch` (a pid in the view) has exited meanwhile."""
        message = {"op": "wait_port", "port": port, "timeout": timeout, "watch": watch}
        reply = await self._request(message, timeout=timeout + REPLY_SEC)
        return bool(reply.get("ok"))

    async def run(
        self,
        command: str,
        *,
        timeout_sec: float,
        env: Mapping[str, str],
        cwd: str,
        limits: Sequence[int],
        stdin: str | None = None,
    ) -> ExecResult:
        """Run `command` to its end or the deadline, whichever comes first."""
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        deadline = started + timeout_sec
        in_r, in_w = os.pipe() if stdin is not None else (os.open(os.devnull, os.O_RDONLY), -1)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            reply, exited = await self._start_command(
                command, env, cwd, limits, (in_r, out_w, err_w)
            )
        except BaseException:
            for fd in (in_w, out_r, err_r):
                if fd >= 0:
                    os.close(fd)
            raise
        finally:
            for fd in (in_r, out_w, err_w):
                os.close(fd)
        leader = self._leader(int(reply["pid"]))
        return await self._collect(
            command, exited, leader, (out_r, err_r, in_w), stdin, started, deadline, loop
        )

    async def spawn(
        self,
        command: str,
        *,
        env: Mapping[str, str],
        cwd: str,
        limits: Sequence[int],
        output: int,
    ) -> int:
        """Start `command` in the background, its output to `output`; nobody waits for its
        end (a service). Returns its pid inside the view."""
        null = os.open(os.devnull, os.O_RDONLY)
        try:
            reply, _ = await self._start_command(command, env, cwd, limits, (null, output, output))
        finally:
            os.close(null)
        self._exits.pop(int(reply["id"]), None)
        return int(reply["pid"])

    async def _start_command(
        self,
        command: str,
        env: Mapping[str, str],
        cwd: str,
        limits: Sequence[int],
        fds: tuple[int, int, int],
    ) -> tuple[dict[str, Any], asyncio.Future[int]]:
        """The server's reply (with the command's pid) and the future of its exit code."""
        message: dict[str, Any] = {"op": "run", "command": command, "env": dict(env)}
        message |= {"cwd": cwd, "limits": list(limits)}
        exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        return await self._request(message, fds, exited=exited), exited

    def _leader(self, ns_pid: int) -> int | None:
        if self.init_pid is None:
            return None
        leader = host_pid_of(self.init_pid, ns_pid)
        if leader is not None:
            self._running.add(leader)
        return leader

    async def _collect(
        self,
        command: str,
        exited: asyncio.Future[int],
        leader: int | None,
        fds: tuple[int, int, int],
        stdin: str | None,
        started: float,
        deadline: float,
        loop: asyncio.AbstractEventLoop,
    ) -> ExecResult:
        out_r, err_r, in_w = fds
        out = OutputCapture(self._output_limit, loop.create_future())
        err = OutputCapture(self._output_limit, loop.create_future())
        readers = [os.fdopen(out_r, "rb", buffering=0), os.fdopen(err_r, "rb", buffering=0)]
        transports: list[asyncio.BaseTransport] = []
        feeder: asyncio.Task[None] | None = None
        timed_out = False
        code: int | None = None
        try:
            out_transport, _ = await loop.connect_read_pipe(lambda: out, readers[0])
            transports.append(out_transport)
            err_transport, _ = await loop.connect_read_pipe(lambda: err, readers[1])
            transports.append(err_transport)
            if in_w >= 0:
                feeder = asyncio.create_task(_feed(in_w, (stdin or "").encode()))
                in_w = -1
            try:
                code = await asyncio.wait_for(
                    asyncio.shield(exited), max(0.0, deadline - time.monotonic())
                )
            except TimeoutError:
                timed_out = True
                await self._kill_tree(leader)
                with contextlib.suppress(TimeoutError, SandboxError):
                    await asyncio.wait_for(asyncio.shield(exited), KILL_WAIT_SEC)
            grace = DRAIN_GRACE_SEC if timed_out else deadline - time.monotonic()
            await asyncio.wait([out.done, err.done], timeout=min(DRAIN_GRACE_SEC, max(0.05, grace)))
        except BaseException:
            await self._kill_tree(leader)
            raise
        finally:
            if leader is not None:
                self._running.discard(leader)
            if feeder is not None:
                feeder.cancel()
            if in_w >= 0:
                os.close(in_w)
            for transport in transports:
                transport.close()
            for reader in readers:
                reader.close()
        return ExecResult(
            exit_code=None if timed_out else code,
            stdout=out.text(),
            stderr=err.text(),
            timed_out=timed_out,
            duration_ms=(time.monotonic() - started) * 1000,
        )

    async def _kill_tree(self, leader: int | None) -> None:
        if leader is None:
            # Not found among PID 1's children: only ending the whole view is certain.
            await self.stop()
            return
        killed = stop_and_kill([leader], [])
        await wait_gone(killed, KILL_WAIT_SEC)

    async def stop(self) -> None:
        """End the view: SIGKILL its PID 1 (the kernel kills the whole namespace)."""
        self._lost("the view was stopped")
        process, self._process = self._process, None
        init, self.init_pid = self.init_pid, None
        if init is not None:
            send_signal(init, 9)
            await wait_gone([init], KILL_WAIT_SEC)
        if self._running:
            killed = stop_and_kill(self._running, [])
            self._running.clear()
            await wait_gone(killed, KILL_WAIT_SEC)
        if process is not None:
            try:
                await asyncio.wait_for(process.wait(), KILL_WAIT_SEC)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(process.wait(), KILL_WAIT_SEC)


def _write_all(fd: int, content: bytes) -> int:
    view = memoryview(content)
    while view:
        view = view[os.write(fd, view) :]
    return len(content)


async def _feed(fd: int, data: bytes) -> None:
    """Write a command's stdin and close it (a thread: the pipe may fill up)."""

    def write() -> None:
        try:
            _write_all(fd, data)
        except OSError:
            pass  # the command closed its stdin or died: what it did not read is not ours
        finally:
            os.close(fd)

    await asyncio.to_thread(write)
