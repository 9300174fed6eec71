"""core.text: the control-character check that tool, agent and policy fields share."""

from __future__ import annotations

import pytest

from core.text import has_control_chars


@pytest.mark.parametrize("text", ["a\x00b", "line\nbreak", "tab\there", "bell\x07", "del\x7f", "\x1f"])
def test_c0_controls_and_del_are_control_characters(text: str) -> None:
    assert has_control_chars(text)


@pytest.mark.parametrize(
    "text", ["", "plain words", "Zoë — naïve ✓", "\u00a0no-break space", "\u0085 is C1, not ASCII"]
)
def test_printable_and_non_ascii_text_is_not(text: str) -> None:
    assert not has_control_chars(text)


def test_allowed_characters_pass_and_only_those() -> None:
    assert not has_control_chars("a\tb\nc\r\n", allowed="\t\n\r")
    assert has_control_chars("a\tb\x00", allowed="\t\n\r")
