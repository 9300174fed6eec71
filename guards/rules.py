"""Operator policy rules: deterministic, checked before the guard memory.

A rule matches when ALL the conditions it states hold (a rule with no condition never matches):

```yaml
rules:
  - name: cap-transfers            # unique per namespace
    action: block                  # block | review | allow
    priority: 100                  # higher first; ties: block > review > allow
    stages: [tool_call]            # empty = every stage
    description: Transfers above 1000 need a human.
    tools: ["transfer_*", "pay*"]  # tool-name globs (any)
    text_regex: ["(?i)wire .* offshore"]     # on the request text (any)
    detectors: [secrets, pii, injection]     # any hit (guards/detectors.py; also unrequested_action)
    arguments:                     # argument constraints; the condition holds when one is VIOLATED
      - {path: amount, max: 1000}
      - {path: to, allowed_domains: [example.com]}
      - {path: file, allowed_prefixes: [/workspace/]}
      - {path: command, regex: "rm\\s+-rf"}      # violated when the value matches
      - {path: branch, not_regex: "^feature/"}    # violated when it does not
    json_schema: {...}             # holds when the arguments do NOT validate
    rate_limit: {max_calls: 5, per_seconds: 60}  # holds when the tool's calls in the window exceed max
```

Operator regexes (``text_regex``, ``regex``/``not_regex``, JSON Schema ``pattern``/``patternProperties``) run
on the ``regex`` module under one time budget per check (``REGEX_BUDGET_S``): a rule whose regex cannot
finish in it matches with action REVIEW, whatever its own action (see docs/guards.md, "Regex budget").
"""

from __future__ import annotations

import contextvars
import fnmatch
import json
import logging
import math
import posixpath
import re
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import replace
from decimal import Decimal
from typing import Any, Protocol

import jsonschema
import regex
import yaml
from jsonschema import validators as schema_validators
from jsonschema.exceptions import ValidationError
from referencing.exceptions import Unresolvable

from core.errors import FieldViolation, InvalidArgumentError
from core.regex_budget import REGEX_BUDGET_S, RegexBudget, RegexTimeout, on_budget, regex_budget
from guards import detectors
from guards.model import Decision, GuardRequest, PolicyRule, RuleMatch, Stage

log = logging.getLogger(__name__)

_SEVERITY = {Decision.BLOCK: 3, Decision.REVIEW: 2, Decision.ALLOW: 1, Decision.UNSPECIFIED: 0}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
_CONDITIONS = ("tools", "text_regex", "detectors", "arguments", "json_schema", "rate_limit")
_ARG_KEYS = {"path", "max", "min", "regex", "not_regex", "allowed_prefixes", "allowed_domains", "required"}
_REF_KEYS = ("$ref", "$dynamicRef", "$recursiveRef")
# The host after "@" (e-mail) or "://" (URL): anything up to where a host ends, so that an IP address, a bracketed
# IPv6 or e-mail literal, a single label ("localhost") or a non-ASCII name is a host too (each used to pass an
# allowed_domains rule unseen, since only dotted ASCII names were read).
_EMAIL_OR_URL_HOST = re.compile(r"(?:@|://)(\[[^\]\s]*\]|[^\s/:?#@<>\[\](),;\"'`|\\]+)")
# Priorities are stored and sent as int32 (GuardRule.priority).
_PRIORITY_RANGE = (-(2**31), 2**31 - 1)

#: Longest operator regex (text_regex, regex/not_regex, JSON Schema pattern and patternProperties).
MAX_REGEX_CHARS = 2000
#: Largest product of nested counted repeats in one regex: ``(?:a{3000}){3000}`` is 9,000,000 and took 2.4 GB
#: and seconds to compile (the ``regex`` module expands a repeated group), before any time budget applies.
MAX_REGEX_REPEAT = 10_000
#: Largest size of a regex once its counted repeats are expanded (one unit per literal, class or escape).
MAX_REGEX_SIZE = 100_000
# A counted repeat; whitespace is allowed where verbose mode ((?x)) would ignore it, so it cannot hide one.
_COUNTED = re.compile(r"\s*\{\s*(\d*)\s*(?:,\s*(\d*)\s*)?\}")
# Values the JSON Schema keeps as data, not as schemas: a "pattern" key inside them is no regex.
_SCHEMA_DATA_KEYS = ("enum", "const", "default", "examples")

# The budget of the schema validation running in this context: every keyword checks it before it runs.
_SCHEMA_BUDGET: contextvars.ContextVar[RegexBudget | None] = contextvars.ContextVar("schema_budget", default=None)


class SchemaUndecided(Exception):
    """A rule's JSON Schema could not be evaluated on these arguments (recursion too deep, a reference that
    cannot be followed in a rule stored before such rules were refused, or out of the check's time budget)."""


def _on_deadline(keyword: Any) -> Any:
    """``keyword`` (a jsonschema keyword function), refusing to start past the running check's deadline.

    Validation is plain Python that cannot be interrupted; checked at every keyword, a schema on large
    arguments (200,000 characters) stops within about one keyword's work of the budget instead of running on.
    """

    def check(validator: Any, value: Any, instance: Any, schema: Any) -> Any:
        budget = _SCHEMA_BUDGET.get()
        if budget is not None and time.monotonic() > budget.deadline:
            raise SchemaUndecided(f"its JSON Schema did not finish within the {budget.seconds:g}s budget")
        yield from keyword(validator, value, instance, schema) or ()

    return check


