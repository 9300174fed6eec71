"""Hostile-input machinery, generic over the proto descriptors (no per-RPC code).

- ``api_methods()``: every RPC of every ``agentrt.v1.*_pb2`` module, found by importing the package's
  modules and walking ``DESCRIPTOR.services_by_name``, so RPCs added by others are covered automatically.
- ``request_strategy(desc)``: hypothesis strategy building random and adversarial messages from a message
  descriptor: huge strings, NUL and odd unicode, deep or invalid JSON in ``*_json`` fields, huge maps,
  NaN/inf/negative/giant numbers, unknown enum values, thousands of repeated elements, empty fields.
- ``invalid_utf8_payloads(desc)``: raw wire bytes putting invalid UTF-8 into each string field (nested ones
  too), which the generated classes refuse to build, so they are encoded by hand.
- ``Snapshotter(engine)()``: every row of every table, for "nothing stored changes on rejected calls".
"""

from __future__ import annotations

import importlib
import json
import math
import pkgutil
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import agentrt.v1
import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st
from sqlalchemy import Engine, MetaData, Table, inspect, select

# Statuses a hostile request may get. INTERNAL and UNKNOWN mean an unmapped exception escaped a servicer.
ALLOWED_CODES = frozenset({
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.UNIMPLEMENTED,
})

# Rejections after which the database must be exactly as before. DEADLINE_EXCEEDED and UNAVAILABLE are
# left out: the work may have committed just before the deadline fired or the connection dropped.
STRICT_REJECTIONS = ALLOWED_CODES - {grpc.StatusCode.OK, grpc.StatusCode.DEADLINE_EXCEEDED,
                                     grpc.StatusCode.UNAVAILABLE}

NAMESPACE = "fuzz"
MAX_DEPTH = 4

INT_LIMITS = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
SPECIAL_FLOATS = [math.nan, math.inf, -math.inf, -0.0, 0.0, 1e308, -1e308, 5e-324, -1.0, 1.0, 0.5, 1e9, -1e9]
STRING_TYPES = (FieldDescriptor.TYPE_STRING,)


@dataclass(frozen=True)
class Rpc:
    """One API method with its wire path and message classes."""

    path: str
    method: MethodDescriptor
    request_cls: type[Message]
    response_cls: type[Message]

    @property
    def streaming(self) -> bool:
        return bool(self.method.server_streaming)

    def __str__(self) -> str:
        return self.path.removeprefix("/agentrt.v1.")


def api_modules() -> list[Any]:
    """Every generated ``agentrt.v1.*_pb2`` module."""
    mods = []
    for info in pkgutil.iter_modules(agentrt.v1.__path__):
        if info.name.endswith("_pb2"):
            mods.append(importlib.import_module(f"agentrt.v1.{info.name}"))
    return mods


def api_methods() -> list[Rpc]:
    """Every RPC of the API, sorted by path."""
    out = []
    for module in api_modules():
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                if method.client_streaming:
                    continue  # not part of the API; the server would not wrap it either
                out.append(Rpc(
                    path=f"/{service.full_name}/{method.name}",
                    method=method,
                    request_cls=message_factory.GetMessageClass(method.input_type),
                    response_cls=message_factory.GetMessageClass(method.output_type),
                ))
    return sorted(out, key=lambda r: r.path)


# ----------------------------------------------------------------------------------------------- strings

def _deep_json(depth: int) -> str:
    return "[" * depth + "]" * depth


def _nested_object(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


_ODD_TEXT = [
    "", " ", "\x00", "a\x00b", "\u202e\u200b\ufeff", "\U0001f600" * 50, "../../etc/passwd", "%s%n%x",
    "'; DROP TABLE namespaces; --", "\\", "\n" * 100, "null", "NaN", "-1", "*", "?", "/", "a/b", "tenant/ns",
]
_HUGE_SIZES = [10_000, 200_000, 1_000_000]


def _huge_text() -> st.SearchStrategy[str]:
    chars = st.sampled_from(["x", "é", "\U0001f600", "a b "])
    return st.builds(lambda size, ch: ch * size, st.sampled_from(_HUGE_SIZES), chars)


def plain_text(max_size: int = 40) -> st.SearchStrategy[str]:
    return st.text(max_size=max_size)


def generic_text() -> st.SearchStrategy[str]:
    return st.one_of(
        plain_text(),
        st.sampled_from(_ODD_TEXT),
        _huge_text(),
        st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=200),
    )


