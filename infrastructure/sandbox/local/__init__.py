"""The `local` sandbox provider: strict bubblewrap views (default) or the weak namespaces mode.

Modules, by what they do:
- provider.py      the provider: picks strict or weak, provisions, reaps orphans
- strict.py        an item's principals (agent, services, checker) in views of their own
- view.py          what a strict view shows (the bwrap command line)
- etc_tree.py      the one copy of the allowed /etc every view binds
- warm_pool.py     pre-started strict sandboxes, handed out once per item
- exec_client.py   the worker's side of a view's exec server (run, place files, deadlines)
- programs/        what runs inside a sandbox (exec server, weak init and shim), as modules
- principals.py    host uids for principals; cgroups.py limits; mounts.py tmpfs; netns.py
- strict_probe.py  whether this host gives the strict view
- weak.py, weak_probe.py   the weak mode (opted into; recorded as weak)
- processes.py     /proc: finding, stopping and killing process trees
- files.py         reading sandbox files without following links out
- metadata.py      the metadata file beside each sandbox, for orphan reaping
- capture.py       output capture with a cap
"""

from infrastructure.sandbox.local.files import SandboxFileNotFound
from infrastructure.sandbox.local.provider import LocalSandboxProvider
from infrastructure.sandbox.local.strict import StrictSandbox
from infrastructure.sandbox.local.weak import WeakSandbox
from infrastructure.sandbox.local.weak_probe import Isolation, probe_isolation

__all__ = [
    "Isolation",
    "LocalSandboxProvider",
    "SandboxFileNotFound",
    "StrictSandbox",
    "WeakSandbox",
    "probe_isolation",
]
