"""The longest valid tenant and namespace names work in every component, on SQLite and Postgres alike."""

from __future__ import annotations

from agentrt.v1 import common_pb2

from runtime.naming import NAME_RULE

TENANT, NAMESPACE = "t" * 128, "n" * 128  # the longest names NAME_RULE allows


def test_the_longest_tenant_and_namespace_names_work_on_every_backend(make_server, db_url: str) -> None:
    """Their scoped key is 257 characters: memory's tables held 255, which Postgres enforced (the Write failed)
    while SQLite, which ignores lengths, stored it."""
    assert "1-128 characters" in NAME_RULE
    srv = make_server(embedding_model="hashing", db_url=db_url, tokens=[{"token": "tok", "tenant": TENANT}])
    client = srv.new_client("tok")
    written = client.write(NAMESPACE, "s1", [{"id": "m1", "speaker": "user", "text": "the launch is on friday"}])
    assert written.written == 1
    hits = client.search(NAMESPACE, "when is the launch", top_k=3).hits
    assert [list(h.message_ids) for h in hits][:1] == [["m1"]]
    verdict = client.check(NAMESPACE, common_pb2.STAGE_INPUT, "hello there")
    assert verdict.verdict_id
