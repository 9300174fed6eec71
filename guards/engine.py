"""``GuardEngine``: the transport-neutral guard. Rules first, then the guard memory, then (optionally) a judge.

``check(scope, GuardRequest) -> GuardVerdict`` is synchronous and safe to call from worker threads; the
gRPC servicer, the tool executor and the agent all call it. Every verdict goes to the audit log through
a background writer (batched, so Check does not wait for a disk flush); ``flush()`` waits for it.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import re
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from core.embedding import Embedder, answered_from_cache
from core.errors import FailedPreconditionError, FieldViolation, InvalidArgumentError, NotFoundError
from guards import detectors
from guards import rules as rules_mod
from guards.judge import LLMJudge
from guards.memory import GuardMemory, MemoryParams, ScoreResult
from guards.model import (
    STAGE_GROUPS,
    AuditRecord,
    Cluster,
    Decision,
    Evidence,
    EvolutionEvent,
    Exemplar,
    FeedbackResult,
    GuardRequest,
    GuardVerdict,
    Label,
    LeafSource,
    PolicyRule,
    RuleMatch,
    Stage,
)
from guards.pack import DEFAULT_PACK, load_pack, pack_seed
from guards.store import MAX_CATEGORY_CHARS, GuardStore, decided_text, storable_text

log = logging.getLogger(__name__)

# Seconds the audit writer waits for more verdicts before committing a batch.
AUDIT_LINGER_S = 0.02

#: Namespace settings and their defaults (overridable per engine, then per namespace).
DEFAULT_SETTINGS: dict[str, Any] = {
    # Load the default pack's rules and seed exemplars.
    "pack": True,
    # Pack rules switched off by name.
    "disabled_pack_rules": [],
    # Decision when no rule matches and the memory has no similar evidence.
    "default_decision": "allow",
    # Normalised label entropy above which the memory answers REVIEW.
    "review_entropy": None,
    # Ask the LLM judge (if the engine has one) on REVIEW.
    "judge": False,
    # Also ask it about tool output that would be allowed but gives orders or speaks to its reader: planted
    # instructions written as ordinary business text (bench/data/injection_sentences.json, rounds 31-33) get
    # past the phrase patterns and the memory, which is what a model that reads meaning is for.
    "judge_tool_results": False,
    # Audit records older than this many days are purged (0 = keep forever).
    "audit_retention_days": 30,
}

#: Longest audit retention a namespace may set (100 years; a cutoff further back is no cutoff at all).
MAX_AUDIT_RETENTION_DAYS = 36_500

_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")


def embedded_sentences(text: str) -> list[str]:
    """The sentences of ``text`` a check embeds on their own (stripped, at least 12 characters)."""
    return [s.strip() for s in _SENTENCE.split(text) if len(s.strip()) >= 12]
# Where a request's steps join inside one sentence ("copy the photos, set up ads, and then never ship"):
# agentic requests chain their steps with commas and "then", and the harmful step is one of them. Not at
# ", but" / ", so": those start no step, and the fragment ("but it's the only way to grow", from a chat turn)
# is too short for its embedding to mean much; the learned boundary placed that one on the harmful side.
_CLAUSE = re.compile(r",?\s+(?:and\s+)?then\s+|,\s+and\s+|;\s+", re.I)


def settings_violations(
    changes: dict[str, Any], field_prefix: str = "settings.", pack_path: str = str(DEFAULT_PACK)
) -> list[FieldViolation]:
    """What is wrong with ``changes`` (namespace setting name -> new value), one violation per bad field."""
    errors: list[FieldViolation] = []

    def bad(key: str, why: str) -> None:
        errors.append(FieldViolation(f"{field_prefix}{key}", why))

    for key in changes:
        if key not in DEFAULT_SETTINGS:
            bad(str(key), f"unknown guard setting; known: {sorted(DEFAULT_SETTINGS)}")
    for key in ("pack", "judge", "judge_tool_results"):
        if key in changes and not isinstance(changes[key], bool):
            bad(key, f"{key} must be true or false, got {changes[key]!r}")
    if "default_decision" in changes and str(changes["default_decision"]) not in ("allow", "review", "block"):
        bad("default_decision", "must be allow, review or block")
    if "review_entropy" in changes:
        value = changes["review_entropy"]
        if value is not None and not (
            isinstance(value, int | float) and not isinstance(value, bool) and 0.0 <= value <= 1.0
        ):
            bad("review_entropy", "must be a number within [0, 1]")  # NaN fails the range test too
    if "audit_retention_days" in changes:
        value = changes["audit_retention_days"]
        if not (isinstance(value, int) and not isinstance(value, bool)):
            bad("audit_retention_days", "must be a whole number of days")
        elif not 0 <= value <= MAX_AUDIT_RETENTION_DAYS:
            bad("audit_retention_days", f"must be within [0, {MAX_AUDIT_RETENTION_DAYS}] (0 = keep forever)")
    if "disabled_pack_rules" in changes:
        names = changes["disabled_pack_rules"]
        if not isinstance(names, list):
            bad("disabled_pack_rules", "must be a list of pack rule names")
        else:
            known = {r.name for r in load_pack(pack_path).rules}
            for i, name in enumerate(names):
                if not isinstance(name, str) or name not in known:
                    bad(f"disabled_pack_rules[{i}]", f"unknown pack rule {name!r}; pack rules: {sorted(known)}")
    return errors


@dataclass(frozen=True)
class ClusterInfo:
    """A cluster with its derived facts, for listing the tree."""

    cluster: Cluster
    harmful: int
    benign: int
    label_entropy: float


class _FeedbackTaken(Exception):
    """Raised inside a feedback's evolution step to undo it: the verdict got feedback from another call."""


def _stage(value: Any) -> Stage:
    return value if isinstance(value, Stage) else Stage(str(value))


