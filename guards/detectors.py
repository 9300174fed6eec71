"""Deterministic content detectors: secrets and credentials, PII, prompt-injection phrasing.

Each detector returns ``DetectorHit``s with the matched span masked, so evidence never repeats a secret.
Patterns are ours; they aim at high precision (the guard memory handles the fuzzy cases).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class DetectorHit:
    """One detector match: which detector, what kind of thing, and the masked span."""

    detector: str
    kind: str
    masked: str
    start: int
    end: int


def mask(value: str) -> str:
    """Keep the first 3 and last 2 characters of a match, star the rest."""
    if len(value) <= 6:
        return "*" * len(value)
    return value[:3] + "*" * (len(value) - 5) + value[-2:]


_SECRET_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("aws_access_key", re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")),
    ("private_key", re.compile(r"-----BEGIN (?:RSA |EC |OPENSSH |DSA |PGP )?PRIVATE KEY( BLOCK)?-----")),
    ("github_token", re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}\b")),
    ("openai_key", re.compile(r"\bsk-(?:proj-|live-|test-)?[A-Za-z0-9_-]{20,}\b")),
    ("slack_token", re.compile(r"\bxox[abpors]-[A-Za-z0-9-]{10,}\b")),
    ("google_api_key", re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b")),
    ("stripe_key", re.compile(r"\b[rs]k_live_[0-9A-Za-z]{16,}\b")),
    ("jwt", re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\b")),
    (
        "password_assignment",
        re.compile(
            r"(?i)\b(?:password|passwd|pwd|secret|api[_-]?key|access[_-]?token)\b\s*[:=]\s*['\"]?"
            r"(?=[^\s'\"]*[0-9!@#$%^&*_-])[^\s'\"]{6,}"
        ),
    ),
    ("connection_string", re.compile(r"\b[a-z][a-z0-9+]*://[^\s:/@]+:[^\s@/]{3,}@[^\s/]+")),
]


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


_CARD = re.compile(r"\b(?:\d[ -]?){13,19}\b")
_PII_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("us_ssn", re.compile(r"\b(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}\b")),
    ("iban", re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){3,7}(?: ?[A-Z0-9]{1,3})?\b")),
    ("passport_number", re.compile(r"(?i)\bpassport (?:no\.?|number)\s*[:#]?\s*[A-Z0-9]{6,9}\b")),
]

# Phrasing aimed at an AI agent rather than at a person: the signature of indirect prompt injection.
# Ordinary requests between people ("could you please send me the report") do not match these.
_INJECTION_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    (
        "override_instructions",
        re.compile(
            r"(?i)\b(?:ignore|disregard|forget|override|bypass)\b[^.\n]{0,40}\b(?:previous|prior|above|earlier|"
            r"original|all|your|system|safety|user'?s?)\b[^.\n]{0,25}\b(?:instructions?|prompts?|rules|"
            r"directives?|guidelines|task|requests?|constraints)"
        ),
    ),
    (
        "addresses_the_model",
        re.compile(
            r"(?i)\b(?:(?:attention|note|message|instructions?)\s+(?:to|for)\s+(?:the\s+)?|dear\s+|hey\s+|"
            r"hello\s+)(?:ai|llm|a\.i\.|language model|assistant|agent|chatbot|bot|gpt|claude|copilot)\b"
        ),
    ),
    (
        "vocative_to_model",
        re.compile(r"(?im)(?:^|[.!?]\s+|:\s*)(?:ai|assistant|agent|bot|chatbot|llm)\s*,\s*(?:please\s+)?[a-z]+"),
    ),
    (
        "role_reassignment",
        re.compile(
            r"(?i)\b(?:you are now|from now on,? you|act as (?:an?|the) (?:unrestricted|unfiltered|different)|"
            r"your new (?:task|goal|instructions?|objective|role) (?:is|are)|new (?:system )?instructions?:|"
            r"enter (?:developer|dan|god) mode)"
        ),
    ),
    (
        "hijacks_the_task",
        re.compile(
            r"(?i)\b(?:before|after|instead of)\s+(?:you\s+)?(?:can\s+)?(?:solve|solving|complete|completing|finish|"
            r"finishing|continue|continuing|answer|answering|do|doing)\s+(?:the|your|this)\s+(?:original\s+)?"
            r"(?:task|request|instructions?|job)\b|\bthe task (?:that )?(?:i|the user) gave you\b|"
            r"\bto you,?\s+(?:gpt|chatgpt|claude|llama|gemini|copilot|the (?:ai|assistant|agent|model))\b"
        ),
    ),
    (
        "instruction_tags",
        re.compile(r"(?i)</?\s*(?:information|instructions?|important_instructions|system|sys)\s*>|\[/?INST\]"),
    ),
    (
        "fake_system_turn",
        re.compile(r"(?im)^\s*(?:\[?(?:system|assistant)\]?\s*:|<\|?(?:system|im_start)\|?>|###\s*system)"),
    ),
    (
        "conceal_from_user",
        re.compile(
            r"(?i)\b(?:do not|don'?t|never|without)\s+(?:tell|telling|inform|informing|notify|notifying|"
            r"mention|mentioning|alert|alerting|let)\b[^.\n]{0,20}\b(?:the\s+)?(?:user|owner|human|them)\b"
        ),
    ),
    (
        "agent_directive",
        re.compile(
            r"(?i)\b(?:ai|llm|assistant|agent|model)s?\b[^.\n]{0,40}\b(?:must|should|shall|are required to|"
            r"needs? to)\s+(?:now\s+|immediately\s+|also\s+)?(?:call|use|invoke|run|execute|send|forward|"
            r"transfer|delete|email|post|share|reveal|grant|disable)\b"
        ),
    ),
]


def secrets(text: str) -> list[DetectorHit]:
    """Credentials: cloud keys, tokens, private keys, password assignments, URLs with passwords."""
    hits = []
    for kind, pattern in _SECRET_PATTERNS:
        for m in pattern.finditer(text):
            hits.append(DetectorHit("secrets", kind, mask(m.group(0)), m.start(), m.end()))
    return hits


def pii(text: str) -> list[DetectorHit]:
    """Personal data that should not leave: payment card numbers (Luhn-checked), SSNs, IBANs, passports."""
    hits = []
    for m in _CARD.finditer(text):
        digits = re.sub(r"\D", "", m.group(0))
        if 13 <= len(digits) <= 19 and _luhn_ok(digits) and len(set(digits)) > 2:
            hits.append(DetectorHit("pii", "payment_card", mask(digits), m.start(), m.end()))
    for kind, pattern in _PII_PATTERNS:
        for m in pattern.finditer(text):
            hits.append(DetectorHit("pii", kind, mask(m.group(0)), m.start(), m.end()))
    return hits


def injection(text: str) -> list[DetectorHit]:
    """Instructions aimed at the AI agent (override, role change, concealment, agent directives)."""
    hits = []
    for kind, pattern in _INJECTION_PATTERNS:
        for m in pattern.finditer(text):
            span = m.group(0).strip()
            hits.append(DetectorHit("injection", kind, span[:120], m.start(), m.end()))
    return hits


DETECTORS: dict[str, Callable[[str], list[DetectorHit]]] = {
    "secrets": secrets,
    "pii": pii,
    "injection": injection,
}


def run_detector(name: str, text: str) -> list[DetectorHit]:
    """Run one detector by name; unknown names raise ValueError naming the choices."""
    try:
        fn = DETECTORS[name]
    except KeyError:
        raise ValueError(f"unknown detector {name!r}; choose from {sorted(DETECTORS)}") from None
    return fn(text)