def _canonical(value: Any) -> Any:
    """A hashable key equal for values JSON Schema calls equal (1 == 1.0, but true != 1, key order ignored)."""
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, int | float):
        return ("n", value)
    if isinstance(value, str):
        return ("s", value)
    if isinstance(value, list):
        return ("l", tuple(_canonical(v) for v in value))
    if isinstance(value, dict):
        return ("d", frozenset((k, _canonical(v)) for k, v in value.items()))
    return ("o", repr(value))


def _unique_items(validator: Any, unique: Any, instance: Any, schema: Any) -> Any:
    """``uniqueItems`` in linear time: jsonschema compares every pair of unhashable items (8,000 objects took
    157 s, all in one keyword, so no deadline could stop it)."""
    if not unique or not validator.is_type(instance, "array"):
        return
    seen: set[Any] = set()
    for item in instance:
        key = _canonical(item)
        if key in seen:
            yield ValidationError("the array has non-unique elements")
            return
        seen.add(key)


def _bounded(cls: Any) -> Any:
    """The jsonschema validator class ``cls`` with every keyword on the check's deadline (see ``_on_deadline``)."""
    keywords = {name: _on_deadline(fn) for name, fn in cls.VALIDATORS.items()}
    keywords["uniqueItems"] = _on_deadline(_unique_items)
    return schema_validators.extend(cls, keywords)


# Operator regexes and the JSON Schema regex keywords run on one budget per check (core.regex_budget): a regex
# with catastrophic backtracking ("(a+)+$" on "aaa…a!") would otherwise hold a worker thread (and the namespace's
# memory lock) for minutes. The other schema keywords run against the same deadline (``_bounded``).
_SchemaValidator = _bounded(on_budget(jsonschema.Draft202012Validator))


