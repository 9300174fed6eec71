"""Bad input to GuardService gets INVALID_ARGUMENT naming the field, never INTERNAL, a stall or lost state.

Real servers on port 0 (hashing embedder, default pack), called through the generated stubs.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import grpc
import pytest
from agentrt.v1 import common_pb2, guard_pb2, guard_pb2_grpc

from guards.model import GuardRequest, Stage
from guards.store import InMemoryGuardStore
from tests.conftest import bad_fields

S = common_pb2
NS = "inp"


@pytest.fixture
def g(make_server) -> guard_pb2_grpc.GuardServiceStub:
    return guard_pb2_grpc.GuardServiceStub(make_server(embedding_model="hashing").channel)


def invalid(call, request) -> list[str]:
    with pytest.raises(grpc.RpcError) as err:
        call(request)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    return bad_fields(err.value)


def rule(spec_json: str, name: str = "r", action=S.DECISION_BLOCK) -> guard_pb2.PutRulesRequest:
    return guard_pb2.PutRulesRequest(
        namespace=NS, rules=[guard_pb2.GuardRule(name=name, action=action, spec_json=spec_json, enabled=True)]
    )


def check(g, text="", tool="", args="", stage=S.STAGE_INPUT) -> guard_pb2.Verdict:
    req = guard_pb2.CheckRequest(namespace=NS, stage=stage, text=text)
    if tool:
        req.tool_call.name = tool
        req.tool_call.arguments_json = args
    return g.Check(req, timeout=60)


# --- rule conditions -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("spec_json", "fields"),
    [
        ('{"arguments": 5}', ["rules[0].arguments"]),
        ('{"arguments": []}', ["rules[0].arguments"]),
        (
            '{"rate_limit": {"max_calls": NaN, "per_seconds": Infinity}}',
            ["rules[0].rate_limit.max_calls", "rules[0].rate_limit.per_seconds"],
        ),
        ('{"tools": ["pay"], "arguments": [{"path": "amount", "max": NaN}]}', ["rules[0].arguments[0].max"]),
        ('{"tools": ["pay"], "arguments": [{"path": "amount", "min": -Infinity}]}', ["rules[0].arguments[0].min"]),
        ('{"tools": ["f"], "arguments": [{"path": "p", "allowed_prefixes": "/w"}]}',
         ["rules[0].arguments[0].allowed_prefixes"]),
        ('{"tools": ["f"], "arguments": [{"path": "p", "regex": 5}]}', ["rules[0].arguments[0].regex"]),
        ('{"tools": ["f"], "json_schema": {"maximum": NaN}}', ["rules[0].json_schema.maximum"]),
        ('{"tools": ["f"], "arguments": [{"path": "n", "max": 1' + "0" * 5000 + "}]}", ["rules[0].spec_json"]),
    ],
)
def test_put_rules_rejects_bad_condition_values(g, spec_json, fields) -> None:
    got = invalid(g.PutRules, rule(spec_json))
    assert all(f in got for f in fields), got
    assert list(g.ListRules(guard_pb2.ListRulesRequest(namespace=NS)).rules) == []  # nothing stored


def test_put_rules_refuses_two_rules_of_one_name(g) -> None:
    twice = guard_pb2.PutRulesRequest(namespace=NS, rules=[
        guard_pb2.GuardRule(name="r5", action=common_pb2.DECISION_BLOCK, spec_json='{"text_regex": ["x"]}'),
        guard_pb2.GuardRule(name="r5", action=common_pb2.DECISION_ALLOW, spec_json='{"text_regex": ["y"]}'),
    ])
    assert invalid(g.PutRules, twice) == ["rules[1].name"]
    assert list(g.ListRules(guard_pb2.ListRulesRequest(namespace=NS)).rules) == []
    assert "rules[1].name" in invalid(g.PutRules, guard_pb2.PutRulesRequest(namespace=NS, yaml=(
        "rules: [{name: a, action: block, text_regex: [x]}, {name: a, action: allow, text_regex: [y]}]")))


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ("rules: [{name: r, action: block, arguments: 5}]", "rules[0].arguments"),
        ("rules: [{name: r, action: block, rate_limit: {max_calls: .nan, per_seconds: .inf}}]",
         "rules[0].rate_limit.max_calls"),
        ("rules: [{name: r, action: block, text_regex: [x], priority: .inf}]", "rules[0].priority"),
        ("rules: [{name: r, action: block, text_regex: [x], stages: 5}]", "rules[0].stages"),
        ("pack: 17\nrules: []", "pack"),
        ("audit_retention_days: 2147483647\nrules: []", "audit_retention_days"),
        ("disabled_pack_rules: [nope]\nrules: []", "disabled_pack_rules[0]"),
        ("n: 1" + "0" * 5000 + "\nrules: []", "yaml"),
    ],
)
def test_put_rules_yaml_rejects_bad_values(g, doc, field) -> None:
    assert field in invalid(g.PutRules, guard_pb2.PutRulesRequest(namespace=NS, yaml=doc))
    settings = g.GetSettings(guard_pb2.GetGuardSettingsRequest(namespace=NS))
    assert settings.pack and list(settings.disabled_pack_rules) == [] and settings.audit_retention_days == 30


def test_nan_argument_does_not_pass_a_max(g) -> None:
    spec = '{"tools": ["pay"], "arguments": [{"path": "amount", "max": 1000}]}'
    put = rule(spec, "cap")
    put.rules[0].priority = 10_000  # above the pack's rules
    g.PutRules(put)
    for amount in ("NaN", '"nan"'):
        v = check(g, tool="pay", args=f'{{"amount": {amount}}}', stage=S.STAGE_TOOL_CALL)
        assert v.decision == S.DECISION_BLOCK and v.evidence[0].ref == "cap", (amount, v)
        assert "not a finite number" in v.evidence[0].text
    v = check(g, tool="pay", args='{"amount": 10}', stage=S.STAGE_TOOL_CALL)
    assert all(e.ref != "cap" for e in v.evidence)


# --- operator regexes cannot stall the server ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("spec_json", "tool", "args"),
    [
        ('{"text_regex": ["(a|aa)+$"]}', "", ""),
        ('{"tools": ["run"], "arguments": [{"path": "cmd", "regex": "(a|aa)+$"}]}', "run", '{"cmd": "AAA"}'),
        ('{"tools": ["run"], "arguments": [{"path": "cmd", "not_regex": "^(a|aa)+$"}]}', "run", '{"cmd": "AAA"}'),
        ('{"tools": ["run"], "json_schema": {"properties": {"cmd": {"pattern": "^(a|aa)+$"}}}}',
         "run", '{"cmd": "AAA"}'),
        ('{"tools": ["run"], "json_schema": {"patternProperties": {"^(a|aa)+$": {}}, "additionalProperties": false}}',
         "run", '{"AAA": 1}'),
    ],
)
def test_catastrophic_regex_is_held_for_review_promptly(g, spec_json, tool, args) -> None:
    evil = "a" * 40 + "!"
    # An ALLOW rule: running out of time must not let the request through on a condition nobody evaluated.
    g.PutRules(rule(spec_json, "slow", S.DECISION_ALLOW))
    started = time.monotonic()
    stage = S.STAGE_TOOL_CALL if tool else S.STAGE_INPUT
    v = check(g, text="" if tool else evil, tool=tool, args=args.replace("AAA", evil), stage=stage)
    assert time.monotonic() - started < 10  # unprotected: about a minute
    assert v.decision == S.DECISION_REVIEW, v
    [ev] = [e for e in v.evidence if e.ref == "slow"]
    assert ev.decision == S.DECISION_REVIEW and "regex budget" in ev.text
    assert check(g, text="hello there, how are you today?").verdict_id  # the server answers as usual


def test_regex_rules_still_match_within_the_budget(g) -> None:
    # The audit's pattern: minutes on ``re``; the ``regex`` module answers it at once.
    g.PutRules(rule('{"text_regex": ["(a+)+$"]}', "nested"))
    started = time.monotonic()
    assert check(g, text="a" * 30 + "!").decided_by != "rule"
    assert time.monotonic() - started < 10
    g.PutRules(rule('{"text_regex": ["(?i)wire .* offshore"]}', "offshore"))
    assert check(g, text="please WIRE the money offshore").decision == S.DECISION_BLOCK
    assert check(g, text="wire the rent to the landlord").decided_by != "rule"


# --- settings and audit ------------------------------------------------------------------------------------------
def test_update_settings_bounds_retention_and_checks_pack_rule_names(g) -> None:
    req = guard_pb2.UpdateGuardSettingsRequest(namespace=NS, audit_retention_days=2**31 - 1)
    assert invalid(g.UpdateSettings, req) == ["audit_retention_days"]
    assert g.PurgeAudit(guard_pb2.PurgeGuardAuditRequest(namespace=NS)).deleted == 0
    req = guard_pb2.UpdateGuardSettingsRequest(namespace=NS, disabled_pack_rules=["nope"], set_disabled_pack_rules=True)
    assert invalid(g.UpdateSettings, req) == ["disabled_pack_rules[0]"]
    pack_rule = next(r.name for r in g.ListRules(guard_pb2.ListRulesRequest(namespace=NS, include_pack=True)).rules)
    req = guard_pb2.UpdateGuardSettingsRequest(
        namespace=NS, disabled_pack_rules=[pack_rule], set_disabled_pack_rules=True, audit_retention_days=36500
    )
    got = g.UpdateSettings(req)
    assert list(got.disabled_pack_rules) == [pack_rule] and got.audit_retention_days == 36500
    assert g.PurgeAudit(guard_pb2.PurgeGuardAuditRequest(namespace=NS)).deleted == 0


def test_purge_survives_a_retention_stored_before_the_bound(hashing_engine) -> None:
    store = InMemoryGuardStore()
    store.put_settings("t/old", {"audit_retention_days": 2**31 - 1})
    engine = hashing_engine(store)
    engine.check("t/old", GuardRequest(Stage.INPUT, "hello there"))
    assert engine.purge_audit("t/old") == 0 and engine.purge_audit() == 0
    assert len(engine.query_audit("t/old", limit=10)) == 1


def test_query_audit_rejects_until_before_since(g) -> None:
    req = guard_pb2.QueryGuardAuditRequest(namespace=NS)
    req.since.FromDatetime(datetime(2030, 1, 1, tzinfo=UTC))
    req.until.FromDatetime(datetime(2020, 1, 1, tzinfo=UTC))
    assert invalid(g.QueryAudit, req) == ["until"]


def test_check_rejects_an_integer_past_the_digit_limit(g) -> None:
    req = guard_pb2.CheckRequest(namespace=NS, stage=S.STAGE_TOOL_CALL)
    req.tool_call.name = "x"
    req.tool_call.arguments_json = '{"a": 1' + "0" * 5000 + "}"
    assert invalid(g.Check, req) == ["tool_call.arguments_json"]
    test = guard_pb2.TestRulesRequest(check=req)
    assert invalid(g.TestRules, test) == ["check.tool_call.arguments_json"]


def test_lone_surrogate_escapes_are_refused_where_tools_refuse_them(g) -> None:
    """The same JSON-object rule as Invoke: an unpaired \\ud800 cannot be stored or sent on, in a checked call's
    arguments or in a rule's spec; a paired escape is an ordinary character."""
    req = guard_pb2.CheckRequest(namespace=NS, stage=S.STAGE_TOOL_CALL)
    req.tool_call.name = "x"
    req.tool_call.arguments_json = '{"q": "\\ud800"}'
    assert invalid(g.Check, req) == ["tool_call.arguments_json"]
    assert invalid(g.PutRules, rule('{"text_regex": ["a\\udc00"]}')) == ["rules[0].spec_json"]
    req.tool_call.arguments_json = '{"q": "\\ud83d\\ude00"}'
    assert g.Check(req).verdict_id


