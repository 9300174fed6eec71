"""Faults: a full disk under the SQLite data dir, Postgres restarting under load, ``kill -9`` mid-write.

What must hold: a failed write gets a clear status (RESOURCE_EXHAUSTED for a full disk, UNAVAILABLE while
the database is down), nothing acknowledged is lost or corrupted, a Write's messages are all there or none,
and the sidecar reconnects by itself once the database is back.
"""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from agentrt.v1 import memory_pb2

from runtime.client import AgentrtClient
from tests.conftest import free_port
from tests.hardening.pgcluster import PrivatePostgres

HASHING = {"AGENTRT_EMBEDDING__MODEL": "hashing"}


def _write(client: AgentrtClient, namespace: str, session: str, ids: list[str], text: str,
           timeout: float = 10, blob: str = "") -> memory_pb2.WriteResponse:
    metadata = {"blob": blob} if blob else {}
    messages = [memory_pb2.Message(id=i, speaker="user", text=f"{i} {text}", metadata=metadata) for i in ids]
    return client.memory.Write(memory_pb2.WriteRequest(namespace=namespace, session_id=session, messages=messages),
                               timeout=timeout)


def _present(client: AgentrtClient, namespace: str, ids: list[str]) -> set[str]:
    """Which of ``ids`` are stored, read by paging through List (Get is all-or-NOT_FOUND)."""
    wanted = set(ids)
    found: set[str] = set()
    token = ""
    while True:
        reply = client.memory.List(memory_pb2.ListRequest(namespace=namespace, page_size=500, page_token=token),
                                   timeout=30)
        found |= {m.id for m in reply.messages} & wanted
        token = reply.next_page_token
        if not token:
            return found


# ------------------------------------------------------------------------------------------ disk full

