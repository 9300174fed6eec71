"""Argument validation: field-level errors with the argument path and the schema rule broken."""

from __future__ import annotations

import json
import time

import pytest

from core.errors import FailedPreconditionError, InvalidArgumentError
from tools.model import ExecutorKind, ExecutorSpec, ToolDefinition, validate_definition
from tools.validation import PATTERN_BUDGET_S, argument_violations, parse_arguments

ORDER = {
    "type": "object",
    "properties": {
        "customer": {"type": "string", "minLength": 1},
        "items": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "properties": {"sku": {"type": "string"}, "qty": {"type": "integer", "minimum": 1}},
                "required": ["sku", "qty"],
            },
        },
        "express": {"type": "boolean"},
    },
    "required": ["customer", "items"],
    "additionalProperties": False,
}


def test_valid_arguments_have_no_violations() -> None:
    assert argument_violations(ORDER, {"customer": "ann", "items": [{"sku": "a", "qty": 2}]}) == []


def test_nested_violation_names_argument_path_and_schema_rule() -> None:
    bad = argument_violations(ORDER, {"customer": "ann", "items": [{"sku": "a", "qty": 1}, {"sku": "b", "qty": 0}]})
    assert len(bad) == 1
    assert bad[0].field == "arguments_json.items[1].qty"
    assert "properties.items.items.properties.qty.minimum" in bad[0].description


def test_missing_required_points_at_the_missing_property() -> None:
    bad = argument_violations(ORDER, {"items": [{"sku": "a", "qty": 1}]})
    assert [v.field for v in bad] == ["arguments_json.customer"]
    assert "required" in bad[0].description


def test_every_violation_is_reported() -> None:
    bad = argument_violations(ORDER, {"customer": 3, "items": [], "express": "yes", "extra": 1})
    fields = sorted(v.field for v in bad)
    assert fields == ["arguments_json", "arguments_json.customer", "arguments_json.express", "arguments_json.items"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('"x"', "must be a JSON object"),
        ('{"a":' * 50_000 + "1" + "}" * 50_000, "nested too deeply"),
    ],
)
def test_parse_arguments_rejects_non_objects(text: str, message: str) -> None:
    value, bad = parse_arguments(text)
    assert value is None and message in bad[0].description and bad[0].field == "arguments_json"


def test_empty_arguments_mean_empty_object() -> None:
    assert parse_arguments("  ") == ({}, [])


def _tool(**kw: object) -> ToolDefinition:
    base: dict[str, object] = {
        "name": "t",
        "description": "d",
        "input_schema": {"type": "object"},
        "executor": ExecutorSpec(ExecutorKind.HTTP, url="http://127.0.0.1:1/x"),
    }
    base.update(kw)
    return ToolDefinition(**base)  # type: ignore[arg-type]


def test_definition_with_invalid_schema_is_rejected_with_field() -> None:
    with pytest.raises(InvalidArgumentError) as err:
        validate_definition(_tool(input_schema={"type": "object", "properties": {"a": {"type": "nonsense"}}}))
    assert err.value.violations[0].field == "tool.input_schema_json"
    assert "properties.a.type" in err.value.violations[0].description


def test_definition_rejects_bad_name_url_and_limits_at_once() -> None:
    with pytest.raises(InvalidArgumentError) as err:
        validate_definition(
            _tool(name="bad name!", executor=ExecutorSpec(ExecutorKind.HTTP, url="ftp://x"), max_concurrency=0)
        )
    assert {v.field for v in err.value.violations} == {"tool.name", "tool.http.url", "tool.max_concurrency"}


@pytest.mark.parametrize("value", [["x"], {"a": 1}, 3])
def test_a_schema_uri_that_is_not_a_string_is_a_field_violation(value: object) -> None:
    with pytest.raises(InvalidArgumentError) as err:
        validate_definition(_tool(input_schema={"type": "object", "$schema": value}))
    assert [v.field for v in err.value.violations] == ["tool.input_schema_json"]
    assert "$schema must be a URI string" in err.value.violations[0].description