def json_text() -> st.SearchStrategy[str]:
    """Mostly plausible JSON, plus invalid, deeply nested and huge documents."""
    leaves = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), plain_text(20))
    plausible = st.recursive(
        leaves,
        lambda children: st.one_of(st.lists(children, max_size=4),
                                   st.dictionaries(plain_text(10), children, max_size=4)),
        max_leaves=12,
    ).map(json.dumps)
    return st.one_of(
        plausible,
        st.just("{}"),
        st.sampled_from(["", "{", "[1,", "NaN", "Infinity", '{"a": NaN}', "\x00", '"str"', "1e999", "-0"]),
        st.sampled_from([10, 1000, 100_000]).map(_deep_json),
        st.sampled_from([10, 1000, 50_000]).map(_nested_object),
        st.sampled_from([10_000, 500_000]).map(lambda n: json.dumps({"k": "v" * n})),
        st.sampled_from([1000, 20_000]).map(lambda n: json.dumps({f"k{i}": i for i in range(n)})),
        plain_text(),
    )


def url_text() -> st.SearchStrategy[str]:
    """URLs that stay on this machine (nothing is reachable outside it anyway), plus malformed ones."""
    return st.one_of(
        st.sampled_from([
            "", "http://127.0.0.1:9/", "http://127.0.0.1:1/x", "http://[::1", "ftp://127.0.0.1/",
            "file:///etc/passwd", "http://localhost:0/", "not a url", "http://127.0.0.1:99999/",
            "unix:///tmp/none.sock", "http://user:pw@127.0.0.1:9/?" + "q" * 5000,
        ]),
        plain_text(),
    )


# Process-spawning fields (MCP stdio servers): only harmless commands, never random programs.
_SAFE_COMMANDS = ["", "/nonexistent/agentrt-fuzz", "false", "true", "\x00", "x" * 5000]


def namespace_text() -> st.SearchStrategy[str]:
    """Mostly the fuzz namespace (so the call reaches the component), sometimes hostile names."""
    return st.one_of(
        st.just(NAMESPACE), st.just(NAMESPACE), st.just(NAMESPACE),
        st.sampled_from(["", "other", "a" * 129, "a" * 5000, "../x", "t/x", "Ünïcode", "\x00", " fuzz", "*"]),
        plain_text(20),
    )


def id_text() -> st.SearchStrategy[str]:
    return st.one_of(
        st.text(alphabet="abcdef0123456789-_", min_size=1, max_size=12),
        st.sampled_from(["", "\x00", "x" * 10_000, "../1", "%", "NaN"]),
        plain_text(10),
    )


def string_strategy(fd: FieldDescriptor, small: bool = False) -> st.SearchStrategy[str]:
    name = fd.name
    if small and name != "namespace":
        return plain_text(20)
    if name == "namespace":
        return namespace_text()
    if name.endswith("_json"):
        return json_text()
    if "url" in name:
        return url_text()
    if name in ("command", "cwd"):
        return st.sampled_from(_SAFE_COMMANDS)
    if name == "id" or name.endswith("_id"):
        return id_text()
    return generic_text()


# ------------------------------------------------------------------------------------------- scalars

def int_strategy(fd: FieldDescriptor) -> st.SearchStrategy[int]:
    lo, hi = INT_LIMITS[fd.type]
    edges = sorted({v for v in (0, 1, -1, 2, 3, 5, 10, 100, 1000, 10**6, lo, hi, lo + 1, hi - 1) if lo <= v <= hi})
    return st.one_of(st.sampled_from(edges), st.integers(lo, hi), st.integers(max(lo, -10), min(hi, 50)))


def float_strategy(fd: FieldDescriptor) -> st.SearchStrategy[float]:
    width = 32 if fd.type == FieldDescriptor.TYPE_FLOAT else 64
    return st.one_of(st.sampled_from(SPECIAL_FLOATS), st.floats(width=width),
                     st.floats(-30.0, 1.0, width=width))


