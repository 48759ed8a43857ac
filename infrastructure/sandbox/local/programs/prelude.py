"""Helpers shared by the programs that start commands (`command_shim`, `exec_server`).

The worker prepends this module's source to theirs (see `programs.program`), so at run time
they find these functions as globals; the type checker finds them through the import under
`TYPE_CHECKING` in each program.
"""

import _ctypes  # the C half of `ctypes`: the package would cost each view 3 ms of CPU
import _signal  # type: ignore[import-not-found]  # (no stubs: the C half of `signal`)
import os
import resource

PR_SET_CHILD_SUBREAPER = 36
PR_SET_DUMPABLE = 4


RTLD_NOW = 2


def prctl(option: int, value: int) -> bool:
    try:
        # dlopen(None): the program itself, libc included (typeshed wants a name).
        function = _ctypes.dlsym(_ctypes.dlopen(None, RTLD_NOW), "prctl")  # type: ignore[arg-type]
        return int(_ctypes.call_function(function, (option, value, 0, 0, 0))) == 0
    except Exception:
        return False


def become_subreaper() -> None:
    """Every descendant that detaches (double fork, setsid, nohup) is re-parented to us rather
    than leaving the tree the worker kills at the deadline."""
    prctl(PR_SET_CHILD_SUBREAPER, 1)


def apply_limits(cpu: int, mem: int, fsize: int, nproc: int) -> None:
    """Set the command's rlimits (a negative one is not applied; never above a hard limit
    already in force) and undo the signal dispositions Python ignores: ignored dispositions
    survive exec, so `yes | head` or a too-big write would misbehave."""
    for sig in (_signal.SIGPIPE, _signal.SIGXFSZ):
        _signal.signal(sig, _signal.SIG_DFL)
    limits = [
        (resource.RLIMIT_CPU, cpu, cpu + 1),
        (resource.RLIMIT_AS, mem, mem),
        (resource.RLIMIT_FSIZE, fsize, fsize),
        (resource.RLIMIT_NPROC, nproc, nproc),
        (resource.RLIMIT_CORE, 0, 0),
    ]
    for res, soft, hard in limits:
        if soft < 0:
            continue
        old_hard = resource.getrlimit(res)[1]
        if old_hard != resource.RLIM_INFINITY:
            soft, hard = min(soft, old_hard), min(hard, old_hard)
        resource.setrlimit(res, (soft, hard))


def lead_bash(
    command: str, limits: tuple[int, int, int, int], env: dict[str, str] | None = None
) -> None:
    """Be the leader of one command: a subreaper that forks `bash -c command` (with the
    limits, in `env` or ours), reaps whatever its tree detaches, and exits with bash's status
    (128+N when signal N killed it). Never returns."""
    become_subreaper()
    pid = os.fork()
    if pid == 0:
        try:
            apply_limits(*limits)
            argv = ["bash", "-c", command]
            if env is None:
                os.execvp("bash", argv)
            os.execve("/bin/bash", argv, env)
        except BaseException as exc:
            os.write(2, f"sandbox: cannot start bash: {exc}\n".encode())
        os._exit(126)
    for fd in (0, 1, 2):
        os.close(fd)  # the command has them; holding them would keep its pipes open
    while True:
        try:
            child, status = os.wait()
        except InterruptedError:
            continue
        if child == pid:
            os._exit(exit_code(status))


def exit_code(status: int) -> int:
    """A wait status as a shell reports it: the exit code, or 128+N for signal N."""
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code
