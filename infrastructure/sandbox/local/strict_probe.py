"""Whether this host can give the strict view, found once by trying it.

Strict needs bubblewrap, the host's `/usr/bin/python3` (the view's exec server runs on it),
and, for a root worker, `nsenter` and `setpriv` (util-linux) to join the item's network and
drop to the principal's uid before bwrap starts. The probe starts a real view and checks from
inside that it has the uid asked for, no capability at all and no_new_privs, and that it may
not make a user namespace: what a hostile agent would test first.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path

import msgspec

from infrastructure.sandbox.local.constants import SAFE_PATH
from infrastructure.sandbox.local.view import VIEW_PYTHON, system_binds

FIX = (
    "install bubblewrap (`apt-get install bubblewrap`, or run scripts/sandbox_host_setup.sh), "
    "or set ASSAY_SANDBOX_ISOLATION=weak to run items without it (recorded as weak)"
)

_CHECK = r"""
import ctypes, os
status = dict(l.split(":", 1) for l in open("/proc/self/status") if ":" in l)
assert int(status["CapEff"], 16) == 0 and int(status["CapBnd"], 16) == 0, "capabilities"
assert status["NoNewPrivs"].strip() == "1", "no_new_privs"
assert ctypes.CDLL(None, use_errno=True).unshare(0x10000000) != 0, "user namespace allowed"
print(os.getuid())
"""


class StrictTools(msgspec.Struct, frozen=True, kw_only=True):
    bwrap: str
    nsenter: str | None
    setpriv: str | None

    def enter(self, netns: Path | None, uid: int, group: int | None = None) -> list[str]:
        """The commands before bwrap: join the item's network, then drop to `uid` (root),
        with `group` as its one supplementary group (the checker reads the agent's files)."""
        if os.geteuid() != 0:
            return []
        assert self.setpriv is not None
        if netns and self.nsenter and group is None:
            # One program instead of two (1.5 ms of CPU per view): nsenter sets the uid and
            # gid (all three of each) and clears the supplementary groups, as setpriv would.
            return [self.nsenter, f"--net={netns}", f"--setuid={uid}", f"--setgid={uid}", "--"]
        argv = [self.nsenter, f"--net={netns}", "--"] if netns and self.nsenter else []
        return [
            *argv,
            self.setpriv,
            f"--reuid={uid}",
            f"--regid={uid}",
            "--clear-groups" if group is None else f"--groups={group}",
            "--",
        ]


class StrictProbe(msgspec.Struct, frozen=True, kw_only=True):
    tools: StrictTools | None
    problem: str | None


@functools.cache
def probe_strict(probe_uid: int = 65534) -> StrictProbe:
    bwrap = shutil.which("bwrap", path=SAFE_PATH)
    nsenter = shutil.which("nsenter", path=SAFE_PATH)
    setpriv = shutil.which("setpriv", path=SAFE_PATH)
    root = os.geteuid() == 0
    if bwrap is None:
        return StrictProbe(tools=None, problem="bubblewrap (bwrap) is not installed")
    if not os.access(VIEW_PYTHON, os.X_OK):
        return StrictProbe(
            tools=None, problem=f"{VIEW_PYTHON} is missing (apt-get install python3)"
        )
    if root and (nsenter is None or setpriv is None):
        return StrictProbe(tools=None, problem="nsenter and setpriv (util-linux) are missing")
    tools = StrictTools(bwrap=bwrap, nsenter=nsenter, setpriv=setpriv)
    uid = probe_uid if root else os.geteuid()
    argv = [
        *tools.enter(None, uid),
        bwrap,
        "--unshare-user",
        "--unshare-pid",
        "--unshare-net",
        "--disable-userns",
        "--die-with-parent",
        "--cap-drop",
        "ALL",
        *system_binds(),
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--",
        VIEW_PYTHON,
        "-I",
        "-S",
        "-c",
        _CHECK,
    ]
    try:
        result = subprocess.run(
            argv, capture_output=True, timeout=20, check=False, env={"PATH": SAFE_PATH}, cwd="/"
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return StrictProbe(tools=None, problem=f"bwrap could not run: {exc}")
    if result.returncode != 0 or result.stdout.strip() != str(uid).encode():
        why = (result.stderr or result.stdout).decode(errors="replace").strip()[-300:]
        return StrictProbe(tools=None, problem=f"a bubblewrap view did not hold: {why}")
    return StrictProbe(tools=tools, problem=None)