@pytest.mark.parametrize(
    "defs",
    [
        {"a": {"$ref": "#/$defs/a"}},
        {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a", "type": "integer"}},
    ],
)
def test_a_ref_loop_is_refused_at_register(defs: dict[str, object]) -> None:
    schema = {"type": "object", "$defs": defs, "properties": {"x": {"$ref": "#/$defs/a"}}}
    with pytest.raises(InvalidArgumentError) as err:
        validate_definition(_tool(input_schema=schema))
    assert {v.field for v in err.value.violations} == {"tool.input_schema_json"}
    assert all("loop" in v.description for v in err.value.violations)


def test_recursive_schemas_and_long_ref_chains_stay_accepted() -> None:
    # A $ref back to the root under a keyword that descends into the value is a recursive type, not a loop.
    validate_definition(_tool(input_schema={"type": "object", "additionalProperties": {"$ref": "#"}}))
    chain: dict[str, object] = {f"d{i}": {"$ref": f"#/$defs/d{i + 1}"} for i in range(2000)}
    chain["d2000"] = {"type": "string"}
    schema = {"type": "object", "$defs": chain, "properties": {"x": {"$ref": "#/$defs/d0"}}}
    validate_definition(_tool(input_schema=schema))


def test_a_schema_nested_too_deeply_to_check_is_a_field_violation() -> None:
    deep: dict[str, object] = {"type": "object"}
    for _ in range(400):
        deep = {"type": "object", "properties": {"a": deep}}
    with pytest.raises(InvalidArgumentError) as err:
        validate_definition(_tool(input_schema=deep))
    assert [v.field for v in err.value.violations] == ["tool.input_schema_json"]
    assert "nested too deeply" in err.value.violations[0].description


@pytest.mark.parametrize(
    ("schema", "arguments", "why"),
    [
        # Stored before Register refused them, or imported from an MCP server before imports were checked.
        ({"type": "object", "$defs": {"a": {"$ref": "#/$defs/a"}}, "properties": {"x": {"$ref": "#/$defs/a"}}},
         {"x": 1}, "recursed too deeply"),
        ({"type": "object", "properties": {"x": {"type": "strnig"}}}, {"x": "a"}, "strnig"),
        ({"type": "object", "properties": {"x": {"pattern": "(unclosed"}}}, {"x": "a"}, "cannot be used"),
        ({"type": "object", "$schema": ["x"]}, {}, "$schema"),
        # A recursive schema following arguments nested deeper than Python's stack.
        ({"type": "object", "additionalProperties": {"$ref": "#"}}, json.loads('{"a":' * 900 + "{}" + "}" * 900),
         "recursed too deeply"),
    ],
)
def test_a_schema_that_cannot_check_the_arguments_is_a_failed_precondition(
    schema: dict[str, object], arguments: object, why: str
) -> None:
    with pytest.raises(FailedPreconditionError) as err:
        argument_violations(schema, arguments)
    assert why in str(err.value)


def test_a_backtracking_pattern_stops_at_the_budget() -> None:
    schema = {"type": "object", "properties": {"s": {"type": "string", "pattern": "^(a|aa)+$"}}}
    assert argument_violations(schema, {"s": "aaaa"}) == []
    assert argument_violations(schema, {"s": "ab"})[0].field == "arguments_json.s"
    started = time.monotonic()
    with pytest.raises(FailedPreconditionError) as err:
        argument_violations(schema, {"s": "a" * 40 + "b"})
    assert "did not finish" in str(err.value) and time.monotonic() - started < PATTERN_BUDGET_S + 1.0


def test_pattern_properties_keep_their_meaning_on_the_regex_module() -> None:
    schema = {
        "type": "object",
        "patternProperties": {"^x_": {"type": "integer"}},
        "additionalProperties": False,
    }
    assert argument_violations(schema, {"x_a": 1}) == []
    assert [v.field for v in argument_violations(schema, {"x_a": "1"})] == ["arguments_json.x_a"]
    bad = argument_violations(schema, {"y": 1})
    assert [v.field for v in bad] == ["arguments_json"]
    assert "'y' does not match any of the regexes" in bad[0].description