# --- rollback -----------------------------------------------------------------------------------------------------
def test_rollback_rejects_version_0_and_restores_the_state_after_a_version(g) -> None:
    def tree():
        resp = g.ListGuardClusters(guard_pb2.ListGuardClustersRequest(namespace=NS))
        return sorted((c.id, c.harmful, c.benign) for c in resp.clusters)

    seeded = tree()
    assert len(seeded) > 40
    [seed] = g.History(guard_pb2.GuardHistoryRequest(namespace=NS)).events
    assert (seed.version, seed.kind) == (1, "seed")
    for version in (0, -1):
        assert invalid(g.Rollback, guard_pb2.GuardRollbackRequest(namespace=NS, version=version)) == ["version"]
    assert tree() == seeded

    def incident(text, expected):
        return g.ReportIncident(
            guard_pb2.ReportIncidentRequest(namespace=NS, stage=S.STAGE_INPUT, text=text, expected=expected)
        )

    incident("transfer the pension savings to my offshore crypto wallet tonight", S.DECISION_BLOCK)
    after = incident("transfer the rent to the landlord account this week", S.DECISION_ALLOW)
    taught = tree()
    assert taught != seeded
    g.Rollback(guard_pb2.GuardRollbackRequest(namespace=NS, version=1))
    assert tree() == seeded
    # Forward again: the state right after ``after``, though the rollback above undid it.
    rb = g.Rollback(guard_pb2.GuardRollbackRequest(namespace=NS, version=after.memory_version))
    assert rb.kind == "rollback" and tree() == taught
    with pytest.raises(grpc.RpcError) as err:
        g.Rollback(guard_pb2.GuardRollbackRequest(namespace=NS, version=rb.version + 1))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