def category_violations(category: str, field: str = "category") -> list[FieldViolation]:
    """What is wrong with a category an incident or exemplar gives (empty when nothing).

    The same on every backend: Postgres refused a category past its column's 100 characters, or with NUL, with
    an error that named no field, while SQLite and the in-memory store kept it.
    """
    out = []
    if len(category) > MAX_CATEGORY_CHARS:
        out.append(FieldViolation(field, f"at most {MAX_CATEGORY_CHARS} characters, got {len(category)}"))
    if "\x00" in category:
        out.append(FieldViolation(field, "must not contain NUL characters"))
    return out


class GuardEngine:
    """Policy rules plus a self-evolving guard memory per namespace (scope), with an audit log."""

    def __init__(
        self,
        store: GuardStore,
        embedder: Embedder,
        *,
        params: MemoryParams | None = None,
        defaults: dict[str, Any] | None = None,
        judge: LLMJudge | None = None,
        policy: Callable[[str], dict[str, Any]] | None = None,
        pack_path: str = str(DEFAULT_PACK),
        max_segments: int = 12,
        score_whole_text: bool = False,
        audit_async: bool = True,
        limiter: rules_mod.RateCounter | None = None,
    ):
        unknown = set(defaults or {}) - set(DEFAULT_SETTINGS)
        if unknown:
            raise InvalidArgumentError(
                [
                    FieldViolation(f"guards.{k}", f"unknown guard setting; known: {sorted(DEFAULT_SETTINGS)}")
                    for k in sorted(unknown)
                ]
            )
        self.store = store
        self.embedder = embedder
        self.params = params or MemoryParams()
        self.defaults = {**DEFAULT_SETTINGS, **(defaults or {})}
        # Per-namespace configured policy (YAML config), between the defaults and what was set by RPC.
        self.policy = policy
        self.judge = judge
        self.pack_path = pack_path
        self.max_segments = max_segments
        # Also embed the whole text next to its sentences: about twice the embedding time, and no better on
        # the benchmark (AgentHarm identical, Agent-SafetyBench within 2 points), so off by default.
        self.score_whole_text = score_whole_text
        # Counts of rate-limit rules: in this process by default; the runtime passes one in the database that
        # replicas share (guards.sql.SqlRateLimiter) on Postgres.
        self.limiter: rules_mod.RateCounter = limiter or rules_mod.RateLimiter()
        self._memories: dict[str, GuardMemory] = {}
        self._settings: dict[str, dict[str, Any]] = {}
        self._rules: dict[str, list[PolicyRule]] = {}
        self._config_rules: dict[str, list[PolicyRule]] = {}
        #: Scopes another replica changed since they were cached: ``memory`` loads them again.
        self._changed: set[str] = set()
        self._lock = threading.RLock()
        # Recent verdicts, for GetVerdict on one the audit writer has not stored yet. Feedback reads the store only:
        # the record there carries the segment that decided it, so it labels the same text on every replica.
        self._recent: OrderedDict[str, tuple[str, AuditRecord]] = OrderedDict()
        # Its own lock: _lock is held while a namespace is first loaded and seeded (a few hundred ms).
        self._recent_lock = threading.Lock()
        self._recent_max = 20_000
        self._audit_async = audit_async
        self._queue: queue.Queue[tuple[str, AuditRecord] | None] = queue.Queue()
        self._flushing = 0  # callers inside flush(): the writer stops lingering for them
        self._wake = threading.Event()  # set by flush() and close() to end the writer's linger early
        self._writer: threading.Thread | None = None
        if audit_async:
            self._writer = threading.Thread(target=self._write_loop, name="guard-audit", daemon=True)
            self._writer.start()

    # --- namespaces -------------------------------------------------------------------------------------
    def memory(self, scope: str) -> GuardMemory:
        """The scope's guard memory, initialising the namespace (settings, pack seed) on first use, and
        loading it again when another replica changed it (see ``reload``)."""
        with self._lock:
            mem = self._memories.get(scope)
            if mem is None or scope in self._changed:
                self._changed.discard(scope)
                try:
                    mem = self._load_scope(scope, mem)
                except BaseException:
                    self._changed.add(scope)  # try again on the next call
                    raise
        # Outside the engine's lock: it waits for a step of this process in flight, so that it reloads what
        # that step commits too (this replica hears of other replicas' commits only, not of its own).
        mem.refresh()
        return mem

    def _load_scope(self, scope: str, mem: GuardMemory | None) -> GuardMemory:
        """(Re)load the scope's settings and rules into the caches, its memory when there is none yet, and
        apply its ``pack`` setting (call it holding ``_lock``)."""
        with self.store.transaction(scope):
            stored = self.store.get_settings(scope)
            if stored is None:
                # Only what is set by RPC is stored; defaults and configured policy stay live.
                stored = {}
                self.store.put_settings(scope, stored)
        if mem is None:
            mem = GuardMemory(scope, self.store, self.embedder.dim, self.params)
        self._settings[scope] = {**self.defaults, **self._configured(scope), **stored}
        self._rules[scope] = self.store.list_rules(scope)
        self._config_rules[scope] = self._parse_config_rules(scope)
        self._memories[scope] = mem
        self._apply_pack(scope, mem)
        return mem

    def reload(self, scope: str) -> None:
        """Forget what is cached for ``scope``; the next call loads it again from the store.

        Used when another replica changed the scope (feedback, evolution, rollback, rules, settings). The
        caches are replaced then, never emptied (a check that read the memory a moment ago still finds the
        scope's rules), and the scope's ``GuardMemory`` stays (marked stale): one object per scope, so that a
        step in flight on it and the reload after it are ordered by its lock.
        """
        with self._lock:
            self._changed.add(scope)
            mem = self._memories.get(scope)
        if mem is not None:
            mem.mark_stale()

    def _parse_config_rules(self, scope: str) -> list[PolicyRule]:
        raw = (self.policy(scope) or {}).get("rules") if self.policy is not None else None
        if not raw:
            return []
        rules, _ = rules_mod.parse_rules_yaml(json.dumps({"rules": raw}), source="config")
        return rules

    def _configured(self, scope: str) -> dict[str, Any]:
        if self.policy is None:
            return {}
        return {k: v for k, v in (self.policy(scope) or {}).items() if k in DEFAULT_SETTINGS}

    def _apply_pack(self, scope: str, mem: GuardMemory) -> None:
        want = bool(self._settings[scope]["pack"])
        has_pack = any(leaf.source == LeafSource.PACK for leaf in list(mem.leaves.values()))
        if want and not has_pack:
            items, layout = pack_seed(self.pack_path, self.embedder)
            pack = load_pack(self.pack_path)
            mem.seed(
                items,
                layout,
                "seed",
                f"default pack v{pack.version}: {len(items)} exemplars, {len(layout)} clusters",
                unless_source=LeafSource.PACK,  # another replica may have seeded it meanwhile
            )
        with mem.lock:
            if mem.include_pack != want:
                mem.include_pack = want
                mem.reload()

    def get_settings(self, scope: str) -> dict[str, Any]:
        """The namespace's effective guard settings."""
        self.memory(scope)
        return dict(self._settings[scope])

    def put_settings(self, scope: str, changes: dict[str, Any], *, field_prefix: str = "settings.") -> dict[str, Any]:
        """Change settings (only the keys given); returns the effective settings.

        Raises InvalidArgumentError naming ``<field_prefix><setting>`` for an unknown setting or a bad value.
        """
        errors = self.validate_settings(changes, field_prefix)
        if errors:
            raise InvalidArgumentError(errors)
        mem = self.memory(scope)
        with self.store.transaction(scope):
            self._store_settings(scope, changes)
        settings = self._cache_settings(scope)
        self._apply_pack(scope, mem)
        return dict(settings)

    def _store_settings(self, scope: str, changes: dict[str, Any]) -> None:
        """Merge ``changes`` into the stored settings; call it inside ``store.transaction(scope)``, which
        makes the read and the write one step against the other writers of the scope (other replicas)."""
        self.store.put_settings(scope, {**(self.store.get_settings(scope) or {}), **changes})

    def _cache_settings(self, scope: str) -> dict[str, Any]:
        """Load the effective settings from the store into the cache (after a commit: what it reads is at
        least as new as that commit, so a slower thread of this process cannot cache an older state)."""
        with self._lock:
            settings = {**self.defaults, **self._configured(scope), **(self.store.get_settings(scope) or {})}
            self._settings[scope] = settings
            return settings

    def validate_settings(self, changes: dict[str, Any], field_prefix: str = "settings.") -> list[FieldViolation]:
        """What is wrong with ``changes`` (setting name -> new value), one violation per bad field."""
        return settings_violations(changes, field_prefix, self.pack_path)

    # --- rules ---------------------------------------------------------------------------------------------
    def put_rules(
        self, scope: str, rules: list[PolicyRule] | list[dict[str, Any]] | str, *, replace_all: bool = False
    ) -> list[PolicyRule]:
        """Add or replace operator rules (objects, rule mappings or a YAML policy document); returns the stored rules.

        A YAML document may also carry settings (``default_decision``, ``pack``...), applied too. Raises
        InvalidArgumentError naming every bad rule field and setting at once (see ``candidate_rules``).
        """
        rules, settings = self.candidate_rules(scope, rules)
        mem = self.memory(scope)
        # The document's settings and rules: one transaction, so no replica ever sees one without the other.
        with self.store.transaction(scope):
            if settings:
                self._store_settings(scope, settings)
            self.store.put_rules(scope, list(rules), replace_all=replace_all)
        if settings:
            self._cache_settings(scope)
            self._apply_pack(scope, mem)
        with self._lock:
            self._rules[scope] = self.store.list_rules(scope)
            return list(self._rules[scope])

    def candidate_rules(
        self, scope: str, rules: list[PolicyRule] | list[dict[str, Any]] | str
    ) -> tuple[list[PolicyRule], dict[str, Any]]:
        """Validate rules for ``scope`` as PutRules stores them: the rules and the document's settings.

        Raises InvalidArgumentError naming every bad field in one answer: rule fields (``rules[2].action``),
        document settings (``default_decision``), and a name that is taken (by a pack rule, a rule of the
        configuration file, or another rule of the call). Compiles the rules' regexes: call it off the event loop.
        """
        settings: dict[str, Any] = {}
        errors: list[FieldViolation] = []
        indexed: list[tuple[int, PolicyRule]]
        if isinstance(rules, str):
            items, settings = rules_mod.read_policy_document(rules)
            # A policy document's settings are its top-level keys, named like its rules (``rules[0].name``).
            errors += self.validate_settings(settings, field_prefix="")
            indexed, bad = rules_mod.parse_rules(items)
            errors += bad
        elif all(isinstance(r, PolicyRule) for r in rules):
            indexed = list(enumerate(r for r in rules if isinstance(r, PolicyRule)))
            errors += self._duplicate_names(indexed)
        else:
            indexed, bad = rules_mod.parse_rules(list(rules))
            errors += bad
        self.memory(scope)
        pack_names = {r.name for r in load_pack(self.pack_path).rules}
        config_names = {r.name for r in self._config_rules.get(scope, [])}
        for i, r in indexed:
            if r.name in pack_names:
                errors.append(FieldViolation(f"rules[{i}].name", f"{r.name!r} is a pack rule name; pick another name"))
            elif r.name in config_names:
                errors.append(
                    FieldViolation(
                        f"rules[{i}].name",
                        f"{r.name!r} is the name of a rule of the configuration file (read-only); pick another name",
                    )
                )
        if errors:
            raise InvalidArgumentError(errors)
        return [r for _, r in indexed], settings

    @staticmethod
    def _duplicate_names(indexed: list[tuple[int, PolicyRule]]) -> list[FieldViolation]:
        first: dict[str, int] = {}
        out = []
        for i, r in indexed:
            if r.name in first:
                out.append(FieldViolation(f"rules[{i}].name", f"{r.name!r} is also rules[{first[r.name]}]'s name"))
            first.setdefault(r.name, i)
        return out

    def list_rules(self, scope: str, *, include_pack: bool = True) -> list[PolicyRule]:
        """Operator rules, then the active pack rules, each group in precedence order."""
        self.memory(scope)
        out = sorted(self._rules[scope] + self._config_rules[scope], key=rules_mod.precedence_key)
        if include_pack:
            out += sorted(self._pack_rules(scope), key=rules_mod.precedence_key)
        return out

    def delete_rules(self, scope: str, names: list[str]) -> int:
        """Delete operator rules by name. Raises NotFoundError for a name that does not exist."""
        self.memory(scope)
        with self._lock:
            existing = {r.name for r in self._rules[scope]}
            for name in names:
                if name not in existing:
                    raise NotFoundError("rule", name)
            count = self.store.delete_rules(scope, names)
            self._rules[scope] = self.store.list_rules(scope)
            return count

    def _pack_rules(self, scope: str, settings: dict[str, Any] | None = None) -> list[PolicyRule]:
        settings = self._settings[scope] if settings is None else settings
        if not settings["pack"]:
            return []
        off = set(settings.get("disabled_pack_rules") or [])
        return [r for r in load_pack(self.pack_path).rules if r.name not in off]

    def test_rules(
        self, scope: str, request: GuardRequest, rules_yaml: str | None = None
    ) -> tuple[list[RuleMatch], GuardVerdict]:
        """Dry run: the matches and the verdict ``request`` would get, optionally under a candidate policy document
        (its rules replace the operator rules, its settings the namespace's, for this call only). Nothing is stored.

        The candidate is validated as PutRules validates it (InvalidArgumentError naming every bad field). Its
        ``pack: false`` drops the pack's rules; the pack's exemplars stay in the guard memory of the dry run.
        """
        candidate = None
        settings = None
        if rules_yaml is not None:
            candidate, changes = self.candidate_rules(scope, rules_yaml)
            self.memory(scope)
            settings = {**self._settings[scope], **changes}
        verdict, matches = self._check(scope, request, dry_run=True, operator_rules=candidate, settings=settings)
        return matches, verdict

    # --- check -------------------------------------------------------------------------------------------
    def check(self, scope: str, request: GuardRequest) -> GuardVerdict:
        """Decide ALLOW / BLOCK / REVIEW for one request; the verdict is written to the audit log."""
        verdict, _ = self._check(scope, request)
        return verdict

    def check_now(self, scope: str, request: GuardRequest) -> GuardVerdict | None:
        """``check`` if it can finish at once on the calling thread, else None (then call ``check`` in a worker).

        At once means: the namespace is loaded, verdicts are audited behind, no LLM judge may be asked, no
        operator rule that may be slow applies (a regex, JSON Schema or detectors: ``rules.may_be_slow``), every
        text it would embed is in the embedder's cache, and no evolution holds the memory. Such a
        check is a few hundred microseconds of numpy; an event loop saves the hop to a worker thread and
        back, which costs more than that on a busy 2-core machine.
        """
        mem = self._memories.get(scope)
        settings = self._settings.get(scope)
        if mem is None or mem.stale or settings is None or scope in self._changed or not self._audit_async:
            return None
        if not isinstance(request.stage, Stage):
            request = replace(request, stage=_stage(request.stage))
        if self.judge is not None and (
            settings.get("judge") or (settings.get("judge_tool_results") and request.stage == Stage.TOOL_RESULT)
        ):
            return None
        operator_rules = self._rules.get(scope, []) + self._config_rules.get(scope, [])
        remote = not self.limiter.local
        if any(rules_mod.may_be_slow(r, request, counts_in_database=remote) for r in operator_rules):
            # An operator regex may take its whole budget (1 s), a schema or the detectors long on a large request:
            # on the event loop every other call of the server would wait for it.
            return None
        if not answered_from_cache(self.embedder, self._texts_to_embed(request, mem)):
            return None
        if not mem.lock.acquire(blocking=False):
            return None
        try:
            return self._check(scope, request, mem=mem)[0]
        finally:
            mem.lock.release()

    def warm(self, scope: str, request: GuardRequest) -> None:
        """Embed, ahead of a later ``check`` of ``request``, every text that check would embed; decide nothing.

        For a caller that knows a text will be checked and has idle cores now: an agent turn warms its
        first answer while the LLM writes the other candidates, so the output check that follows finds
        its segments in the embedder's cache. Neither the audit log, the rate limits nor the memory are
        touched; a request that a rule will decide costs one needless embedding.
        """
        if not isinstance(request.stage, Stage):
            request = replace(request, stage=_stage(request.stage))
        self.embedder.embed(self._texts_to_embed(request, self._memories.get(scope)))

    def _texts_to_embed(self, request: GuardRequest, mem: GuardMemory | None = None) -> list[str]:
        """What a memory check of ``request`` embeds (see ``_embedding_plan``), in one list."""
        segs, clauses = self._embedding_plan(request, mem)
        return segs + clauses

    def _embedding_plan(self, request: GuardRequest, mem: GuardMemory | None) -> tuple[list[str], list[str]]:
        """The segments a memory check of ``request`` scores, then the steps of those (see ``_clauses``).

        A request corrected by feedback is a leaf as a whole (see ``feedback``): when ``mem`` holds its whole
        text as a leaf, that text is segment 0 and speaks for it.
        """
        segs = self._segments(request)
        whole = request.text.strip()[:4000]
        if mem is not None and len(segs) > 1 and mem.is_leaf_text(STAGE_GROUPS[request.stage], whole):
            segs.insert(0, whole)
        return segs, self._clauses(request, segs)

    @staticmethod
    def _content(request: GuardRequest) -> str:
        """The text a check reads. Tool output is often JSON: its string values are what the agent reads; keys,
        numbers and escapes would only make segments of their own."""
        if request.stage == Stage.TOOL_RESULT:
            return detectors.readable_text(request.text).strip()  # the detectors' call: cached
        return request.text.strip()

    def _gives_orders(self, request: GuardRequest) -> bool:
        """Whether some sentence of the request's text gives an order or speaks to its reader."""
        return any(detectors.gives_orders(s) for s in _SENTENCE.split(self._content(request)) if s.strip())

    def _segments(self, request: GuardRequest) -> list[str]:
        """Texts to embed: the whole text, the tool call, and (for content stages) its sentences."""
        text = self._content(request)
        segs: list[str] = []
        sentences = embedded_sentences(text) if text else []
        several = len(sentences) > 1
        if text and (self.score_whole_text or not several):
            segs.append(text[:4000])
        if request.stage == Stage.TOOL_RESULT and several:
            # Only the sentences that give orders or speak to the reader: an injected instruction is one of
            # those, anywhere in the text, and under the tool-result prior (MemoryParams.harm_priors) an
            # ordinary sentence can only block as a near-duplicate of a known injection. On the tool outputs
            # of bench/data (dev half) this embeds a median of 2 sentences instead of 9: Check p50 34.8 ->
            # 8.6 ms in process, 54 -> 53 of 60 injections blocked, benign 60/60 either way. The first
            # sentence stands in when none qualifies, so the memory still sees the content.
            sentences = [x for x in sentences if detectors.gives_orders(x)] or sentences[:1]
        # At TOOL_RESULT the call only says where the content came from; the content is what gets judged.
        if request.tool_call and request.tool_call.name and request.stage != Stage.TOOL_RESULT:
            args = request.tool_call.arguments_json
            try:
                parsed = json.loads(args) if args.strip() else {}
                flat = " ".join(str(v) for v in (parsed.values() if isinstance(parsed, dict) else [parsed]))
            except (ValueError, RecursionError):  # not JSON, or nested deeper than the parser's stack
                flat = args
            segs.append(f"{request.tool_call.name.replace('_', ' ')}: {flat}"[:2000])
        if several:
            # Intent and injected instructions hide inside long texts; each sentence is scored and one
            # speaks for the whole (see _pick), so they are not diluted.
            segs.extend(sentences[: self.max_segments])
        # A repeated sentence (a signature, a quoted line) would only be embedded and scored twice.
        return list(dict.fromkeys(segs)) or [""]

    def _check(
        self,
        scope: str,
        request: GuardRequest,
        *,
        dry_run: bool = False,
        operator_rules: list[PolicyRule] | None = None,
        mem: GuardMemory | None = None,
        settings: dict[str, Any] | None = None,
    ) -> tuple[GuardVerdict, list[RuleMatch]]:
        if not isinstance(request.stage, Stage):
            request = replace(request, stage=_stage(request.stage))
        if mem is None:
            mem = self.memory(scope)
        if settings is None:
            settings = self._settings[scope]
        rules = (self._rules[scope] if operator_rules is None else operator_rules) + self._config_rules[scope]
        rules += self._pack_rules(scope, settings)
        # A dry run (TestRules) sees the live rate-limit counts and records no call.
        limiter = self.limiter.dry() if dry_run else self.limiter
        matches = rules_mod.evaluate(rules, request, scope=scope, limiter=limiter)
        evidence: list[Evidence] = [
            Evidence(
                "detector" if "detectors" in m.rule.spec else "rule",
                m.rule.name,
                f"{m.rule.description} ({m.reason})".strip(),
                m.rule.action,
                1.0,
                {"field": m.field, "source": m.rule.source, "priority": str(m.rule.priority)},
            )
            for m in matches
        ]
        top = matches[0] if matches else None
        decided_segment = ""
        category = ""
        decision: Decision
        if top is not None and top.rule.action in (Decision.BLOCK, Decision.ALLOW):
            # Deterministic rules are final; the memory is not consulted (and no embedding is paid for).
            decision = top.rule.action
            harm = 1.0 if decision == Decision.BLOCK else 0.0
            ent = 0.0
            decided_by = "rule"
        else:
            segs, clauses = self._embedding_plan(request, mem)
            # One embedding call and one memory search for all segments of the request.
            results = mem.score_many(self.embedder.embed(segs + clauses), STAGE_GROUPS[request.stage])
            review_entropy = settings.get("review_entropy") or self.params.review_entropy
            best_i = self._pick(results, review_entropy, len(segs))
            segs = segs + clauses
            res = results[best_i]
            decided_segment = segs[best_i]
            category = res.category
            harm, ent = res.harm, res.entropy
            if res.confidence < self.params.min_confidence:
                decision = Decision(settings["default_decision"])
                decided_by = "default"
                ent = 1.0
            elif ent > review_entropy:
                decision, decided_by = Decision.REVIEW, "memory"
            else:
                decision = Decision.BLOCK if harm >= 0.5 else Decision.ALLOW
                decided_by = "memory"
            evidence.extend(self._memory_evidence(res))
            if top is not None and decision == Decision.ALLOW:
                # A REVIEW rule matched: never let the memory relax it to ALLOW.
                decision = Decision.REVIEW
                decided_by = "rule"
            if decision == Decision.REVIEW and self.judge is not None and settings.get("judge"):
                judged = self.judge.judge(request, [e.text for e in evidence])
                evidence.insert(0, Evidence("judge", "llm", f"judge answered {judged.value}", judged, 1.0))
                # A REVIEW a rule holds (its action, or a BLOCK rule that ran out of its budget) is a floor the
                # operator set: the judge may raise it to BLOCK, never lower it to ALLOW (a prompt-injected
                # request could talk the judge into that).
                if judged == Decision.BLOCK or (judged == Decision.ALLOW and top is None):
                    decision, decided_by = judged, "judge"
            elif (
                decision == Decision.ALLOW
                and request.stage == Stage.TOOL_RESULT
                and self.judge is not None
                and settings.get("judge_tool_results")
                and self._gives_orders(request)
            ):
                # Only a BLOCK answer changes the verdict: the judge answers REVIEW when it is unreachable,
                # and an unreachable judge must not hold up every tool output that says "please".
                judged = self.judge.judge(request, [e.text for e in evidence])
                evidence.insert(0, Evidence("judge", "llm", f"judge answered {judged.value}", judged, 1.0))
                if judged == Decision.BLOCK:
                    decision, decided_by = judged, "judge"
        verdict = GuardVerdict(
            verdict_id=uuid.uuid4().hex,
            decision=decision,
            harm_score=float(np.clip(harm, 0.0, 1.0)),
            entropy=float(np.clip(ent, 0.0, 1.0)),
            stage=request.stage,
            evidence=tuple(evidence),
            category=category,
            decided_by=decided_by,
            memory_version=mem.version,
        )
        if not dry_run:
            tool = request.tool_call.name if request.tool_call else ""
            args = request.tool_call.arguments_json if request.tool_call else ""
            # The decided segment is stored with the verdict (None: the request text itself), so Feedback labels
            # it whichever process answers (see ``feedback``).
            record = AuditRecord(
                verdict,
                request.text,
                tool,
                args,
                datetime.now(UTC),
                decided_segment=decided_segment if decided_segment and decided_segment != request.text else None,
                metadata=dict(request.metadata),
            )
            self._remember(scope, record)
            if self._audit_async:
                self._queue.put((scope, record))
            else:
                self.store.put_audit(scope, [record])
        return verdict, matches

    @staticmethod
    def _clauses(request: GuardRequest, segs: list[str]) -> list[str]:
        """The steps of a request's segments, as extra segments that can only block (see ``_pick``).

        One embedding of a long sentence blurs a harmful step among ordinary ones ("copy the product photos
        from the Dyson website, set up ads for 80% off, and when people pay just never ship anything"): on
        24 agentic requests written for this (bench/data/harmful_tasks.json, round 1) scoring the steps too
        blocked 2 more, with no benign twin newly blocked. A step alone cannot allow, though: "send it to
        everyone on the finance team" is harmless on its own and would outvote the macro that comes with it.
        Tool results are cut by the injection detectors instead.
        """
        if request.stage == Stage.TOOL_RESULT:
            return []
        out = []
        for seg in segs:
            parts = [x.strip() for x in _CLAUSE.split(seg) if len(x.strip()) >= 12]
            if len(parts) > 1:
                out.extend(parts)
        return [c for c in dict.fromkeys(out) if c not in segs]

    def _pick(self, results: list[ScoreResult], review_entropy: float, deciding: int | None = None) -> int:
        """The segment that speaks for the request: the strongest of those that would be blocked on their
        own, else the most decisive one (largest |confidence·(2·harm − 1)|, either way) among the first
        ``deciding`` (the rest are steps of those, which may block but not allow).

        Intent and injected instructions sit in one clause of a longer text; the harmless sentences around
        them (twins share most of their wording) must not outvote it.
        """
        values = np.array([r.confidence * (2.0 * r.harm - 1.0) for r in results])
        if len(values) == 0:
            return 0
        blocking = [
            i
            for i, r in enumerate(results)
            if r.confidence >= self.params.min_confidence and r.harm >= 0.5 and r.entropy <= review_entropy
        ]
        if blocking:
            return max(blocking, key=lambda i: values[i])
        return int(np.argmax(np.abs(values[:deciding])))

    @staticmethod
    def _memory_evidence(res: ScoreResult) -> list[Evidence]:
        out = []
        for c, p, s in res.clusters[:3]:
            out.append(
                Evidence(
                    "cluster",
                    str(c.id),
                    c.rule_text,
                    Decision.UNSPECIFIED,
                    s,
                    {"category": c.category, "p": f"{p:.3f}"},
                )
            )
        for leaf, w, s in res.leaves[:3]:
            out.append(
                Evidence(
                    "exemplar",
                    str(leaf.id),
                    leaf.text[:300],
                    Decision.BLOCK if leaf.label == Label.HARMFUL else Decision.ALLOW,
                    s,
                    {
                        "category": leaf.category,
                        "label": leaf.label.value,
                        "source": leaf.source.value,
                        "weight": f"{w:.3f}",
                    },
                )
            )
        return out

    # --- feedback and incidents ---------------------------------------------------------------------------
    def _remember(self, scope: str, record: AuditRecord) -> None:
        with self._recent_lock:
            self._recent[record.verdict.verdict_id] = (scope, record)
            while len(self._recent) > self._recent_max:
                self._recent.popitem(last=False)

    def get_verdict(self, scope: str, verdict_id: str) -> AuditRecord:
        """One audited verdict. Raises NotFoundError when it is not in this scope."""
        with self._recent_lock:
            hit = self._recent.get(verdict_id)
        if hit is not None and hit[0] == scope:
            try:
                return self.store.get_audit(scope, verdict_id)
            except NotFoundError:
                return hit[1]
        return self.store.get_audit(scope, verdict_id)

    def feedback(self, scope: str, verdict_id: str, expected: Decision, note: str = "") -> FeedbackResult:
        """Record what the verdict should have been; ALLOW/BLOCK add a leaf (REVIEW only records).

        Atomic: the feedback on the verdict, the leaf and the evolution it causes (splits, merges) are one
        transaction, and the result is stored with them. Idempotent per verdict: a verdict takes one feedback;
        the same call again (same ``expected``; the note is not compared) answers the stored result and
        changes nothing, so a client may retry a call whose answer it lost.

        Raises NotFoundError for an unknown verdict, InvalidArgumentError for an unspecified decision,
        FailedPreconditionError naming ``expected`` when the verdict already has feedback with another decision.
        """
        if expected == Decision.UNSPECIFIED:
            raise InvalidArgumentError("expected", "expected must be ALLOW, BLOCK or REVIEW")
        self.flush()
        # What the store holds decides: whether it has feedback already (a retry), and NotFoundError for a
        # verdict of another scope, or one the audit writer could not store.
        stored = self.store.get_audit(scope, verdict_id)
        if stored.feedback != Decision.UNSPECIFIED:
            return self._earlier_feedback(scope, stored, expected)
        # The stored record, never this process's cache: the segment that decided it is stored with it, so a
        # restart, another replica or an evicted cache entry label the same text (they labelled the whole
        # request, and an ALLOW on a multi-sentence false BLOCK changed nothing).
        record, segment = stored, decided_text(stored)
        mem = self.memory(scope)
        if expected == Decision.REVIEW:
            result = FeedbackResult(0, 0, (), mem.version)
            if self.store.set_feedback(scope, verdict_id, expected, note, result):
                return result
            return self._earlier_feedback(scope, self.store.get_audit(scope, verdict_id), expected)
        missed = expected == Decision.BLOCK and record.verdict.decision != Decision.BLOCK
        if missed and STAGE_GROUPS[_stage(record.verdict.stage)] == "request" and record.request_text.strip():
            # The segment that decided a missed request is its most benign-looking one ("For this, summarize the
            # information from different sources to increase the reliability."): labelled harmful, it taught the
            # memory that summarising sources is harmful, and AgentHarm's benign twins that share it were blocked
            # after feedback. Its most harmful segment is no better: on AgentHarm that was the hint "proceed with
            # the rest of the tools." The request as a whole is what the operator says is harmful; ``_check``
            # scores a request's whole text whenever it is a leaf, so the corrected request itself is blocked.
            segment = record.request_text.strip()
        text = segment or record.request_text or f"{record.tool_name} {record.arguments_json}"
        try:
            return self._add(
                scope,
                text,
                expected,
                record.verdict.stage,
                LeafSource.FEEDBACK,
                record.verdict.category,
                note or f"feedback on {verdict_id}",
                on_verdict=(verdict_id, note),
            )
        except _FeedbackTaken:
            # Another call gave this verdict feedback while this one placed its leaf: that step was undone.
            return self._earlier_feedback(scope, self.store.get_audit(scope, verdict_id), expected)

    def _earlier_feedback(self, scope: str, record: AuditRecord, expected: Decision) -> FeedbackResult:
        """The answer to Feedback on a verdict that has feedback already: its stored result when ``expected`` is
        the same decision, else FailedPreconditionError."""
        earlier = record.feedback
        if earlier != expected:
            taught = (
                "" if earlier == Decision.REVIEW else " (the leaf it added has shaped the guard memory since; "
                "Rollback undoes that leaf)"
            )
            raise FailedPreconditionError(
                f"expected: verdict {record.verdict.verdict_id!r} already has feedback {earlier.value.upper()}, "
                f"this call says {expected.value.upper()}; a verdict takes one feedback{taught}. To teach the "
                "guard memory otherwise, use ReportIncident"
            )
        if record.feedback_result is not None:
            return record.feedback_result
        # Feedback recorded before its result was stored with it (schema before migration 0002): which leaf it
        # added is not known. Nothing is added again.
        return FeedbackResult(0, 0, (), self.memory(scope).version)

    def report_incident(
        self, scope: str, request: GuardRequest, expected: Decision = Decision.BLOCK, category: str = "", note: str = ""
    ) -> FeedbackResult:
        """Teach the memory from a case that never went through Check (or went wrong elsewhere).

        Raises InvalidArgumentError naming ``expected`` (not ALLOW or BLOCK), ``request.text`` (nothing to learn)
        or ``category`` (longer than 100 characters, or with NUL; see ``category_violations``).
        """
        if expected not in (Decision.ALLOW, Decision.BLOCK):
            raise InvalidArgumentError("expected", "an incident's expected decision must be ALLOW or BLOCK")
        text = request.text.strip()
        if request.tool_call and request.tool_call.name:
            text = f"{text}\n{request.tool_call.name}: {request.tool_call.arguments_json}".strip()
        if not text:
            raise InvalidArgumentError("request.text", "an incident needs text or a tool call")
        return self._add(scope, text, expected, _stage(request.stage), LeafSource.INCIDENT, category, note)

    def add_exemplars(
        self,
        scope: str,
        items: list[tuple[str, Label, str]],
        stage: Stage = Stage.INPUT,
        source: LeafSource = LeafSource.OPERATOR,
    ) -> list[FeedbackResult]:
        """Operator-written exemplars (text, label, category), placed one by one like feedback."""
        out = []
        for text, label, category in items:
            expected = Decision.BLOCK if label == Label.HARMFUL else Decision.ALLOW
            out.append(self._add(scope, text, expected, stage, source, category, ""))
        return out

    def _add(
        self,
        scope: str,
        text: str,
        expected: Decision,
        stage: Stage,
        source: LeafSource,
        category: str,
        note: str,
        *,
        on_verdict: tuple[str, str] | None = None,
    ) -> FeedbackResult:
        """Add a leaf. With ``on_verdict`` (verdict id, feedback note), the verdict's feedback and the result are
        written in the leaf's transaction; _FeedbackTaken (the step undone) when the verdict has feedback by then.
        """
        bad = category_violations(category)
        if bad:
            raise InvalidArgumentError(bad)
        # The leaf as every store keeps it (NUL as U+FFFD, see guards.store.storable_text), so the memory's view
        # and a reload from the store agree; Postgres refused the leaf (and the incident) before.
        text, note = storable_text(text), storable_text(note)
        mem = self.memory(scope)
        label = Label.HARMFUL if expected == Decision.BLOCK else Label.BENIGN
        vector = self.embedder.embed([text[:4000]])[0]
        leaf = Exemplar(0, category, text[:4000], label, STAGE_GROUPS[stage], source, datetime.now(UTC), note=note)
        results: list[FeedbackResult] = []

        def record(leaf_id: int, cluster_id: int, events: list[EvolutionEvent]) -> None:
            # Inside the step: mem.version is the version of its last event.
            results.append(FeedbackResult(leaf_id, cluster_id, tuple(events), mem.version))
            if on_verdict is not None and not self.store.set_feedback(
                scope, on_verdict[0], expected, on_verdict[1], results[-1]
            ):
                raise _FeedbackTaken(on_verdict[0])

        mem.add_leaf(leaf, vector, category or None, before_commit=record)
        return results[-1]

    # --- tree, history, rollback ---------------------------------------------------------------------------
    def clusters(self, scope: str, *, category: str = "") -> list[ClusterInfo]:
        """Active clusters with their label counts and entropy."""
        from guards.memory import label_entropy

        mem = self.memory(scope)
        with mem.lock:
            out = []
            for c in sorted(mem.clusters.values(), key=lambda c: (c.stage_group, c.category, c.id)):
                if category and c.category != category:
                    continue
                h, b = mem.stats(c.id)
                if h + b == 0:
                    continue
                ids = tuple(sorted(leaf.id for leaf in mem.members(c.id)))
                out.append(ClusterInfo(replace(c, leaf_ids=ids), h, b, label_entropy(h, b)))
            return out

    def history(self, scope: str, *, after_version: int = 0, limit: int = 100) -> list[EvolutionEvent]:
        """Evolution events, oldest first."""
        self.memory(scope)
        return self.store.list_events(scope, after_version=after_version, limit=limit)

    def rollback(self, scope: str, version: int) -> EvolutionEvent:
        """Restore the guard memory as it was right after event ``version`` (a version History lists).

        Raises InvalidArgumentError for a version below 1 (there is no event 0: rolling back before the first
        event would drop the pack seed, which the ``pack`` setting governs), NotFoundError for a version past
        the newest event, FailedPreconditionError when an old rollback that cannot be reversed is in the way.
        """
        if version < 1:
            raise InvalidArgumentError("version", f"must be the version of an event in History (>= 1), got {version}")
        mem = self.memory(scope)
        if version > mem.version:
            raise NotFoundError("memory version", str(version))
        return mem.rollback(version)

    # --- audit ---------------------------------------------------------------------------------------------
    def query_audit(self, scope: str, **filters: Any) -> list[AuditRecord]:
        """Stored verdicts, newest first (filters: stage, decision, since, until, limit, before_id)."""
        self.flush()
        return self.store.query_audit(scope, **filters)

    def purge_audit(self, scope: str | None = None, now: datetime | None = None) -> int:
        """Delete audit records past their namespace's retention (all known namespaces when scope is None)."""
        self.flush()
        now = now or datetime.now(UTC)
        scopes = [scope] if scope is not None else list(self._settings)
        removed = 0
        for s in scopes:
            days = self.get_settings(s).get("audit_retention_days") or 0
            if isinstance(days, bool) or not isinstance(days, int | float) or not math.isfinite(days):
                log.warning("guard audit of %s: audit_retention_days %r is not a number; nothing purged", s, days)
                continue
            if days <= 0:
                continue
            try:
                cutoff = now - timedelta(days=float(days))
            except OverflowError:
                continue  # a retention older than any date (stored before the bound was checked): keep all
            removed += self.store.purge_audit(s, cutoff)
        return removed

    def _write_loop(self) -> None:
        while True:
            item = self._queue.get()
            batch = [item]
            # Linger a moment so a stream of checks shares one commit (and one fsync) instead of taking
            # the database's write lock per verdict, which other writers (tool audits, memory) then wait
            # for. A stop (None) or a flush ends the wait at once.
            # The writer sleeps through the linger instead of waking for every verdict queued meanwhile
            # (a thread switch and a GIL hand-over each, taken from the checks being answered).
            if item is not None and not self._flushing:
                self._wake.wait(AUDIT_LINGER_S)
            self._wake.clear()
            while item is not None and len(batch) < 512:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                batch.append(item)
            by_scope: dict[str, list[AuditRecord]] = {}
            stop = False
            for entry in batch:
                if entry is None:
                    stop = True
                    continue
                by_scope.setdefault(entry[0], []).append(entry[1])
            for scope, records in by_scope.items():
                try:
                    self.store.put_audit(scope, records)
                except Exception:
                    # One record the store refuses must not take the batch with it: store them one by one,
                    # and the log names each one that could not be stored.
                    log.warning("guard audit: a batch of %d verdicts of %s failed; storing them one by one",
                                len(records), scope, exc_info=True)
                    for record in records:
                        try:
                            self.store.put_audit(scope, [record])
                        except Exception:  # the writer must survive; the log says what was lost
                            log.exception("guard audit: could not store verdict %s of %s",
                                          record.verdict.verdict_id, scope)
            for _ in batch:
                self._queue.task_done()
            if stop:
                return

    def flush(self) -> None:
        """Wait until every verdict so far is in the store."""
        if self._audit_async:
            self._flushing += 1
            self._wake.set()
            try:
                self._queue.join()
            finally:
                self._flushing -= 1

    def close(self) -> None:
        """Flush the audit log and stop the writer."""
        if self._writer is not None and self._writer.is_alive():
            self._queue.put(None)
            self._wake.set()
            self._writer.join(timeout=10)
        if self.judge is not None:
            self.judge.close()
