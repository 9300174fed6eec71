"""Two sidecars on one Postgres calling the memory service at the same time: a Delete racing a Write to the
same session sticks on both replicas, the same message written on both is written once, and first Writes,
Delete(all) and Consolidate racing each other all succeed (no ABORTED: the conflicts are resolved inside)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import grpc
import pytest
import sqlalchemy as sa
from agentrt.v1 import memory_pb2

from runtime.replication import wait_for


@pytest.fixture
def pair(make_server, pg_url: str, tmp_path):
    a = make_server(db_url=pg_url, data_dir=tmp_path / "a", embedding_model="hashing")
    b = make_server(db_url=pg_url, data_dir=tmp_path / "b", embedding_model="hashing")
    return a, b


def at_once(*calls: Callable[[], object]) -> list[object]:
    """Run ``calls`` in threads released together; their results, or the RpcError each raised."""
    barrier = threading.Barrier(len(calls))
    out: list[object] = [None] * len(calls)

    def run(i: int) -> None:
        barrier.wait()
        try:
            out[i] = calls[i]()
        except grpc.RpcError as exc:
            out[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return out


def failures(results: list[object]) -> list[str]:
    return [f"{r.code().name}: {r.details()}" for r in results if isinstance(r, grpc.RpcError)]  # type: ignore[attr-defined]


def search_ids(client, query: str) -> set[str]:
    reply = client.memory.Search(
        memory_pb2.SearchRequest(namespace="ns", query=query, top_k=100, token_budget=100_000), timeout=30
    )
    return {m for h in reply.hits for m in h.message_ids}


def test_a_session_deleted_while_the_other_replica_writes_to_it_stays_deleted(pair, pg_url: str) -> None:
    a, b = pair
    rounds = 10
    for r in range(rounds):
        sid = f"s{r}"
        a.client.write("ns", sid, [{"id": f"{sid}-m{i}", "speaker": "x", "text": f"base message {i} of {sid} kw{r}q"}
                                   for i in range(4)])
        time.sleep(0.3)  # b has the session in its index, as after a conversation's earlier turns
        new = [{"id": f"{sid}-new", "speaker": "y", "text": f"racing new message kw{r}q"}]
        request = memory_pb2.DeleteRequest(namespace="ns", session_id=sid)
        results = at_once(
            lambda sid=sid, new=new: b.client.write("ns", sid, new),
            # b's Write commits first, then its background derivation reads the session while a deletes it.
            lambda r=r, request=request: (time.sleep(0.001 * (r % 4)), a.client.memory.Delete(request, timeout=30)),
        )
        assert failures(results) == []
    engine = sa.create_engine(pg_url)
    orphans_sql = sa.text(
        "SELECT um.unit_id, um.message_id FROM memory_unit_messages um LEFT JOIN memory_messages m"
        " ON m.namespace = um.namespace AND m.id = um.message_id WHERE m.id IS NULL"
    )

    def settled() -> bool:
        with engine.connect() as conn:
            stored = {row[0] for row in conn.execute(sa.text("SELECT id FROM memory_messages"))}
            orphans = conn.execute(orphans_sql).all()
        if orphans:
            return False
        for client in (a.client, b.client):
            for r in range(rounds):
                if search_ids(client, f"base message of s{r} kw{r}q racing") - stored:
                    return False
        return True

    try:
        # Derivation runs in the background on both replicas: poll until both have converged.
        assert wait_for(settled, timeout=10, interval=0.2)
        for client in (a.client, b.client):
            client.memory.Consolidate(memory_pb2.ConsolidateRequest(namespace="ns", skip_refit=True), timeout=120)
        assert wait_for(settled, timeout=10, interval=0.2)
    finally:
        engine.dispose()


def test_an_identical_resend_on_both_replicas_is_written_once(pair) -> None:
    a, b = pair
    for r in range(10):
        msgs = [{"id": f"m{r}a", "speaker": "x", "text": f"identical resend round {r}"},
                {"id": f"m{r}b", "speaker": "y", "text": f"second message round {r}"}]
        results = at_once(lambda msgs=msgs: a.client.write("ns", "s1", msgs),
                          lambda msgs=msgs: b.client.write("ns", "s1", msgs))
        assert failures(results) == []
        assert sorted((res.written, res.unchanged) for res in results) == [(0, 2), (2, 0)]  # type: ignore[attr-defined]


def test_different_contents_of_one_id_on_both_replicas_leave_one_everywhere(pair) -> None:
    a, b = pair
    for r in range(8):
        mid, versions = f"m{r}", (f"alpha version {r} walrus", f"beta version {r} walrus")
        results = at_once(
            lambda mid=mid, t=versions[0]: a.client.write("ns", "s1", [{"id": mid, "speaker": "x", "text": t}]),
            lambda mid=mid, t=versions[1]: b.client.write("ns", "s1", [{"id": mid, "speaker": "x", "text": t}]),
        )
        assert failures(results) == []

        def agreed(mid: str = mid, versions: tuple[str, str] = versions) -> bool:
            request = memory_pb2.GetRequest(namespace="ns", message_ids=[mid])
            texts = {m.text for c in (a.client, b.client) for m in c.memory.Get(request, timeout=30).messages}
            if len(texts) != 1:
                return False
            winner = texts.pop()
            loser = versions[1] if winner == versions[0] else versions[0]
            for c in (a.client, b.client):
                hits = [h.text for h in c.search("ns", winner, top_k=50).hits if mid in h.message_ids]
                if not any(winner in t for t in hits) or any(loser in t for t in hits):
                    return False
            return True

        assert wait_for(agreed, timeout=10, interval=0.1)


def test_first_writes_to_a_new_namespace_from_both_replicas_succeed(pair) -> None:
    a, b = pair
    for r in range(10):
        ns = f"fresh{r}"
        results = at_once(
            lambda ns=ns: a.client.write(ns, "s", [{"id": "from-a", "speaker": "x", "text": "hello from a"}]),
            lambda ns=ns: b.client.write(ns, "s", [{"id": "from-b", "speaker": "x", "text": "hello from b"}]),
        )
        assert failures(results) == []


def test_delete_all_on_one_replica_while_the_other_writes_succeeds(pair) -> None:
    a, b = pair
    a.client.write("ns", "s0", [{"id": f"p{i}", "speaker": "x", "text": f"preexisting note {i}"} for i in range(10)])
    stop = threading.Event()
    errors: list[str] = []

    def writer(w: int) -> None:
        i = 0
        while not stop.is_set():
            try:
                b.client.write("ns", f"s{i % 3}", [{"id": f"w{w}-{i}", "speaker": "y", "text": f"note {i}"}])
            except grpc.RpcError as exc:
                errors.append(f"write {exc.code().name}: {exc.details()}")
            i += 1

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(2)]
    for t in threads:
        t.start()
    try:
        for _ in range(8):
            time.sleep(0.15)  # let writes (and their derivations) pile up between two drops
            try:
                a.client.memory.Delete(memory_pb2.DeleteRequest(namespace="ns", all=True), timeout=60)
            except grpc.RpcError as exc:
                errors.append(f"delete {exc.code().name}: {exc.details()}")
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert errors == []


def test_consolidate_on_both_replicas_at_once_succeeds(pair) -> None:
    a, b = pair
    for w, srv in enumerate((a, b, a, b)):
        srv.client.write("ns", f"s{w}", [{"id": f"w{w}-{i}", "speaker": f"sp{i % 2}",
                                          "text": f"writer {w} note {i} about topic{i % 7} alpha{w}x{i}"}
                                         for i in range(40)])
    request = memory_pb2.ConsolidateRequest(namespace="ns")
    for _ in range(3):
        results = at_once(lambda: a.client.memory.Consolidate(request, timeout=120),
                          lambda: b.client.memory.Consolidate(request, timeout=120))
        assert failures(results) == []
