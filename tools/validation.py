"""JSON Schema checks with field-level errors (``jsonschema``, Draft 2020-12 unless ``$schema`` says).

Each violation names the argument's path (``arguments_json.items[2].qty``) and the schema path of the
rule it broke (``properties.items.items.properties.qty.minimum``), so an agent can fix the exact field.
"""

from __future__ import annotations

import functools
import json
from collections import deque
from collections.abc import Iterable
from typing import Any

import jsonschema
from jsonschema import validators
from jsonschema.exceptions import SchemaError, ValidationError

from core.errors import FieldViolation

# More than this many errors are summarised: a hostile payload must not produce a huge reply.
MAX_VIOLATIONS = 20


def _json_path(prefix: str, path: Iterable[Any]) -> str:
    out = prefix
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _schema_path(path: deque[Any] | Iterable[Any]) -> str:
    return ".".join(str(p) for p in path) or "(root)"


@functools.lru_cache(maxsize=1024)
def _compiled(schema_text: str) -> jsonschema.protocols.Validator:
    schema = json.loads(schema_text)
    cls = validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def compile_schema(schema: dict[str, Any]) -> jsonschema.protocols.Validator:
    """A cached validator for ``schema`` (keyed by its canonical JSON)."""
    return _compiled(json.dumps(schema, sort_keys=True))


def schema_violations(schema: Any, field: str) -> list[FieldViolation]:
    """Violations if ``schema`` itself is not a valid JSON Schema (checked against its metaschema)."""
    if not isinstance(schema, dict):
        return [FieldViolation(field, "a JSON Schema must be a JSON object")]
    cls = validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except SchemaError as exc:
        return [FieldViolation(field, f"invalid JSON Schema at {_schema_path(exc.path)}: {exc.message}")]
    return []


def _leaf_errors(errors: Iterable[ValidationError]) -> list[ValidationError]:
    """Descend into anyOf/oneOf contexts: report the specific error, not 'not valid under any'."""
    out: list[ValidationError] = []
    for err in errors:
        if err.context:
            best = jsonschema.exceptions.best_match(err.context)
            out.append(best if best is not None else err)
        else:
            out.append(err)
    return out


def argument_violations(
    schema: dict[str, Any], arguments: Any, field: str = "arguments_json"
) -> list[FieldViolation]:
    """Every way ``arguments`` breaks ``schema``, each with the argument path and the schema rule."""
    validator = compile_schema(schema)
    errors = sorted(validator.iter_errors(arguments), key=lambda e: (list(map(str, e.path)), str(e.validator)))
    out: list[FieldViolation] = []
    for err in _leaf_errors(errors):
        path = list(err.path)
        if err.validator == "required" and isinstance(err.instance, dict):
            # Point at the missing property itself, not at its parent object.
            required: list[Any] = list(err.validator_value) if isinstance(err.validator_value, list) else []
            missing = [r for r in required if r not in err.instance]
            path += missing[:1]
        out.append(
            FieldViolation(
                _json_path(field, path),
                f"{err.message} (schema: {_schema_path(err.schema_path)})",
            )
        )
        if len(out) >= MAX_VIOLATIONS:
            out.append(FieldViolation(field, "more violations omitted"))
            break
    return out


def parse_arguments(arguments_json: str, field: str = "arguments_json") -> tuple[Any, list[FieldViolation]]:
    """Decode the arguments' JSON text; an empty string means ``{}``."""
    if not arguments_json.strip():
        return {}, []
    try:
        value = json.loads(arguments_json)
    except json.JSONDecodeError as exc:
        return None, [
            FieldViolation(field, f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}")
        ]
    except RecursionError:
        return None, [FieldViolation(field, "JSON nested too deeply to parse")]
    if not isinstance(value, dict):
        return None, [FieldViolation(field, f"must be a JSON object, got {type(value).__name__}")]
    return value, []
