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
import referencing
import referencing.jsonschema
from jsonschema import validators
from jsonschema.exceptions import SchemaError, ValidationError
from jsonschema_specifications import REGISTRY as METASCHEMAS
from referencing.exceptions import InvalidAnchor, NoSuchAnchor, PointerToNowhere, Unresolvable

from core.errors import FailedPreconditionError, FieldViolation
from core.jsontext import decode_json_object

# More than this many errors are summarised: a hostile payload must not produce a huge reply.
MAX_VIOLATIONS = 20
# Keywords whose string value is a reference to resolve (2020-12, 2019-09, and drafts 4-7).
_REF_KEYWORDS = ("$ref", "$dynamicRef", "$recursiveRef")


# The published metaschemas only; a $ref to anything else must point inside the schema itself. Passed to
# every validator: without it jsonschema fetches unknown $ref URIs with urllib, so a registered schema
# could make the sidecar request any URL it can reach (SSRF). A bare Registry never retrieves anything.
_REGISTRY: referencing.Registry[Any] = METASCHEMAS.combine(referencing.Registry())


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
    return cls(schema, format_checker=cls.FORMAT_CHECKER, registry=_REGISTRY)


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
    return [FieldViolation(field, why) for why in reference_problems(schema)]


def _ref_problem(ref: str, exc: Unresolvable) -> str:
    if isinstance(exc, PointerToNowhere | NoSuchAnchor | InvalidAnchor):
        return f"$ref {ref[:200]!r} points to nothing in the schema"
    return (
        f"$ref {ref[:200]!r} refers to a document outside the schema; remote references are never fetched "
        "(put the definition under $defs)"
    )


def reference_problems(schema: dict[str, Any]) -> list[str]:
    """Why each ``$ref`` of ``schema`` cannot be resolved (against the schema and the metaschemas only).

    Walks the schema as validation would (keywords holding subschemas, ``$id`` changing the base URI),
    without recursion: a registered schema may be nested as deeply as JSON allows.
    """
    root = referencing.Resource.from_contents(schema, default_specification=referencing.jsonschema.DRAFT202012)
    stack = [(root, _REGISTRY.resolver_with_root(root))]
    problems: list[str] = []
    while stack and len(problems) < MAX_VIOLATIONS:
        resource, resolver = stack.pop()
        resolver = resolver.in_subresource(resource)
        contents = resource.contents
        if isinstance(contents, dict):
            for keyword in _REF_KEYWORDS:
                ref = contents.get(keyword)
                if isinstance(ref, str):
                    try:
                        resolver.lookup(ref)
                    except Unresolvable as exc:
                        problems.append(_ref_problem(ref, exc))
        stack.extend((sub, resolver) for sub in resource.subresources())
    return problems


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
    """Every way ``arguments`` breaks ``schema``, each with the argument path and the schema rule.

    A schema that cannot be used (a ``$ref`` to nothing, stored before Register checked references or
    imported from an MCP server) raises FailedPreconditionError: the arguments are not at fault.
    """
    validator = compile_schema(schema)
    try:
        errors = sorted(
            validator.iter_errors(arguments), key=lambda e: (list(map(str, e.path)), str(e.validator))
        )
    except Unresolvable as exc:
        ref = str(getattr(exc, "ref", "?"))
        raise FailedPreconditionError(f"the input schema cannot be used: {_ref_problem(ref, exc)}") from None
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
    return decode_json_object(arguments_json, field)
