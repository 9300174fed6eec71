"""Retrieval over the wire: packing, routing diagnostics and the namespace policy's router temperature,
through a real server on port 0 (SQLite and Postgres), plus one quality check with the real model."""

from __future__ import annotations

from datetime import UTC, datetime

from agentrt.v1 import memory_pb2

MAY = datetime(2023, 5, 8, 13, 56, tzinfo=UTC)
JUNE = datetime(2023, 6, 20, 9, 0, tzinfo=UTC)
SESSIONS = {
    "s1": (
        MAY,
        [
            ("Caroline", "I went to an LGBTQ support group yesterday and it was so powerful."),
            ("Melanie", "That sounds amazing. What did you take away from it?"),
            ("Caroline", "The transgender stories were inspiring, I want to work in counseling."),
            ("Melanie", "haha ok"),
        ],
    ),
    "s2": (
        JUNE,
        [
            ("Melanie", "We went camping at the beach with the kids last weekend."),
            ("Caroline", "Fun! Did you roast marshmallows by the campfire?"),
            ("Melanie", "Yes, and I painted a sunrise over the lake the next morning."),
            ("Caroline", "I started pottery classes, my first bowl was lopsided."),
        ],
    ),
}
TEXT = {f"{sid}:{i}": f"{spk}: {text}" for sid, (_, turns) in SESSIONS.items() for i, (spk, text) in enumerate(turns)}


def load(client, namespace: str = "chat") -> None:  # type: ignore[no-untyped-def]
    for sid, (when, turns) in SESSIONS.items():
        client.write(
            namespace,
            sid,
            [{"id": f"{sid}:{i}", "speaker": spk, "text": text, "time": when} for i, (spk, text) in enumerate(turns)],
        )
    client.memory.Consolidate(memory_pb2.ConsolidateRequest(namespace=namespace))


def test_search_packs_under_budget_without_repeats_and_reports_routing(make_server, db_url: str) -> None:  # type: ignore[no-untyped-def]
    srv = make_server(embedding_model="hashing", db_url=db_url)
    load(srv.client)
    for budget in (15, 40, 100):
        resp = srv.client.search("chat", "camping marshmallows painting pottery", top_k=50, token_budget=budget)
        assert resp.hits
        assert sum(len(h.text.split()) for h in resp.hits) <= budget
        ids = [m for h in resp.hits for m in h.message_ids]
        assert len(ids) == len(set(ids))
        for hit in resp.hits:  # every hit shows the words of the messages it lists
            assert all(TEXT[m] in hit.text for m in hit.message_ids)
    assert set(resp.routing.weight) == {"turn", "exchange", "session", "fact"}
    assert all(0.0 <= h <= 1.0 for h in resp.routing.entropy.values())
    assert all(w >= 0.0 for w in resp.routing.weight.values())
    top = srv.client.search("chat", "marshmallows campfire", top_k=3)
    assert list(top.hits[0].message_ids) == ["s2:1"]


def test_router_temperature_comes_from_the_namespace_policy(make_server) -> None:  # type: ignore[no-untyped-def]
    query = "LGBTQ support group counseling"
    sharp = make_server(embedding_model="hashing", policies={"defaults": {"memory": {"temperature": 0.01}}})
    load(sharp.client)
    flat = make_server(embedding_model="hashing", policies={"defaults": {"memory": {"temperature": 100.0}}})
    load(flat.client)
    h_sharp = sharp.client.search("chat", query, top_k=5).routing.entropy
    h_flat = flat.client.search("chat", query, top_k=5).routing.entropy
    assert h_flat["turn"] > 0.99  # a very hot softmax is uniform: maximal normalised entropy
    assert h_sharp["turn"] < h_flat["turn"]


def test_real_model_answers_a_paraphrase_within_a_small_budget(make_server) -> None:  # type: ignore[no-untyped-def]
    srv = make_server()
    load(srv.client)
    resp = srv.client.search("chat", "What did Caroline say about her career plans?", top_k=20, token_budget=60)
    assert "s1:2" in {m for h in resp.hits for m in h.message_ids}  # "...I want to work in counseling."
