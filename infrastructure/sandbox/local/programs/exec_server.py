"""PID 1 of a strict sandbox view: starts the worker's commands inside the view.

The worker starts it once per principal (agent, service, checker) as the last program of
`bwrap --as-pid-1`, so it already runs as the principal's unprivileged uid, with no
capabilities, in the view's namespaces. Every command is then a fork of this process (no new
interpreter, no new bwrap), which is what makes a strict sandbox cheap per command.

Control channel: argv[1] is the number of a SOCK_SEQPACKET socket shared with the worker. Each
message is one object, file descriptors beside it (SCM_RIGHTS); requests arrive in `marshal`
(the worker is trusted, and importing `json` would cost this program's start half again),
replies leave as JSON written by `to_json` (the worker never unmarshals what a sandbox sent):
  {"op": "run", "id": N, "command": str, "env": {..}, "cwd": str, "limits": [cpu, mem, fsize,
   nproc]} + fds [stdin, stdout, stderr]  ->  {"id": N, "pid": P} then {"id": N, "exit": C}
  {"op": "write", "id": N, "files": [[path, mode, offset, length], ...]} + fds [source]
   ->  {"id": N, "ok": true}  (each file is `length` bytes of the one source at `offset`: a
   task's whole tree is one request, not one round trip per file)
  {"op": "wait_port", "id": N, "port": P, "timeout": T}  ->  {"id": N, "ok": bool}
Errors answer {"id": N, "error": str}. End of file on the channel means the worker is gone (or
done with this view): PID 1 exits, and the kernel kills every process of the namespace.

A command's leader (the fork that runs it) is a child subreaper, so whatever its command
detaches stays below it and dies with the tree the worker kills at a deadline. This process is
not dumpable, so the sandbox's own commands (same uid) can neither trace it nor read its
descriptors; and as PID 1 of its namespace it ignores every signal they send it.
"""

# Only modules written in C: `signal`, `socket` and `selectors` import `enum` (and it `re`...),
# which would double what each view's start costs in CPU. Every item starts one of these.
import _signal  # type: ignore[import-not-found]  # (no stubs: the C half of `signal`)
import _socket
import errno
import marshal
import os
import select
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from infrastructure.sandbox.local.programs.prelude import (
        PR_SET_DUMPABLE,
        exit_code,
        lead_bash,
        prctl,
    )

MAX_FDS = 4
SOL_SOCKET, SCM_RIGHTS = 1, 1
INT_SIZE = 4  # a C int: what SCM_RIGHTS carries per descriptor
FDS_SPACE = _socket.CMSG_SPACE(MAX_FDS * INT_SIZE)


def receive(channel: _socket.socket) -> tuple[bytes, list[int]]:
    """One message and the descriptors beside it (what `socket.recv_fds` does, without the
    `array` module, whose import drags `collections` in)."""
    data, ancillary, _, _ = channel.recvmsg(1 << 20, FDS_SPACE)
    fds = []
    for level, kind, payload in ancillary:
        if level == SOL_SOCKET and kind == SCM_RIGHTS:
            for start in range(0, len(payload) - len(payload) % INT_SIZE, INT_SIZE):
                chunk = payload[start : start + INT_SIZE]
                fds.append(int.from_bytes(chunk, sys.byteorder, signed=True))
    return data, fds


def to_json(message: dict[str, object]) -> str:
    """A flat object of ints, bools, None and strings as JSON."""
    fields = []
    for key, value in message.items():
        if value is None or isinstance(value, bool):
            text = {None: "null", True: "true", False: "false"}[value]
        elif isinstance(value, int):
            text = str(value)
        else:
            text = quote(str(value))
        fields.append(f"{quote(key)}: {text}")
    return "{" + ", ".join(fields) + "}"


def quote(text: str) -> str:
    escaped = []
    for char in text:
        if char in '"\\':
            escaped.append("\\" + char)
        elif ord(char) >= 0x10000:  # a surrogate pair, as JSON spells it
            code = ord(char) - 0x10000
            escaped.append(f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}")
        elif ord(char) < 0x20 or ord(char) >= 0x7F:
            escaped.append(f"\\u{ord(char):04x}")
        else:
            escaped.append(char)
    return '"' + "".join(escaped) + '"'


def send(channel: _socket.socket, message: dict[str, object]) -> None:
    try:
        channel.send(to_json(message).encode())
    except OSError:
        os._exit(0)  # the worker is gone: so is this view


def lead(command: str, env: dict[str, str], cwd: str, limits: list[int]) -> None:
    """In the forked leader: a session of its own, then `bash -c command` below us."""
    os.setsid()
    os.chdir(cwd)
    cpu, mem, fsize, nproc = limits
    lead_bash(command, (cpu, mem, fsize, nproc), env)


