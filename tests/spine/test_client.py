"""The async client sends the same requests as the sync one."""

from __future__ import annotations

from runtime.client import AsyncAgentrtClient


async def test_async_client_write_search_decide(make_server) -> None:
    srv = make_server(embedding_model="hashing")
    async with AsyncAgentrtClient(srv.target) as c:
        written = await c.write("ns", "s1", [{"id": "a", "speaker": "x", "text": "async hello world"}])
        assert list(written.message_ids) == ["a"]
        hits = (await c.search("ns", "async hello", top_k=3)).hits
        assert list(hits[0].message_ids) == ["a"]
        tokens = [{"token": "a", "logprob": -0.1, "top_logprobs": [{"token": "a", "logprob": -0.1}]}]
        decision = await c.decide("ns", 1, tokens)
        assert decision.fire == (decision.score > decision.threshold)
    # the sync client reads what the async one wrote
    assert srv.client.search("ns", "async hello", top_k=3).hits[0].message_ids == ["a"]
