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
    detectors: [secrets, pii, injection]     # any hit (guards/detectors.py)
    arguments:                     # argument constraints; the condition holds when one is VIOLATED
      - {path: amount, max: 1000}
      - {path: to, allowed_domains: [example.com]}
      - {path: file, allowed_prefixes: [/workspace/]}
      - {path: command, regex: "rm\\s+-rf"}      # violated when the value matches
      - {path: branch, not_regex: "^feature/"}    # violated when it does not
    json_schema: {...}             # holds when the arguments do NOT validate
    rate_limit: {max_calls: 5, per_seconds: 60}  # holds when the tool's calls in the window exceed max
```
"""

from __future__ import annotations

import fnmatch
import json
import posixpath
import re
import threading
import time
from collections import defaultdict, deque
from collections.abc import Iterable
from typing import Any

import jsonschema
import yaml

from core.errors import FieldViolation, InvalidArgumentError
from guards import detectors
from guards.model import Decision, GuardRequest, PolicyRule, RuleMatch, Stage

_SEVERITY = {Decision.BLOCK: 3, Decision.REVIEW: 2, Decision.ALLOW: 1, Decision.UNSPECIFIED: 0}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
_CONDITIONS = ("tools", "text_regex", "detectors", "arguments", "json_schema", "rate_limit")
_ARG_KEYS = {"path", "max", "min", "regex", "not_regex", "allowed_prefixes", "allowed_domains", "required"}
_EMAIL_OR_URL_HOST = re.compile(r"(?i)(?:@|://)([a-z0-9.-]+\.[a-z]{2,})")


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
        errors.append(FieldViolation(f"{where}.name", f"invalid rule name {name!r}: use 1-128 of [A-Za-z0-9_.:-]"))
    action_raw = str(data.get("action", "")).lower().removeprefix("decision_")
    try:
        action = Decision(action_raw)
        if action == Decision.UNSPECIFIED:
            raise ValueError
    except ValueError:
        errors.append(FieldViolation(f"{where}.action", f"action {action_raw!r} must be block, review or allow"))
        action = Decision.UNSPECIFIED
    stages: list[Stage] = []
    for i, s in enumerate(data.get("stages") or []):
        try:
            stages.append(Stage(str(s).lower().removeprefix("stage_")))
        except ValueError:
            errors.append(FieldViolation(f"{where}.stages[{i}]", f"unknown stage {s!r}"))
    spec = {k: data[k] for k in _CONDITIONS if k in data}
    unknown = set(data) - set(_CONDITIONS) - {"name", "action", "priority", "stages", "description", "enabled"}
    for key in sorted(unknown):
        errors.append(FieldViolation(f"{where}.{key}", f"unknown rule field {key!r}"))
    if not spec:
        errors.append(FieldViolation(where, f"a rule needs at least one condition of {list(_CONDITIONS)}"))
    errors.extend(_validate_spec(spec, where))
    try:
        priority = int(data.get("priority", 0))
    except (TypeError, ValueError):
        errors.append(FieldViolation(f"{where}.priority", "priority must be an integer"))
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
        enabled=bool(data.get("enabled", True)),
        source=source,
    )


def _validate_spec(spec: dict[str, Any], where: str) -> list[FieldViolation]:
    errors: list[FieldViolation] = []
    for key in ("tools", "text_regex", "detectors"):
        if key in spec and not (
            isinstance(spec[key], list) and all(isinstance(x, str) for x in spec[key]) and spec[key]
        ):
            errors.append(FieldViolation(f"{where}.{key}", f"{key} must be a non-empty list of strings"))
    for i, pattern in enumerate(spec.get("text_regex") or []):
        try:
            re.compile(pattern)
        except re.error as e:
            errors.append(FieldViolation(f"{where}.text_regex[{i}]", f"bad regex: {e}"))
    for i, name in enumerate(spec.get("detectors") or []):
        if name not in detectors.DETECTORS:
            errors.append(
                FieldViolation(
                    f"{where}.detectors[{i}]", f"unknown detector {name!r}; choose from {sorted(detectors.DETECTORS)}"
                )
            )
    for i, arg in enumerate(spec.get("arguments") or []):
        path = f"{where}.arguments[{i}]"
        if not isinstance(arg, dict) or not isinstance(arg.get("path"), str):
            errors.append(FieldViolation(path, "an argument constraint is a mapping with a string 'path'"))
            continue
        for key in sorted(set(arg) - _ARG_KEYS):
            errors.append(FieldViolation(f"{path}.{key}", f"unknown constraint {key!r}; use {sorted(_ARG_KEYS)}"))
        for key in ("regex", "not_regex"):
            if key in arg:
                try:
                    re.compile(str(arg[key]))
                except re.error as e:
                    errors.append(FieldViolation(f"{path}.{key}", f"bad regex: {e}"))
        for key in ("max", "min"):
            if key in arg and not isinstance(arg[key], int | float):
                errors.append(FieldViolation(f"{path}.{key}", f"{key} must be a number"))
    if "json_schema" in spec:
        try:
            jsonschema.Draft202012Validator.check_schema(spec["json_schema"])
        except jsonschema.SchemaError as e:
            errors.append(FieldViolation(f"{where}.json_schema", f"invalid JSON Schema: {e.message}"))
    if "rate_limit" in spec:
        rl = spec["rate_limit"]
        ok = isinstance(rl, dict) and int(rl.get("max_calls", 0)) > 0 and float(rl.get("per_seconds", 0)) > 0
        if not ok:
            errors.append(FieldViolation(f"{where}.rate_limit", "rate_limit needs max_calls > 0 and per_seconds > 0"))
    return errors


def parse_rules_yaml(text: str, source: str = "operator") -> tuple[list[PolicyRule], dict[str, Any]]:
    """Parse a policy document: ``{rules: [...], default_decision: allow, pack: true}``.

    Returns the rules and the remaining namespace settings. A bare list is read as the rules.
    """
    try:
        doc = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as e:
        raise InvalidArgumentError("yaml", f"not valid YAML: {e}") from None
    if isinstance(doc, list):
        doc = {"rules": doc}
    if not isinstance(doc, dict):
        raise InvalidArgumentError("yaml", "a policy document is a mapping with a 'rules' list")
    rules_raw = doc.get("rules") or []
    if not isinstance(rules_raw, list):
        raise InvalidArgumentError("yaml", "'rules' must be a list")
    rules: list[PolicyRule] = []
    errors: list[FieldViolation] = []
    seen: set[str] = set()
    for i, item in enumerate(rules_raw):
        name = item.get("name") if isinstance(item, dict) else None
        if isinstance(name, str):
            if name in seen:
                errors.append(FieldViolation(f"rules[{i}].name", f"duplicate rule name {name!r}"))
            seen.add(name)
        try:
            rules.append(parse_rule(item, f"rules[{i}]", source=source))
        except InvalidArgumentError as e:
            errors.extend(e.violations)
    if errors:
        raise InvalidArgumentError(errors)
    settings = {k: v for k, v in doc.items() if k != "rules"}
    return rules, settings


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
        flat.extend(value if isinstance(value, list) else [value])
    return flat


def _violates(arg: dict[str, Any], args: Any) -> str | None:
    values = _lookup(args, arg["path"])
    if not values:
        return f"argument {arg['path']!r} is required but missing" if arg.get("required") else None
    for value in values:
        text = value if isinstance(value, str) else json.dumps(value)
        if "max" in arg or "min" in arg:
            try:
                number = float(value)
            except (TypeError, ValueError):
                return f"argument {arg['path']!r}={text!r} is not a number"
            if "max" in arg and number > float(arg["max"]):
                return f"argument {arg['path']!r}={number:g} exceeds max {arg['max']}"
            if "min" in arg and number < float(arg["min"]):
                return f"argument {arg['path']!r}={number:g} is below min {arg['min']}"
        if "regex" in arg and re.search(str(arg["regex"]), text):
            return f"argument {arg['path']!r} matches forbidden pattern {arg['regex']!r}"
        if "not_regex" in arg and not re.search(str(arg["not_regex"]), text):
            return f"argument {arg['path']!r} does not match required pattern {arg['not_regex']!r}"
        if "allowed_prefixes" in arg:
            # Normalise so "/workspace/../etc/passwd" cannot pass as being under /workspace/.
            norm = posixpath.normpath(text) if text.startswith("/") else posixpath.normpath("/" + text)[1:]
            if not any(norm == p.rstrip("/") or norm.startswith(p.rstrip("/") + "/") for p in arg["allowed_prefixes"]):
                return f"argument {arg['path']!r} path {norm!r} is outside {arg['allowed_prefixes']}"
        if "allowed_domains" in arg:
            allowed = [d.lower().lstrip("@") for d in arg["allowed_domains"]]
            for host in _EMAIL_OR_URL_HOST.findall(text):
                host = host.lower()
                if not any(host == d or host.endswith("." + d) for d in allowed):
                    return f"argument {arg['path']!r} names domain {host!r}, not in {allowed}"
    return None


class RateLimiter:
    """Sliding-window call counters per (scope, rule, tool); in-process (one sidecar is one limiter)."""

    def __init__(self) -> None:
        self._calls: dict[tuple[str, str, str], deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def hit(self, key: tuple[str, str, str], max_calls: int, per_seconds: float, now: float | None = None) -> int:
        """Record a call and return how many fall in the window (including this one)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            window = self._calls[key]
            while window and window[0] <= now - per_seconds:
                window.popleft()
            window.append(now)
            return len(window)


def evaluate(
    rules: Iterable[PolicyRule],
    request: GuardRequest,
    *,
    scope: str = "",
    limiter: RateLimiter | None = None,
) -> list[RuleMatch]:
    """Every enabled rule matching ``request``, in precedence order (the first one decides)."""
    tool = request.tool_call.name if request.tool_call else ""
    args_text = request.tool_call.arguments_json if request.tool_call else ""
    args: Any = None
    if args_text.strip():
        try:
            args = json.loads(args_text)
        except (ValueError, RecursionError):  # not JSON, or nested deeper than the parser's stack
            args = None
    text_all = request.text + ("\n" + args_text if args_text else "")
    matches: list[RuleMatch] = []
    for rule in sorted(rules, key=precedence_key):
        if not rule.enabled or (rule.stages and request.stage not in rule.stages):
            continue
        spec = rule.spec
        reasons: list[str] = []
        field = ""
        if "tools" in spec:
            if not tool or not any(fnmatch.fnmatchcase(tool, g) for g in spec["tools"]):
                continue
            reasons.append(f"tool {tool!r} matches {spec['tools']}")
            field = "tool_call.name"
        if "text_regex" in spec:
            hit = next((p for p in spec["text_regex"] if re.search(p, text_all)), None)
            if hit is None:
                continue
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
                continue
            reasons.append("detected " + ", ".join(sorted({f"{h.detector}:{h.kind} ({h.masked})" for h in hits})))
            field = "text"
        if "arguments" in spec:
            if args is None:
                continue
            found = next((r for r in (_violates(a, args) for a in spec["arguments"]) if r), None)
            if found is None:
                continue
            reasons.append(found)
            field = "tool_call.arguments_json"
        if "json_schema" in spec:
            validator = jsonschema.Draft202012Validator(spec["json_schema"])
            error = next(iter(validator.iter_errors(args if args is not None else {})), None)
            if error is None:
                continue
            reasons.append(f"arguments fail schema: {error.message}")
            field = "tool_call.arguments_json"
        if "rate_limit" in spec:
            rl = spec["rate_limit"]
            count = (limiter or _GLOBAL_LIMITER).hit(
                (scope, rule.name, tool), int(rl["max_calls"]), float(rl["per_seconds"])
            )
            if count <= int(rl["max_calls"]):
                continue
            reasons.append(f"{count} calls in {rl['per_seconds']}s exceed {rl['max_calls']}")
            field = "tool_call.name"
        matches.append(RuleMatch(rule=rule, reason="; ".join(reasons), field=field))
    return matches


_GLOBAL_LIMITER = RateLimiter()
