"""What a strict sandbox process sees: the `bwrap` command line of one principal's view.

The view holds the system directories read-only (`/usr` and the merged-usr links, a short
allow-list of `/etc`), the principal's own workspace at `/workspace` and its own `/tmp` (both
folders of the host that the worker made for it), a fresh `/proc` and a minimal `/dev`, and
generated `/etc/passwd`, `/etc/group` and `/etc/hosts` (the item's service names resolve to
its loopback). Nothing else of the host exists in it: no task bundle, no service files, no
database, no other sandbox, no worker environment.

bwrap runs as the principal's uid (the worker drops to it with `setpriv` before exec'ing
bwrap), so the view is an unprivileged user namespace with no capabilities, `no_new_privs`,
and `--disable-userns` (no nested user namespace, hence no way to gain capabilities again).
Measured on these machines: bwrap started by root keeps every capability unless told
otherwise, and a root-launched `--unshare-all` sandbox remounted a read-only bind writable;
that is why bwrap is never run as root here.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable
from pathlib import Path

import msgspec

from infrastructure.sandbox.local.constants import SAFE_PATH
from infrastructure.sandbox.local.programs import program
from infrastructure.sandbox.protocol import WORKSPACE

# The Python that runs the exec server inside the view: the host's system one, since the
# worker's own (a virtualenv, pyenv) lives outside what the view shows.
VIEW_PYTHON = "/usr/bin/python3"

# The parts of /etc a shell and the usual tools need; nothing with host configuration that
# could help an attacker (no /etc/postgresql, no shadow, no ssh keys, no machine-id).
ETC_ALLOWED = (
    "alternatives",
    "bash.bashrc",
    "ca-certificates",
    "ca-certificates.conf",
    "debian_version",
    "gai.conf",
    "host.conf",
    "inputrc",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "magic",
    "mime.types",
    "nsswitch.conf",
    "os-release",
    "profile",
    "protocols",
    "python3",
    "python3.11",
    "services",
    "ssl",
    "terminfo",
    "timezone",
)
# What the view's Python runs when it gets the exec server compiled: read the code object from
# the descriptor named by argv[1] (closing it: no command inherits it), drop that argument
# (the server finds its channel in argv[1]) and run it as the main module. Compiling the
# server's source took ~4 ms of CPU at every view start; loading its code takes 0.2.
LOAD_COMPILED = (
    "import marshal, sys\n"
    "with open(int(sys.argv.pop(1)), 'rb') as source:\n"
    "    code = marshal.loads(source.read())\n"
    "exec(code)\n"
)
# Top-level links of a merged-/usr system, recreated as links in the view.
MERGED_USR = ("bin", "lib", "lib32", "lib64", "libx32", "sbin")


class Principal(msgspec.Struct, frozen=True, kw_only=True):
    """One process identity of an item: the agent, a service, or the checker."""

    role: str  # agent | service | checker
    name: str
    uid: int
    workspace: str  # host folder shown at /workspace
    tmp: str  # host folder shown at /tmp
    workspace_read_only: bool = False
    # A supplementary group: the checker gets the agent's, to read its workspace (0750).
    group: int | None = None


@functools.cache
def _usr_binds() -> tuple[str, ...]:
    args = ["--ro-bind", "/usr", "/usr"]
    for name in MERGED_USR:
        host = Path("/") / name
        if host.is_symlink():
            args += ["--symlink", os.readlink(host), f"/{name}"]
        elif host.is_dir():
            args += ["--ro-bind", str(host), f"/{name}"]
    return tuple(args)


def system_binds(etc: str | None = None) -> list[str]:
    """The read-only system part of every view, as bwrap arguments (host layout read once).
    `etc`: a prepared copy of the allow-listed /etc (`etc_tree`), bound as one folder;
    without it each allowed entry of the host's /etc is bound on its own."""
    args = list(_usr_binds())
    if etc is not None:
        return [*args, "--ro-bind", etc, "/etc"]
    for name in ETC_ALLOWED:
        host = Path("/etc") / name
        if host.exists():
            args += ["--ro-bind", str(host), f"/etc/{name}"]
    return args


