"""`agentrt migrate` and `agentrt admin export/import/reindex` round-trip a namespace losslessly."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from tests.conftest import REPO

ENV = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "AGENTRT_EMBEDDING__MODEL": "hashing",
       "AGENTRT_LOG__LEVEL": "WARNING"}


def _cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "runtime.cli", *args], cwd=REPO, env=ENV, input=stdin,
                          capture_output=True, text=True, timeout=300)


def test_export_import_reindex_round_trip(make_server, tmp_path: Path) -> None:
    src = make_server(data_dir=tmp_path / "src", embedding_model="hashing")
    when = datetime(2023, 5, 8, 13, 56, tzinfo=UTC)
    src.client.write("ns", "s1", [
        {"id": "a", "speaker": "Ann", "text": "I adopted a cat named Miso", "time": when,
         "metadata": {"lang": "en"}},
        {"id": "b", "speaker": "Bob", "text": "ünïcode and emoji 🐈 survive", "time": when},
    ])
    src.client.write("ns", "s2", [{"id": "c", "speaker": "Ann", "text": "Miso likes boxes"}])
    src.stop()

    exported = _cli("admin", "export", "--data-dir", str(tmp_path / "src"), "--namespace", "ns")
    assert exported.returncode == 0, exported.stderr
    rows = [json.loads(line) for line in exported.stdout.splitlines()]
    assert [r["id"] for r in rows] == ["a", "b", "c"]
    assert rows[0]["metadata"] == {"lang": "en"} and rows[1]["text"] == "ünïcode and emoji 🐈 survive"

    assert _cli("migrate", "--data-dir", str(tmp_path / "dst")).returncode == 0
    imported = _cli("admin", "import", "--data-dir", str(tmp_path / "dst"), "--namespace", "copy", "-",
                    stdin=exported.stdout)
    assert imported.returncode == 0, imported.stderr
    assert json.loads(imported.stdout)["written"] == 3
    again = _cli("admin", "import", "--data-dir", str(tmp_path / "dst"), "--namespace", "copy", "-",
                 stdin=exported.stdout)
    assert json.loads(again.stdout)["written"] == 0  # idempotent
    reindex = _cli("admin", "reindex", "--data-dir", str(tmp_path / "dst"), "--namespace", "copy")
    assert reindex.returncode == 0, reindex.stderr
    assert json.loads(reindex.stdout)["units_indexed"] >= 3

    dst = make_server(data_dir=tmp_path / "dst", embedding_model="hashing")
    hits = dst.client.search("copy", "cat named Miso", top_k=3).hits
    assert any("a" in h.message_ids for h in hits)
    round_trip = _cli("admin", "export", "--data-dir", str(tmp_path / "dst"), "--namespace", "copy")
    assert [json.loads(x) for x in round_trip.stdout.splitlines()] == rows


def test_reindex_rebuilds_every_namespace_from_the_database(make_server, db_url: str, tmp_path: Path) -> None:
    data = tmp_path / "data"
    srv = make_server(data_dir=data, db_url=db_url, embedding_model="hashing")
    srv.client.write("ns-a", "s1", [{"id": "a1", "speaker": "Ann", "text": "I adopted a cat named Miso"},
                                    {"id": "a2", "speaker": "Bob", "text": "Miso likes cardboard boxes"}])
    srv.client.write("ns-b", "s1", [{"id": "b1", "speaker": "Cy", "text": "The tram to the harbour is late"}])
    from agentrt.v1 import memory_pb2

    for ns in ("ns-a", "ns-b"):
        srv.client.memory.Consolidate(memory_pb2.ConsolidateRequest(namespace=ns))
    units = {ns: sum(srv.client.memory.Stats(memory_pb2.StatsRequest(namespace=ns)).units.values())
             for ns in ("ns-a", "ns-b")}
    srv.stop()
    # The snapshots the server left are gone (lost disk, a restore of the database alone): reindex rebuilds them.
    for f in (data / "index").glob("*"):
        f.unlink()
    done = _cli("admin", "reindex", "--data-dir", str(data), "--database-url", db_url)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    # Every namespace of the database (no --namespace), each with all of its units.
    assert sorted(r["units_indexed"] for r in rows) == sorted(units.values())
    assert len(rows) == 2 and all(r["namespace"].endswith(("ns-a", "ns-b")) for r in rows)
    assert list((data / "index").glob("*.json"))  # the rebuilt indexes were snapshotted for the next start
    again = make_server(data_dir=data, db_url=db_url, embedding_model="hashing")
    assert "a1" in {i for h in again.client.search("ns-a", "cat named Miso", top_k=3).hits for i in h.message_ids}
    assert "b1" in {i for h in again.client.search("ns-b", "tram harbour", top_k=3).hits for i in h.message_ids}


def test_admin_commands_refuse_a_database_that_is_not_there(tmp_path: Path) -> None:
    """A mistyped --data-dir used to create an empty database, export nothing and exit 0."""
    typo = tmp_path / "typo"
    for args in (["export", "--namespace", "ns"], ["reindex"], ["import", "--namespace", "ns", "-"]):
        done = _cli("admin", *args, "--data-dir", str(typo), stdin="")
        assert done.returncode != 0 and "no database at" in done.stderr, done.stderr
        assert done.stderr.count("\n") == 1, done.stderr
    assert not typo.exists()
    # A database file without the agentrt schema (some other SQLite file) is refused, not migrated.
    other = tmp_path / "other"
    other.mkdir()
    import sqlite3

    sqlite3.connect(other / "agentrt.db").close()
    done = _cli("admin", "export", "--data-dir", str(other), "--namespace", "ns")
    assert done.returncode != 0 and "has no agentrt schema" in done.stderr, done.stderr


def test_admin_reports_bad_input_in_one_line_and_non_zero(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    assert _cli("migrate", "--data-dir", data).returncode == 0
    cases = [
        (["reindex", "--namespace", "nosuch"], None, "namespace 'nosuch' of tenant 'default' does not exist"),
        (["export", "--namespace", "nosuch"], None, "does not exist"),
        (["export", "--namespace", "bad name!"], None, "is not a valid name"),
        (["import", "--namespace", "ns", str(tmp_path / "nope.jsonl")], None, "cannot read"),
        (["import", "--namespace", "ns", "-"], '{"id": "a", "session_id": "s", "text": "hi", "metadata": ["x"]}\n',
         "line 1: not an exported message (metadata must be a JSON object, not a list)"),
        (["import", "--namespace", "ns", "-"], "[1, 2]\n", "line 1: not an exported message"),
    ]
    for args, stdin, expected in cases:
        done = _cli("admin", *args, "--data-dir", data, stdin=stdin)
        assert done.returncode != 0, (args, done.stdout)
        assert expected in done.stderr and done.stderr.count("\n") == 1, (args, done.stderr)
