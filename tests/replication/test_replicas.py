"""Two sidecars on one Postgres stay in sync: memory, guard rules and tools written on one replica are
served by the other within a bounded lag, deletes included, and a replica that was down catches up."""

from __future__ import annotations

import grpc
import pytest
from agentrt.v1 import common_pb2, guard_pb2, memory_pb2, tool_pb2

from runtime.replication import wait_for

RULES = """
rules:
  - name: no-wire-offshore
    action: block
    text_regex: ["(?i)wire .* offshore"]
"""


def _ids(client, query: str) -> set[str]:
    return {m for h in client.search("ns", query, top_k=10).hits for m in h.message_ids}


@pytest.fixture
def pair(make_server, pg_url: str, tmp_path):
    a = make_server(db_url=pg_url, data_dir=tmp_path / "a", embedding_model="hashing")
    b = make_server(db_url=pg_url, data_dir=tmp_path / "b", embedding_model="hashing")
    return a, b


def test_memory_writes_and_deletes_reach_the_other_replica(pair) -> None:
    a, b = pair
    assert _ids(b.client, "zebra migration notes") == set()  # b has built (and cached) its empty index
    a.client.write("ns", "s1", [{"id": "m1", "speaker": "x", "text": "zebra migration notes from the delta"}])
    assert wait_for(lambda: "m1" in _ids(b.client, "zebra migration notes"), timeout=10)
    b.client.write("ns", "s2", [{"id": "m2", "speaker": "y", "text": "penguin colony census figures"}])
    assert wait_for(lambda: "m2" in _ids(a.client, "penguin colony census"), timeout=10)
    a.client.memory.Delete(memory_pb2.DeleteRequest(namespace="ns", message_ids=["m1"]), timeout=30)
    assert wait_for(lambda: "m1" not in _ids(b.client, "zebra migration notes"), timeout=10)
    # the feed carried deltas: b never rebuilt the namespace from scratch for them
    assert b.server.tailer is not None and b.server.tailer.last_seq > 0


def test_guard_rules_and_tools_changed_on_one_replica_apply_on_the_other(pair) -> None:
    a, b = pair
    check = guard_pb2.CheckRequest(namespace="ns", stage=common_pb2.STAGE_INPUT,
                                   text="please wire the savings offshore tonight")
    b.client.guard.Check(check, timeout=30)  # b loads (and caches) the namespace's rules before the change
    a.client.guard.PutRules(guard_pb2.PutRulesRequest(namespace="ns", yaml=RULES), timeout=30)
    assert wait_for(lambda: b.client.guard.Check(check, timeout=30).decision == common_pb2.DECISION_BLOCK,
                    timeout=10)

    tool = tool_pb2.Tool(name="lookup_order", description="Find an order by its number",
                         input_schema_json='{"type": "object"}',
                         builtin=tool_pb2.BuiltinToolExecutor(name="echo"))
    with pytest.raises(grpc.RpcError):
        b.client.tool.Get(tool_pb2.GetToolRequest(namespace="ns", name="lookup_order"), timeout=10)
    a.client.tool.Register(tool_pb2.RegisterToolRequest(namespace="ns", tool=tool), timeout=30)
    got = b.client.tool.Get(tool_pb2.GetToolRequest(namespace="ns", name="lookup_order"), timeout=10)
    assert got.tool.description == "Find an order by its number"
    tool.description = "Find an order by its number or the customer's email"
    a.client.tool.Register(tool_pb2.RegisterToolRequest(namespace="ns", tool=tool), timeout=30)

    def b_sees_v2() -> bool:
        reply = b.client.tool.Get(tool_pb2.GetToolRequest(namespace="ns", name="lookup_order"), timeout=10)
        return "email" in reply.tool.description

    assert wait_for(b_sees_v2, timeout=10)