def identity_files(principal: Principal, hosts: Iterable[str]) -> dict[str, bytes]:
    """/etc/passwd, /etc/group and /etc/hosts of a view. The names in `hosts` (the item's
    services) resolve to loopback: every principal of an item shares its network namespace."""
    uid = principal.uid
    return {
        "/etc/passwd": (
            "root:x:0:0:root:/root:/usr/sbin/nologin\n"
            f"{principal.role}:x:{uid}:{uid}:{principal.name}:{WORKSPACE}:/bin/bash\n"
            "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
        ).encode(),
        "/etc/group": f"root:x:0:\n{principal.role}:x:{uid}:\nnogroup:x:65534:\n".encode(),
        "/etc/hosts": (
            "127.0.0.1 localhost " + " ".join(sorted(set(hosts))) + "\n::1 localhost\n"
        ).encode(),
    }


class ViewFds:
    """Generated files of a view, as descriptors inherited by bwrap (`--ro-bind-data`): they
    need no file on the host. (Folders are bound by path: bwrap, running as the principal's
    uid, refuses `--bind-fd` of a folder below one that uid cannot traverse, so the sandbox
    root's folders are traversable, 0711, and each principal's own folder is 0700.)"""

    def __init__(self) -> None:
        self.fds: list[int] = []

    def data(self, content: bytes) -> int:
        fd = os.memfd_create("assay-view", 0)
        os.write(fd, content)
        os.lseek(fd, 0, os.SEEK_SET)
        self.fds.append(fd)
        return fd

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []


def bwrap_argv(
    bwrap: str,
    principal: Principal,
    fds: ViewFds,
    *,
    hosts: Iterable[str],
    own_network: bool,
    extra_folders: Iterable[tuple[str, str]] = (),
    resolv_conf: bytes | None = None,
    etc: str | None = None,
    server_code: bytes | None = None,
) -> list[str]:
    """The bwrap command of `principal`'s view, ending with the exec server (whose control
    socket number the caller appends). `own_network`: a fresh network namespace (loopback
    only), for workers that cannot make the item's shared one. `extra_folders`: more
    (host folder, view path) pairs, bound read-only. `etc`: see `system_binds`.
    `server_code`: the exec server already compiled (`programs.compiled`), handed to the
    view's Python through a descriptor instead of as source to compile at every start."""
    args = [
        bwrap,
        "--unshare-user",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        *(["--unshare-net"] if own_network else []),
        "--disable-userns",
        "--as-pid-1",
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
        "--hostname",
        "sandbox",
        "--uid",
        str(principal.uid),
        "--gid",
        str(principal.uid),
        *system_binds(etc),
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--ro-bind" if principal.workspace_read_only else "--bind",
        principal.workspace,
        WORKSPACE,
        "--bind",
        principal.tmp,
        "/tmp",
    ]
    files = identity_files(principal, hosts)
    if resolv_conf is not None:
        files["/etc/resolv.conf"] = resolv_conf
    for view_path, content in files.items():
        args += ["--ro-bind-data", str(fds.data(content)), view_path]
    for host_path, view_path in extra_folders:
        args += ["--ro-bind", host_path, view_path]
    args += [
        # The view's own root (a tmpfs bwrap made) read-only too: nothing outside the
        # workspace and /tmp is writable, so no file there can pass for something the host
        # or a checker put.
        "--remount-ro",
        "/",
        "--chdir",
        WORKSPACE,
        "--clearenv",
        "--setenv",
        "PATH",
        SAFE_PATH,
        "--",
        VIEW_PYTHON,
        "-I",
        "-S",
        "-c",
    ]
    if server_code is None:
        return [*args, program("exec_server")]
    return [*args, LOAD_COMPILED, str(fds.data(server_code))]
