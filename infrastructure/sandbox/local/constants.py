"""Numbers and paths both local sandbox modes share."""

from infrastructure.sandbox.protocol import OUTPUT_LIMIT, SAFE_PATH

__all__ = ["OUTPUT_LIMIT", "SAFE_PATH"]

# After a command exits, how long its output pipes may stay open (held by a background child it
# left running) before the worker stops reading: the command is done, its children are not.
DRAIN_GRACE_SEC = 0.5
# How long a kill may take before the worker gives up waiting (processes stuck in the kernel).
KILL_WAIT_SEC = 2.0
HOLDER_START_SEC = 10.0
META_SUFFIX = ".json"
