"""The default rule pack (``guards/packs/default.yaml``): its rules and the seed of the guard memory."""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from core.embedding import Embedder
from core.vector_cache import cached_vectors
from guards.model import Exemplar, Label, LeafSource, PolicyRule
from guards.rules import parse_rule

DEFAULT_PACK = Path(__file__).parent / "packs" / "default.yaml"


@dataclass(frozen=True)
class PackCluster:
    """One authored cluster: category, stage group, label, rule text and exemplar texts."""

    category: str
    group: str
    label: Label
    rule_text: str
    examples: tuple[str, ...]


@dataclass(frozen=True)
class Pack:
    """A parsed rule pack."""

    version: int
    rules: tuple[PolicyRule, ...]
    clusters: tuple[PackCluster, ...]


@functools.lru_cache(maxsize=8)
def load_pack(path: str = str(DEFAULT_PACK)) -> Pack:
    """Parse a pack file (cached per path); errors name the offending field."""
    doc = yaml.safe_load(Path(path).read_text())
    rules = tuple(parse_rule(r, f"rules[{i}]", source="pack") for i, r in enumerate(doc.get("rules") or []))
    clusters = []
    for cat in doc.get("memory") or []:
        for c in cat["clusters"]:
            clusters.append(
                PackCluster(
                    category=str(cat["category"]),
                    group=str(cat.get("group", "request")),
                    label=Label(c["label"]),
                    rule_text=str(c.get("rule", "")),
                    examples=tuple(str(e) for e in c["examples"]),
                )
            )
    return Pack(version=int(doc.get("version", 1)), rules=rules, clusters=tuple(clusters))


_VECTORS: dict[tuple[str, str], np.ndarray] = {}
_VECTORS_LOCK = threading.Lock()


def pack_vectors(pack_path: str, embedder: Embedder, cache_dir: str | Path | None = None) -> np.ndarray:
    """Embeddings of every pack exemplar in file order, computed once per process and embedder.

    With ``cache_dir`` they are also kept in a file there (``core.vector_cache``), so the next start reads
    them instead of embedding the whole pack again (3-5 s of a start on the 2-core VM)."""
    key = (pack_path, embedder.name)
    with _VECTORS_LOCK:
        if key not in _VECTORS:
            pack = load_pack(pack_path)
            texts = [e for c in pack.clusters for e in c.examples]
            _VECTORS[key] = cached_vectors(cache_dir, "guard-pack", embedder, texts)
        return _VECTORS[key]


def pack_seed(
    pack_path: str, embedder: Embedder
) -> tuple[list[tuple[Exemplar, np.ndarray]], list[tuple[str, str, str, list[int]]]]:
    """Leaves and cluster layout to seed a namespace's guard memory with (see ``GuardMemory.seed``)."""
    pack = load_pack(pack_path)
    vectors = pack_vectors(pack_path, embedder)
    items: list[tuple[Exemplar, np.ndarray]] = []
    layout: list[tuple[str, str, str, list[int]]] = []
    for c in pack.clusters:
        idx = []
        for text in c.examples:
            idx.append(len(items))
            leaf = Exemplar(0, c.category, text, c.label, c.group, LeafSource.PACK)
            items.append((leaf, vectors[len(items)]))
        layout.append((c.category, c.group, c.rule_text, idx))
    return items, layout
