"""JSON text carried in request fields (tool arguments, schemas, rule specs, store values): one decoder whose every
failure is a field violation, never an exception that would reach the client as INTERNAL."""

from __future__ import annotations

import json
import math
import sys
from typing import Any

from core.errors import FieldViolation


class _NonFiniteNumber(ValueError):
    """A NaN / Infinity literal, or a number too large for a float (``1e400``), in JSON text."""


def _reject_constant(name: str) -> Any:
    raise _NonFiniteNumber(name)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NonFiniteNumber(text)
    return value


def decode_json(text: str, field: str, *, finite: bool = False) -> tuple[Any, list[FieldViolation]]:
    """Parse JSON text; every way it can fail becomes one violation of ``field``.

    ``finite``: standard JSON numbers only. Python's decoder also takes ``NaN`` and ``Infinity`` and turns ``1e400``
    into inf; such a value passes ``minimum``/``maximum`` checks (NaN compares false) and cannot be sent on as JSON.
    Off by default because the guards take such values on purpose and name the exact rule field they break.
    """
    try:
        if finite:
            return json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float), []
        return json.loads(text), []
    except json.JSONDecodeError as exc:
        why = f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
    except _NonFiniteNumber as exc:
        why = f"not valid JSON: {str(exc)[:40]} is not a finite number (JSON has no NaN or Infinity)"
    except RecursionError:
        why = "JSON nested too deeply to parse"
    except ValueError:
        # The only other ValueError of json.loads: Python's cap on int("...") (CVE-2020-10735).
        why = f"an integer literal is longer than {sys.get_int_max_str_digits()} digits"
    return None, [FieldViolation(field, why)]


def decode_json_object(
    text: str, field: str, *, finite: bool = False
) -> tuple[dict[str, Any] | None, list[FieldViolation]]:
    """Parse JSON text that must be an object whose strings can be stored and sent on: the object, or None and the
    one violation of ``field`` (not JSON, not an object, a lone surrogate escape; ``finite`` as in decode_json)."""
    value, bad = decode_json(text, field, finite=finite)
    if bad:
        return None, bad
    if not isinstance(value, dict):
        return None, [FieldViolation(field, f"must be a JSON object, got {type(value).__name__}")]
    if has_lone_surrogate(text, value):
        return None, [FieldViolation(field, "holds an unpaired UTF-16 surrogate escape (\\ud800-\\udfff)")]
    return value, []


def has_lone_surrogate(text: str, value: Any) -> bool:
    """Whether ``value`` (decoded from ``text``) holds a lone UTF-16 surrogate.

    Only a ``\\uXXXX`` escape can produce one (gRPC strings are valid UTF-8). A paired escape decodes to one
    character; an unpaired one cannot be encoded again, so a database, a tokenizer or an HTTP tool fails on it later.
    """
    if "\\u" not in text:
        return False
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False