def enum_strategy(fd: FieldDescriptor) -> st.SearchStrategy[int]:
    known = [v.number for v in fd.enum_type.values]
    # proto3 enums are open: unknown numbers arrive as plain ints and must be rejected cleanly.
    return st.one_of(st.sampled_from(known), st.sampled_from(known),
                     st.sampled_from([-1, max(known) + 1, 99, 2**31 - 1, -(2**31)]))


def _is_map(fd: FieldDescriptor) -> bool:
    return fd.message_type is not None and fd.message_type.GetOptions().map_entry


def _is_repeated(fd: FieldDescriptor) -> bool:
    rep = getattr(fd, "is_repeated", None)
    if rep is not None:
        return bool(rep)
    return fd.label == FieldDescriptor.LABEL_REPEATED


def scalar_strategy(fd: FieldDescriptor, depth: int, small: bool = False) -> st.SearchStrategy[Any]:
    t = fd.type
    if t in STRING_TYPES:
        return string_strategy(fd, small)
    if t == FieldDescriptor.TYPE_BYTES:
        if small:
            return st.binary(max_size=16)
        return st.one_of(st.binary(max_size=64), st.just(b"\xff\xfe\xfd" * 1000), st.just(b""))
    if t == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return float_strategy(fd)
    if t == FieldDescriptor.TYPE_ENUM:
        return enum_strategy(fd)
    if t in INT_LIMITS:
        return int_strategy(fd)
    if t == FieldDescriptor.TYPE_MESSAGE:
        return _message(fd.message_type, depth + 1, small)
    raise AssertionError(f"unhandled field type {t} of {fd.full_name}")


def _many(elem: st.SearchStrategy[Any]) -> st.SearchStrategy[list[Any]]:
    # Thousands of copies of one small element: cheap to generate, hostile to per-element work, and the
    # message stays a few MB at most.
    return st.builds(lambda e, n: [e] * n, elem, st.sampled_from([100, 1000, 5000]))


def repeated_strategy(fd: FieldDescriptor, depth: int, small: bool = False) -> st.SearchStrategy[list[Any]]:
    elem = scalar_strategy(fd, depth, small)
    if small:
        return st.lists(elem, max_size=3)
    many = _many(scalar_strategy(fd, depth, small=True))
    return st.one_of(st.lists(elem, max_size=4), st.lists(elem, max_size=4), many, st.just([]))


def map_strategy(fd: FieldDescriptor, depth: int, small: bool = False) -> st.SearchStrategy[dict[Any, Any]]:
    key_fd = fd.message_type.fields_by_name["key"]
    value_fd = fd.message_type.fields_by_name["value"]
    keys: st.SearchStrategy[Any] = plain_text(20) if key_fd.type in STRING_TYPES \
        else scalar_strategy(key_fd, depth, True)
    values = scalar_strategy(value_fd, depth, True)
    few = st.dictionaries(keys, values, max_size=5)
    if small:
        return few
    if key_fd.type in STRING_TYPES and value_fd.type in STRING_TYPES:
        huge = st.one_of(
            st.sampled_from([1000, 20_000]).map(lambda n: {f"k{i}": "v" for i in range(n)}),
            st.just({"k" * 100_000: "v"}),
            st.sampled_from([1000, 50_000]).map(lambda d: {"nested": _nested_object(d)}),
            st.just({"": "", "\x00": "\x00"}),
        )
        return st.one_of(few, few, huge)
    return few


def field_strategy(fd: FieldDescriptor, depth: int, small: bool = False) -> st.SearchStrategy[Any]:
    if _is_map(fd):
        return map_strategy(fd, depth, small)
    if _is_repeated(fd):
        return repeated_strategy(fd, depth, small)
    return scalar_strategy(fd, depth, small)


def _assign(msg: Message, fd: FieldDescriptor, value: Any) -> None:
    name = fd.name
    if _is_map(fd):
        target = getattr(msg, name)
        value_fd = fd.message_type.fields_by_name["value"]
        for k, v in value.items():
            if value_fd.type == FieldDescriptor.TYPE_MESSAGE:
                target[k].CopyFrom(v)
            else:
                target[k] = v
    elif _is_repeated(fd):
        getattr(msg, name).extend(value)
    elif fd.type == FieldDescriptor.TYPE_MESSAGE:
        getattr(msg, name).CopyFrom(value)
    else:
        setattr(msg, name, value)


