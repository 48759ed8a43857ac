"""What the domain refuses, as exceptions the application maps to HTTP statuses."""

from __future__ import annotations


class DomainError(Exception):
    """A command the current state does not allow."""


class IllegalTransition(DomainError):
    """The command does not apply to the aggregate's current state (HTTP 409)."""


class InvalidCommand(DomainError):
    """The command is malformed regardless of state (HTTP 422)."""


class CapacityExceeded(IllegalTransition):
    """A claim would put more of an evaluation's items in flight than its concurrency."""