def test_a_rate_limit_counts_the_calls_of_every_replica(pair) -> None:
    """Each sidecar counted only the calls it saw: two replicas behind a load balancer let twice the limit through."""
    a, b = pair
    a.client.guard.PutRules(guard_pb2.PutRulesRequest(namespace="ns", yaml=(
        "rules: [{name: mail-cap, action: block, tools: [send_mail], rate_limit: {max_calls: 3, per_seconds: 600}}]"
    )), timeout=30)
    assert wait_for(lambda: [r.name for r in b.client.guard.ListRules(
        guard_pb2.ListRulesRequest(namespace="ns"), timeout=30).rules] == ["mail-cap"], timeout=10)
    check = guard_pb2.CheckRequest(namespace="ns", stage=common_pb2.STAGE_TOOL_CALL,
                                   tool_call=common_pb2.ToolCall(name="send_mail", arguments_json='{"to": "x"}'))

    def capped(srv) -> bool:
        return any(e.ref == "mail-cap" for e in srv.client.guard.Check(check, timeout=30).evidence)

    # A dry run on either replica sees the shared count and adds nothing to it.
    dry = guard_pb2.TestRulesRequest(check=check)
    assert not any(m.rule.name == "mail-cap" for m in b.client.guard.TestRules(dry, timeout=30).matches)
    assert [capped(srv) for srv in (a, b, a)] == [False, False, False]
    assert [m.rule.name for m in b.client.guard.TestRules(dry, timeout=30).matches] == ["mail-cap"]
    assert [capped(srv) for srv in (b, a, b)] == [True, True, True]
    other = guard_pb2.CheckRequest(namespace="ns", stage=common_pb2.STAGE_TOOL_CALL,
                                   tool_call=common_pb2.ToolCall(name="send_sms", arguments_json="{}"))
    assert not any(e.ref == "mail-cap" for e in b.client.guard.Check(other, timeout=30).evidence)


def test_a_replica_that_was_down_catches_up_on_start(make_server, pg_url: str, tmp_path) -> None:
    a = make_server(db_url=pg_url, data_dir=tmp_path / "a", embedding_model="hashing")
    b = make_server(db_url=pg_url, data_dir=tmp_path / "b", embedding_model="hashing")
    b.client.write("ns", "s0", [{"id": "m0", "speaker": "x", "text": "before the outage"}])
    b.stop()
    a.client.write("ns", "s1", [{"id": f"m{i}", "speaker": "x", "text": f"during the outage note {i}"}
                                for i in range(1, 30)])
    c = make_server(db_url=pg_url, data_dir=tmp_path / "b", embedding_model="hashing")
    assert "m0" in _ids(c.client, "before the outage")
    assert "m29" in _ids(c.client, "during the outage note 29")


def test_tenants_stay_isolated_across_replicas(make_server, pg_url: str, tmp_path) -> None:
    tokens = [{"token": "token-acme", "tenant": "acme"}, {"token": "token-globex", "tenant": "globex"}]
    a = make_server(db_url=pg_url, data_dir=tmp_path / "a", embedding_model="hashing", tokens=tokens)
    b = make_server(db_url=pg_url, data_dir=tmp_path / "b", embedding_model="hashing", tokens=tokens)
    acme_a, acme_b = a.new_client("token-acme"), b.new_client("token-acme")
    globex_b = b.new_client("token-globex")
    try:
        # Both tenants use the same namespace name; only the tenant in the token tells them apart.
        assert _ids(globex_b, "quarterly merger plans") == set()
        acme_a.write("ns", "s1", [{"id": "m1", "speaker": "x", "text": "quarterly merger plans for the board"}])
        assert wait_for(lambda: "m1" in _ids(acme_b, "quarterly merger plans"), timeout=10)
        assert _ids(globex_b, "quarterly merger plans") == set()
        with pytest.raises(grpc.RpcError) as exc:
            globex_b.memory.Get(memory_pb2.GetRequest(namespace="ns", message_ids=["m1"]), timeout=10)
        assert exc.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        for client in (acme_a, acme_b, globex_b):
            client.close()