def _shown(value: Any, limit: int = 100) -> str:
    """``repr(value)`` cut to ``limit`` characters: error texts must not repeat unbounded input (a long name made
    the status details exceed gRPC's metadata limit, answered RESOURCE_EXHAUSTED instead of the error)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def _ref_problems(schema: Any) -> list[str]:
    """Why the ``$ref``s of a rule's schema cannot be followed. Rules may only point inside their own schema
    (``#``, ``#/json/pointer`` or ``#anchor``): nothing is fetched, and a reference to nothing would make every
    check of the tool raise instead of deciding."""
    refs: list[tuple[str, str]] = []
    anchors: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            # $dynamicRef and $recursiveRef are followed like $ref (to another document too): the same checks.
            refs.extend((key, node[key]) for key in _REF_KEYS if isinstance(node.get(key), str))
            anchors.update(node[key] for key in ("$anchor", "$dynamicAnchor") if isinstance(node.get(key), str))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    problems = []
    for key, ref in dict.fromkeys(refs):
        if not ref.startswith("#"):
            problems.append(f"{key} {ref[:200]!r} points outside the rule (only #, #/pointer and #anchor are allowed)")
            continue
        fragment = ref[1:]
        if fragment and not fragment.startswith("/"):
            if fragment not in anchors:
                problems.append(f"{key} {ref[:200]!r} names no $anchor of the schema")
            continue
        node: Any = schema
        for token in fragment.split("/")[1:] if fragment else []:
            token = token.replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict) and token in node:
                node = node[token]
            elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
                node = node[int(token)]
            else:
                problems.append(f"{key} {ref[:200]!r} points to nothing in the schema")
                break
    return problems


def _schema_error(schema: Any, args: Any, budget: RegexBudget | None = None) -> ValidationError | None:
    token = _SCHEMA_BUDGET.set(budget)
    try:
        return next(iter(_SchemaValidator(schema).iter_errors(args)), None)
    except RecursionError:
        raise SchemaUndecided("its JSON Schema recursed too deeply on these arguments") from None
    except jsonschema.exceptions.SchemaError as exc:
        raise SchemaUndecided(f"its JSON Schema cannot be used ({exc.message[:200]})") from None
    except Unresolvable as exc:  # jsonschema raises it wrapped in a private subclass
        raise SchemaUndecided(f"its JSON Schema has a reference that cannot be followed ({exc})") from None
    finally:
        _SCHEMA_BUDGET.reset(token)


def _non_finite_in(value: Any) -> bool:
    """Whether a decoded JSON value holds NaN or an infinity (JSON has neither; Python's parser takes them)."""
    stack = [value]  # iterative: arguments may be nested deeper than Python's stack
    while stack:
        item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return True
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def precedence_key(rule: PolicyRule) -> tuple[int, int, str]:
    """Sort key: higher priority first, then the stricter action, then name for determinism."""
    return (-rule.priority, -_SEVERITY[rule.action], rule.name)


def parse_rule(data: Any, where: str = "rules[0]", source: str = "operator") -> PolicyRule:
    """Build and validate one rule from its YAML/JSON mapping; errors name the field (``rules[2].action``)."""
    if not isinstance(data, dict):
        raise InvalidArgumentError(where, "a rule must be a mapping")
    errors: list[FieldViolation] = []
    name = str(data.get("name", ""))
    if not _NAME.match(name):
        errors.append(
            FieldViolation(f"{where}.name", f"invalid rule name {_shown(name)}: use 1-128 of [A-Za-z0-9_.:-]")
        )
    action_raw = str(data.get("action", "")).lower().removeprefix("decision_")
    try:
        action = Decision(action_raw)
        if action == Decision.UNSPECIFIED:
            raise ValueError
    except ValueError:
        errors.append(FieldViolation(f"{where}.action", f"action {_shown(action_raw)} must be block, review or allow"))
        action = Decision.UNSPECIFIED
    stages: list[Stage] = []
    stages_raw = data.get("stages") or []
    if not isinstance(stages_raw, list):
        errors.append(FieldViolation(f"{where}.stages", "stages must be a list of stage names"))
        stages_raw = []
    for i, s in enumerate(stages_raw):
        try:
            stages.append(Stage(str(s).lower().removeprefix("stage_")))
        except ValueError:
            errors.append(FieldViolation(f"{where}.stages[{i}]", f"unknown stage {_shown(s)}"))
    spec = {k: data[k] for k in _CONDITIONS if k in data}
    unknown = set(data) - set(_CONDITIONS) - {"name", "action", "priority", "stages", "description", "enabled"}
    for key in sorted(unknown):
        errors.append(FieldViolation(f"{where}.{str(key)[:100]}", f"unknown rule field {_shown(key)}"))
    if not spec:
        errors.append(FieldViolation(where, f"a rule needs at least one condition of {list(_CONDITIONS)}"))
    enabled = data.get("enabled", True)
    if not isinstance(enabled, bool):
        # bool("false") is True: a quoted "false" would have switched the rule on.
        errors.append(FieldViolation(f"{where}.enabled", "enabled must be true or false"))
    try:
        errors.extend(_non_finite(data, where))
        errors.extend(_validate_spec(spec, where))
    except RecursionError:
        errors.append(FieldViolation(where, "the rule is nested too deeply"))
    try:
        json.dumps(spec, allow_nan=False)
    except (TypeError, ValueError) as exc:
        # YAML reads 2024-01-01 as a date and !!binary as bytes: the store keeps rules as JSON.
        errors.append(FieldViolation(where, f"a rule's conditions must be plain JSON values ({exc})"))
    except RecursionError:
        errors.append(FieldViolation(where, "the rule is nested too deeply"))
    priority_raw = data.get("priority", 0)
    priority = 0
    if isinstance(priority_raw, bool) or not isinstance(priority_raw, int | float | str):
        errors.append(FieldViolation(f"{where}.priority", "priority must be an integer"))
    else:
        try:
            priority = int(priority_raw)
        except (ValueError, OverflowError):  # "high", NaN, infinity
            errors.append(FieldViolation(f"{where}.priority", "priority must be an integer"))
        else:
            if not _PRIORITY_RANGE[0] <= priority <= _PRIORITY_RANGE[1]:
                errors.append(FieldViolation(f"{where}.priority", "priority must fit in 32 bits"))
                priority = 0
    if errors:
        raise InvalidArgumentError(errors)
    return PolicyRule(
        name=name,
        action=action,
        priority=priority,
        description=str(data.get("description", "")),
        stages=tuple(stages),
        spec=spec,
        enabled=enabled,
        source=source,
    )


def _non_finite(value: Any, path: str) -> list[FieldViolation]:
    """A violation for every NaN or infinity in a rule (JSON's ``NaN``, YAML's ``.nan``/``.inf``).

    Comparisons with NaN are all false: ``{path: amount, max: NaN}`` would never be violated.
    """
    if isinstance(value, float) and not math.isfinite(value):
        return [FieldViolation(path, f"{value} is not a finite number")]
    if isinstance(value, dict):
        return [v for k, item in value.items() for v in _non_finite(item, f"{path}.{k}")]
    if isinstance(value, list):
        return [v for i, item in enumerate(value) for v in _non_finite(item, f"{path}[{i}]")]
    return []


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _regex_cost_problem(pattern: str) -> str | None:
    """Why compiling ``pattern`` could take too much memory or time (None when it cannot).

    The ``regex`` module expands a repeated group when it compiles: ``(?:a{3000}){3000}``, 17 characters, took
    2.4 GB and seconds before any match budget applied. This scans the pattern for counted repeats (``{m}``,
    ``{m,n}``, ``{m,}``, ``{,n}``) and the groups they repeat, and estimates the expanded size. Where the scan
    cannot know the syntax (verbose-mode comments, nested V1 sets) it counts more than there is, never less:
    a character class ends at its first unescaped ``]``, the earliest it can.
    """
    if len(pattern) > MAX_REGEX_CHARS:
        return f"a regex may have at most {MAX_REGEX_CHARS} characters, got {len(pattern)}"
    # One frame per open group: [expanded size of its content, largest product of counted repeats inside it].
    stack: list[list[int]] = [[0, 1]]
    last: tuple[int, int] | None = None  # (size, product) of the atom a following repeat would repeat
    i, n = 0, len(pattern)
    while i < n:
        counted = _COUNTED.match(pattern, i) if last is not None else None
        if counted is not None and last is not None and any(counted.groups()):
            digits = [d for d in counted.groups() if d]
            if any(len(d) > 9 for d in digits):
                return f"a counted repeat may be at most {MAX_REGEX_REPEAT}"
            bound = max(1, *(int(d) for d in digits))
            size, product = last[0] * bound, last[1] * bound
            if product > MAX_REGEX_REPEAT:
                return (
                    f"counted repeats (nested ones multiply) may repeat at most {MAX_REGEX_REPEAT} times, "
                    f"this one {product}"
                )
            stack[-1][0] += size - last[0]
            stack[-1][1] = max(stack[-1][1], product)
            last = (size, product)
            i = counted.end()
            continue
        c = pattern[i]
        if c == "\\":
            end = i + 2
            if pattern[i + 1 : i + 2] in ("p", "P", "N", "x", "g", "L") and pattern[end : end + 1] in ("{", "<"):
                close = pattern.find("}" if pattern[end] == "{" else ">", end)
                end = n if close < 0 else close + 1
            i, last = end, (1, 1)
            stack[-1][0] += 1
        elif c == "[":
            end = i + 1
            end += pattern[end : end + 1] == "^"
            end += pattern[end : end + 1] == "]"
            while end < n and pattern[end] != "]":
                end += 2 if pattern[end] == "\\" else 1
            i, last = end + 1, (1, 1)
            stack[-1][0] += 1
        elif c == "(" and pattern.startswith("(?#", i):
            close = pattern.find(")", i)
            i = n if close < 0 else close + 1
        elif c == "(":
            stack.append([0, 1])
            i, last = i + 1, None
        elif c == ")" and len(stack) > 1:
            size, product = stack.pop()
            stack[-1][0] += size
            stack[-1][1] = max(stack[-1][1], product)
            i, last = i + 1, (size, product)
        elif c == "|":
            i, last = i + 1, None
        elif c in "*+?" or c.isspace():
            i += 1  # no expansion; a lazy or possessive mark, or verbose-mode space, keeps the atom before it
        else:
            i, last = i + 1, (1, 1)
            stack[-1][0] += 1
    size = sum(frame[0] for frame in stack)
    if size > MAX_REGEX_SIZE:
        return f"the regex expands to {size} elements once its repeats are counted; at most {MAX_REGEX_SIZE}"
    return None


def _regex_error(pattern: Any) -> str | None:
    """Why ``pattern`` cannot be an operator regex (None when it can); rules run on the ``regex`` module.

    Compiling takes a moment (call it off the event loop); ``_regex_cost_problem`` refuses first what would not.
    """
    if not isinstance(pattern, str):
        return "a regex must be a string"
    if why := _regex_cost_problem(pattern):
        return why
    try:
        regex.compile(pattern)
    except (regex.error, ValueError, OverflowError) as e:
        return f"bad regex: {str(e)[:200]}"
    return None


def _schema_regex_problems(schema: Any) -> list[str]:
    """Why the ``pattern`` and ``patternProperties`` regexes of a rule's schema cannot be used: they are compiled by
    the ``regex`` module at check time, so a compile bomb there would cost its memory on every check."""
    problems: list[str] = []
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        patterns = [node["pattern"]] if isinstance(node.get("pattern"), str) else []
        if isinstance(node.get("patternProperties"), dict):
            patterns.extend(node["patternProperties"])
        for pattern in patterns:
            if why := _regex_error(pattern):
                problems.append(f"pattern {_shown(pattern)}: {why}")
        stack.extend(v for k, v in node.items() if k not in _SCHEMA_DATA_KEYS)
    return problems


def _schema_uses(schema: Any, key: str) -> bool:
    if isinstance(schema, dict):
        return key in schema or any(_schema_uses(v, key) for v in schema.values())
    if isinstance(schema, list):
        return any(_schema_uses(v, key) for v in schema)
    return False


def _validate_arguments(value: Any, where: str) -> list[FieldViolation]:
    if not isinstance(value, list) or not value:
        return [FieldViolation(f"{where}.arguments", "arguments must be a non-empty list of constraint mappings")]
    errors: list[FieldViolation] = []
    for i, arg in enumerate(value):
        path = f"{where}.arguments[{i}]"
        if not isinstance(arg, dict) or not isinstance(arg.get("path"), str) or not arg["path"]:
            errors.append(FieldViolation(path, "an argument constraint is a mapping with a non-empty string 'path'"))
            continue
        for key in sorted(set(arg) - _ARG_KEYS, key=str):
            unknown = f"unknown constraint {_shown(key)}; use {sorted(_ARG_KEYS)}"
            errors.append(FieldViolation(f"{path}.{str(key)[:100]}", unknown))
        for key in ("regex", "not_regex"):
            if key in arg and (why := _regex_error(arg[key])):
                errors.append(FieldViolation(f"{path}.{key}", why))
        for key in ("max", "min"):
            if key in arg and not _is_number(arg[key]):
                errors.append(FieldViolation(f"{path}.{key}", f"{key} must be a finite number"))
        for key in ("allowed_prefixes", "allowed_domains"):
            if key in arg and not (
                isinstance(arg[key], list) and arg[key] and all(isinstance(x, str) and x for x in arg[key])
            ):
                errors.append(FieldViolation(f"{path}.{key}", f"{key} must be a non-empty list of non-empty strings"))
        domains = arg.get("allowed_domains")
        for j, domain in enumerate(domains if isinstance(domains, list) else []):
            if isinstance(domain, str) and domain and _allowed_domain(domain) is None:
                errors.append(
                    FieldViolation(f"{path}.allowed_domains[{j}]", f"{_shown(domain)} is not a valid domain name")
                )
        if "required" in arg and not isinstance(arg["required"], bool):
            errors.append(FieldViolation(f"{path}.required", "required must be true or false"))
    return errors


def stored_rule(body: dict[str, Any], source: str = "operator") -> PolicyRule:
    """A rule read back from a store: validated like a new one, but a rule stored before a check was
    tightened is kept as it was (with a warning in the log) instead of making its namespace unloadable."""
    try:
        return parse_rule(body, str(body.get("name", "rule")), source=source)
    except InvalidArgumentError as e:
        log.warning("guard rule %r no longer validates (%s); loaded as stored, fix or delete it", body.get("name"), e)
    stages = []
    raw_stages = body.get("stages")
    for s in raw_stages if isinstance(raw_stages, list) else []:
        try:
            stages.append(Stage(str(s).lower().removeprefix("stage_")))
        except ValueError:
            continue
    try:
        action = Decision(str(body.get("action", "")).lower().removeprefix("decision_"))
    except ValueError:
        action = Decision.REVIEW
    try:
        priority = int(body.get("priority", 0))
    except (TypeError, ValueError, OverflowError):
        priority = 0
    return PolicyRule(
        name=str(body.get("name", "")),
        action=action if action != Decision.UNSPECIFIED else Decision.REVIEW,
        priority=priority,
        description=str(body.get("description", "")),
        stages=tuple(stages),
        spec={k: body[k] for k in _CONDITIONS if k in body},
        enabled=bool(body.get("enabled", True)),
        source=source,
    )


def _validate_spec(spec: dict[str, Any], where: str) -> list[FieldViolation]:
    errors: list[FieldViolation] = []
    for key in ("tools", "text_regex", "detectors"):
        if key in spec and not (
            isinstance(spec[key], list) and all(isinstance(x, str) for x in spec[key]) and spec[key]
        ):
            errors.append(FieldViolation(f"{where}.{key}", f"{key} must be a non-empty list of strings"))
    text_regex = spec.get("text_regex")
    for i, pattern in enumerate(text_regex if isinstance(text_regex, list) else []):
        if why := _regex_error(pattern):
            errors.append(FieldViolation(f"{where}.text_regex[{i}]", why))
    names = spec.get("detectors")
    for i, name in enumerate(names if isinstance(names, list) else []):
        if not isinstance(name, str) or name not in detectors.DETECTORS:
            errors.append(
                FieldViolation(
                    f"{where}.detectors[{i}]",
                    f"unknown detector {_shown(name)}; choose from {sorted(detectors.DETECTORS)}",
                )
            )
    if "arguments" in spec:
        errors.extend(_validate_arguments(spec["arguments"], where))
    if "json_schema" in spec:
        schema = spec["json_schema"]
        try:
            _SchemaValidator.check_schema(schema)
            problems = _ref_problems(schema)
        except jsonschema.SchemaError as e:
            errors.append(FieldViolation(f"{where}.json_schema", f"invalid JSON Schema: {e.message}"))
        except RecursionError:
            errors.append(FieldViolation(f"{where}.json_schema", "the JSON Schema is nested too deeply"))
        else:
            errors.extend(FieldViolation(f"{where}.json_schema", why) for why in problems)
            errors.extend(FieldViolation(f"{where}.json_schema", why) for why in _schema_regex_problems(schema))
            # unevaluatedProperties matches patternProperties with ``re``, outside the regex budget.
            if _schema_uses(schema, "unevaluatedProperties") and _schema_uses(schema, "patternProperties"):
                errors.append(
                    FieldViolation(
                        f"{where}.json_schema", "unevaluatedProperties cannot be combined with patternProperties"
                    )
                )
    if "rate_limit" in spec:
        rl = spec["rate_limit"]
        max_calls = rl.get("max_calls") if isinstance(rl, dict) else None
        per_seconds = rl.get("per_seconds") if isinstance(rl, dict) else None
        if not isinstance(rl, dict):
            errors.append(FieldViolation(f"{where}.rate_limit", "rate_limit is a mapping {max_calls, per_seconds}"))
        else:
            if not (isinstance(max_calls, int) and not isinstance(max_calls, bool) and max_calls > 0):
                errors.append(FieldViolation(f"{where}.rate_limit.max_calls", "max_calls must be an integer > 0"))
            if not (_is_number(per_seconds) and isinstance(per_seconds, int | float) and per_seconds > 0):
                errors.append(
                    FieldViolation(f"{where}.rate_limit.per_seconds", "per_seconds must be a finite number > 0")
                )
    return errors


def read_policy_document(text: str) -> tuple[list[Any], dict[str, Any]]:
    """A policy document's rule mappings (unvalidated; see ``parse_rules``) and its settings (its other keys).

    ``{rules: [...], default_decision: allow, pack: true}``; a bare list is read as the rules. Raises
    InvalidArgumentError naming ``yaml`` when the text is no such document.
    """
    try:
        doc = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as e:
        raise InvalidArgumentError("yaml", f"not valid YAML: {str(e)[:500]}") from None
    except ValueError as e:  # an integer past Python's int-string digit limit
        raise InvalidArgumentError("yaml", f"not a usable YAML value: {str(e)[:200]}") from None
    except RecursionError:
        raise InvalidArgumentError("yaml", "nested too deeply") from None
    if isinstance(doc, list):
        doc = {"rules": doc}
    if not isinstance(doc, dict):
        raise InvalidArgumentError("yaml", "a policy document is a mapping with a 'rules' list")
    rules_raw = doc.get("rules") or []
    if not isinstance(rules_raw, list):
        raise InvalidArgumentError("yaml", "'rules' must be a list")
    return rules_raw, {k: v for k, v in doc.items() if k != "rules"}


def parse_rules(
    items: list[Any], source: str = "operator"
) -> tuple[list[tuple[int, PolicyRule]], list[FieldViolation]]:
    """Every valid rule of ``items`` with its index, and the violations of the others (``rules[i].<field>``), so
    that one answer names every mistake of a document."""
    rules: list[tuple[int, PolicyRule]] = []
    errors: list[FieldViolation] = []
    first: dict[str, int] = {}
    for i, item in enumerate(items):
        name = item.get("name") if isinstance(item, dict) else None
        if isinstance(name, str):
            if name in first:
                errors.append(FieldViolation(f"rules[{i}].name", f"{_shown(name)} is also rules[{first[name]}]'s name"))
            first.setdefault(name, i)
        try:
            rules.append((i, parse_rule(item, f"rules[{i}]", source=source)))
        except InvalidArgumentError as e:
            errors.extend(e.violations)
    return rules, errors


def parse_rules_yaml(text: str, source: str = "operator") -> tuple[list[PolicyRule], dict[str, Any]]:
    """Parse a policy document (see ``read_policy_document``): its rules and its namespace settings.

    Raises InvalidArgumentError naming every bad rule field (the settings are not validated here).
    """
    items, settings = read_policy_document(text)
    rules, errors = parse_rules(items, source)
    if errors:
        raise InvalidArgumentError(errors)
    return [rule for _, rule in rules], settings


def rule_to_dict(rule: PolicyRule) -> dict[str, Any]:
    """The YAML/JSON mapping of a rule (inverse of ``parse_rule``)."""
    out: dict[str, Any] = {"name": rule.name, "action": rule.action.value, "priority": rule.priority}
    if rule.description:
        out["description"] = rule.description
    if rule.stages:
        out["stages"] = [s.value for s in rule.stages]
    if not rule.enabled:
        out["enabled"] = False
    out.update(rule.spec)
    return out


def _lookup(args: Any, path: str) -> list[Any]:
    """Values at a dotted path; ``*`` walks every item of a list or every value of a mapping."""
    current = [args]
    for part in path.split("."):
        nxt: list[Any] = []
        for value in current:
            if part == "*":
                if isinstance(value, dict):
                    nxt.extend(value.values())
                elif isinstance(value, list):
                    nxt.extend(value)
            elif isinstance(value, dict) and part in value:
                nxt.append(value[part])
            elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
                nxt.append(value[int(part)])
        current = nxt
    flat: list[Any] = []
    for value in current:
        # A list stands for its items; an empty one stays as it is, a value that is not a number (a bound must
        # not let `"amount": []` through where `"amount": [5000]` is refused).
        flat.extend(value if isinstance(value, list) and value else [value])
    return flat


def _exact_number(value: Any) -> Decimal | None:
    """``value`` as an exact number (None when it is not one): a float holds integers only up to 2**53, so
    9007199254740993 compared as a float passed a max of 9007199254740992."""
    if isinstance(value, bool | int):
        return Decimal(int(value))
    if isinstance(value, float):
        return Decimal(value) if math.isfinite(value) else Decimal("NaN")
    if isinstance(value, str):
        try:
            return Decimal(value.strip())
        except ArithmeticError:  # decimal.InvalidOperation: not a number
            return None
    return None


def _violates(arg: dict[str, Any], args: Any, budget: RegexBudget) -> str | None:
    values = _lookup(args, arg["path"])
    if not values:
        return f"argument {arg['path']!r} is required but missing" if arg.get("required") else None
    for value in values:
        text = value if isinstance(value, str) else json.dumps(value)
        if "max" in arg or "min" in arg:
            number = _exact_number(value)
            if number is None:
                return f"argument {arg['path']!r}={text!r} is not a number"
            if not number.is_finite():
                # NaN compares false with everything: it would pass any max and any min.
                return f"argument {arg['path']!r}={text!r} is not a finite number"
            high, low = _exact_number(arg.get("max")), _exact_number(arg.get("min"))
            if high is not None and number > high:
                return f"argument {arg['path']!r}={text} exceeds max {arg['max']}"
            if low is not None and number < low:
                return f"argument {arg['path']!r}={text} is below min {arg['min']}"
        if "regex" in arg and budget.search(str(arg["regex"]), text):
            return f"argument {arg['path']!r} matches forbidden pattern {arg['regex']!r}"
        if "not_regex" in arg and not budget.search(str(arg["not_regex"]), text):
            return f"argument {arg['path']!r} does not match required pattern {arg['not_regex']!r}"
        if "allowed_prefixes" in arg:
            # Normalise so "/workspace/../etc/passwd" cannot pass as being under /workspace/.
            norm = posixpath.normpath(text) if text.startswith("/") else posixpath.normpath("/" + text)[1:]
            if not any(norm == p.rstrip("/") or norm.startswith(p.rstrip("/") + "/") for p in arg["allowed_prefixes"]):
                return f"argument {arg['path']!r} path {norm!r} is outside {arg['allowed_prefixes']}"
        if "allowed_domains" in arg:
            allowed = [d for d in (_allowed_domain(str(x)) for x in arg["allowed_domains"]) if d]
            for raw in _EMAIL_OR_URL_HOST.findall(text):
                host = _host_name(raw)
                if not any(host == d or host.endswith("." + d) for d in allowed):
                    return f"argument {arg['path']!r} names domain {host!r}, not in {allowed}"
    return None


def _allowed_domain(entry: str) -> str | None:
    """An ``allowed_domains`` entry as hosts are compared with it (``_host_name``), None when it is no domain name.

    Entries were compared as written while hosts were IDNA-encoded: "bücher.de" refused mail to bücher.de itself.
    """
    name = entry.lower().lstrip("@").rstrip(".")
    try:
        return name.encode("idna").decode("ascii") if name else None
    except UnicodeError:
        return None


def _host_name(raw: str) -> str:
    """A host as compared with allowed domains: lower case, no trailing dot, international names in their ASCII
    (IDNA) form, so "bücher.de" is compared as "xn--bcher-kva.de" and a look-alike cannot pass as a listed name."""
    host = raw.lower().rstrip(".")
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError:  # not a valid international name: compared as written (and so not allowed)
        return host


class RateCounter(Protocol):
    """Sliding-window call counts per (scope, rule, tool name), which ``rate_limit`` rules read.

    Two implementations pass one conformance suite (tests/guards/test_rate_counters.py): :class:`RateLimiter`, in
    this process (a single sidecar), and ``guards.sql.SqlRateLimiter``, in the database that replicas share (the
    sidecar uses it on Postgres, so N replicas behind a load balancer enforce one limit, not N of them).
    """

    #: Whether the counts live in this process (a hit is a dict update); False: a database call per hit.
    local: bool

    def hit(self, key: tuple[str, str, str], max_calls: int, per_seconds: float, now: float | None = None) -> int:
        """Record a call and return how many fall in the window (including this one), counted up to
        ``max_calls + 1``: all a limit needs to know, and a bounded cost however many calls a loop piles up."""
        ...

    def peek(self, key: tuple[str, str, str], max_calls: int, per_seconds: float, now: float | None = None) -> int:
        """How many calls the window would hold with one more (up to ``max_calls + 1``), recording nothing."""
        ...

    def dry(self) -> RateCounter:
        """This counter as a dry run (TestRules) sees it: the live counts, none of them changed."""
        ...


class RateLimiter:
    """Sliding-window call counters per (scope, rule, tool); in-process (one sidecar is one limiter)."""

    local = True

    def __init__(self) -> None:
        self._calls: dict[tuple[str, str, str], deque[float]] = {}
        self._spans: dict[tuple[str, str, str], float] = {}
        self._lock = threading.Lock()

    #: Keys kept before windows that have emptied are swept (one per scope, rule and tool name ever called).
    SWEEP_AT = 4096

    def hit(self, key: tuple[str, str, str], max_calls: int, per_seconds: float, now: float | None = None) -> int:
        """Record a call and return how many fall in the window (including this one)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            if key not in self._calls and len(self._calls) >= self.SWEEP_AT:
                self._sweep(now)
            window = self._calls.setdefault(key, deque())
            while window and window[0] <= now - per_seconds:
                window.popleft()
            window.append(now)
            self._spans[key] = per_seconds
            return min(len(window), max_calls + 1)

    def _sweep(self, now: float) -> None:
        """Forget the keys whose last call is out of their window (lock held); the sweep threshold doubles when
        most keys are still live, so a busy limiter does not sweep on every new key."""
        for key in [k for k, w in self._calls.items() if not w or w[-1] <= now - self._spans.get(k, 0.0)]:
            del self._calls[key]
            self._spans.pop(key, None)
        if len(self._calls) >= self.SWEEP_AT // 2:
            self.SWEEP_AT = 2 * len(self._calls)

    def peek(self, key: tuple[str, str, str], max_calls: int, per_seconds: float, now: float | None = None) -> int:
        """How many calls the window would hold with one more, recording nothing."""
        now = time.monotonic() if now is None else now
        with self._lock:
            window = self._calls.get(key, ())
            return min(sum(t > now - per_seconds for t in window), max_calls) + 1

    def dry(self) -> RateCounter:
        """This limiter as a dry run (TestRules) sees it: the live counts, none of them changed."""
        return DryRunCounter(self)


class DryRunCounter:
    """What ``dry()`` of any ``RateCounter`` gives: the live counter's counts, read by ``peek``, nothing recorded."""

    def __init__(self, live: RateCounter):
        self._live = live
        self.local = live.local

    def hit(self, key: tuple[str, str, str], max_calls: int, per_seconds: float, now: float | None = None) -> int:
        return self._live.peek(key, max_calls, per_seconds, now)

    def peek(self, key: tuple[str, str, str], max_calls: int, per_seconds: float, now: float | None = None) -> int:
        return self._live.peek(key, max_calls, per_seconds, now)

    def dry(self) -> RateCounter:
        return self


def applies(rule: PolicyRule, stage: Stage) -> bool:
    """Whether ``rule`` is checked at ``stage``: enabled, and one of its stages (every stage when it names none,
    except a rate limit: it counts calls, at TOOL_CALL, and counted the TOOL_RESULT check of a call again)."""
    if not rule.enabled:
        return False
    if rule.stages:
        return stage in rule.stages
    return stage == Stage.TOOL_CALL if "rate_limit" in rule.spec else True


def may_be_slow(rule: PolicyRule, request: GuardRequest, *, counts_in_database: bool = False) -> bool:
    """Whether checking ``rule`` on ``request`` may take more than a moment: an operator or configured rule that
    applies to it and runs a regex, a JSON Schema or detectors, or a rate limit when ``counts_in_database`` (a
    transaction per call, ``RateCounter.local`` false). Such a check must not run on an event loop: a regex may
    use its whole budget (1 s), a database call may wait on a lock, and every other call of the server would wait.

    The pack's rules are exempt: their regexes and detectors are ours, linear, and measured on every check.
    """
    if not applies(rule, request.stage):
        return False
    spec = rule.spec
    if "tools" in spec:
        tool = request.tool_call.name if request.tool_call else ""
        if not tool or not any(fnmatch.fnmatchcase(tool, str(g)) for g in spec["tools"] or ()):
            return False  # decided by the tool name alone, before any regex runs
    if counts_in_database and "rate_limit" in spec:
        return True
    if rule.source == "pack":
        return False
    arguments = spec.get("arguments")
    constraints = arguments if isinstance(arguments, list) else []
    return any(k in spec for k in ("text_regex", "detectors", "json_schema")) or any(
        isinstance(a, dict) and ("regex" in a or "not_regex" in a) for a in constraints
    )


def evaluate(
    rules: Iterable[PolicyRule],
    request: GuardRequest,
    *,
    scope: str = "",
    limiter: RateCounter | None = None,
    regex_budget_s: float = REGEX_BUDGET_S,
) -> list[RuleMatch]:
    """Every enabled rule matching ``request``, in precedence order (the first one decides).

    A rule that cannot be decided (one of its regexes ran out of the check's regex budget) matches with
    action REVIEW, whatever its own action: the request goes to a human instead of being allowed or blocked
    on a condition nobody evaluated.
    """
    tool = request.tool_call.name if request.tool_call else ""
    args_text = request.tool_call.arguments_json if request.tool_call else ""
    args: Any = None
    if args_text.strip():
        try:
            args = json.loads(args_text)
        except (ValueError, RecursionError):  # not JSON, too deep, or an integer past Python's digit limit
            args = None
    elif request.tool_call is not None and request.tool_call.name:
        # A call without arguments has none of them: `required: true` must hold it, as json_schema's
        # `required` does (empty arguments skipped every argument constraint).
        args = {}
    text_all = request.text + ("\n" + args_text if args_text else "")
    matches: list[RuleMatch] = []
    with regex_budget(regex_budget_s) as budget:
        for rule in sorted(rules, key=precedence_key):
            if not applies(rule, request.stage):
                continue
            try:
                found = _match(rule, request, tool, args, args_text, text_all, budget, scope, limiter)
            except (RegexTimeout, SchemaUndecided) as e:
                found = RuleMatch(
                    rule=replace(rule, action=Decision.REVIEW),
                    reason=f"{e}; held for review (the rule's action is {rule.action.value})",
                    field="tool_call.arguments_json" if isinstance(e, SchemaUndecided) else "text",
                )
            if found is not None:
                matches.append(found)
    # A rule held for review sorts by its new action among rules of the same priority.
    return sorted(matches, key=lambda m: precedence_key(m.rule))


def _match(
    rule: PolicyRule,
    request: GuardRequest,
    tool: str,
    args: Any,
    args_text: str,
    text_all: str,
    budget: RegexBudget,
    scope: str,
    limiter: RateCounter | None,
) -> RuleMatch | None:
    """The match of one rule (None when one of its conditions does not hold). Raises RegexTimeout."""
    spec = rule.spec
    reasons: list[str] = []
    field = ""
    if "tools" in spec:
        if not tool or not any(fnmatch.fnmatchcase(tool, g) for g in spec["tools"]):
            return None
        reasons.append(f"tool {tool!r} matches {spec['tools']}")
        field = "tool_call.name"
    if "text_regex" in spec:
        hit = next((p for p in spec["text_regex"] if budget.search(p, text_all)), None)
        if hit is None:
            return None
        reasons.append(f"text matches {hit!r}")
        field = "text"
    if "detectors" in spec:
        # The text and the arguments apart: a detector reads a JSON document (a tool's output) as its
        # string values, which appending the arguments would turn into text that is not JSON. The
        # agent's tool names matter in a tool's output only: a user may well name them ("call
        # query_google_search first").
        tools = request.available_tools if request.stage == Stage.TOOL_RESULT else ()
        hits = [
            h for name in spec["detectors"] for part in (request.text, args_text) if part
            for h in detectors.run_detector(name, part, available_tools=tools)
        ]
        if not hits:
            return None
        reasons.append("detected " + ", ".join(sorted({f"{h.detector}:{h.kind} ({h.masked})" for h in hits})))
        field = "text"
    if "arguments" in spec:
        if args is None:
            return None
        found = next((r for r in (_violates(a, args, budget) for a in spec["arguments"]) if r), None)
        if found is None:
            return None
        reasons.append(found)
        field = "tool_call.arguments_json"
    if "json_schema" in spec:
        value = args if args is not None else {}
        if _non_finite_in(value):
            # NaN passes minimum and maximum (every comparison with it is false), so it never fails a schema.
            reasons.append("arguments hold NaN or an infinity, which no JSON Schema bound can check")
        else:
            error = _schema_error(spec["json_schema"], value, budget)
            if error is None:
                return None
            reasons.append(f"arguments fail schema: {error.message[:300]}")
        field = "tool_call.arguments_json"
    if "rate_limit" in spec:
        rl = spec["rate_limit"]
        count = (limiter or _GLOBAL_LIMITER).hit(
            (scope, rule.name, tool), int(rl["max_calls"]), float(rl["per_seconds"])
        )
        if count <= int(rl["max_calls"]):
            return None
        reasons.append(f"more than {rl['max_calls']} calls in {rl['per_seconds']}s")
        field = "tool_call.name"
    return RuleMatch(rule=rule, reason="; ".join(reasons), field=field)


_GLOBAL_LIMITER = RateLimiter()