@st.composite
def _message(draw: st.DrawFn, desc: Descriptor, depth: int, small: bool = False) -> Message:
    msg = message_factory.GetMessageClass(desc)()
    for fd in desc.fields:
        # Deeper messages are mostly empty, which keeps examples small and lets shrinking find minimal cases.
        keep = 0.85 if fd.name == "namespace" else (0.6 if depth == 0 else 0.4)
        if depth >= MAX_DEPTH and fd.type == FieldDescriptor.TYPE_MESSAGE:
            continue
        if draw(st.floats(0, 1)) > keep:
            continue
        _assign(msg, fd, draw(field_strategy(fd, depth, small)))
    return msg


def request_strategy(desc: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """Random and adversarial instances of the message ``desc``."""
    return _message(desc, depth)


# ------------------------------------------------------------------------------------------- wire level

def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def length_delimited(number: int, payload: bytes) -> bytes:
    """One wire-type-2 field (string, bytes, embedded message, map entry)."""
    return _varint((number << 3) | 2) + _varint(len(payload)) + payload


INVALID_UTF8 = [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"ok\xf0\x28\x8c\x28", b"\xc0\xaf"]


def string_field_paths(desc: Descriptor, depth: int = 0, prefix: tuple[FieldDescriptor, ...] = ()) \
        -> Iterator[tuple[FieldDescriptor, ...]]:
    """Paths (tuples of fields) to every string field reachable within a few levels, map keys included."""
    for fd in desc.fields:
        path = (*prefix, fd)
        if fd.type in STRING_TYPES:
            yield path
        elif fd.type == FieldDescriptor.TYPE_MESSAGE and depth < 2:
            yield from string_field_paths(fd.message_type, depth + 1, path)


def encode_path(path: tuple[FieldDescriptor, ...], leaf: bytes) -> bytes:
    payload = leaf
    for fd in reversed(path):
        payload = length_delimited(fd.number, payload)
    return payload


def invalid_utf8_payloads(desc: Descriptor) -> list[tuple[str, bytes]]:
    """(field path, request bytes) with invalid UTF-8 in that string field; a valid namespace is kept so
    the failure cannot come from an empty namespace instead."""
    out = []
    ns = desc.fields_by_name.get("namespace")
    prefix = length_delimited(ns.number, NAMESPACE.encode()) if ns is not None and ns.type in STRING_TYPES else b""
    for i, path in enumerate(string_field_paths(desc)):
        bad = INVALID_UTF8[i % len(INVALID_UTF8)]
        name = ".".join(fd.name for fd in path)
        out.append((name, prefix + encode_path(path, bad)))
    return out


# ------------------------------------------------------------------------------------------- database

COUNTER_TABLE = "zz_fuzz_changes"
AUDIT_SUFFIX = "_audit"


class Snapshotter:
    """Reads every row of every table: those the components declare (``runtime.schema.all_metadata()``)
    and any other table in the database (e.g. LangGraph's checkpoint tables)."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._reflected = MetaData()
        self._tables: dict[str, Table] = {}

    def _table(self, name: str, conn: Any) -> Table:
        if name not in self._tables:
            self._tables[name] = Table(name, self._reflected, autoload_with=conn)
        return self._tables[name]

    def __call__(self) -> dict[str, dict[int, tuple[Any, ...]]]:
        """{table: {row digest: row}}; rows are compared by digest (fast even with megabyte cells)."""
        from runtime.schema import all_metadata

        present = present_tables(self.engine)
        declared = {t.name for md in all_metadata() for t in md.sorted_tables}
        out: dict[str, dict[int, tuple[Any, ...]]] = {}
        with self.engine.connect() as conn:
            for name in sorted(present | declared):
                rows: dict[int, tuple[Any, ...]] = {}
                if name in present:
                    for row in conn.execute(select(self._table(name, conn))):
                        key = hash(tuple(_cell(v) for v in row))
                        # Identical rows (tables without a key) are counted apart.
                        while key in rows:
                            key += 1
                        rows[key] = tuple(row)
                out[name] = rows
        return out


def present_tables(engine: Engine) -> set[str]:
    """Tables in the database, without the change counter."""
    return set(inspect(engine).get_table_names()) - {COUNTER_TABLE}


class ChangeWatch:
    """Cheap exact "did anything write?" for the fuzz loop, so full snapshots are only taken when needed.

    Triggers on every table bump one counter row on INSERT/UPDATE/DELETE (inside the writer's transaction,
    so a rolled-back write leaves the counter as it was). ``before()`` returns the full snapshot, re-read
    only when the counter or the table set moved since the last one; ``changed_since(snap)`` compares
    counter and table set first and reads (and diffs) every row only when they moved, so an UPDATE that
    rewrote identical values is not reported.
    """

    def __init__(self, engine: Engine):
        self.engine = engine
        self.snapshot = Snapshotter(engine)
        self._watched: set[str] = set()
        self._last: tuple[int, frozenset[str], dict[str, dict[int, tuple[Any, ...]]]] | None = None
        with engine.begin() as conn:
            conn.exec_driver_sql(f"CREATE TABLE IF NOT EXISTS {COUNTER_TABLE} (n BIGINT NOT NULL)")
            if conn.exec_driver_sql(f"SELECT count(*) FROM {COUNTER_TABLE}").scalar() == 0:
                conn.exec_driver_sql(f"INSERT INTO {COUNTER_TABLE} (n) VALUES (0)")
            if engine.dialect.name == "postgresql":
                conn.exec_driver_sql(
                    f"CREATE OR REPLACE FUNCTION zz_fuzz_bump() RETURNS trigger AS $$ BEGIN "
                    f"UPDATE {COUNTER_TABLE} SET n = n + 1; RETURN NULL; END $$ LANGUAGE plpgsql")

    def _watch_new_tables(self) -> frozenset[str]:
        tables = present_tables(self.engine)
        new = tables - self._watched
        if new:
            with self.engine.begin() as conn:
                for name in sorted(new):
                    self._install(conn, name)
            self._watched |= new
        return frozenset(tables)

    def _install(self, conn: Any, table: str) -> None:
        quoted = self.engine.dialect.identifier_preparer.quote(table)
        if self.engine.dialect.name == "postgresql":
            conn.exec_driver_sql(
                f"CREATE OR REPLACE TRIGGER zz_fuzz_{zlib.crc32(table.encode())} "
                f"AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON {quoted} "
                f"FOR EACH STATEMENT EXECUTE FUNCTION zz_fuzz_bump()")
            return
        for op in ("INSERT", "UPDATE", "DELETE"):
            conn.exec_driver_sql(
                f"CREATE TRIGGER IF NOT EXISTS zz_fuzz_{op.lower()}_{zlib.crc32(table.encode())} "
                f"AFTER {op} ON {quoted} BEGIN UPDATE {COUNTER_TABLE} SET n = n + 1; END")

    def _counter(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.exec_driver_sql(f"SELECT n FROM {COUNTER_TABLE}").scalar() or 0)

    def before(self) -> tuple[int, frozenset[str], dict[str, dict[int, tuple[Any, ...]]]]:
        tables = self._watch_new_tables()
        count = self._counter()
        if self._last is None or self._last[0] != count or self._last[1] != tables:
            self._last = (count, tables, self.snapshot())
        return self._last

    def wait_quiet(self, quiet_s: float = 0.5, timeout_s: float = 15.0) -> None:
        """Return once nothing has written for ``quiet_s`` seconds (or after ``timeout_s``)."""
        deadline = time.monotonic() + timeout_s
        last, since = self._counter(), time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.05)
            now = self._counter()
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet_s:
                return

    def changed_since(self, before: tuple[int, frozenset[str], dict[str, dict[int, tuple[Any, ...]]]],
                      *, allow_new_namespaces: bool = True) -> str:
        """Empty when nothing stored changed since ``before``, else the difference (see diff_snapshots)."""
        count, tables, rows = before
        now_tables = frozenset(present_tables(self.engine))
        if self._counter() == count and now_tables == tables:
            return ""
        after = self.snapshot()
        return diff_snapshots(rows, after, allow_new_namespaces=allow_new_namespaces)


_HASHABLE = (str, bytes, int, bool, type(None), datetime, date, Decimal)


def _cell(value: Any) -> Any:
    # NaN floats hash by identity and JSON columns arrive as dicts: compare those by their repr.
    return value if isinstance(value, _HASHABLE) else repr(value)


def diff_snapshots(before: dict[str, dict[int, tuple[Any, ...]]], after: dict[str, dict[int, tuple[Any, ...]]],
                   *, allow_new_namespaces: bool = False) -> str:
    """Empty when equal, else which tables changed and how (first rows only).

    With ``allow_new_namespaces``, rows *added* for a namespace that was registered by this very change
    (a new row in ``namespaces``) are accepted: every valid namespace exists implicitly, and the first call
    naming one may materialise it with the tenant's defaults (issue #2). Anything removed, and any row added
    to a namespace that existed before, still counts. Audit trails (tables named ``*_audit``) are exempt:
    recording a refused attempt is what they are for.
    """
    new_keys: set[str] = set()
    if allow_new_namespaces:
        b_ns, a_ns = before.get("namespaces", {}), after.get("namespaces", {})
        new_keys = {str(a_ns[k][0]) for k in a_ns.keys() - b_ns.keys()}
    lines = []
    for name in sorted(set(before) | set(after)):
        b, a = before.get(name, {}), after.get(name, {})
        if b.keys() == a.keys() or name.endswith(AUDIT_SUFFIX):
            continue
        added = [a[k] for k in a.keys() - b.keys()]
        removed = [b[k] for k in b.keys() - a.keys()]
        added = [row for row in added if not any(isinstance(v, str) and v in new_keys for v in row)]
        if added or removed:
            lines.append(f"{name}: +{len(added)} -{len(removed)} rows; "
                         f"added {_short(added[:3])} removed {_short(removed[:3])}")
    return "\n".join(lines)


def _short(rows: list[tuple[Any, ...]]) -> str:
    text = repr([tuple(str(v)[:80] for v in row) for row in rows])
    return text if len(text) < 400 else text[:400] + "…"


# ----------------------------------------------------------------------------------- single-field sweep

_TIMESTAMP = "google.protobuf.Timestamp"


def _scalar_mutations(fd: FieldDescriptor) -> list[tuple[str, Any]]:
    t = fd.type
    if t in STRING_TYPES:
        if fd.name == "namespace":
            return [("empty", ""), ("dotdot", "../x"), ("long", "a" * 5000), ("nul", "fuzz\x00")]
        out: list[tuple[str, Any]] = [("nul", "a\x00b"), ("1MB", "x" * 1_000_000)]
        if fd.name.endswith("_json"):
            out += [("deep-array", _deep_json(100_000)), ("deep-object", _nested_object(50_000)),
                    ("invalid", "{"), ("nan", '{"a": NaN}')]
        return out
    if t == FieldDescriptor.TYPE_BYTES:
        return [("invalid-utf8", b"\xff\xfe" * 1000)]
    if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return [("nan", math.nan), ("inf", math.inf), ("-inf", -math.inf)]
    if t == FieldDescriptor.TYPE_ENUM:
        return [("unknown", 99), ("negative", -1)]
    if t in INT_LIMITS:
        lo, hi = INT_LIMITS[t]
        return [("min", lo), ("max", hi)] + ([("-1", -1)] if lo < 0 else [])
    return []


def _timestamp_mutations() -> list[tuple[str, dict[str, int]]]:
    return [("min-seconds", {"seconds": -(2**63)}), ("max-seconds", {"seconds": 2**63 - 1}),
            ("negative-nanos", {"seconds": 1, "nanos": -5}), ("huge-nanos", {"nanos": 2**31 - 1})]


def _set_leaf(msg: Message, fd: FieldDescriptor, value: Any) -> None:
    if _is_map(fd):
        _assign(msg, fd, value)
    elif _is_repeated(fd):
        getattr(msg, fd.name).extend(value)
    else:
        setattr(msg, fd.name, value)


def _field_mutations(fd: FieldDescriptor, depth: int) -> Iterator[tuple[str, Any]]:
    """(label, apply(msg)) for one field: hostile leaf values, or mutations of the message inside it."""
    if _is_map(fd):
        key_fd = fd.message_type.fields_by_name["key"]
        value_fd = fd.message_type.fields_by_name["value"]
        if key_fd.type in STRING_TYPES and value_fd.type in STRING_TYPES:
            yield "20k-entries", lambda m: _set_leaf(m, fd, {f"k{i}": "v" for i in range(20_000)})
            yield "deep-json-value", lambda m: _set_leaf(m, fd, {"k": _nested_object(50_000)})
            yield "nul", lambda m: _set_leaf(m, fd, {"k\x00": "v\x00"})
        return
    if fd.type == FieldDescriptor.TYPE_MESSAGE:
        if fd.message_type.full_name == _TIMESTAMP:
            for label, values in _timestamp_mutations():
                yield label, (lambda v: lambda m: _message_at(m, fd).MergeFrom(
                    message_factory.GetMessageClass(fd.message_type)(**v)))(values)
            return
        if _is_repeated(fd):
            yield "5000-elements", lambda m: getattr(m, fd.name).extend(
                [message_factory.GetMessageClass(fd.message_type)()] * 5000)
        if depth < 2:
            for sub in fd.message_type.fields:
                for label, apply in _field_mutations(sub, depth + 1):
                    yield f"{sub.name}:{label}", (lambda a: lambda m: a(_message_at(m, fd)))(apply)
        return
    if _is_repeated(fd):
        muts = _scalar_mutations(fd)
        small = muts[0][1] if muts else ("x" if fd.type in STRING_TYPES else 0)
        yield "5000-elements", lambda m: getattr(m, fd.name).extend([small] * 5000)
        for label, value in muts[:2]:
            yield label, (lambda v: lambda m: getattr(m, fd.name).append(v))(value)
        return
    for label, value in _scalar_mutations(fd):
        yield label, (lambda v: lambda m: setattr(m, fd.name, v))(value)


def _message_at(msg: Message, fd: FieldDescriptor) -> Message:
    """The sub-message of ``fd`` (the first element, added, for a repeated field)."""
    if _is_repeated(fd):
        container = getattr(msg, fd.name)
        return container[0] if len(container) else container.add()
    return getattr(msg, fd.name)  # type: ignore[no-any-return]


def plausible(desc: Descriptor, depth: int = 0) -> Message:
    """A request with every field set to a harmless, valid-looking value (so a hostile value in one field
    gets past the checks of the others): strings "x", ``*_json`` "{}", URLs on a closed loopback port,
    numbers 1, enums their first named value, one element in repeated fields, sub-messages two levels deep."""
    msg = message_factory.GetMessageClass(desc)()
    for fd in desc.fields:
        if fd.containing_oneof is not None and fd.containing_oneof.fields[0] is not fd:
            continue  # one member per oneof
        if _is_map(fd):
            continue
        value: Any
        t = fd.type
        if t == FieldDescriptor.TYPE_MESSAGE:
            if depth >= 2 or fd.message_type.full_name == _TIMESTAMP:
                continue
            sub = plausible(fd.message_type, depth + 1)
            if _is_repeated(fd):
                getattr(msg, fd.name).append(sub)
            else:
                getattr(msg, fd.name).CopyFrom(sub)
            continue
        if t in STRING_TYPES:
            value = (NAMESPACE if fd.name == "namespace" else "{}" if fd.name.endswith("_json")
                     else "http://127.0.0.1:9/" if "url" in fd.name
                     else "/nonexistent/agentrt-fuzz" if fd.name == "command" else "x")
        elif t == FieldDescriptor.TYPE_BYTES:
            value = b"x"
        elif t == FieldDescriptor.TYPE_BOOL:
            continue
        elif t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
            value = 0.5
        elif t == FieldDescriptor.TYPE_ENUM:
            value = fd.enum_type.values[1].number if len(fd.enum_type.values) > 1 else 0
        elif t in INT_LIMITS:
            value = 1
        else:
            continue
        if _is_repeated(fd):
            getattr(msg, fd.name).append(value)
        else:
            setattr(msg, fd.name, value)
    return msg


def single_field_mutations(desc: Descriptor) -> list[tuple[str, Message]]:
    """Plausible requests (see ``plausible``) except for ONE hostile value, one per field and kind
    of hostility (NUL, 1 MB, deep JSON, NaN/inf, int extremes, unknown enums, bad Timestamps, 5,000
    elements, 20,000-entry maps), two message levels deep. Deterministic, so every run covers them all."""
    base = plausible(desc)
    out = []
    for fd in desc.fields:
        for label, apply in _field_mutations(fd, 0):
            msg = message_factory.GetMessageClass(desc)()
            msg.CopyFrom(base)  # repeated fields keep their plausible first element; nested mutations edit it
            apply(msg)
            out.append((f"{fd.name}:{label}", msg))
    return out
