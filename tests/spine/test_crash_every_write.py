"""Every kind of write answered OK survives a kill -9 right after it, with default settings (SQLite).

One server process takes one write of each kind (memory Write/Update/Delete, guard PutRules/UpdateSettings/
ReportIncident/Check+Feedback/DeleteRules, tool Register, gate SetPolicy/Decide+RecordOutcome, StoreBatch put
and delete), back to back; it is SIGKILLed as soon as the last one answered, restarted on the same data
directory, and every write is checked there. One kill/restart cycle for all of them keeps the test short; the
hashing embedder, since this is about durability, not retrieval quality.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from agentrt.v1 import agent_pb2, common_pb2, gate_pb2, guard_pb2, memory_pb2, tool_pb2

from runtime.client import AgentrtClient

ENV = {"AGENTRT_EMBEDDING__MODEL": "hashing"}
NS = "ns"


def _rules(*names: str) -> str:
    return "rules:\n" + "".join(
        f"  - name: {n}\n    action: block\n    text_regex: ['(?i)wire .* offshore {n}']\n" for n in names
    )


def _tokens(n: int) -> list[common_pb2.TokenLogprob]:
    top = [common_pb2.TopLogprob(token=f"a{j}", logprob=-1.0 - j) for j in range(3)]
    return [common_pb2.TokenLogprob(token="t", logprob=-1.0, top_logprobs=top) for _ in range(n)]


def _ids(c: AgentrtClient) -> set[str]:
    return {m.id for m in c.memory.List(memory_pb2.ListRequest(namespace=NS, page_size=1000), timeout=30).messages}


def _rule_names(c: AgentrtClient) -> set[str]:
    return {r.name for r in c.guard.ListRules(guard_pb2.ListRulesRequest(namespace=NS), timeout=30).rules}


def _store_get(c: AgentrtClient, key: str) -> bool:
    op = agent_pb2.StoreOp(get=agent_pb2.StoreGet(path=["u"], key=key))
    res = c.agent.StoreBatch(agent_pb2.StoreBatchRequest(namespace="app", ops=[op]), timeout=30)
    return res.results[0].get.HasField("item")


def _store_put(key: str, value_json: str | None) -> agent_pb2.StoreOp:
    put = agent_pb2.StorePut(path=["u"], key=key)
    if value_json is not None:
        put.value_json = value_json
    return agent_pb2.StoreOp(put=put)


def _write_everything(c: AgentrtClient) -> dict[str, Any]:
    """One write of each kind, each answered OK; returns what the checks after the restart need."""
    seen: dict[str, Any] = {}
    # memory
    c.write(NS, "s1", [{"id": f"m{i}", "speaker": "a", "text": f"note {i} about red cars"} for i in range(3)])
    c.memory.Update(memory_pb2.UpdateRequest(
        namespace=NS, message=memory_pb2.Message(id="m1", speaker="a", text="UPDATED blue")), timeout=30)
    c.memory.Delete(memory_pb2.DeleteRequest(namespace=NS, message_ids=["m2"]), timeout=30)
    # guard
    c.guard.PutRules(guard_pb2.PutRulesRequest(namespace=NS, yaml=_rules("keep-me", "drop-me")), timeout=30)
    c.guard.UpdateSettings(guard_pb2.UpdateGuardSettingsRequest(namespace=NS, review_entropy=0.33), timeout=30)
    c.guard.ReportIncident(guard_pb2.ReportIncidentRequest(
        namespace=NS, stage=common_pb2.STAGE_INPUT, text="how to build a pipe bomb at home",
        expected=common_pb2.DECISION_BLOCK), timeout=30)
    seen["events"] = len(c.guard.History(guard_pb2.GuardHistoryRequest(namespace=NS, limit=1000), timeout=30).events)
    v = c.guard.Check(guard_pb2.CheckRequest(namespace=NS, stage=common_pb2.STAGE_INPUT,
                                             text="tell me a joke about cats"), timeout=30)
    seen["verdict_id"] = v.verdict_id
    c.guard.Feedback(guard_pb2.FeedbackRequest(namespace=NS, verdict_id=v.verdict_id,
                                               expected=common_pb2.DECISION_REVIEW), timeout=30)
    c.guard.DeleteRules(guard_pb2.DeleteRulesRequest(namespace=NS, names=["drop-me"]), timeout=30)
    # tool
    c.tool.Register(tool_pb2.RegisterToolRequest(namespace=NS, tool=tool_pb2.Tool(
        name="lookup_order", description="Find an order", input_schema_json='{"type": "object"}',
        builtin=tool_pb2.BuiltinToolExecutor(name="echo"))), timeout=30)
    # gate
    c.gate.SetPolicy(gate_pb2.SetGatePolicyRequest(namespace=NS, gate=common_pb2.GATE_RETRIEVE,
                                                   policy=gate_pb2.GatePolicy(threshold=0.77)), timeout=30)
    d = c.gate.Decide(gate_pb2.DecideRequest(namespace=NS, gate=common_pb2.GATE_RETRIEVE, tokens=_tokens(4)),
                      timeout=30)
    seen["decision_id"] = d.decision_id
    c.gate.RecordOutcome(gate_pb2.RecordOutcomeRequest(namespace=NS, decision_id=d.decision_id, needed=True),
                         timeout=30)
    # agent store: two puts, then one of them deleted (a put without a value)
    c.agent.StoreBatch(agent_pb2.StoreBatchRequest(
        namespace="app", ops=[_store_put("keep", '{"a": 1}'), _store_put("drop", '{"b": 2}')]), timeout=30)
    c.agent.StoreBatch(agent_pb2.StoreBatchRequest(namespace="app", ops=[_store_put("drop", None)]), timeout=30)
    return seen


def test_every_write_survives_kill9_right_after_its_reply(spawn_server, tmp_path: Path) -> None:
    data = tmp_path / "d"
    srv = spawn_server(data_dir=data, env=ENV)
    with AgentrtClient(srv.target) as c:
        seen = _write_everything(c)
        srv.kill9()  # SIGKILL as soon as the last write answered: nothing gets a graceful flush

    again = spawn_server(data_dir=data, env=ENV)
    failures: list[str] = []

    def expect(what: str, ok: bool, got: Any = "") -> None:
        if not ok:
            failures.append(f"{what}: {got}")

    with AgentrtClient(again.target) as c:
        ids = _ids(c)
        expect("memory.Write", {"m0", "m1"} <= ids, sorted(ids))
        got = [m.text for m in c.memory.Get(memory_pb2.GetRequest(namespace=NS, message_ids=["m1"]),
                                            timeout=30).messages]
        expect("memory.Update", got == ["UPDATED blue"], got)
        expect("memory.Delete", "m2" not in ids, sorted(ids))
        names = _rule_names(c)
        expect("guard.PutRules", "keep-me" in names, sorted(names))
        expect("guard.DeleteRules", "drop-me" not in names, sorted(names))
        entropy = c.guard.GetSettings(guard_pb2.GetGuardSettingsRequest(namespace=NS), timeout=30).review_entropy
        expect("guard.UpdateSettings", abs(entropy - 0.33) < 1e-9, entropy)
        events = len(c.guard.History(guard_pb2.GuardHistoryRequest(namespace=NS, limit=1000), timeout=30).events)
        expect("guard.ReportIncident", events == seen["events"], f"{events} events, {seen['events']} before")
        verdict = c.guard.GetVerdict(guard_pb2.GetVerdictRequest(namespace=NS, verdict_id=seen["verdict_id"]),
                                     timeout=30)
        expect("guard.Check+Feedback", verdict.feedback == common_pb2.DECISION_REVIEW, verdict.feedback)
        tool = c.tool.Get(tool_pb2.GetToolRequest(namespace=NS, name="lookup_order"), timeout=30).tool
        expect("tool.Register", tool.name == "lookup_order", tool.name)
        policy = c.gate.GetPolicy(gate_pb2.GetGatePolicyRequest(namespace=NS, gate=common_pb2.GATE_RETRIEVE),
                                  timeout=30).policy
        expect("gate.SetPolicy", abs(policy.threshold - 0.77) < 1e-9, policy.threshold)
        expect("agent.StoreBatch put", _store_get(c, "keep"))
        expect("agent.StoreBatch delete", not _store_get(c, "drop"))
    again.stop()

    # The decision and its outcome, read from the database itself once the second server has stopped.
    engine = sa.create_engine(f"sqlite:///{data / 'agentrt.db'}")
    try:
        with engine.connect() as conn:
            label = conn.execute(
                sa.text("SELECT label FROM gate_decisions WHERE decision_id = :d"), {"d": seen["decision_id"]}
            ).fetchall()
    finally:
        engine.dispose()
    expect("gate.Decide+RecordOutcome", [tuple(r) for r in label] == [(1,)], label)
    assert not failures, "lost after kill -9:\n" + "\n".join(failures)
