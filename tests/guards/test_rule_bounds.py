"""Operator rules are bounded in memory and time, and decide what their text says (engine level, no server).

Each test fails on the behaviour a review found: a regex that takes gigabytes to compile, a JSON Schema that runs
for minutes, a judge that relaxes a rule's REVIEW, a required argument skipped on empty arguments, an IDN entry
of allowed_domains that refuses its own domain, references outside the rule, a rate limit that counts a call's
result as a call, a slow rule run on the event loop, and TestRules that ignores a document's settings.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from core.embedding import CachingEmbedder, HashingEmbedder
from core.errors import InvalidArgumentError
from guards import rules as rules_mod
from guards.engine import GuardEngine
from guards.judge import JudgeConfig, LLMJudge
from guards.model import Decision, GuardRequest, Stage, ToolCallInfo
from guards.store import InMemoryGuardStore
from tests.agent.openai_stub import OpenAIStub


def violations(call, *args, **kwargs) -> dict[str, str]:
    with pytest.raises(InvalidArgumentError) as err:
        call(*args, **kwargs)
    return {v.field: v.description for v in err.value.violations}


def call(tool: str, args: str, text: str = "do it") -> GuardRequest:
    return GuardRequest(Stage.TOOL_CALL, text, ToolCallInfo(tool, args))


# --- regex compile cost ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "field"),
    [
        # 90,000 expanded repeats: small enough to compile here, refused before compiling at all.
        ({"text_regex": ["(?:a{300}){300}"]}, "rules[0].text_regex[0]"),
        ({"text_regex": ["a{99999999999}"]}, "rules[0].text_regex[0]"),
        ({"text_regex": ["x" * 2001]}, "rules[0].text_regex[0]"),
        # Verbose mode ignores the space: the repeat still applies to the group.
        ({"text_regex": ["(?x)(?:a{300}) {300}"]}, "rules[0].text_regex[0]"),
        ({"tools": ["t"], "arguments": [{"path": "a", "regex": "(b{200}c){200}"}]}, "rules[0].arguments[0].regex"),
        ({"tools": ["t"], "arguments": [{"path": "a", "not_regex": "(?:(?:x{30}){30}){30}"}]},
         "rules[0].arguments[0].not_regex"),
        # JSON Schema regexes are compiled by the regex module at every check.
        ({"tools": ["t"], "json_schema": {"properties": {"a": {"pattern": "(?:a{300}){300}"}}}},
         "rules[0].json_schema"),
        ({"tools": ["t"], "json_schema": {"patternProperties": {"(?:k{300}){300}": {}}}}, "rules[0].json_schema"),
    ],
)
def test_regexes_that_would_expand_past_the_bounds_are_refused_before_compiling(spec, field) -> None:
    bad = violations(rules_mod.parse_rule, {"name": "r", "action": "block", **spec}, "rules[0]")
    assert field in bad, bad


@pytest.mark.parametrize(
    "pattern", [r"\d{3}-\d{4}", "[a-z]{1,255}@x", "(?:a{100}){100}", "a{10000}", r"\p{L}{20}", "(?i)wire .* offshore"]
)
def test_ordinary_counted_repeats_are_accepted(pattern) -> None:
    rules_mod.parse_rule({"name": "r", "action": "block", "text_regex": [pattern]}, "rules[0]")


# --- JSON Schema time -----------------------------------------------------------------------------------------
UNIQUE = {"type": "object", "properties": {"items": {"type": "array", "uniqueItems": True}}}


def test_unique_items_on_thousands_of_objects_is_linear(hashing_engine) -> None:
    engine = hashing_engine(defaults={"pack": False})
    engine.put_rules("t/u", [rules_mod.parse_rule({"name": "u", "action": "block", "tools": ["bulk"],
                                                    "json_schema": UNIQUE})])
    items = [{"k": i} for i in range(8000)]
    started = time.monotonic()
    assert engine.check("t/u", call("bulk", json.dumps({"items": items}))).decision == Decision.ALLOW
    # Pairwise comparison took 157 s here; linear takes well under a second.
    assert time.monotonic() - started < 30
    twice = json.dumps({"items": [*items[:50], {"k": 3}]})
    assert engine.check("t/u", call("bulk", twice)).decision == Decision.BLOCK
    # JSON Schema equality: 1 equals 1.0, true does not equal 1, key order does not count.
    for values, unique in (([1, 1.0], False), ([True, 1], True), ([{"a": 1, "b": 2}, {"b": 2, "a": 1}], False)):
        verdict = engine.check("t/u", call("bulk", json.dumps({"items": values})))
        assert verdict.decision == (Decision.ALLOW if unique else Decision.BLOCK), values


def test_a_schema_out_of_the_checks_budget_holds_the_call_for_review() -> None:
    rule = rules_mod.parse_rule(
        {"name": "s", "action": "block", "tools": ["bulk"], "json_schema": UNIQUE}, "rules[0]"
    )
    # No budget left: the schema is not evaluated, and the call is not allowed on a condition nobody checked.
    [match] = rules_mod.evaluate([rule], call("bulk", '{"items": [1, 2]}'), regex_budget_s=0.0)
    assert match.rule.action == Decision.REVIEW and "budget" in match.reason
    assert rules_mod.evaluate([rule], call("bulk", '{"items": [1, 2]}')) == []


# --- judge ----------------------------------------------------------------------------------------------------
@pytest.fixture
def llm() -> Iterator[OpenAIStub]:
    with OpenAIStub() as stub:
        yield stub


@pytest.mark.parametrize(
    "rule",
    [
        # A BLOCK rule whose regex ran out of the budget is held for review...
        "rules: [{name: no-evil, action: block, stages: [input], text_regex: ['(a|aa)+$']}]",
        # ...and so is a request a REVIEW rule matches.
        "rules: [{name: look, action: review, stages: [input], text_regex: ['^a+!$']}]",
    ],
)
def test_the_judge_cannot_relax_a_rules_review_to_allow(hashing_engine, llm, rule) -> None:
    judge = LLMJudge(JudgeConfig(base_url=llm.base_url, model="fixed:ALLOW"))
    engine = hashing_engine(judge=judge, defaults={"pack": False, "judge": True})
    engine.put_rules("t/j", rule)
    verdict = engine.check("t/j", GuardRequest(Stage.INPUT, "a" * 40 + "!"))
    assert llm.requests, "the judge was asked"
    assert verdict.decision == Decision.REVIEW and verdict.decided_by == "rule"


def test_the_judge_may_still_raise_a_rules_review_to_block(hashing_engine, llm) -> None:
    judge = LLMJudge(JudgeConfig(base_url=llm.base_url, model="fixed:BLOCK"))
    engine = hashing_engine(judge=judge, defaults={"pack": False, "judge": True})
    engine.put_rules("t/j", "rules: [{name: look, action: review, stages: [input], text_regex: ['^a+!$']}]")
    verdict = engine.check("t/j", GuardRequest(Stage.INPUT, "aaaa!"))
    assert verdict.decision == Decision.BLOCK and verdict.decided_by == "judge"


# --- argument constraints -------------------------------------------------------------------------------------
def test_a_required_argument_is_missing_from_empty_arguments() -> None:
    rule = rules_mod.parse_rule(
        {"name": "need-to", "action": "block", "tools": ["mail"], "arguments": [{"path": "to", "required": True}]}
    )
    for args in ("", "   ", "{}"):
        [match] = rules_mod.evaluate([rule], call("mail", args))
        assert "required" in match.reason, args
    assert rules_mod.evaluate([rule], call("mail", '{"to": "a@b.c"}')) == []


def test_international_allowed_domains_allow_their_own_domain() -> None:
    rule = rules_mod.parse_rule({"name": "d", "action": "block", "tools": ["mail"],
                                 "arguments": [{"path": "to", "allowed_domains": ["Bücher.de"]}]})
    for to in ("kunde@bücher.de", "kunde@xn--bcher-kva.de", "kunde@shop.bücher.de"):
        assert rules_mod.evaluate([rule], call("mail", json.dumps({"to": to}))) == [], to
    assert rules_mod.evaluate([rule], call("mail", json.dumps({"to": "kunde@evil.de"})))
    bad = violations(rules_mod.parse_rule, {"name": "d", "action": "block", "tools": ["mail"],
                                            "arguments": [{"path": "to", "allowed_domains": ["ok.de", "a..b"]}]})
    assert list(bad) == ["rules[0].arguments[0].allowed_domains[1]"]


# --- references -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "schema",
    [
        {"$dynamicRef": "https://example.invalid/x"},
        {"$dynamicRef": "#nowhere"},
        {"properties": {"a": {"$recursiveRef": "https://example.invalid/y"}}},
    ],
)
def test_dynamic_and_recursive_refs_must_stay_inside_the_rule(schema) -> None:
    bad = violations(rules_mod.parse_rule, {"name": "r", "action": "block", "tools": ["t"], "json_schema": schema})
    assert "rules[0].json_schema" in bad, bad


def test_a_dynamic_ref_to_a_dynamic_anchor_of_the_rule_is_accepted() -> None:
    schema = {"$dynamicAnchor": "node", "type": "object", "properties": {"next": {"$dynamicRef": "#node"}}}
    rules_mod.parse_rule({"name": "r", "action": "block", "tools": ["t"], "json_schema": schema})


# --- rate limits ----------------------------------------------------------------------------------------------
def test_a_rate_limit_without_stages_counts_tool_calls_only() -> None:
    rule = rules_mod.parse_rule(
        {"name": "cap", "action": "block", "tools": ["send_mail"], "rate_limit": {"max_calls": 3, "per_seconds": 600}}
    )
    limiter = rules_mod.RateLimiter()
    decided = []
    for _ in range(3):
        decided.append(rules_mod.evaluate([rule], call("send_mail", "{}"), scope="s", limiter=limiter))
        result = GuardRequest(Stage.TOOL_RESULT, "Message queued.", ToolCallInfo("send_mail", "{}"))
        decided.append(rules_mod.evaluate([rule], result, scope="s", limiter=limiter))
    assert decided == [[]] * 6  # three calls and their results: within a limit of three calls
    assert rules_mod.evaluate([rule], call("send_mail", "{}"), scope="s", limiter=limiter)  # the fourth call


# --- which checks may run on an event loop ----------------------------------------------------------------------
@pytest.fixture
def caching_engine() -> Iterator[GuardEngine]:
    engine = GuardEngine(
        InMemoryGuardStore(), CachingEmbedder(HashingEmbedder()), audit_async=True, defaults={"pack": False}
    )
    yield engine
    engine.close()


def test_check_now_leaves_requests_a_slow_operator_rule_applies_to_to_a_worker(caching_engine) -> None:
    engine = caching_engine
    engine.put_rules("t/s", "rules: [{name: slow, action: block, stages: [input], text_regex: ['(a|aa)+$']},"
                            " {name: pay, action: block, tools: [pay], json_schema: {type: object}}]")
    text = GuardRequest(Stage.INPUT, "a" * 40 + "!")
    engine.check("t/s", text)  # loads the namespace and caches the embeddings
    assert engine.check_now("t/s", text) is None
    # A rule for another stage or tool does not apply: those checks may still be answered at once.
    other = GuardRequest(Stage.OUTPUT, "Here is the summary you asked for.")
    engine.check("t/s", other)
    assert engine.check_now("t/s", other) is not None
    mail = call("send_mail", '{"to": "x"}')
    engine.check("t/s", mail)
    assert engine.check_now("t/s", mail) is not None
    assert engine.check_now("t/s", call("pay", '{"amount": 1}')) is None


# --- TestRules ------------------------------------------------------------------------------------------------
def test_test_rules_applies_and_validates_the_candidates_settings(hashing_engine) -> None:
    engine = hashing_engine()
    doc = "default_decision: block\npack: false\nrules:\n  - {name: ok-tool, action: review, tools: [lookup]}\n"
    shell = call("shell.exec", '{"cmd": "rm -rf /"}', text="rm -rf / now")
    matches, _ = engine.test_rules("t/t", shell)
    assert any(m.rule.name == "pack.destructive-shell" for m in matches)  # the namespace's pack is on
    matches, verdict = engine.test_rules("t/t", shell, doc)
    assert matches == [] and verdict.decided_by != "rule"  # the candidate's pack: false drops the pack's rules
    _, verdict = engine.test_rules("t/t", GuardRequest(Stage.INPUT, "zqxv plorb wibble"), doc)
    assert (verdict.decision, verdict.decided_by) == (Decision.BLOCK, "default")
    bad = "default_decision: blok\nrules:\n  - {name: pack.destructive-shell, action: allow, tools: [x]}\n"
    assert set(violations(engine.test_rules, "t/t", shell, bad)) == {"default_decision", "rules[0].name"}
    assert engine.get_settings("t/t")["default_decision"] == "allow"  # nothing stored


def test_put_rules_names_setting_and_rule_errors_in_one_answer(hashing_engine) -> None:
    engine = hashing_engine()
    doc = ("default_decision: blok\nrules:\n  - {name: a, action: blok, tools: [x]}\n"
           "  - {name: b, action: block, text_regex: ['(']}\n  - {name: pack.force-push, action: allow, tools: [y]}\n")
    assert set(violations(engine.put_rules, "t/p", doc)) == {
        "default_decision", "rules[0].action", "rules[1].text_regex[0]", "rules[2].name"
    }
    assert engine.list_rules("t/p", include_pack=False) == []


def test_a_rule_cannot_take_the_name_of_a_configured_rule(hashing_engine) -> None:
    policy = {"rules": [{"name": "no-rm", "action": "block", "tools": ["rm"]}]}
    engine = hashing_engine(policy=lambda scope: policy)
    bad = violations(engine.put_rules, "t/c", "rules: [{name: no-rm, action: allow, priority: 10, tools: [rm]}]")
    assert list(bad) == ["rules[0].name"] and "configuration" in bad["rules[0].name"]
    assert [(r.name, r.source) for r in engine.list_rules("t/c", include_pack=False)] == [("no-rm", "config")]
