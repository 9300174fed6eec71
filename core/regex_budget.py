"""Regular expressions written by operators and tool authors, run under one time budget per check.

Python's ``re`` cannot be interrupted and holds the GIL while it backtracks: ``^(a|aa)+$`` on 35 characters takes
seconds, ``(a+)+$`` on a longer string minutes, and the event loop stalls with it even from a worker thread. The
``regex`` module releases the GIL while it matches a str and takes a timeout, so every pattern that comes from
configuration (guard rules' ``text_regex`` and argument regexes, JSON Schema ``pattern`` and ``patternProperties``
of guard rules and tool schemas) is matched here, against a deadline shared by all the patterns of one check.

:func:`on_budget` gives a jsonschema validator class whose regex keywords match on the running budget
(``unevaluatedProperties`` still uses ``re``: callers refuse schemas that combine it with ``patternProperties``).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import time
from collections.abc import Iterator
from typing import Any

import regex
from jsonschema import validators
from jsonschema.exceptions import ValidationError

#: Seconds that all configured regexes of one check may run together.
REGEX_BUDGET_S = 1.0


class RegexTimeout(Exception):
    """A configured regex did not finish within the check's budget."""

    def __init__(self, pattern: str, seconds: float = REGEX_BUDGET_S):
        self.pattern = pattern
        super().__init__(f"regex {pattern!r} did not finish within the {seconds:g}s regex budget")


class RegexBudget:
    """A deadline shared by every configured regex of one check; ``search`` raises RegexTimeout past it."""

    def __init__(self, seconds: float = REGEX_BUDGET_S):
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds

    def search(self, pattern: str, text: str) -> bool:
        """Whether ``pattern`` is found in ``text`` (the ``regex`` module, stopped at the deadline)."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise RegexTimeout(pattern, self.seconds)
        try:
            return regex.search(pattern, text, timeout=left) is not None
        except TimeoutError:
            raise RegexTimeout(pattern, self.seconds) from None


# The budget of the check running in this context, for the JSON Schema keywords below.
_BUDGET: contextvars.ContextVar[RegexBudget | None] = contextvars.ContextVar("regex_budget", default=None)


@contextlib.contextmanager
def regex_budget(seconds: float = REGEX_BUDGET_S) -> Iterator[RegexBudget]:
    """Run a check's regexes (and the schema keywords of :func:`on_budget`) against one budget."""
    budget = RegexBudget(seconds)
    token = _BUDGET.set(budget)
    try:
        yield budget
    finally:
        _BUDGET.reset(token)


def budget_search(pattern: str, text: str) -> bool:
    """``RegexBudget.search`` on the running check's budget (a fresh one outside any check)."""
    return (_BUDGET.get() or RegexBudget()).search(pattern, text)


def _pattern(validator: Any, patrn: str, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and not budget_search(patrn, instance):
        yield ValidationError(f"{instance!r} does not match {patrn!r}")


def _pattern_properties(validator: Any, patterns: dict[str, Any], instance: Any, schema: Any) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    for patrn, subschema in patterns.items():
        for k, v in instance.items():
            if budget_search(patrn, k):
                yield from validator.descend(v, subschema, path=k, schema_path=patrn)


def _additional_properties(original: Any) -> Any:
    """``additionalProperties``, matching ``patternProperties`` on the budget (jsonschema's own otherwise)."""

    def check(validator: Any, ap: Any, instance: Any, schema: Any) -> Iterator[Any]:
        patterns = schema.get("patternProperties")
        if not isinstance(patterns, dict) or not validator.is_type(instance, "object"):
            yield from original(validator, ap, instance, schema)
            return
        properties = schema.get("properties", {})
        extras = [k for k in instance if k not in properties and not any(budget_search(p, k) for p in patterns)]
        if validator.is_type(ap, "object"):
            for extra in extras:
                yield from validator.descend(instance[extra], ap, path=extra)
        elif not ap and extras:
            joined = ", ".join(repr(each) for each in sorted(extras))
            verb = "does" if len(extras) == 1 else "do"
            yield ValidationError(
                f"{joined} {verb} not match any of the regexes: {', '.join(map(repr, sorted(patterns)))}"
            )

    return check


@functools.lru_cache(maxsize=16)
def on_budget(cls: Any) -> Any:
    """The jsonschema validator class ``cls`` with its regex keywords matched on the running budget."""
    keywords = {"pattern": _pattern, "patternProperties": _pattern_properties}
    if "additionalProperties" in cls.VALIDATORS:
        keywords["additionalProperties"] = _additional_properties(cls.VALIDATORS["additionalProperties"])
    return validators.extend(cls, {k: v for k, v in keywords.items() if k in cls.VALIDATORS})
