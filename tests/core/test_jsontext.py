"""decode_json: every failure is a field violation, and only standard JSON is accepted."""

from __future__ import annotations

import pytest

from core.jsontext import decode_json, decode_json_object


@pytest.mark.parametrize(
    "text", ['{"x": NaN}', '{"x": Infinity}', '{"x": -Infinity}', '{"x": 1e400}', '[1, -1e999]', "NaN"]
)
def test_non_finite_numbers_are_refused(text: str) -> None:
    # Python's json takes these (1e400 becomes inf); NaN would pass minimum/maximum and cannot be sent on as JSON.
    value, bad = decode_json(text, "arguments_json", finite=True)
    assert value is None
    assert [v.field for v in bad] == ["arguments_json"]
    assert "JSON has no NaN or Infinity" in bad[0].description


def test_finite_numbers_keep_their_values() -> None:
    value, bad = decode_json_object('{"a": 1.5, "b": -2e10, "c": 1e308, "d": 5e-324, "e": 7}', "f", finite=True)
    assert bad == [] and value == {"a": 1.5, "b": -2e10, "c": 1e308, "d": 5e-324, "e": 7}
    assert isinstance(value["e"], int)


def test_other_failures_are_still_named() -> None:
    for finite in (False, True):
        assert "not valid JSON" in decode_json("{", "f", finite=finite)[1][0].description
        assert "longer than" in decode_json("1" * 5000, "f", finite=finite)[1][0].description
        assert "nested too deeply" in decode_json("[" * 100_000 + "]" * 100_000, "f", finite=finite)[1][0].description


def test_non_finite_numbers_are_taken_unless_asked() -> None:
    # The guards read NaN on purpose: a rule names the field it breaks ("max": NaN never holds).
    value, bad = decode_json('{"x": NaN}', "spec_json")
    assert bad == [] and value["x"] != value["x"]