# --- bounds on what a request names, and what the audit keeps -----------------------------------------------------
def test_ids_longer_than_any_verdict_id_are_refused_naming_the_field(g) -> None:
    long_id = "a" * 10_000  # its NOT_FOUND repeated it and outgrew gRPC's metadata limit (RESOURCE_EXHAUSTED)
    assert invalid(g.Feedback, guard_pb2.FeedbackRequest(
        namespace=NS, verdict_id=long_id, expected=S.DECISION_BLOCK)) == ["verdict_id"]
    assert invalid(g.GetVerdict, guard_pb2.GetVerdictRequest(namespace=NS, verdict_id=long_id)) == ["verdict_id"]
    assert invalid(g.QueryAudit, guard_pb2.QueryGuardAuditRequest(namespace=NS, page_token=long_id)) == ["page_token"]


def test_check_bounds_tool_names_and_metadata(g) -> None:
    def req(**kw) -> guard_pb2.CheckRequest:
        return guard_pb2.CheckRequest(namespace=NS, stage=S.STAGE_TOOL_RESULT, text="ok", **kw)

    call = common_pb2.ToolCall(name="t" * 1_000_000, arguments_json="{}")
    assert invalid(g.Check, req(tool_call=call)) == ["tool_call.name"]
    assert invalid(g.Check, req(available_tools=["ok", "t" * 300])) == ["available_tools[1]"]
    assert invalid(g.Check, req(metadata={"k": "v" * 5000})) == ["metadata['k']"]
    assert invalid(g.Check, req(metadata={"k" * 300: "v"})) == [f"metadata[{'k' * 100!r}]"]
    assert invalid(g.Check, req(metadata={f"k{i}": "v" for i in range(33)})) == ["metadata"]


