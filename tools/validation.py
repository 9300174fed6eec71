"""JSON Schema checks with field-level errors (``jsonschema``, Draft 2020-12 unless ``$schema`` says).

Each violation names the argument's path (``arguments_json.items[2].qty``) and the schema path of the
rule it broke (``properties.items.items.properties.qty.minimum``), so an agent can fix the exact field.
"""

from __future__ import annotations

import functools
import json
import re
from collections import deque
from collections.abc import Iterable
from typing import Any

import jsonschema
import referencing
import referencing.jsonschema
import regex
from jsonschema import validators
from jsonschema.exceptions import SchemaError, UnknownType, ValidationError
from jsonschema_specifications import REGISTRY as METASCHEMAS
from referencing.exceptions import InvalidAnchor, NoSuchAnchor, PointerToNowhere, Unresolvable

from core.errors import FailedPreconditionError, FieldViolation
from core.jsontext import decode_json_object
from core.regex_budget import RegexTimeout, on_budget, regex_budget

# Seconds that all regex matches (pattern, patternProperties) of one argument check may take together.
PATTERN_BUDGET_S = 1.0
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
    cls = on_budget(validators.validator_for(schema, default=jsonschema.Draft202012Validator))
    validator: jsonschema.protocols.Validator = cls(schema, format_checker=cls.FORMAT_CHECKER, registry=_REGISTRY)
    return validator


def compile_schema(schema: dict[str, Any]) -> jsonschema.protocols.Validator:
    """A cached validator for ``schema`` (keyed by its canonical JSON)."""
    return _compiled(json.dumps(schema, sort_keys=True))


def schema_violations(schema: Any, field: str) -> list[FieldViolation]:
    """Violations if ``schema`` itself is not a valid JSON Schema (checked against its metaschema)."""
    if not isinstance(schema, dict):
        return [FieldViolation(field, "a JSON Schema must be a JSON object")]
    if "$schema" in schema and not isinstance(schema["$schema"], str):
        # validator_for looks the value up in a dict: a list or an object would raise TypeError.
        return [FieldViolation(field, f"$schema must be a URI string, got {type(schema['$schema']).__name__}")]
    cls = validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except SchemaError as exc:
        return [FieldViolation(field, f"invalid JSON Schema at {_schema_path(exc.path)}: {exc.message}")]
    except RecursionError:
        return [FieldViolation(field, "the JSON Schema is nested too deeply to check")]
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
    loops: dict[int, bool] = {}
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
                    else:
                        loop = f"$ref {ref[:200]!r} never ends: following it leads through $refs in a loop"
                        if keyword == "$ref" and _ref_loops(contents, resolver, loops) and loop not in problems:
                            problems.append(loop)
        stack.extend((sub, resolver) for sub in resource.subresources())
    return problems


def _ref_loops(contents: dict[str, Any], resolver: Any, known: dict[int, bool]) -> bool:
    """Whether following the ``$ref`` of ``contents`` from schema to schema comes back to one already seen.

    A subschema's ``$ref`` applies to the same value (siblings or not), so such a loop never reaches a rule that
    consumes anything and validation recurses until Python's limit, whatever the arguments. ``known`` keeps the
    answer for every subschema walked (by id), so a long chain is walked once, not once per $ref in it.
    """
    seen: set[int] = set()
    answer = False
    while isinstance(contents, dict) and isinstance(contents.get("$ref"), str):
        if id(contents) in known:
            answer = known[id(contents)]
            break
        if id(contents) in seen:
            answer = True
            break
        seen.add(id(contents))
        try:
            resolved = resolver.lookup(contents["$ref"])
        except Unresolvable:
            break  # reported by reference_problems where that $ref is written
        contents, resolver = resolved.contents, resolved.resolver
    known.update(dict.fromkeys(seen, answer))
    return answer


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


def may_backtrack(schema: dict[str, Any]) -> bool:
    """Whether checking arguments against ``schema`` can take long: its ``pattern`` or ``patternProperties``
    regular expressions (``^(a|aa)+$`` takes seconds on 35 characters). A false alarm (a property named
    "pattern") costs only a thread hop."""
    return '"pattern' in json.dumps(schema)


def argument_violations(
    schema: dict[str, Any], arguments: Any, field: str = "arguments_json"
) -> list[FieldViolation]:
    """Every way ``arguments`` breaks ``schema``, each with the argument path and the schema rule.

    A schema that cannot be used (a ``$ref`` to nothing, stored before Register checked references or
    imported from an MCP server) raises FailedPreconditionError: the arguments are not at fault. So does
    validation that recurses past Python's limit (a ``$ref`` loop Register cannot see, or a recursive schema
    given arguments nested hundreds of levels deep).
    """
    try:
        validator = compile_schema(schema)
    except TypeError:  # a "$schema" that is not a string, stored before Register refused it
        raise FailedPreconditionError("the input schema cannot be used: its $schema is not a string") from None
    try:
        with regex_budget(PATTERN_BUDGET_S):
            errors = sorted(
                validator.iter_errors(arguments), key=lambda e: (list(map(str, e.path)), str(e.validator))
            )
    except RegexTimeout as exc:
        raise FailedPreconditionError(
            f"the input schema cannot be checked: its regex {exc.pattern[:200]!r} did not finish within "
            f"{PATTERN_BUDGET_S:g}s on these arguments (catastrophic backtracking; simplify the pattern)"
        ) from None
    except Unresolvable as exc:
        ref = str(getattr(exc, "ref", "?"))
        raise FailedPreconditionError(f"the input schema cannot be used: {_ref_problem(ref, exc)}") from None
    except RecursionError:
        # A $ref loop (through allOf, anyOf, ... as well as $ref alone), or a recursive schema following
        # arguments nested deeper than Python's stack allows.
        raise FailedPreconditionError(
            "the input schema cannot be checked: validation recursed too deeply (a $ref loop in the schema, "
            "or arguments nested deeper than the schema can follow)"
        ) from None
    except (SchemaError, UnknownType, re.error, regex.error) as exc:
        # Schemas stored before Register checked them, or imported from an MCP server before imports were.
        why = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise FailedPreconditionError(f"the input schema cannot be used: {why}") from None
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
    # Standard JSON only: a NaN passes minimum/maximum and a tool endpoint cannot parse it.
    return decode_json_object(arguments_json, field, finite=True)
