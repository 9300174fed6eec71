"""Checks on text fields that every component applies the same way."""

from __future__ import annotations


def has_control_chars(text: str, allowed: str = "") -> bool:
    """True if ``text`` holds an ASCII control character (NUL to US, or DEL) other than those in ``allowed``.

    For names, ids, URLs and one-line labels: a control character there breaks logs, headers or the terminal
    of whoever reads them. (Memory message and session ids follow memory's own older rule, which lets DEL pass.)
    """
    return any((ord(c) < 32 or ord(c) == 127) and c not in allowed for c in text)
