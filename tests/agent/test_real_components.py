"""A whole turn through the sidecar's real components: guard engine, gate engine, memory engine, answer
selector and the tool Invoke pipeline (builtin ``echo``), on the real MiniLM model."""

from __future__ import annotations

import json

import pytest
from agentrt.v1 import agent_pb2, common_pb2, tool_pb2

from tests.agent.conftest import of, stages, turn

NS = "real"


@pytest.fixture(scope="module")
def real_server(tmp_path_factory):
    from tests.conftest import RunningServer, make_settings

    data_dir = tmp_path_factory.mktemp("real-agent")
    server = RunningServer(make_settings(data_dir=data_dir))
    yield server
    server.stop()


def test_turn_with_retrieval_tool_and_three_candidates(real_server, llm) -> None:
    srv = real_server
    assert srv.rt.guards is not None and srv.rt.gates is not None and srv.rt.selector is not None
    srv.client.write(NS, "s0", [
        {"id": "m1", "speaker": "user", "text": "I adopted a grey cat called Miso last spring."},
        {"id": "m2", "speaker": "user", "text": "My favourite pasta recipe uses fresh basil and garlic."},
    ])
    events = turn(srv.client, NS, "r1", '[unsure] What is the name of my cat? [call:echo {"name": "Miso"}]',
                  llm_base_url=llm.base_url, tools=["echo"], num_candidates=3, force_retrieval=True)
    names = stages(events)
    assert names[:5] == ["input_guard", "agent", "retrieve_gate", "retrieve", "agent"]
    assert {"tool_gate", "check_tools", "run_tools", "candidates", "select", "output_guard"} <= set(names)
    guards = of(events, "guard")
    assert guards[0].stage == common_pb2.STAGE_INPUT and guards[0].verdict_id
    assert guards[0].decision == common_pb2.DECISION_ALLOW
    [retrieval] = of(events, "retrieval")
    assert "Miso" in retrieval.hits[0].text
    assert any(k.startswith("weight.") for k in retrieval.routing)
    tool_gate = [g for g in of(events, "gate") if g.gate == common_pb2.GATE_CALL_TOOL]
    assert tool_gate and tool_gate[0].signals  # the real gate engine computed its signals
    [res] = of(events, "tool_result")
    assert not res.error and json.loads(res.result_json) == {"name": "Miso"}
    # The call was guarded once, by the turn: the tool's audit records that verdict, not a second check.
    [call_check] = [g for g in guards if g.stage == common_pb2.STAGE_TOOL_CALL]
    [audit] = srv.client.tool.ListAudit(tool_pb2.ListToolAuditRequest(namespace=NS, tool_name="echo")).records
    assert [v.id for v in audit.verdicts if v.stage == "tool_call"] == [call_check.verdict_id]
    assert len(of(events, "candidate")) == 3
    [sel] = of(events, "selection")
    assert sel.method and sel.method != "max_mean_logprob"  # the real selector chose
    [result] = of(events, "result")
    assert result.status == agent_pb2.TURN_STATUS_COMPLETED and "Miso" in result.answer
    assert of(events, "memory_write")


def test_store_search_is_semantic_on_minilm(real_server) -> None:
    from runtime.store import SidecarStore

    store = SidecarStore(real_server.target, namespace="real-store", index={"fields": ["text"]})
    store.put(("docs",), "py", {"text": "Python is a programming language"})
    store.put(("docs",), "bread", {"text": "Knead the dough and bake the bread"})
    store.put(("docs",), "soup", {"text": "A warm tomato soup recipe"})
    hits = store.search(("docs",), query="how do I write a program?")
    assert hits[0].key == "py"
    hits = store.search(("docs",), query="baking at home", limit=1)
    assert [h.key for h in hits] == ["bread"]
    store.close()


def test_store_hybrid_ranking_finds_exact_ids_that_minilm_blurs(real_server) -> None:
    """Ten tickets, four of them about the printer: asked for a ticket by its number, cosine alone ranks a
    topically closer ticket first for some numbers; the retriever's dense + lexical fusion finds every one."""
    from runtime.store import SidecarStore

    issues = ["the printer jams on every page", "the VPN drops every few minutes", "the laptop will not charge",
              "the printer prints blank pages", "email attachments fail to open", "the monitor flickers",
              "the printer is offline for the whole floor", "password reset link expired", "the VPN is very slow",
              "the printer queue is stuck"]
    numbers = [4100 + 37 * n for n in range(len(issues))]
    dense = SidecarStore(real_server.target, namespace="real-tickets", index={"fields": ["text"]})
    hybrid = SidecarStore(real_server.target, namespace="real-tickets", index={"fields": ["text"], "ranking": "hybrid"})
    for n, (number, issue) in enumerate(zip(numbers, issues, strict=True)):
        dense.put(("tickets",), f"t{n}", {"text": f"Ticket {number}: {issue}", "open": n % 2 == 0})
    found = {"dense": 0, "hybrid": 0}
    for n, number in enumerate(numbers):
        query = f"what is the status of ticket {number}?"
        for name, store in (("dense", dense), ("hybrid", hybrid)):
            hits = store.search(("tickets",), query=query, limit=3)
            found[name] += hits[0].key == f"t{n}"
        # Scores are descending, and fused (not cosines) only when asked for.
        fused = [h.score for h in hybrid.search(("tickets",), query=query, limit=10)]
        assert fused == sorted(fused, reverse=True) and max(fused) > 1.0
        assert all(-1.0 <= (h.score or 0.0) <= 1.0 for h in dense.search(("tickets",), query=query))
    assert found["hybrid"] == len(numbers)
    assert found["dense"] < len(numbers)  # what the lexical channel is for
    # Filters and paging apply before and after the fused ranking, as for the dense one.
    hits = hybrid.search(("tickets",), query=f"ticket {numbers[3]}", filter={"open": False}, limit=2)
    assert hits[0].key == "t3" and all(not h.value["open"] for h in hits) and len(hits) == 2
    assert hybrid.search(("tickets",), query=f"ticket {numbers[3]}", filter={"open": False}, offset=1)[0].key != "t3"
    dense.close()
    hybrid.close()