@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 12 MiB tmpfs mounted for this test (skips where mounting is not allowed)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {proc.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_full_disk_fails_writes_cleanly_and_corrupts_nothing(make_server, small_disk: Path) -> None:
    data = small_disk / "data"
    # Ballast that is deleted after the disk filled up, to give the database room again: enough for the
    # restart's own work (checkpointing the WAL, re-deriving the sessions the full disk left pending)
    # and then a new write.
    ballast = small_disk / "ballast"
    ballast.write_bytes(b"\0" * (4 * 1024 * 1024))
    srv = make_server(data_dir=data, embedding_model="hashing")
    # The bulk goes into metadata (stored, not embedded) so the disk fills in a few dozen writes.
    blob = "lorem ipsum dolor sit amet " * 2000  # ~54 KB per message
    acked: list[str] = []
    failed_ids: list[str] = []
    failure: grpc.RpcError | None = None
    for n in range(10_000):
        ids = [f"d{n}-{j}" for j in range(10)]
        try:
            _write(srv.client, "disk", f"s{n % 7}", ids, "a message on a small disk", timeout=60, blob=blob)
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.INVALID_ARGUMENT and not acked and len(blob) > 1000:
                blob = blob[: len(blob) // 2]  # a metadata size limit: fill with smaller messages instead
                continue
            failure, failed_ids = err, ids
            break
        acked += ids
    assert failure is not None, "the 12 MiB disk never filled up"
    assert failure.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, \
        f"a write on a full disk got {failure.code().name}: {failure.details()}"
    assert acked, "not a single write fitted on the disk"
    # While the disk is full reads still work, and the failed write left nothing behind.
    assert srv.client.memory.Get(memory_pb2.GetRequest(namespace="disk", message_ids=acked[:5]),
                                 timeout=30).messages
    assert _present(srv.client, "disk", failed_ids) == set()
    srv.stop()

    ballast.unlink()
    db_file = data / "agentrt.db"
    with contextlib.closing(sqlite3.connect(db_file)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    restarted = make_server(data_dir=data, embedding_model="hashing")
    present = _present(restarted.client, "disk", acked)
    assert present == set(acked), f"{len(set(acked) - present)} acknowledged messages lost after the disk filled"
    # Once space is free again, writes work.
    _write(restarted.client, "disk", "after", ["after-0"], "space again")
    assert _present(restarted.client, "disk", ["after-0"]) == {"after-0"}


# ------------------------------------------------------------------------------------ postgres restart

@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    """A private Postgres cluster (restarting the shared one would break parallel test runs)."""
    try:
        pg = PrivatePostgres(free_port())
        pg.start()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot run a private PostgreSQL for the restart test: {exc}")
    try:
        yield pg
    finally:
        pg.destroy()


class _Load:
    """Writer/searcher threads recording (time, status code) of every call until stopped."""

    def __init__(self, client: AgentrtClient, threads: int = 3):
        self.client = client
        self.events: list[tuple[float, str, grpc.StatusCode, str]] = []
        self.acked: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(t,), daemon=True) for t in range(threads)]

    def _record(self, rpc: str, code: grpc.StatusCode, details: str) -> None:
        with self._lock:
            self.events.append((time.monotonic(), rpc, code, details))

    def _run(self, t: int) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            ids = [f"pg{t}-{n}-{j}" for j in range(3)]
            try:
                _write(self.client, "pg", f"s{t}", ids, "postgres restart load", timeout=5)
                self._record("Write", grpc.StatusCode.OK, "")
                with self._lock:
                    self.acked += ids
            except grpc.RpcError as err:
                self._record("Write", err.code(), err.details() or "")
            try:
                self.client.memory.Search(memory_pb2.SearchRequest(namespace="pg", query="restart", top_k=3),
                                          timeout=5)
                self._record("Search", grpc.StatusCode.OK, "")
            except grpc.RpcError as err:
                self._record("Search", err.code(), err.details() or "")
            time.sleep(0.02)

    def start(self) -> None:
        for th in self._threads:
            th.start()

    def stop(self) -> None:
        self._stop.set()
        for th in self._threads:
            th.join(30)

    def codes_between(self, start: float, end: float) -> list[tuple[str, grpc.StatusCode, str]]:
        with self._lock:
            return [(rpc, c, d) for t, rpc, c, d in self.events if start <= t <= end]


def test_postgres_restart_under_load_gives_unavailable_and_reconnects(make_server,
                                                                      private_pg: PrivatePostgres) -> None:
    url = private_pg.create_database(f"agentrt_fault_{uuid.uuid4().hex[:8]}")
    srv = make_server(db_url=url, embedding_model="hashing")
    load = _Load(srv.new_client())
    load.start()
    try:
        time.sleep(1.5)
        before_outage = time.monotonic()
        private_pg.stop()
        time.sleep(2.0)  # the outage: every call in here finds the database down
        private_pg.start()
        back = time.monotonic()
        # The sidecar reconnects by itself: wait (generously, no timing claim) for calls to succeed again.
        deadline = back + 60
        while time.monotonic() < deadline:
            recent = load.codes_between(time.monotonic() - 1.0, time.monotonic())
            if recent and all(c == grpc.StatusCode.OK for _, c, _ in recent):
                break
            time.sleep(0.2)
        time.sleep(1.5)
        recovered = time.monotonic()
    finally:
        load.stop()
    during = load.codes_between(before_outage, recovered)
    errors = [(rpc, c, d) for rpc, c, d in during if c != grpc.StatusCode.OK]
    assert errors, "no call failed while Postgres was down (the test did not exercise the outage)"
    wrong = [(rpc, c.name, d) for rpc, c, d in errors if c != grpc.StatusCode.UNAVAILABLE]
    assert not wrong, f"during the outage clients must get UNAVAILABLE, got: {wrong[:5]}"
    after = load.codes_between(recovered - 1.0, float("inf"))
    assert after and all(c == grpc.StatusCode.OK for _, c, _ in after), \
        f"the sidecar did not reconnect by itself: {[(r, c.name, d) for r, c, d in after][:5]}"
    # Every acknowledged write survived the restart.
    assert _present(srv.client, "pg", load.acked) == set(load.acked)


# ------------------------------------------------------------------------------------------- kill -9

def test_kill9_mid_write_loses_no_acknowledged_write_and_shows_no_half_write(spawn_server, db_url: str,
                                                                            tmp_path: Path) -> None:
    data = tmp_path / "kill9"
    server = spawn_server(data_dir=data, db_url=db_url, env=HASHING)
    per_write = 5
    attempted: list[list[str]] = []
    acked: list[list[str]] = []
    lock = threading.Lock()
    stop = threading.Event()
    enough = threading.Event()

    def writer(t: int) -> None:
        client = AgentrtClient(server.target)
        n = 0
        try:
            while not stop.is_set():
                n += 1
                ids = [f"k{t}-{n}-{j}" for j in range(per_write)]
                with lock:
                    attempted.append(ids)
                try:
                    _write(client, "kill", f"s{t}", ids, "written while the server dies", timeout=10)
                except grpc.RpcError:
                    return
                with lock:
                    acked.append(ids)
                    if len(acked) >= 20:
                        enough.set()
        finally:
            client.close()

    threads = [threading.Thread(target=writer, args=(t,), daemon=True) for t in range(4)]
    for th in threads:
        th.start()
    assert enough.wait(120), "writers never got 20 acknowledgements"
    server.kill9()  # with writes in flight
    stop.set()
    for th in threads:
        th.join(30)

    restarted = spawn_server(data_dir=data, db_url=db_url, env=HASHING)
    client = AgentrtClient(restarted.target)
    try:
        all_ids = [i for ids in attempted for i in ids]
        present = _present(client, "kill", all_ids)
    finally:
        client.close()
    lost = [i for ids in acked for i in ids if i not in present]
    assert not lost, f"{len(lost)} acknowledged messages lost after kill -9: {lost[:10]}"
    half = [ids for ids in attempted if 0 < len(present.intersection(ids)) < per_write]
    assert not half, f"half-applied writes visible after kill -9: {half[:3]}"


# ------------------------------------------------------------------------------------------ index files

def test_a_corrupt_index_file_is_detected_and_rebuilt_from_the_database(make_server, tmp_path: Path) -> None:
    """The vector-index snapshots a clean stop writes are caches: flip bytes in them and the restarted
    server notices (checksum), ignores them, answers from indexes rebuilt from the database, and writes
    good snapshots again at its next stop."""
    data = tmp_path / "idx"
    srv = make_server(data_dir=data, embedding_model="hashing")
    _write(srv.client, "idx", "s1", ["i1", "i2"], "the lighthouse keeper painted the door blue")
    srv.stop()
    snapshots = sorted((data / "index").glob("*.npz"))
    assert snapshots, "a clean stop writes the index snapshot"
    for path in snapshots:
        raw = bytearray(path.read_bytes())
        for at in range(len(raw) // 3, len(raw) // 3 + 64):
            raw[at] ^= 0xFF
        path.write_bytes(bytes(raw))
    damaged = {p.name: p.read_bytes() for p in snapshots}

    restarted = make_server(data_dir=data, embedding_model="hashing")
    hits = restarted.client.memory.Search(
        memory_pb2.SearchRequest(namespace="idx", query="lighthouse door", top_k=3), timeout=30).hits
    assert any("lighthouse" in h.text for h in hits)
    assert {m for h in hits for m in h.message_ids} == {"i1", "i2"}  # exactly what the database holds
    restarted.stop()
    rewritten = {p.name: p.read_bytes() for p in sorted((data / "index").glob("*.npz"))}
    assert rewritten and all(rewritten.get(name) != blob for name, blob in damaged.items())
