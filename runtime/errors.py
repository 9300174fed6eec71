"""The one place that maps domain errors to gRPC status codes.

Field errors carry a ``google.rpc.BadRequest`` detail naming each bad field (read it on the client with
``grpc_status.rpc_status.from_call``); UNAVAILABLE and RESOURCE_EXHAUSTED carry a ``google.rpc.RetryInfo`` when
the error says how long to wait. Anything unexpected becomes INTERNAL with the traceback in the log, never in the
reply; the reply's ``agentrt-request-id`` trailer is the ``request_id`` of that log line.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from core import errors as domain
from runtime import logs

log = logging.getLogger(__name__)

# Longest retry advice sent to a client (a day); a domain error may carry any float.
MAX_RETRY_DELAY_S = 86400.0
# Retry advice when every pooled database connection is busy: they are held for one statement or transaction.
POOL_RETRY_DELAY_S = 1.0
# Trailing metadata of an INTERNAL status: the request id of the server's log line with the traceback.
REQUEST_ID_KEY = "agentrt-request-id"

_CODES: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (domain.InvalidArgumentError, grpc.StatusCode.INVALID_ARGUMENT),
    (domain.NotFoundError, grpc.StatusCode.NOT_FOUND),
    (domain.AlreadyExistsError, grpc.StatusCode.ALREADY_EXISTS),
    (domain.FailedPreconditionError, grpc.StatusCode.FAILED_PRECONDITION),
    (domain.ResourceExhaustedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (domain.UnavailableError, grpc.StatusCode.UNAVAILABLE),
    (domain.DeadlineExceededError, grpc.StatusCode.DEADLINE_EXCEEDED),
    (domain.UnauthenticatedError, grpc.StatusCode.UNAUTHENTICATED),
    (domain.PermissionDeniedError, grpc.StatusCode.PERMISSION_DENIED),
)


@dataclass(frozen=True)
class RpcError:
    """What the client receives: code, message, and the packed ``grpc-status-details-bin`` trailer."""

    code: grpc.StatusCode
    message: str
    details: bytes | None = None
    # Sent as ``agentrt-request-id`` (INTERNAL only): finds the traceback "see the server log" points to.
    request_id: str = ""

    def trailing_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        out: list[tuple[str, str | bytes]] = []
        if self.details:
            out.append(("grpc-status-details-bin", self.details))
        if self.request_id:
            out.append((REQUEST_ID_KEY, self.request_id))
        return tuple(out)


def _status_details(code: grpc.StatusCode, message: str, details: list[any_pb2.Any]) -> bytes:
    status = status_pb2.Status(code=code.value[0], message=message)
    status.details.extend(details)
    return status.SerializeToString()


def _invalid(field: str, description: str) -> RpcError:
    return to_rpc_error(domain.InvalidArgumentError(field, description))


def to_rpc_error(exc: BaseException, method: str = "") -> RpcError:
    """Translate an exception raised by a handler into the status the client gets."""
    if isinstance(exc, domain.InvalidArgumentError):
        bad = error_details_pb2.BadRequest()
        for v in exc.violations:
            bad.field_violations.add(field=v.field, description=v.description)
        packed = any_pb2.Any()
        packed.Pack(bad)
        msg = str(exc)
        return RpcError(grpc.StatusCode.INVALID_ARGUMENT, msg, _status_details(
            grpc.StatusCode.INVALID_ARGUMENT, msg, [packed]))
    retry_after_s = getattr(exc, "retry_after_s", None)
    if isinstance(exc, domain.UnavailableError | domain.ResourceExhaustedError) and retry_after_s is not None:
        code = grpc.StatusCode.UNAVAILABLE if isinstance(exc, domain.UnavailableError) else \
            grpc.StatusCode.RESOURCE_EXHAUSTED
        return _retryable(code, str(exc), retry_after_s)
    for cls, code in _CODES:
        if isinstance(exc, cls):
            return RpcError(code, str(exc))
    if isinstance(exc, RecursionError):
        # json.loads of a hostile document nested thousands of levels deep
        return _invalid("request", "a JSON value in the request is nested too deeply")
    if isinstance(exc, DataError) or _is_psycopg_data_error(exc):
        # a value the database refuses (Postgres: NUL characters in text, a string longer than its column)
        reason = str(getattr(exc, "orig", exc)).splitlines()[0][:200]
        return _invalid("request", f"a value cannot be stored: {reason}")
    if isinstance(exc, IntegrityError) or (isinstance(exc, DBAPIError) and _is_conflict(exc)):
        # A concurrent writer got there first (a unique key taken between a read and an insert, a deadlock or a
        # serialization failure on Postgres): nothing of this call was committed, and a retry can succeed.
        log.warning("write conflict in %s: %s (SQLSTATE %s)", method, exc.__class__.__name__, _sqlstate(exc))
        return RpcError(grpc.StatusCode.ABORTED, "a concurrent write conflicted with this one; nothing was "
                        "written, retry")
    if isinstance(exc, OperationalError | DBAPIError) and _is_disk_full(exc):
        return RpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "the data directory is full; nothing was written")
    if isinstance(exc, PoolTimeoutError):
        # Every pooled connection stayed busy for the pool's timeout: load, not a bug; a later retry gets one.
        log.warning("database connection pool exhausted in %s", method)
        return _retryable(grpc.StatusCode.UNAVAILABLE, "every database connection is busy; retry later",
                          POOL_RETRY_DELAY_S)
    if isinstance(exc, OperationalError) or (isinstance(exc, DBAPIError) and exc.connection_invalidated):
        log.warning("database unavailable in %s: %s", method, exc.__class__.__name__)
        return RpcError(grpc.StatusCode.UNAVAILABLE, "the database is unavailable; retry later")
    if isinstance(exc, NotImplementedError):
        return RpcError(grpc.StatusCode.UNIMPLEMENTED, f"{method or 'this method'} is not implemented")
    if isinstance(exc, TimeoutError):
        return RpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")
    log.error("unexpected error in %s", method, exc_info=exc)
    return RpcError(grpc.StatusCode.INTERNAL, "internal error (see the server log)", request_id=logs.request_id.get())


def _retryable(code: grpc.StatusCode, message: str, retry_after_s: float) -> RpcError:
    """``code`` with a ``google.rpc.RetryInfo`` detail advising a delay of ``retry_after_s``."""
    info = error_details_pb2.RetryInfo()
    # Clamped: a Duration holds at most about 10,000 years, and int(inf) or int(nan) raises here.
    delay = retry_after_s if math.isfinite(retry_after_s) else MAX_RETRY_DELAY_S
    info.retry_delay.FromNanoseconds(int(min(max(delay, 0.0), MAX_RETRY_DELAY_S) * 1e9))
    packed = any_pb2.Any()
    packed.Pack(info)
    return RpcError(code, message, _status_details(code, message, [packed]))


def _is_psycopg_data_error(exc: BaseException) -> bool:
    """A ``psycopg.errors.DataError`` raised outside SQLAlchemy (LangGraph's Postgres checkpointer uses psycopg
    directly): the same refused value as SQLAlchemy's ``DataError``, not an INTERNAL error."""
    if not type(exc).__module__.startswith("psycopg"):
        return False
    try:
        from psycopg.errors import DataError as PsycopgDataError
    except ImportError:  # pragma: no cover - psycopg is installed wherever Postgres is used
        return False
    return isinstance(exc, PsycopgDataError)


def _sqlstate(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    return str(getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None) or "")


def _is_conflict(exc: BaseException) -> bool:
    # 40001 serialization_failure, 40P01 deadlock_detected (Postgres).
    return _sqlstate(exc) in ("40001", "40P01")


def _is_disk_full(exc: BaseException) -> bool:
    text = str(getattr(exc, "orig", exc)).lower()
    return "database or disk is full" in text or "no space left" in text or "disk full" in text
