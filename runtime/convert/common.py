"""Conversions shared by several services: timestamps."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from core.errors import InvalidArgumentError

# What a datetime can hold (years 1 to 9999); protobuf's own range check is the same.
_MIN_SECONDS = -62_135_596_800
_MAX_SECONDS = 253_402_300_799


def time_from_proto(ts: Timestamp, present: bool = True, field: str = "time") -> datetime | None:
    """A UTC datetime, or None when the field is unset; an out-of-range timestamp is INVALID_ARGUMENT."""
    if not present:
        return None
    if not (_MIN_SECONDS <= ts.seconds <= _MAX_SECONDS and 0 <= ts.nanos <= 999_999_999):
        raise InvalidArgumentError(
            field, f"not a valid timestamp (seconds={ts.seconds}, nanos={ts.nanos}): years 1-9999, nanos 0-999999999"
        )
    return ts.ToDatetime(tzinfo=UTC)


def time_to_proto(value: datetime | None, target: Timestamp) -> None:
    """Fill ``target`` from ``value`` (leaves it unset for None; naive datetimes are taken as UTC)."""
    if value is not None:
        target.FromDatetime(value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC))


def timestamp(value: datetime) -> Timestamp:
    """A new Timestamp holding ``value``."""
    ts = Timestamp()
    time_to_proto(value, ts)
    return ts
