"""Database failures map to the statuses the fault tests rely on (runtime/errors.py), without a server."""

from __future__ import annotations

import sqlite3

import grpc
import psycopg
import pytest
from google.rpc import error_details_pb2, status_pb2
from sqlalchemy.exc import DataError, IntegrityError, InterfaceError, OperationalError, ProgrammingError

from runtime.errors import to_rpc_error


def _wrap(cls: type[Exception], orig: Exception, invalidated: bool = False) -> Exception:
    return cls("SELECT 1", {}, orig, connection_invalidated=invalidated)  # type: ignore[call-arg]


@pytest.mark.parametrize("orig", [
    psycopg.OperationalError("connection failed: Connection refused"),
    psycopg.errors.AdminShutdown("terminating connection due to administrator command"),
    psycopg.OperationalError("the database system is shutting down"),
    sqlite3.OperationalError("database is locked"),
], ids=["refused", "admin-shutdown", "shutting-down", "sqlite-locked"])
def test_database_outages_are_unavailable(orig: Exception) -> None:
    err = to_rpc_error(_wrap(OperationalError, orig), "/agentrt.v1.MemoryService/Write")
    assert err.code == grpc.StatusCode.UNAVAILABLE
    assert "retry" in err.message


def test_a_connection_lost_mid_call_is_unavailable() -> None:
    err = to_rpc_error(_wrap(InterfaceError, psycopg.InterfaceError("the connection is lost"), invalidated=True))
    assert err.code == grpc.StatusCode.UNAVAILABLE


def test_a_full_disk_is_resource_exhausted() -> None:
    err = to_rpc_error(_wrap(OperationalError, sqlite3.OperationalError("database or disk is full")))
    assert err.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "full" in err.message


def test_a_value_the_database_refuses_is_invalid_argument_naming_the_request() -> None:
    orig = psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes")
    err = to_rpc_error(_wrap(DataError, orig), "/agentrt.v1.GateService/SetPolicy")
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "NUL" in err.message
    status = status_pb2.Status.FromString(err.details or b"")
    bad = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad)
    assert [v.field for v in bad.field_violations] == ["request"]


def test_write_conflicts_are_aborted_without_leaking_the_statement() -> None:
    # A unique key taken by a concurrent writer, a Postgres deadlock or serialization failure: retryable.
    for cls, orig in ((IntegrityError, psycopg.errors.UniqueViolation("duplicate key value secret-row")),
                      (OperationalError, psycopg.errors.DeadlockDetected("deadlock detected secret-row")),
                      (OperationalError, psycopg.errors.SerializationFailure("could not serialize secret-row"))):
        err = to_rpc_error(_wrap(cls, orig))
        assert err.code == grpc.StatusCode.ABORTED, orig
        assert "retry" in err.message and "secret-row" not in err.message and "SELECT" not in err.message


def test_other_database_errors_stay_internal_without_leaking_the_statement() -> None:
    err = to_rpc_error(_wrap(ProgrammingError, psycopg.ProgrammingError("syntax error near secret-row")))
    assert err.code == grpc.StatusCode.INTERNAL
    assert "secret-row" not in err.message and "SELECT" not in err.message
