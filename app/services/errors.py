"""What application services refuse. Services raise these (never HTTP types); `app.errors`
alone maps them, with the domain's and the stores' own errors, to the error envelope."""

from __future__ import annotations

import msgspec


class FieldProblem(msgspec.Struct, frozen=True):
    """One problem with one input field: where (`loc`, e.g. ["body", "task_names", 0]), what,
    and a stable type."""

    loc: list[str | int]
    msg: str
    type: str = "value_error"


class ServiceError(Exception):
    """A request an application service refuses, with a message for the caller."""


class NotFound(ServiceError):
    """What the request names does not exist, or is not the caller's to see."""

    def __init__(self, what: str) -> None:
        super().__init__(f"{what} not found")


class Forbidden(ServiceError):
    """The caller's role does not allow this."""


class InvalidInput(ServiceError):
    """The input breaks rules the schema cannot state; every problem is listed at once."""

    def __init__(self, problems: list[FieldProblem], message: str | None = None) -> None:
        self.problems = problems
        shown = "; ".join(p.msg for p in problems[:5]) + (" ..." if len(problems) > 5 else "")
        super().__init__(message or shown)


class StateConflict(ServiceError):
    """The target's current state refuses the request (it is in use, or already done)."""


class ActionFailed(ServiceError):
    """Something outside the service (a provider, the host) failed to do what was asked."""
