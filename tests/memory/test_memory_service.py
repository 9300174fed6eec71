"""MemoryService over the wire: real servers on port 0, SQLite and Postgres, every RPC and error code,
restart and kill -9 durability, tenant isolation, and one quality check with the real MiniLM model."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import pytest
from agentrt.v1 import memory_pb2

from core.errors import InvalidArgumentError
from tests.conftest import bad_fields

T0 = datetime(2023, 5, 8, 13, 56, tzinfo=UTC)
TURNS = [
    ("alice", "I adopted a kitten named Pepper from the shelter last week"),
    ("bob", "Congrats! What breed is Pepper?"),
    ("alice", "A grey tabby, she loves chasing laser pointers"),
    ("bob", "My saxophone lessons start on Monday"),
]


def turns(prefix: str = "m") -> list[dict]:  # type: ignore[type-arg]
    return [
        {"id": f"{prefix}{i}", "speaker": s, "text": t, "time": T0 + timedelta(minutes=i), "metadata": {"i": str(i)}}
        for i, (s, t) in enumerate(TURNS)
    ]




def hit_ids(response: memory_pb2.SearchResponse) -> set[str]:
    return {mid for hit in response.hits for mid in hit.message_ids}


def test_every_rpc_round_trips(make_server, db_url: str) -> None:  # type: ignore[no-untyped-def]
    srv = make_server(embedding_model="hashing", db_url=db_url)
    c = srv.client
    written = c.write("chat", "s1", turns())
    assert list(written.message_ids) == ["m0", "m1", "m2", "m3"] and written.written == 4
    again = c.write("chat", "s1", turns())
    assert (again.written, again.unchanged) == (0, 4)

    found = c.search("chat", "kitten Pepper shelter", top_k=5)
    assert "m0" in hit_ids(found)
    top = next(h for h in found.hits if "m0" in h.message_ids)
    assert top.session_id == "s1" and top.granularity in {"turn", "exchange", "session", "fact"}
    assert top.time_start.ToDatetime(tzinfo=UTC) <= T0 <= top.time_end.ToDatetime(tzinfo=UTC)

    got = c.memory.Get(memory_pb2.GetRequest(namespace="chat", message_ids=["m2", "m0"]))
    assert [m.id for m in got.messages] == ["m2", "m0"]
    assert got.messages[1].text == TURNS[0][1] and got.messages[1].session_id == "s1"
    assert got.messages[1].time.ToDatetime(tzinfo=UTC) == T0 and dict(got.messages[1].metadata) == {"i": "0"}

    page = c.memory.List(memory_pb2.ListRequest(namespace="chat", page_size=3))
    assert [m.id for m in page.messages] == ["m0", "m1", "m2"] and list(page.session_ids) == ["s1"]
    rest = c.memory.List(memory_pb2.ListRequest(namespace="chat", page_size=3, page_token=page.next_page_token))
    assert [m.id for m in rest.messages] == ["m3"] and rest.next_page_token == ""

    consolidated = c.memory.Consolidate(memory_pb2.ConsolidateRequest(namespace="chat"))
    assert consolidated.sessions_derived <= 1
    stats = c.memory.Stats(memory_pb2.StatsRequest(namespace="chat"))
    assert stats.messages == 4 and stats.sessions == 1 and stats.pending_sessions == 0
    assert {"turn", "exchange", "session"} <= set(stats.units)
    assert stats.index_generation == stats.generation and stats.index_backends["turn"] == "flat"

    updated = c.memory.Update(
        memory_pb2.UpdateRequest(
            namespace="chat", message=memory_pb2.Message(id="m3", speaker="bob", text="My trombone lessons start soon")
        )
    )
    assert updated.changed
    assert (
        c.memory.Get(memory_pb2.GetRequest(namespace="chat", message_ids=["m3"]))
        .messages[0]
        .text.startswith("My trombone")
    )

    deleted = c.memory.Delete(memory_pb2.DeleteRequest(namespace="chat", message_ids=["m0"]))
    assert deleted.deleted_messages == 1 and deleted.sessions_rederived == 1
    after = c.search("chat", "kitten Pepper shelter", top_k=20)
    assert "m0" not in hit_ids(after) and not any("shelter" in h.text for h in after.hits)

    reindexed = c.memory.Reindex(memory_pb2.ReindexRequest(namespace="chat"))
    assert reindexed.units == sum(c.memory.Stats(memory_pb2.StatsRequest(namespace="chat")).units.values())
    assert c.memory.Delete(memory_pb2.DeleteRequest(namespace="chat", all=True)).deleted_messages == 3
    assert c.search("chat", "Pepper").hits == []


def test_errors_name_the_field_and_missing_ids_are_not_found(make_server) -> None:  # type: ignore[no-untyped-def]
    srv = make_server(embedding_model="hashing")
    c = srv.client
    bad = [{"id": "a", "text": "fine"}, {"id": "b", "text": "fine"}, {"id": "c", "text": ""}]
    with pytest.raises(grpc.RpcError) as exc:
        c.write("chat", "s1", bad)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(exc.value) == ["messages[2].text"]
    with pytest.raises(grpc.RpcError) as exc:
        c.memory.Search(memory_pb2.SearchRequest(namespace="chat", query="x", granularities=["paragraph"]))
    assert bad_fields(exc.value) == ["granularities[0]"]
    with pytest.raises(grpc.RpcError) as exc:
        c.memory.Search(memory_pb2.SearchRequest(namespace="chat", query="x", top_k=-3))
    assert bad_fields(exc.value) == ["top_k"]
    c.write("chat", "s1", turns())
    with pytest.raises(grpc.RpcError) as exc:
        c.memory.Get(memory_pb2.GetRequest(namespace="chat", message_ids=["m0", "nope"]))
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND and "nope" in (exc.value.details() or "")
    with pytest.raises(grpc.RpcError) as exc:
        c.memory.Update(memory_pb2.UpdateRequest(namespace="chat", message=memory_pb2.Message(id="nope", text="x")))
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as exc:
        c.write("chat", "s2", [{"id": "m0", "text": "moved"}])
    assert bad_fields(exc.value) == ["messages[0].id"]
    for token in ("garbage", "-1", " 5 ", "99999999999999999999999", "٣"):
        with pytest.raises(grpc.RpcError) as exc:
            c.memory.List(memory_pb2.ListRequest(namespace="chat", page_token=token))
        assert bad_fields(exc.value) == ["page_token"], token
    with pytest.raises(grpc.RpcError) as exc:
        c.memory.Delete(memory_pb2.DeleteRequest(namespace="chat", message_ids=["m1"], all=True))
    assert bad_fields(exc.value) == ["all"]
    with pytest.raises(grpc.RpcError) as exc:
        c.memory.Delete(memory_pb2.DeleteRequest(namespace="chat", session_id="s1", all=True))
    assert bad_fields(exc.value) == ["all"]
    # nothing was lost to the refused calls
    assert len(c.memory.List(memory_pb2.ListRequest(namespace="chat", page_size=100)).messages) == 4
    # reading a namespace that holds nothing is empty, not an error
    assert c.search("never-written", "anything").hits == []
    assert c.memory.Stats(memory_pb2.StatsRequest(namespace="never-written")).messages == 0


def test_acknowledged_writes_survive_a_restart(make_server, db_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    first = make_server(embedding_model="hashing", db_url=db_url, data_dir=tmp_path / "d")
    first.client.write("chat", "s1", turns())
    first.stop()
    second = make_server(embedding_model="hashing", db_url=db_url, data_dir=tmp_path / "d")
    assert "m0" in hit_ids(second.client.search("chat", "kitten Pepper shelter"))
    second.client.memory.Consolidate(memory_pb2.ConsolidateRequest(namespace="chat"))
    stats = second.client.memory.Stats(memory_pb2.StatsRequest(namespace="chat"))
    assert stats.messages == 4 and stats.pending_sessions == 0 and "session" in stats.units


@pytest.mark.slow
def test_kill_9_after_ack_loses_nothing_and_pending_derivation_resumes(spawn_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from runtime.client import AgentrtClient

    env = {"AGENTRT_EMBEDDING__MODEL": "hashing"}
    data = tmp_path / "data"
    srv = spawn_server(data_dir=data, env=env)
    with AgentrtClient(srv.target) as c:
        for i in range(20):
            c.write("chat", f"s{i % 3}", [{"id": f"k{i}", "speaker": "a", "text": f"fact number {i} about zebras"}])
    srv.kill9()
    again = spawn_server(data_dir=data, env=env)
    with AgentrtClient(again.target) as c:
        got = c.memory.Get(memory_pb2.GetRequest(namespace="chat", message_ids=[f"k{i}" for i in range(20)]))
        assert len(got.messages) == 20
        assert "k7" in hit_ids(c.search("chat", "fact number 7 zebras", top_k=20))
        c.memory.Consolidate(memory_pb2.ConsolidateRequest(namespace="chat"))
        stats = c.memory.Stats(memory_pb2.StatsRequest(namespace="chat"))
        assert stats.pending_sessions == 0 and stats.index_generation == stats.generation


def test_tenants_cannot_read_each_others_memory(make_server, db_url) -> None:  # type: ignore[no-untyped-def]
    srv = make_server(
        embedding_model="hashing",
        db_url=db_url,
        tokens=[{"token": "tok-a", "tenant": "acme"}, {"token": "tok-b", "tenant": "globex"}],
    )
    a, b = srv.new_client(token="tok-a"), srv.new_client(token="tok-b")
    a.write("chat", "s1", turns())
    assert "m0" in hit_ids(a.search("chat", "kitten Pepper"))
    assert b.search("chat", "kitten Pepper").hits == []
    with pytest.raises(grpc.RpcError) as exc:
        b.memory.Get(memory_pb2.GetRequest(namespace="chat", message_ids=["m0"]))
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND
    b.memory.Delete(memory_pb2.DeleteRequest(namespace="chat", all=True))
    assert len(a.memory.Get(memory_pb2.GetRequest(namespace="chat", message_ids=["m0"])).messages) == 1
    a.close()
    b.close()


def test_real_model_finds_a_paraphrase_without_shared_words(make_server) -> None:  # type: ignore[no-untyped-def]
    srv = make_server()  # the real all-MiniLM-L6-v2
    c = srv.client
    c.write(
        "chat",
        "s1",
        [
            *turns(),
            {"id": "m4", "speaker": "alice", "text": "The weather in Lisbon was sunny all weekend"},
            {"id": "m5", "speaker": "bob", "text": "I finally fixed the bug in my compiler project"},
        ],
    )
    response = c.search("chat", "which pet did someone bring home recently?", top_k=3)
    assert response.hits and "m0" in response.hits[0].message_ids


def test_consolidate_applies_the_namespace_retention_policy(make_server) -> None:  # type: ignore[no-untyped-def]
    policies = {"namespaces": {"kept": {"memory": {"consolidation": {"max_age_days": 30}}}}}
    srv = make_server(embedding_model="hashing", policies=policies)
    old = datetime.now(UTC) - timedelta(days=400)
    for ns in ("kept", "other"):
        srv.client.write(ns, "s1", [{"id": "old", "speaker": "a", "text": "the very old news", "time": old},
                                    {"id": "new", "speaker": "a", "text": "fresh news", "time": datetime.now(UTC)}])
    # The background worker applies the same policy after deriving the session, so the old message may
    # already be gone (and counted there) before this call: the effect is what is asserted.
    srv.client.memory.Consolidate(memory_pb2.ConsolidateRequest(namespace="kept"))
    assert srv.client.memory.Consolidate(memory_pb2.ConsolidateRequest(namespace="other")).messages_forgotten == 0
    with pytest.raises(grpc.RpcError) as exc:
        srv.client.memory.Get(memory_pb2.GetRequest(namespace="kept", message_ids=["old"]))
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND
    got = srv.client.memory.Get(memory_pb2.GetRequest(namespace="other", message_ids=["old"]))
    assert [m.id for m in got.messages] == ["old"]


@pytest.mark.parametrize("duty", [0, 2, "often"])
def test_a_bad_derive_duty_in_the_config_stops_the_start_naming_the_setting(make_server, duty) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidArgumentError) as err:
        make_server(embedding_model="hashing", policies={"defaults": {"memory": {"derive_duty": duty}}})
    assert "policies.defaults.memory.derive_duty" in str(err.value)


def test_bad_unit_and_retrieval_settings_stop_the_start_naming_each_setting(make_server) -> None:  # type: ignore[no-untyped-def]
    policies = {
        "defaults": {"memory": {"units": {"segment_messages": -1, "window": "3"}}},
        "namespaces": {
            "chat": {"memory": {"low_info_weight": 1.5, "composed_vectors": "yes"}},
            "docs": {"memory": {"retrieval": {"temperature": 0}}},
        },
    }
    with pytest.raises(InvalidArgumentError) as err:
        make_server(embedding_model="hashing", policies=policies)
    fields = {v.field for v in err.value.violations}
    assert fields == {
        "policies.defaults.memory.units.segment_messages",
        "policies.defaults.memory.units.window",
        "policies.namespaces.chat.memory.low_info_weight",
        "policies.namespaces.chat.memory.composed_vectors",
        "policies.namespaces.docs.memory.retrieval",
    }
    # Good values start (segmentation off is 0, not a negative number).
    srv = make_server(embedding_model="hashing", policies={"defaults": {"memory": {"units": {"segment_messages": 0}}}})
    assert srv.client.memory.Stats(memory_pb2.StatsRequest(namespace="chat")).messages == 0


def test_bad_consolidation_settings_stop_the_start_naming_each_setting(make_server) -> None:  # type: ignore[no-untyped-def]
    # Accepted before: each then failed every background pass (and Consolidate with INTERNAL), or did something
    # else than meant (max_messages: true kept one message).
    policies = {
        "defaults": {"memory": {"consolidation": {"max_messages": True, "duplicate_weight": -1}}},
        "namespaces": {
            "chat": {"memory": {"consolidation": {"max_age_days": 1e9, "batch": "lots"}}},
            "docs": {"memory": {"consolidation": [1]}},
        },
    }
    with pytest.raises(InvalidArgumentError) as err:
        make_server(embedding_model="hashing", policies=policies)
    assert {v.field for v in err.value.violations} == {
        "policies.defaults.memory.consolidation.max_messages",
        "policies.defaults.memory.consolidation.duplicate_weight",
        "policies.namespaces.chat.memory.consolidation.max_age_days",
        "policies.namespaces.chat.memory.consolidation.batch",
        "policies.namespaces.docs.memory.consolidation",
    }
