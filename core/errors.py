"""Domain errors raised by transport-neutral code.

The runtime maps each class to one gRPC status code in a single place (``runtime/errors.py``); domain
code never imports grpc. Each error subclasses the closest builtin so plain Python callers can catch it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request: its path (``messages[2].text``) and why it was rejected."""

    field: str
    description: str


class AgentrtError(Exception):
    """Base of every domain error."""


class InvalidArgumentError(AgentrtError, ValueError):
    """The request is malformed; ``violations`` name each bad field and the rule it broke."""

    def __init__(self, violations: list[FieldViolation] | FieldViolation | str, description: str = ""):
        if isinstance(violations, str):
            violations = [FieldViolation(violations, description)]
        elif isinstance(violations, FieldViolation):
            violations = [violations]
        self.violations: list[FieldViolation] = list(violations)
        super().__init__("; ".join(f"{v.field}: {v.description}" for v in self.violations))


class NotFoundError(AgentrtError, KeyError):
    """A named resource (message, verdict, tool, thread, ...) does not exist in this namespace."""

    def __init__(self, kind: str, name: str):
        self.kind = kind
        self.name = name
        super().__init__(f"{kind} {name!r} not found")

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class AlreadyExistsError(AgentrtError, ValueError):
    """Creating a resource that exists with different content."""


class FailedPreconditionError(AgentrtError, RuntimeError):
    """The system is not in a state where the operation can run (e.g. too few outcomes to calibrate)."""


class ResourceExhaustedError(AgentrtError, RuntimeError):
    """A limit was hit (rate limit, concurrency cap, disk full). Retrying later may succeed."""


class UnavailableError(AgentrtError, RuntimeError):
    """A dependency (database, tool endpoint, LLM endpoint) cannot be reached. Retrying may succeed."""

    def __init__(self, message: str, retry_after_s: float | None = None):
        self.retry_after_s = retry_after_s
        super().__init__(message)


class DeadlineExceededError(AgentrtError, TimeoutError):
    """An operation ran past its deadline."""


class PermissionDeniedError(AgentrtError, PermissionError):
    """The caller is authenticated but may not do this."""


class UnauthenticatedError(AgentrtError, PermissionError):
    """The caller presented no valid credentials."""