def start(channel: _socket.socket, message: dict[str, object], fds: list[int]) -> int:
    stdin, stdout, stderr = fds
    pid = os.fork()
    if pid == 0:
        try:
            channel.close()
            for target, fd in ((0, stdin), (1, stdout), (2, stderr)):
                os.dup2(fd, target)
            for fd in fds:
                if fd > 2:
                    os.close(fd)
            _signal.signal(_signal.SIGCHLD, _signal.SIG_DFL)
            _signal.set_wakeup_fd(-1)
            env = {str(k): str(v) for k, v in dict(message["env"]).items()}  # type: ignore[call-overload]
            limits = [int(v) for v in list(message["limits"])]  # type: ignore[call-overload]
            lead(str(message["command"]), env, str(message["cwd"]), limits)
        except BaseException as exc:
            os.write(2, f"sandbox: cannot start the command: {exc}\n".encode())
        os._exit(126)
    return pid


def write_files(message: dict[str, object], fds: list[int]) -> None:
    """Place each listed file below the working directory, its content read from the one
    passed descriptor at its offset, creating folders; never through a link (the sandbox's own
    commands may have planted one)."""
    files = message["files"]
    if not isinstance(files, list):
        raise ValueError("files must be a list")
    for path, mode, offset, length in files:
        write_file(str(path), int(mode), fds[0], int(offset), int(length))


def write_file(path: str, mode: int, source: int, offset: int, length: int) -> None:
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if path.startswith("/") or not parts or ".." in parts:
        raise ValueError(f"path {path!r} escapes the workspace")
    flags = os.O_NOFOLLOW | os.O_CLOEXEC
    directory = os.open(".", os.O_RDONLY | os.O_DIRECTORY | flags)
    try:
        for part in parts[:-1]:
            try:  # noqa: SIM105 (contextlib would import collections and more at start)
                os.mkdir(part, 0o755, dir_fd=directory)
            except FileExistsError:
                pass
            inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | flags, dir_fd=directory)
            os.close(directory)
            directory = inner
        target = os.open(
            parts[-1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC | flags, 0o600, dir_fd=directory
        )
    finally:
        os.close(directory)
    try:
        end = offset + length
        while offset < end:
            chunk = os.pread(source, min(end - offset, 1 << 20), offset)
            if not chunk:
                raise ValueError(f"the source ends before {path!r} does")
            os.write(target, chunk)
            offset += len(chunk)
        os.fchmod(target, mode & 0o777)
    finally:
        os.close(target)


def running(pid: object) -> bool:
    """Whether our child `pid` still runs (not exited, not a zombie); True for no pid."""
    if pid is None:
        return True
    try:
        with open(f"/proc/{int(str(pid))}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def wait_port(port: int, timeout: float, watch: object) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        probe = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
        probe.settimeout(1)
        try:
            probe.connect(("127.0.0.1", port))
            return True
        except OSError:
            if time.monotonic() >= deadline or not running(watch):
                return False
            time.sleep(0.02)
        finally:
            probe.close()


def reap(channel: _socket.socket, leaders: dict[int, object]) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if pid in leaders:
            send(channel, {"id": leaders.pop(pid), "exit": exit_code(status)})


def serve(channel: _socket.socket) -> None:
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    _signal.set_wakeup_fd(wake_w)
    _signal.signal(_signal.SIGCHLD, lambda *_: None)
    poller = select.poll()
    poller.register(channel.fileno(), select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    leaders: dict[int, object] = {}
    send(channel, {"ready": True})
    while True:
        try:
            ready = poller.poll()
        except InterruptedError:
            continue
        for fd, _ in ready:
            if fd == wake_r:
                while True:
                    try:
                        if not os.read(wake_r, 512):
                            break
                    except BlockingIOError:
                        break
                reap(channel, leaders)
                continue
            try:
                data, fds = receive(channel)
            except InterruptedError:
                continue
            if not data:
                os._exit(0)
            message = marshal.loads(data)
            ident = message.get("id")
            try:
                op = message.get("op")
                if op == "run" and len(fds) == 3:
                    leader = start(channel, message, fds)
                    leaders[leader] = ident
                    send(channel, {"id": ident, "pid": leader})
                elif op == "write" and len(fds) == 1:
                    write_files(message, fds)
                    send(channel, {"id": ident, "ok": True})
                elif op == "wait_port":
                    port, timeout = int(message["port"]), float(message["timeout"])
                    ok = wait_port(port, timeout, message.get("watch"))
                    send(channel, {"id": ident, "ok": ok})
                else:
                    send(channel, {"id": ident, "error": f"bad request {op!r}"})
            except OSError as exc:
                send(
                    channel,
                    {"id": ident, "error": f"{errno.errorcode.get(exc.errno or 0, '')} {exc}"},
                )
            except (ValueError, KeyError, TypeError) as exc:
                send(channel, {"id": ident, "error": str(exc)})
            finally:
                for fd in fds:
                    os.close(fd)
            reap(channel, leaders)


def main() -> None:
    prctl(PR_SET_DUMPABLE, 0)
    channel = _socket.socket(fileno=int(sys.argv[1]))
    os.set_inheritable(channel.fileno(), False)
    for fd in (0, 1):
        os.dup2(os.open(os.devnull, os.O_RDWR), fd)
    serve(channel)


if __name__ == "__main__":
    main()
