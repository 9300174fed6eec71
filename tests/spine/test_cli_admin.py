"""`agentrt migrate` and `agentrt admin export/import/reindex`: a namespace round-trips losslessly, an import checks
every line before it writes one, bad input ends in one line and exit code 2, and import and reindex refuse a SQLite
database a server has open and reach running Postgres replicas."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from agentrt.v1 import memory_pb2
from sqlalchemy.exc import ArgumentError

from runtime import admin
from runtime.admin import AdminError, close_runtime, import_messages, open_runtime, reindex_scopes
from runtime.container import Runtime
from runtime.db import Database
from runtime.replication import wait_for
from tests.conftest import REPO, make_settings

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
         "<stdin>:1: metadata: must be a JSON object, not an array"),
        (["import", "--namespace", "ns", "-"], "[1, 2]\n", "<stdin>:1: not an exported message"),
        (["import", "--namespace", "ns", str(tmp_path)], None, "cannot read"),
        (["reindex", "--tenant", "nosuch"], None, "tenant 'nosuch' has no namespaces"),
    ]
    for args, stdin, expected in cases:
        done = _cli("admin", *args, "--data-dir", data, stdin=stdin)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert expected in done.stderr and done.stderr.count("\n") == 1, (args, done.stderr)


# -- import: checked before written -------------------------------------------------------------------------------


@pytest.fixture
def admin_rt(db_url: str, tmp_path: Path) -> Iterator[Runtime]:
    """The runtime of an admin command on a fresh, migrated database of each backend."""
    db = Database(db_url)
    db.migrate()
    db.dispose()
    rt = open_runtime(make_settings(data_dir=tmp_path / "admin", db_url=db_url, embedding_model="hashing"))
    yield rt
    close_runtime(rt)


def _row(mid: str, session: str = "s1", text: str | None = None, **extra: object) -> str:
    return json.dumps({"id": mid, "session_id": session, "speaker": "u", "text": text or f"message {mid}",
                       "time": None, "metadata": {}, **extra})


def _import(rt: Runtime, scope: str, data: bytes | str) -> tuple[int, int]:
    return import_messages(rt, scope, io.BytesIO(data.encode() if isinstance(data, str) else data), "f")


def _stored(rt: Runtime, scope: str) -> list[str]:
    return [s.message.id for s in rt.memory.store.list_messages(scope, limit=10_000)]


def test_a_bad_line_anywhere_in_an_import_writes_nothing(admin_rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    """A truncated last line used to fail after the session's first batches were committed (500 of 600 messages
    stored), and the namespace was created by an import that then failed, or had nothing to import."""
    monkeypatch.setattr(admin, "WRITE_BATCH", 7)  # several batches per session, as 500 are of a long one
    good = "\n".join(_row(f"m{i}") for i in range(20)) + "\n"
    with pytest.raises(AdminError, match=r"^f:21: not an exported message: not JSON"):
        _import(admin_rt, "default/ns", good + '{"id": "m20", "session_id": "s1", "text": "cut her')
    assert "ns" not in admin_rt.db.list_namespaces("default") and _stored(admin_rt, "default/ns") == []
    assert _import(admin_rt, "default/empty", "\n\n") == (0, 0)
    assert "empty" not in admin_rt.db.list_namespaces("default")

    assert _import(admin_rt, "default/ns", good) == (20, 20)
    more = "".join(_row(f"n{i}", "s2") + "\n" for i in range(15))
    with pytest.raises(AdminError, match=r"^f:17: text: must not be empty"):
        _import(admin_rt, "default/ns", more + _row("x", "s3") + "\n" + _row("y", "s3", text=" ") + "\n")
    assert len(_stored(admin_rt, "default/ns")) == 20
    assert _import(admin_rt, "default/ns", good + more) == (35, 15)
    assert _import(admin_rt, "default/ns", good + more) == (35, 0)  # idempotent: re-running finishes a crashed one
    assert _stored(admin_rt, "default/ns") == [f"m{i}" for i in range(20)] + [f"n{i}" for i in range(15)]


_BAD_LINES: list[tuple[str | bytes, str]] = [
    (b'{"id": "a", "session_id": "s1", "text": "caf\xe9"}', "f:2: not UTF-8 (byte 0xe9 at offset 44)"),
    ('{"id": "a", "session_id": "s1", "text": "ok \\ud800 here"}',
     "f:2: text: holds '\\ud800', a lone surrogate that is not a character"),
    (_row("a", metadata={"k\ud800": "v"}), "f:2: metadata key 'k\\ud800': holds"),
    ('{"id": null, "session_id": "s1", "text": "hello"}', "f:2: id: must be a string, not null"),
    ('{"id": "a", "session_id": null, "text": "hello"}', "f:2: session_id: must be a string, not null"),
    ('{"id": "", "session_id": "s1", "text": "hello"}', "f:2: id: must not be empty"),
    ('{"session_id": "s1", "text": "hello"}', "f:2: id: is missing"),
    ('{"id": 7, "session_id": "s1", "text": "hello"}', "f:2: id: must be a string, not a number"),
    (_row("a", time=12345), "f:2: time: must be an ISO 8601 string or null, not a number"),
    (_row("a", time="yesterday"), "f:2: time: 'yesterday' is not an ISO 8601 time"),
    (_row("a", metadata={"k": None}), "f:2: metadata['k']: must be a string, not null"),
    (_row("a", text="   "), "f:2: text: must not be empty"),
    (_row("a", speaker="x" * 300), "f:2: speaker: longer than 255 characters"),
    (_row("a", text="nul \x00"), "f:2: text: must not contain NUL characters"),
    (_row(" a"), "f:2: id: must not contain control characters or edge spaces"),
    (_row("first"), "f:2: id: 'first' is already on f:1"),
    (_row("stored", "s2"), "f:2: id: 'stored' is already stored in session 's1' of default/ns{n}, not in 's2'"),
]


def test_a_bad_import_line_is_named_with_its_field(admin_rt: Runtime) -> None:
    """Invalid UTF-8, a lone surrogate, and what memory.write refuses used to end in a traceback without a line
    number (some after earlier batches were written); a null id or session was stored as the string "None"."""
    for n, (line, expected) in enumerate(_BAD_LINES):
        scope = f"default/ns{n}"
        assert _import(admin_rt, scope, _row("stored") + "\n") == (1, 1)
        data = (_row("first") + "\n").encode() + (line if isinstance(line, bytes) else line.encode()) + b"\n"
        with pytest.raises(AdminError) as caught:
            _import(admin_rt, scope, data)
        assert str(caught.value).startswith(expected.format(n=n)), (line, str(caught.value))
        assert _stored(admin_rt, scope) == ["stored"]


def test_import_reads_a_pipe_once_and_accepts_a_byte_order_mark(admin_rt: Runtime) -> None:
    read, write = os.pipe()
    with os.fdopen(write, "wb") as w:
        w.write(b"\xef\xbb\xbf" + "".join(_row(f"m{i}", f"s{i % 3}") + "\n" for i in range(50)).encode())
    with os.fdopen(read, "rb") as r:
        assert not r.seekable()
        assert import_messages(admin_rt, "default/ns", r, "<stdin>") == (50, 50)
    assert _stored(admin_rt, "default/ns") == [f"m{i}" for i in range(50)]


# -- beside a running server ------------------------------------------------------------------------------------


def test_import_and_reindex_refuse_a_sqlite_database_a_server_has_open(make_server, tmp_path: Path) -> None:
    """They used to report success while the running server went on answering from caches that missed it."""
    data = tmp_path / "data"
    srv = make_server(data_dir=data, embedding_model="hashing")
    srv.client.write("ns", "s1", [{"id": "a", "speaker": "Ann", "text": "I adopted a cat named Miso"}])
    for args, stdin in ((["import", "--namespace", "ns", "-"], _row("x") + "\n"), (["reindex"], None)):
        done = _cli("admin", *args, "--data-dir", str(data), stdin=stdin)
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
        assert "is open in another process, most likely a running `agentrt serve`" in done.stderr
    exported = _cli("admin", "export", "--data-dir", str(data), "--namespace", "ns")  # reading is fine
    assert exported.returncode == 0 and [json.loads(x)["id"] for x in exported.stdout.splitlines()] == ["a"]
    srv.stop()
    done = _cli("admin", "import", "--data-dir", str(data), "--namespace", "ns", "-", stdin=_row("x") + "\n")
    assert done.returncode == 0 and json.loads(done.stdout)["written"] == 1, done.stderr


def test_a_server_cannot_start_while_an_import_changes_its_sqlite_database(make_server, tmp_path: Path) -> None:
    """It would cache the half-imported namespace and miss the rest: the import holds the serve lock."""
    from runtime.embedded import EmbeddedServer
    from runtime.server import StartupError

    data = tmp_path / "data"
    make_server(data_dir=data, embedding_model="hashing").stop()
    importing = subprocess.Popen([sys.executable, "-m", "runtime.cli", "admin", "import", "--data-dir", str(data),
                                  "--namespace", "ns", "-"], cwd=REPO, env=ENV, stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lock = data / "agentrt.db.serve.lock"
        assert wait_for(lambda: lock.read_text() == str(importing.pid), timeout=120), importing.poll()
        with pytest.raises(StartupError, match=rf"in use by another agentrt process \(pid {importing.pid}\)"):
            EmbeddedServer(make_settings(data_dir=data, embedding_model="hashing"))
        out, err = importing.communicate(_row("late") + "\n", timeout=300)
        assert importing.returncode == 0 and json.loads(out)["written"] == 1, err
    finally:
        if importing.poll() is None:
            importing.kill()
    srv = make_server(data_dir=data, embedding_model="hashing")
    assert srv.client.memory.Get(memory_pb2.GetRequest(namespace="ns", message_ids=["late"])).messages


@pytest.mark.postgres
def test_import_beside_postgres_replicas_reaches_them(make_server, pg_url: str, tmp_path: Path) -> None:
    """The import used to write without publishing on the change feed: running replicas never saw the messages."""
    srv = make_server(data_dir=tmp_path / "replica", db_url=pg_url, embedding_model="hashing")
    srv.client.write("ns", "s1", [{"id": "a", "speaker": "Ann", "text": "I adopted a cat named Miso"}])
    rows = "".join(_row(f"x{i}", "s9", text=f"zebra giraffe number {i}") + "\n" for i in range(5))
    done = _cli("admin", "import", "--database-url", pg_url, "--data-dir", str(tmp_path / "admin"),
                "--namespace", "ns", "-", stdin=rows)
    assert done.returncode == 0 and json.loads(done.stdout)["written"] == 5, done.stderr

    def seen() -> set[str]:
        return {i for h in srv.client.search("ns", "zebra giraffe", top_k=10).hits for i in h.message_ids}

    assert wait_for(lambda: {"x0", "x1"} <= seen(), timeout=20, interval=0.2), seen()


# -- reindex, export and serve ----------------------------------------------------------------------------------


def test_reindex_of_a_tenant_rebuilds_only_its_namespaces(admin_rt: Runtime) -> None:
    """``--tenant`` without ``--namespace`` used to reindex every tenant, and an unknown tenant was no error."""
    for scope in ("acme/n1", "acme/n2", "other/n3"):
        assert _import(admin_rt, scope, _row("a") + "\n") == (1, 1)
    assert reindex_scopes(admin_rt, "acme", None) == ["acme/n1", "acme/n2"]
    assert reindex_scopes(admin_rt, None, None) == ["acme/n1", "acme/n2", "other/n3"]
    assert reindex_scopes(admin_rt, "other", "n3") == ["other/n3"]
    with pytest.raises(AdminError, match="namespace 'n1' of tenant 'default' does not exist"):
        reindex_scopes(admin_rt, None, "n1")
    with pytest.raises(AdminError, match="tenant 'nosuch' has no namespaces"):
        reindex_scopes(admin_rt, "nosuch", None)


def test_export_into_a_closed_pipe_stops_quietly_and_writes_utf8(tmp_path: Path) -> None:
    """``export | head -1`` used to report the closed pipe as a database failure (exit 2); a non-UTF-8 locale
    ended in a UnicodeEncodeError traceback."""
    data = str(tmp_path / "data")
    assert _cli("migrate", "--data-dir", data).returncode == 0
    padded = (_row(f"m{i}", text="pad " * 1000) + "\n" for i in range(40))  # well over a pipe's 64 KiB
    rows = "".join([_row("u", text="ünïcode 🐈") + "\n", *padded])
    assert _cli("admin", "import", "--data-dir", data, "--namespace", "ns", "-", stdin=rows).returncode == 0
    proc = subprocess.Popen([sys.executable, "-m", "runtime.cli", "admin", "export", "--data-dir", data,
                             "--namespace", "ns"], cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    assert json.loads(proc.stdout.readline())["id"] == "u"
    proc.stdout.close()
    assert proc.wait(120) == 0
    assert proc.stderr.read() == b""
    proc.stderr.close()
    ascii_locale = subprocess.run([sys.executable, "-m", "runtime.cli", "admin", "export", "--data-dir", data,
                                   "--namespace", "ns"], cwd=REPO, env={**ENV, "PYTHONIOENCODING": "ascii"},
                                  capture_output=True, timeout=300)
    assert ascii_locale.returncode == 0, ascii_locale.stderr
    assert json.loads(ascii_locale.stdout.splitlines()[0].decode("utf-8"))["text"] == "ünïcode 🐈"


def test_serve_that_cannot_open_its_database_prints_one_line(tmp_path: Path) -> None:
    """Anything but a StartupError used to end `agentrt serve` in a traceback with exit code 1."""
    (tmp_path / "afile").touch()
    for args in (["--database-url", "bogus://x"], ["--database-url", "not a url"],
                 ["--data-dir", str(tmp_path / "afile")]):
        done = _cli("serve", *args, "--port", "0", "--metrics-port", "-1")
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
        assert "Traceback" not in done.stderr


@pytest.mark.parametrize("error", [PermissionError(13, "Permission denied", "/srv/port"),
                                   ImportError("No module named 'MySQLdb'"), ArgumentError("bad URL")])
def test_serve_names_any_start_failure_in_one_line(
    error: Exception, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """What start-up raises other than StartupError (server.py maps the failures it knows) is one line and exit
    code 2 too, not a traceback."""
    import runtime.server
    from runtime import cli

    async def failing(*_args: object, **_kwargs: object) -> int:
        raise error

    monkeypatch.setattr(runtime.server, "serve", failing)
    assert cli._serve(make_settings(data_dir=tmp_path), None) == 2
    err = capsys.readouterr().err
    assert err.startswith("agentrt: ") and err.count("\n") == 1 and str(error).split(":")[0] in err, err


def test_readme_gives_the_import_file_argument() -> None:
    synopsis = (REPO / "README.md").read_text().split("CLI: ", 1)[1].split("\n\n", 1)[0]
    assert "agentrt admin import --namespace NS [--tenant T] FILE|-" in " ".join(synopsis.split())
