"""One command in a container: exec with separate stdout/stderr, stdin, a deadline that kills
the command's whole process tree, and output capped at the provider's limit.

Why the low-level API: `exec_run` merges or buffers the streams and has no deadline. Here the
exec's hijacked socket is read by a thread of our own (docker-py is blocking), the 8-byte
multiplexing headers are parsed so stdout and stderr stay apart, and stdin is written then
half-closed so the command sees end of file.

The tree. Every command runs with `ASSAY_RUN=<random token>` in its environment, which its
children inherit however they detach (`setsid`, double fork, `nohup`). At the deadline a
second exec, as the same uid, walks the container's /proc: every process carrying the token,
and every descendant of one (a child that cleared its environment), is SIGSTOPped, again until
no new member appears (a stopped process cannot fork an escapee), then all are SIGKILLed. A
process that both cleared its environment and re-parented itself to PID 1 escapes this
per-command kill; `kill_all` (every process of the container) still ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import select
import socket
import struct
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from infrastructure.sandbox.protocol import WORKSPACE, ExecResult, SandboxError

T = TypeVar("T")

# How long, once the command itself exited, output a background child keeps open is waited for.
DRAIN_GRACE_SEC = 0.5
KILL_TIMEOUT_SEC = 10.0
# Exec state is polled (one inspect each) only while a command runs longer than this, doubling
# up to the cap: a quick command costs no poll, its socket's end of file says it is done.
_FIRST_POLL_SEC = 0.05
_MAX_POLL_SEC = 0.5
_HEADER = struct.Struct(">BxxxL")

# argv[1]: the token. Skips itself and PID 1; reads /proc/<pid>/stat after the last ')' (the
# command name may contain anything) for the parent pid.
KILL_TREE = r"""
tok="ASSAY_RUN=$1"
declare -A marked=()
for ((round = 0; round < 50; round++)); do
    new=0
    for dir in /proc/[0-9]*; do
        pid=${dir#/proc/}
        [[ $pid == "$$" || $pid == 1 || -n ${marked[$pid]:-} ]] && continue
        stat=
        read -r stat 2>/dev/null <"$dir/stat" || continue
        fields=(${stat##*) })
        hit=0
        if [[ -n ${marked[${fields[1]}]:-} ]]; then
            hit=1
        else
            while IFS= read -r -d '' var; do
                if [[ $var == "$tok" ]]; then hit=1; break; fi
            done 2>/dev/null <"$dir/environ"
        fi
        if ((hit)); then
            kill -STOP "$pid" 2>/dev/null
            marked[$pid]=1
            new=1
        fi
    done
    ((new)) || break
done
for pid in "${!marked[@]}"; do kill -KILL "$pid" 2>/dev/null; done
echo "${#marked[@]}"
"""

TRUNCATION_NOTE = "\n[assay: output truncated, {dropped} more bytes not kept]\n"


def is_docker_error(exc: BaseException) -> bool:
    """Whether `exc` is the daemon or the connection to it failing (a SandboxError to us)."""
    import docker.errors  # type: ignore[import-untyped]
    import requests

    return isinstance(exc, docker.errors.DockerException | requests.RequestException | OSError)


async def call(what: str, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Run a blocking docker-py call in a thread; its failures become SandboxError(what)."""
    try:
        return await asyncio.to_thread(fn, *args, **kwargs)
    except Exception as exc:
        if is_docker_error(exc):
            raise SandboxError(f"{what}: {exc}") from exc
        raise


class Capture:
    """Keeps the first `limit` bytes of one stream and counts the rest."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._chunks: list[bytes] = []
        self._kept = 0
        self.dropped = 0

    def add(self, data: bytes) -> None:
        room = self._limit - self._kept
        if room > 0:
            self._chunks.append(data[:room])
            self._kept += min(room, len(data))
        self.dropped += max(0, len(data) - max(room, 0))

    def text(self) -> str:
        text = b"".join(self._chunks).decode("utf-8", "replace")
        if self.dropped:
            text += TRUNCATION_NOTE.format(dropped=self.dropped)
        return text


def _raw_socket(hijacked: Any) -> socket.socket:
    # exec_start(socket=True) gives a SocketIO over the daemon's unix socket, or the socket
    # itself for TLS; both wrap a real socket we can time out and half-close.
    raw = getattr(hijacked, "_sock", hijacked)
    if not isinstance(raw, socket.socket):
        raise SandboxError(f"unsupported docker transport for exec: {type(hijacked).__name__}")
    return raw


def _pump(raw: socket.socket, out: Capture, err: Capture, stop: threading.Event) -> None:
    """Read the multiplexed stream until end of file or `stop`."""
    buffer = bytearray()
    while not stop.is_set():
        # select, not a socket timeout: a timeout would also apply to the stdin feeder's
        # sendall on the same socket, and cut a large input short.
        try:
            readable, _, _ = select.select([raw], [], [], 0.1)
            if not readable:
                continue
            chunk = raw.recv(65536)
        except (OSError, ValueError):  # closed under us (ValueError: fd -1)
            break
        if not chunk:
            break
        buffer += chunk
        while len(buffer) >= _HEADER.size:
            stream, size = _HEADER.unpack_from(buffer)
            if len(buffer) < _HEADER.size + size:
                break
            payload = bytes(buffer[_HEADER.size : _HEADER.size + size])
            del buffer[: _HEADER.size + size]
            (err if stream == 2 else out).add(payload)


def _start_pump(
    raw: socket.socket, out: Capture, err: Capture, stop: threading.Event
) -> asyncio.Future[None]:
    """The pump on its own thread (not the default executor: many concurrent long commands
    would starve every other to_thread call), finishing a future on the loop."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def target() -> None:
        try:
            _pump(raw, out, err, stop)
        finally:
            with contextlib.suppress(RuntimeError):  # loop closed: nobody waits any more
                loop.call_soon_threadsafe(_finish, done)

    threading.Thread(target=target, name="assay-docker-exec", daemon=True).start()
    return done


def _finish(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)


def _feed(raw: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):  # the command may exit without reading its input
        raw.sendall(data)
    with contextlib.suppress(OSError):
        raw.shutdown(socket.SHUT_WR)  # end of file on the command's stdin


def _kill_tree_now(api: Any, container: str, user: str, token: str) -> None:
    created = api.exec_create(container, ["bash", "-c", KILL_TREE, "assay-kill", token], user=user)
    api.exec_start(created["Id"])
    # The daemon answers even when the killer could not start (no pid left at the limit):
    # only its exit status says it ran.
    code = api.exec_inspect(created["Id"]).get("ExitCode")
    if code != 0:
        raise SandboxError(f"the process-tree killer exited with {code}")


async def kill_tree(api: Any, container: str, user: str, token: str) -> None:
    await call(f"cannot kill a command in {container}", _kill_tree_now, api, container, user, token)


async def execute(
    api: Any,
    container: str,
    command: str,
    *,
    user: str,
    env: Mapping[str, str],
    timeout_sec: float,
    stdin: str | None,
    output_limit: int,
    workdir: str = WORKSPACE,
    fallback_kill: Callable[[], Awaitable[None]] | None = None,
) -> ExecResult:
    """Run `bash -c command` in `container` as `user`; see the module docstring."""
    started = time.monotonic()
    deadline = started + timeout_sec
    token = secrets.token_hex(8)
    environment = {**env, "ASSAY_RUN": token}
    what = f"cannot run a command in {container}"
    created = await call(
        what,
        api.exec_create,
        container,
        ["bash", "-c", command],
        stdout=True,
        stderr=True,
        stdin=stdin is not None,
        tty=False,
        environment=environment,
        workdir=workdir,
        user=user,
    )
    exec_id: str = created["Id"]
    raw = _raw_socket(await call(what, api.exec_start, exec_id, socket=True))
    out, err = Capture(output_limit), Capture(output_limit)
    stop = threading.Event()
    timed_out = False
    try:
        pumped = _start_pump(raw, out, err, stop)
        if stdin is not None:
            threading.Thread(target=_feed, args=(raw, stdin.encode()), daemon=True).start()
        poll = _FIRST_POLL_SEC
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                try:
                    await kill_tree(api, container, user, token)
                except SandboxError:
                    if fallback_kill is None:
                        raise
                    await fallback_kill()
                await asyncio.wait([pumped], timeout=DRAIN_GRACE_SEC)
                break
            await asyncio.wait([pumped], timeout=min(poll, remaining))
            if pumped.done():
                break
            # Still open: either the command runs, or it exited and a background child holds
            # its output open (that is how setup starts a server): then read a little more.
            state = await call(what, api.exec_inspect, exec_id)
            if not state["Running"]:
                await asyncio.wait([pumped], timeout=DRAIN_GRACE_SEC)
                break
            poll = min(poll * 2, _MAX_POLL_SEC)
        exit_code: int | None = None
        if not timed_out:
            exit_code = await _exit_code(api, exec_id, what)
    except BaseException:
        # Cancelled (the item was cancelled or timed out above us) or failed: the command must
        # not outlive the call that started it. A thread, because a cancelled task cannot await.
        threading.Thread(
            target=_quiet_kill, args=(api, container, user, token), daemon=True
        ).start()
        raise
    finally:
        stop.set()
        with contextlib.suppress(OSError):
            raw.close()
    return ExecResult(
        exit_code=exit_code,
        stdout=out.text(),
        stderr=err.text(),
        timed_out=timed_out,
        duration_ms=(time.monotonic() - started) * 1000,
    )


def _quiet_kill(api: Any, container: str, user: str, token: str) -> None:
    with contextlib.suppress(Exception):
        _kill_tree_now(api, container, user, token)


async def _exit_code(api: Any, exec_id: str, what: str) -> int | None:
    """The exit code, once the daemon has recorded it (just after end of file, it may not)."""
    for _ in range(100):
        state = await call(what, api.exec_inspect, exec_id)
        if not state["Running"]:
            code = state.get("ExitCode")
            return int(code) if code is not None else None
        await asyncio.sleep(0.01)
    return None
