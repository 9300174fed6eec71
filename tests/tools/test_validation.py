"""Argument validation: field-level errors with the argument path and the schema rule broken."""

from __future__ import annotations

import pytest

from core.errors import InvalidArgumentError
from tools.model import ExecutorKind, ExecutorSpec, ToolDefinition, validate_definition
from tools.validation import argument_violations, parse_arguments

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
