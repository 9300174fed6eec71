"""The sidecar's key-value item store with embeddings: the server side of ``runtime/store.py``.

``ItemStore.batch(scope, ops)`` executes LangGraph store operations (``GetOp``, ``PutOp``,
``SearchOp``, ``ListNamespacesOp``) with the same semantics as LangGraph's ``InMemoryStore`` so a
LangGraph app sees no difference:

- reads in a batch see the state before the batch's writes; puts to one (namespace, key) collapse to
  the last one; a put with ``value=None`` deletes;
- search filters by namespace prefix and by ``filter`` (exact matches, nested dicts, ``$eq $ne $gt $gte
  $lt $lte``; see ``apply_operator`` for what the ordering operators compare), then either keeps insertion
  order or, with ``query``, ranks by cosine similarity of the query embedding to each indexed field of the
  item (max over fields); items without vectors fill the tail of a ranked page;
- a search the caller marks ``hybrid`` (not a LangGraph notion: ``SidecarStore(index={"ranking":
  "hybrid"})``) ranks the same items by the memory retriever's fusion instead, z(cosine) + z(BM25 over the
  indexed fields' words) across the matching items (``memory.retrieval.hybrid_scores``), and its
  ``score`` is that fused value. Exact words the embedding blurs (names, ids, codes) then count;
- ``list_namespaces`` lists namespaces holding items, matched by prefix/suffix patterns with ``"*"``
  wildcards, truncated to ``max_depth`` (0 truncates every namespace to the root, ``()``), sorted, then paged;
- a put whose key or namespace path (labels joined by ".") is longer than 1,000 characters, or holds a NUL
  character, is refused on every backend (Postgres could not store it); a get or search of such a key or
  namespace finds nothing, as nothing can be stored there.

Storage is behind ``ItemBackend`` (an in-memory reference and an SQL backend on ``schema.py``); the
query semantics above live once, here, on top of it.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol

import numpy as np
from langgraph.store.base import (
    GetOp,
    Item,
    ListNamespacesOp,
    MatchCondition,
    Op,
    PutOp,
    Result,
    SearchItem,
    SearchOp,
)
from langgraph.store.base.embed import get_text_at_path, tokenize_path
from sqlalchemy import Engine, delete, insert, or_, select, update

from core.embedding import Embedder
from core.errors import FieldViolation, InvalidArgumentError
from core.lexical import BM25Index
from core.sqlread import reading
from core.sqlwrite import lock_for_write
from memory.retrieval import hybrid_scores
from runtime.agent import schema

Path = tuple[str, ...]


@dataclass
class ItemRecord:
    """One stored item as a backend holds it."""

    path: Path
    key: str
    value: dict[str, Any]
    created_at: float
    updated_at: float
    # Insertion order (see schema.store_items.id).
    seq: int = 0
    # JSON path of the source text -> L2-normalised float32 vector.
    vectors: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class ItemWrite:
    """A put (``value`` set) or a delete (``value is None``), with the vectors of the new value."""

    path: Path
    key: str
    value: dict[str, Any] | None
    vectors: dict[str, np.ndarray] = field(default_factory=dict)


class ItemBackend(Protocol):
    """Storage of items per scope. Every method only ever touches rows of ``scope``."""

    def get(self, scope: str, path: Path, key: str) -> ItemRecord | None:
        """The item, without vectors, or None."""
        ...

    def scan(self, scope: str, prefix: Path, *, with_vectors: bool) -> list[ItemRecord]:
        """Items whose path starts with ``prefix``, in insertion order (``seq``)."""
        ...

    def apply(self, scope: str, writes: Sequence[ItemWrite], now: float) -> None:
        """Apply puts and deletes atomically. An update keeps ``created_at`` and ``seq``."""
        ...

    def paths(self, scope: str) -> list[Path]:
        """Distinct paths holding at least one item."""
        ...


def join_path(path: Path) -> str:
    return ".".join(path)


def split_path(text: str) -> Path:
    return tuple(text.split(".")) if text else ()


class InMemoryItemBackend:
    """Reference backend: dictionaries under a lock."""

    def __init__(self) -> None:
        self._items: dict[str, dict[tuple[Path, str], ItemRecord]] = {}
        self._seq = 0
        self._lock = threading.Lock()

    def get(self, scope: str, path: Path, key: str) -> ItemRecord | None:
        with self._lock:
            rec = self._items.get(scope, {}).get((path, key))
            return replace(rec, vectors={}) if rec else None

    def scan(self, scope: str, prefix: Path, *, with_vectors: bool) -> list[ItemRecord]:
        n = len(prefix)
        with self._lock:
            recs = [r for r in self._items.get(scope, {}).values() if r.path[:n] == prefix]
        recs.sort(key=lambda r: r.seq)
        return recs if with_vectors else [replace(r, vectors={}) for r in recs]

    def apply(self, scope: str, writes: Sequence[ItemWrite], now: float) -> None:
        with self._lock:
            items = self._items.setdefault(scope, {})
            for w in writes:
                old = items.get((w.path, w.key))
                if w.value is None:
                    items.pop((w.path, w.key), None)
                    continue
                if old is None:
                    self._seq += 1
                    seq, created = self._seq, now
                else:
                    seq, created = old.seq, old.created_at
                items[(w.path, w.key)] = ItemRecord(
                    w.path, w.key, dict(w.value), created, now, seq, dict(w.vectors)
                )

    def paths(self, scope: str) -> list[Path]:
        with self._lock:
            return list({p for (p, _k) in self._items.get(scope, {})})


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class SqlItemBackend:
    """Items in ``agent_store_items`` / ``agent_store_vectors`` (SQLite or Postgres)."""

    def __init__(self, engine: Engine):
        self._engine = engine

    def get(self, scope: str, path: Path, key: str) -> ItemRecord | None:
        t = schema.store_items
        with reading(self._engine) as conn:
            row = conn.execute(
                select(t).where(t.c.scope == scope, t.c.path == join_path(path), t.c.key == key)
            ).first()
        return _record(row) if row is not None else None

    def scan(self, scope: str, prefix: Path, *, with_vectors: bool) -> list[ItemRecord]:
        t, v = schema.store_items, schema.store_vectors
        stmt = select(t).where(t.c.scope == scope)
        if prefix:
            text = join_path(prefix)
            stmt = stmt.where(or_(t.c.path == text, t.c.path.like(_escape_like(text) + ".%", escape="\\")))
        stmt = stmt.order_by(t.c.id)
        with reading(self._engine) as conn:
            recs = [_record(row) for row in conn.execute(stmt)]
            if prefix:
                # SQLite's LIKE ignores ASCII case: ("users",) matched ("USERS", "a") too. The SQL narrows, the
                # exact label comparison decides.
                recs = [r for r in recs if r.path[: len(prefix)] == tuple(prefix)]
            if with_vectors and recs:
                by_id = {r.seq: r for r in recs}
                vstmt = (
                    select(v.c.item_id, v.c.field, v.c.vector)
                    .join(t, t.c.id == v.c.item_id)
                    .where(t.c.scope == scope)
                )
                if prefix:
                    vstmt = vstmt.where(
                        or_(t.c.path == text, t.c.path.like(_escape_like(text) + ".%", escape="\\"))
                    )
                for item_id, fld, blob in conn.execute(vstmt):
                    rec = by_id.get(item_id)
                    if rec is not None:
                        rec.vectors[fld] = np.frombuffer(blob, dtype=np.float32)
        return recs

    def apply(self, scope: str, writes: Sequence[ItemWrite], now: float) -> None:
        t, v = schema.store_items, schema.store_vectors
        with self._engine.begin() as conn:
            # Each put reads its item's id, then inserts or updates: writers of one namespace (other replicas
            # included) take turns, or two of them insert the same key.
            lock_for_write(conn, "agent-store", scope)
            for w in writes:
                where = (t.c.scope == scope, t.c.path == join_path(w.path), t.c.key == w.key)
                item_id = conn.execute(select(t.c.id).where(*where)).scalar()
                if item_id is not None:
                    # Explicit: SQLite only cascades with foreign_keys=ON, which we do not rely on.
                    conn.execute(delete(v).where(v.c.item_id == item_id))
                if w.value is None:
                    if item_id is not None:
                        conn.execute(delete(t).where(t.c.id == item_id))
                    continue
                value_json = json.dumps(w.value, ensure_ascii=False)
                if item_id is None:
                    item_id = conn.execute(
                        insert(t)
                        .values(
                            scope=scope,
                            path=join_path(w.path),
                            key=w.key,
                            value_json=value_json,
                            created_at=now,
                            updated_at=now,
                        )
                        .returning(t.c.id)
                    ).scalar_one()
                else:
                    conn.execute(update(t).where(t.c.id == item_id).values(value_json=value_json, updated_at=now))
                if w.vectors:
                    conn.execute(
                        insert(v),
                        [
                            {"item_id": item_id, "field": f, "vector": np.asarray(vec, np.float32).tobytes()}
                            for f, vec in w.vectors.items()
                        ],
                    )

    def paths(self, scope: str) -> list[Path]:
        t = schema.store_items
        with reading(self._engine) as conn:
            rows = conn.execute(select(t.c.path).where(t.c.scope == scope).distinct())
            return [split_path(r[0]) for r in rows]


def _record(row: Any) -> ItemRecord:
    return ItemRecord(
        path=split_path(row.path),
        key=row.key,
        value=json.loads(row.value_json),
        created_at=row.created_at,
        updated_at=row.updated_at,
        seq=row.id,
    )


# ------------------------------------------------------------------------------------------------
# Semantics shared by every backend


def _validate_path(path: Sequence[str], where: str, *, allow_empty: bool, stored: bool = False) -> None:
    """Labels are non-empty strings without periods ("." joins them in the path column). ``stored``: the path of a
    put, which must also fit the column and hold no NUL (Postgres text cannot)."""
    if not path and not allow_empty:
        raise InvalidArgumentError(where, "namespace cannot be empty")
    for i, label in enumerate(path):
        if not isinstance(label, str) or not label:
            raise InvalidArgumentError(f"{where}[{i}]", f"namespace label {label!r} must be a non-empty string")
        if "." in label:
            raise InvalidArgumentError(f"{where}[{i}]", f"namespace label {label!r} cannot contain periods")
        if stored and "\x00" in label:
            raise InvalidArgumentError(f"{where}[{i}]", "namespace labels cannot contain NUL characters")
    if stored and len(join_path(tuple(path))) > schema.PATH_CHARS:
        raise InvalidArgumentError(
            where, f"the namespace is {len(join_path(tuple(path)))} characters with its labels joined by '.'; at "
            f"most {schema.PATH_CHARS}"
        )


def _validate_page(limit: int, offset: int, at: str) -> None:
    # InMemoryStore slices with them, so a negative one means "all but the last n": nothing an app asks for.
    if limit < 0:
        raise InvalidArgumentError(f"{at}.limit", f"limit must be >= 0, got {limit}")
    if offset < 0:
        raise InvalidArgumentError(f"{at}.offset", f"offset must be >= 0, got {offset}")


def storable(path: Path, key: str = "") -> bool:
    """Whether an item could be stored at ``path``/``key`` (the limits ``validate_ops`` puts on a put's path and
    key): a read of anything else finds nothing, and is answered without asking a backend that may refuse it."""
    return (
        len(key) <= schema.KEY_CHARS
        and "\x00" not in key
        and not any("\x00" in label for label in path)
        and len(join_path(path)) <= schema.PATH_CHARS
    )


def validate_ops(ops: Sequence[Op], field_name: str = "ops", *, max_value_bytes: int | None = None) -> None:
    """Raise InvalidArgumentError naming the first bad op field (``ops[2].put.path[0]``).

    ``max_value_bytes``: the largest value a put may store, as UTF-8 JSON (what a reply can carry back).
    """
    for i, op in enumerate(ops):
        at = f"{field_name}[{i}]"
        if isinstance(op, GetOp):
            _validate_path(op.namespace, f"{at}.get.path", allow_empty=True)
        elif isinstance(op, PutOp):
            _validate_put(op, at, max_value_bytes)
        elif isinstance(op, SearchOp):
            _validate_path(op.namespace_prefix, f"{at}.search.path_prefix", allow_empty=True)
            _validate_page(op.limit, op.offset, f"{at}.search")
            if op.filter is not None and not isinstance(op.filter, Mapping):
                raise InvalidArgumentError(f"{at}.search.filter_json", "filter must be a JSON object")
            # Checked here, not only when an item is compared: a search of an empty prefix refuses it all the same.
            _validate_filter(op.filter, f"{at}.search.filter_json")
        elif isinstance(op, ListNamespacesOp):
            for j, cond in enumerate(op.match_conditions or ()):
                _validate_path(cond.path, f"{at}.list_namespaces.match_conditions[{j}].path", allow_empty=True)
            _validate_page(op.limit, op.offset, f"{at}.list_namespaces")
            if op.max_depth is not None and op.max_depth < 0:
                raise InvalidArgumentError(
                    f"{at}.list_namespaces.max_depth", f"max_depth must be >= 0, got {op.max_depth}"
                )
        else:
            raise InvalidArgumentError(FieldViolation(at, f"unknown operation type {type(op).__name__}"))


OPERATORS = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte")


def _validate_filter(value: Any, at: str) -> None:
    """Every ``$`` key of a filter is an operator ``compare_values`` knows, and sits in an object of operators."""
    if isinstance(value, Mapping):
        if any(isinstance(k, str) and k.startswith("$") for k in value):
            bad = [k for k in value if k not in OPERATORS]
            if bad:
                raise InvalidArgumentError(at, f"unsupported filter operator {bad[0]!r}; use {' '.join(OPERATORS)}")
            return
        for v in value.values():
            _validate_filter(v, at)
    elif isinstance(value, list | tuple):
        for v in value:
            _validate_filter(v, at)


def _validate_put(op: PutOp, at: str, max_value_bytes: int | None) -> None:
    _validate_path(op.namespace, f"{at}.put.path", allow_empty=False, stored=True)
    if op.namespace[0] == "langgraph":
        raise InvalidArgumentError(f"{at}.put.path[0]", "the root label 'langgraph' is reserved")
    # An empty key is a key like any other (InMemoryStore keeps it); "*" is an ordinary label outside match conditions.
    if len(op.key) > schema.KEY_CHARS:
        raise InvalidArgumentError(f"{at}.put.key", f"the key is {len(op.key)} characters; at most {schema.KEY_CHARS}")
    if "\x00" in op.key:
        raise InvalidArgumentError(f"{at}.put.key", "keys cannot contain NUL characters")
    if op.value is None:
        return
    if not isinstance(op.value, Mapping):
        raise InvalidArgumentError(f"{at}.put.value_json", "value must be a JSON object")
    if max_value_bytes is not None:
        # Measured as the backend will store it (and a reply will carry it), not as the client happened to send it.
        size = len(json.dumps(op.value, ensure_ascii=False).encode("utf-8", "surrogatepass"))
        if size > max_value_bytes:
            raise InvalidArgumentError(
                f"{at}.put.value_json",
                f"the value is {size} bytes as JSON; at most {max_value_bytes}, so that a reply can carry it back",
            )


def compare_values(item_value: Any, filter_value: Any) -> bool:
    """JSONB-like match of one filter value (nested dicts, lists, ``$`` operators) against a field."""
    if isinstance(filter_value, dict):
        if any(k.startswith("$") for k in filter_value):
            return all(apply_operator(item_value, k, v) for k, v in filter_value.items())
        if not isinstance(item_value, dict):
            return False
        return all(compare_values(item_value.get(k), v) for k, v in filter_value.items())
    if isinstance(filter_value, list | tuple):
        return (
            isinstance(item_value, list | tuple)
            and len(item_value) == len(filter_value)
            and all(compare_values(a, b) for a, b in zip(item_value, filter_value, strict=False))
        )
    return bool(item_value == filter_value)


def _ordered(value: Any, operand: Any) -> tuple[Any, Any] | None:
    """The pair an ordering operator compares, or None when the two have no order.

    Two strings compare as strings, by code point (LangGraph's PostgresStore compares the text of the field; its
    InMemoryStore raises on a string that is not a number). Otherwise both are read as numbers, as InMemoryStore
    reads them (so a numeric string against a number compares as a number, and true is 1); anything that is not
    a number (a word against a number, null, a missing field, a list, an object) has no order and never matches.
    """
    if isinstance(value, str) and isinstance(operand, str):
        return value, operand
    try:
        return float(value), float(operand)
    except (TypeError, ValueError):
        return None


def apply_operator(value: Any, operator: str, operand: Any) -> bool:
    """One comparison operator. ``$eq``/``$ne`` compare JSON values; ``$gt $gte $lt $lte`` see ``_ordered``."""
    if operator == "$eq":
        return bool(value == operand)
    if operator == "$ne":
        return bool(value != operand)
    if operator in ("$gt", "$gte", "$lt", "$lte"):
        pair = _ordered(value, operand)
        if pair is None:
            return False
        a, b = pair
        return bool({"$gt": a > b, "$gte": a >= b, "$lt": a < b, "$lte": a <= b}[operator])
    raise InvalidArgumentError("filter_json", f"unsupported filter operator {operator!r}; use {' '.join(OPERATORS)}")


def matches(condition: MatchCondition, path: Path) -> bool:
    """Whether ``path`` matches a prefix/suffix pattern (``"*"`` matches any one label)."""
    pattern = condition.path
    if len(path) < len(pattern):
        return False
    if condition.match_type == "prefix":
        pairs = zip(path, pattern, strict=False)
    elif condition.match_type == "suffix":
        pairs = zip(reversed(path), reversed(pattern), strict=False)
    else:
        raise InvalidArgumentError("match_type", f"unsupported match type {condition.match_type!r}")
    return all(p == "*" or a == p for a, p in pairs)


def _to_dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def _item(rec: ItemRecord) -> Item:
    return Item(
        value=rec.value, key=rec.key, namespace=rec.path,
        created_at=_to_dt(rec.created_at), updated_at=_to_dt(rec.updated_at),
    )


def _search_item(rec: ItemRecord, score: float | None) -> SearchItem:
    return SearchItem(
        namespace=rec.path, key=rec.key, value=rec.value,
        created_at=_to_dt(rec.created_at), updated_at=_to_dt(rec.updated_at), score=score,
    )


def _indexed_words(rec: ItemRecord) -> str:
    """The words of the fields ``rec`` was embedded from (its vectors' keys), for the lexical channel.

    A key is an index path whose text was found once (``"text"``, ``"meta.title"``) or a path and the position
    of one of several texts it found (``"tags[*].1"``); ``"$"`` (the whole value) contributes every string in
    the value rather than its JSON, so keys and punctuation are not words.
    """
    parts: list[str] = []
    for key in rec.vectors:
        if key == "$":
            parts.extend(_strings(rec.value))
            continue
        found = get_text_at_path(rec.value, tokenize_path(key))
        if not found:
            base, _, pos = key.rpartition(".")
            if base and pos.isdigit():
                texts = get_text_at_path(rec.value, tokenize_path(base))
                found = texts[int(pos) : int(pos) + 1]
        parts.extend(found)
    return "\n".join(parts)


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, Mapping):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _lexical_scores(query: str, recs: Sequence[ItemRecord]) -> np.ndarray:
    """BM25 of ``query`` against each record's indexed words, its statistics (idf, average length) taken over
    ``recs``: the items the search matched, the store's analogue of the retriever's candidate pool."""
    index = BM25Index()
    index.add_many((i, _indexed_words(r)) for i, r in enumerate(recs))
    return np.asarray(index.score(query, range(len(recs))), dtype=np.float64)


def _group_by_namespace(recs: list[ItemRecord]) -> list[ItemRecord]:
    # Namespaces in order of their oldest item, items in insertion order: LangGraph's InMemoryStore order.
    groups: dict[Path, list[ItemRecord]] = {}
    for r in recs:
        groups.setdefault(r.path, []).append(r)
    return [r for g in groups.values() for r in g]


class ItemStore:
    """Executes batches of LangGraph store operations for one scope on a backend, embedding as needed."""

    def __init__(self, backend: ItemBackend, embedder: Embedder | None, *, max_value_bytes: int | None = None):
        """``max_value_bytes``: the largest value a put may store, as UTF-8 JSON; the server sets it so that any
        stored value fits in a reply (``runtime.convert.agent.max_value_bytes``). None: no limit."""
        self.backend = backend
        self.embedder = embedder
        self.max_value_bytes = max_value_bytes

    def batch(self, scope: str, ops: Sequence[Op], *, hybrid: Collection[int] = ()) -> list[Result]:
        """Run ``ops`` in order and return one result per op (None for puts).

        ``hybrid``: positions of the search ops whose query ranks by dense + lexical fusion (module docstring).
        Raises InvalidArgumentError for malformed ops (before anything is written).
        """
        ops = list(ops)
        validate_ops(ops, max_value_bytes=self.max_value_bytes)
        queries = sorted({op.query for op in ops if isinstance(op, SearchOp) and op.query})
        query_vecs = dict(zip(queries, self._embed(queries), strict=True)) if queries else {}
        results: list[Result] = []
        puts: dict[tuple[Path, str], PutOp] = {}
        for i, op in enumerate(ops):
            if isinstance(op, GetOp):
                path = tuple(op.namespace)
                rec = self.backend.get(scope, path, op.key) if storable(path, op.key) else None
                results.append(_item(rec) if rec else None)
            elif isinstance(op, SearchOp):
                results.append(self._search(scope, op, query_vecs, hybrid=i in hybrid))
            elif isinstance(op, ListNamespacesOp):
                results.append(self._list_namespaces(scope, op))
            else:
                assert isinstance(op, PutOp)
                puts[(tuple(op.namespace), op.key)] = op
                results.append(None)
        if puts:
            self.backend.apply(scope, self._writes(list(puts.values())), time.time())
        return results

    def _embed(self, texts: list[str]) -> np.ndarray:
        if self.embedder is None:
            return np.zeros((len(texts), 0), np.float32)
        return np.asarray(self.embedder.embed(texts), dtype=np.float32)

    def _writes(self, puts: list[PutOp]) -> list[ItemWrite]:
        texts: list[str] = []
        owners: list[tuple[int, str]] = []
        for i, op in enumerate(puts):
            if op.value is None or not op.index:
                continue
            for path in op.index:
                found = get_text_at_path(op.value, path if path == "$" else tokenize_path(path))
                if len(found) == 1:
                    owners.append((i, path))
                    texts.append(found[0])
                else:
                    for j, text in enumerate(found):
                        owners.append((i, f"{path}.{j}"))
                        texts.append(text)
        vectors: list[dict[str, np.ndarray]] = [{} for _ in puts]
        if texts and self.embedder is not None:
            for (i, fld), vec in zip(owners, self._embed(texts), strict=True):
                vectors[i][fld] = vec
        return [
            ItemWrite(tuple(op.namespace), op.key, dict(op.value) if op.value is not None else None, vectors[i])
            for i, op in enumerate(puts)
        ]

    def _search(
        self, scope: str, op: SearchOp, query_vecs: dict[str, np.ndarray], *, hybrid: bool = False
    ) -> list[SearchItem]:
        if not storable(tuple(op.namespace_prefix)):
            return []
        ranked = bool(op.query) and self.embedder is not None
        recs = self.backend.scan(scope, tuple(op.namespace_prefix), with_vectors=ranked)
        if op.filter:
            filt = dict(op.filter)
            recs = [r for r in recs if all(compare_values(r.value.get(k), v) for k, v in filt.items())]
        recs = _group_by_namespace(recs)
        if not ranked:
            return [_search_item(r, None) for r in recs[op.offset : op.offset + op.limit]]
        q = query_vecs[op.query or ""]
        qn = float(np.linalg.norm(q)) or 1.0
        indexed = [r for r in recs if r.vectors]
        scoreless = [r for r in recs if not r.vectors]
        page: list[SearchItem] = []
        if indexed:
            # Every vector of every item in one matrix product; an item scores its best field.
            owner = np.repeat(np.arange(len(indexed)), [len(r.vectors) for r in indexed])
            mat = np.stack([vec for r in indexed for vec in r.vectors.values()])
            norms = np.linalg.norm(mat, axis=1)
            norms[norms == 0] = np.inf
            best = np.full(len(indexed), -np.inf)
            np.maximum.at(best, owner, mat @ q / (norms * qn))
            if hybrid:
                best = hybrid_scores(best, _lexical_scores(op.query or "", indexed))
            # Stable sort: equal scores keep the namespace-grouped insertion order.
            order = np.argsort(-best, kind="stable")[op.offset : op.offset + op.limit]
            page = [_search_item(indexed[i], float(best[i])) for i in order]
        if scoreless and len(page) < op.limit:
            # Same corner case as InMemoryStore: unindexed items fill a short page, unranked.
            page.extend(_search_item(r, None) for r in scoreless[: op.limit - len(page)])
        return page

    def _list_namespaces(self, scope: str, op: ListNamespacesOp) -> list[Path]:
        paths: Iterable[Path] = self.backend.paths(scope)
        if op.match_conditions:
            conds = op.match_conditions
            paths = [p for p in paths if all(matches(c, p) for c in conds)]
        if op.max_depth is not None:
            paths = {p[: op.max_depth] for p in paths}
        return sorted(paths)[op.offset : op.offset + op.limit]