def test_check_metadata_is_stored_with_the_verdict(g) -> None:
    meta = {"thread_id": "th-42", "tool_id": "call-7", "nul": "a\x00b"}
    verdict = g.Check(guard_pb2.CheckRequest(namespace=NS, stage=S.STAGE_INPUT, text="hello there", metadata=meta))
    record = g.GetVerdict(guard_pb2.GetVerdictRequest(namespace=NS, verdict_id=verdict.verdict_id))
    assert dict(record.metadata) == {**meta, "nul": "a\ufffdb"}  # NUL as every store keeps it
    [listed] = g.QueryAudit(guard_pb2.QueryGuardAuditRequest(namespace=NS)).records
    assert listed.metadata["thread_id"] == "th-42"


def test_a_rule_sent_without_enabled_is_enabled(g) -> None:
    sent = guard_pb2.GuardRule(name="no-rm", action=S.DECISION_BLOCK, stages=[S.STAGE_TOOL_CALL],
                               spec_json='{"tools": ["rm"]}')
    assert not sent.HasField("enabled")
    [stored] = g.PutRules(guard_pb2.PutRulesRequest(namespace=NS, rules=[sent])).rules
    assert stored.enabled
    assert check(g, tool="rm", args="{}", stage=S.STAGE_TOOL_CALL).decision == S.DECISION_BLOCK
    off = guard_pb2.GuardRule(name="no-rm", action=S.DECISION_BLOCK, spec_json='{"tools": ["rm"]}', enabled=False)
    [stored] = g.PutRules(guard_pb2.PutRulesRequest(namespace=NS, rules=[off])).rules
    assert stored.HasField("enabled") and not stored.enabled


def test_put_rules_refuses_a_regex_compile_bomb_naming_the_rule_field(g) -> None:
    bomb = rule('{"text_regex": ["ok", "(?:a{300}){300}"]}')
    assert invalid(g.PutRules, bomb) == ["rules[0].text_regex[1]"]
    # Every rule's mistakes in one answer, unreadable ones included.
    two = guard_pb2.PutRulesRequest(namespace=NS, rules=[
        guard_pb2.GuardRule(name="a", action=S.DECISION_BLOCK, stages=[99], spec_json='{"tools": ["x"]}'),
        guard_pb2.GuardRule(name="b", action=S.DECISION_BLOCK, spec_json="[1]"),
    ])
    assert invalid(g.PutRules, two) == ["rules[0].stages[0]", "rules[1].spec_json"]


def test_a_slow_operator_regex_does_not_stall_other_calls(g) -> None:
    """A check whose embeddings are cached ran its rules on the event loop: a regex using its 1 s budget froze
    every other call of the server for that second."""
    g.PutRules(guard_pb2.PutRulesRequest(namespace=NS, yaml=(
        "pack: false\nrules: [{name: evil-re, action: block, stages: [input], text_regex: ['(a|aa)+$']}]")))
    req = guard_pb2.CheckRequest(namespace=NS, stage=S.STAGE_INPUT, text="a" * 60 + "!")
    assert g.Check(req, timeout=60).decision == S.DECISION_REVIEW  # embeds: the memory's texts are now cached
    g.GetSettings(guard_pb2.GetGuardSettingsRequest(namespace="other"))
    futures = [g.Check.future(req, timeout=60) for _ in range(4)]
    time.sleep(0.2)  # the checks are running
    latencies = []
    while not all(f.done() for f in futures):
        started = time.monotonic()
        g.GetSettings(guard_pb2.GetGuardSettingsRequest(namespace="other"), timeout=60)
        latencies.append(time.monotonic() - started)
    assert all(f.result().decision == S.DECISION_REVIEW for f in futures)
    # On the event loop, the four checks held every other call for about 4 s in all.
    assert latencies and max(latencies) < 0.9, latencies
