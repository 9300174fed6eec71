"""``GateEngine``: entropy gates per namespace — decide, record outcomes, calibrate, version policies.

Transport-neutral and synchronous (the servicer runs it through ``rt.offload``). Every decision is
stored with all of its signals, so calibration can later compare variants on the same outcomes.

Several replicas may share one database: a policy change takes a per-(scope, gate) write lock, reads the
version it builds on inside the same transaction and publishes ``{"gate", "version"}`` to the change feed;
other replicas reload that gate's policy in ``apply_remote_change``. The policy cache only moves forward
(a higher version replaces a lower one), so a slow read can never put an older policy back. On a shared
database (anything but SQLite) the hysteresis state of a session is read from the database, and the
decisions that move it are stored before ``decide`` returns, so every replica sees the same state.
"""

from __future__ import annotations

import json
import math
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from sqlalchemy import Connection, Engine, and_, func, insert, or_, select, update

from core import entropy as E
from core.errors import InvalidArgumentError, NotFoundError
from core.sqlread import reading
from core.sqlwrite import lock_for_write
from runtime.gates import calibration as C
from runtime.gates.schema import gate_decisions, gate_policies
from runtime.gates.types import (
    DEFAULT_POLICIES,
    CalibrationObjective,
    CalibrationResult,
    GateDecision,
    GateKind,
    GatePolicy,
    PolicyVersion,
    TokenLike,
    TokenStream,
    check_span,
    is_signal_name,
)
from runtime.write_behind import RowWriter, find_row

#: One level of gate configuration: ``{"retrieve": {...}, "escalate": {...}}`` plus optional top-level keys
#: that apply to every gate (``{"top_k": 10}``).
GateConfig = Mapping[str, Any]

#: Configured policy for a scope: one level, or the levels from lowest to highest precedence (defaults,
#: then the namespace's). Within a level a gate's own keys win over the common ones; a higher level wins
#: over a lower one as a whole, so a namespace's common key beats the defaults' per-gate key.
ConfigLookup = Callable[[str], GateConfig | Sequence[GateConfig]]

#: ``publisher(connection, scope, payload)``: records a policy change for other replicas, inside the
#: transaction that makes it (``rt.changes.publish`` with the component name bound).
Publisher = Callable[[Connection, str, dict[str, Any]], None]

# Recent decisions, labelled or not, used for the fire-rate objective.
_RECENT_DECISIONS = 5000
_HYSTERESIS_CACHE = 10_000


class _SignalParamsChanged(Exception):
    """The policy's signal parameters changed between a calibration's read and its write."""


class GateEngine:
    """Entropy gates for every namespace of one process.

    ``decide`` is the hot path: one vectorised signal computation (well under a millisecond for 512
    tokens × top-20) and a cached policy lookup; the decision row is written behind (``RowWriter``), so
    no caller waits for its fsync. Reads and updates of decisions flush the queue first; ``close()``
    flushes it on shutdown. Policies set by RPC live in the database as an append-only version history
    and take precedence over the configured ones; ``publisher`` tells other replicas about new versions.
    """

    def __init__(
        self,
        engine: Engine,
        config: ConfigLookup | Mapping[str, Any] | None = None,
        publisher: Publisher | None = None,
        *,
        durable_records: bool = False,
    ):
        """``durable_records``: store each decision before ``decide`` returns (``storage.durable_records``)."""
        self._engine = engine
        self._publisher = publisher
        if config is None:
            self._config: ConfigLookup = lambda _scope: {}
        elif callable(config):
            self._config = config
        else:
            frozen = dict(config)
            self._config = lambda _scope: frozen
        self._lock = threading.Lock()
        self._policy_cache: dict[tuple[str, GateKind], PolicyVersion] = {}
        # Last decision per (scope, gate, session) for hysteresis: (fired, when). Alone it answers in one
        # process (SQLite); on a shared database it is compared with the newest stored decision.
        self._last_fire: OrderedDict[tuple[str, str, str], tuple[bool, float]] = OrderedDict()
        # Other processes (replicas) may decide for the same session: only SQLite is one process's own.
        self._shared = engine.dialect.name != "sqlite"
        self._decisions = RowWriter(engine, gate_decisions, durable=durable_records)

    def flush(self) -> None:
        """Wait until every decision made so far is stored."""
        self._decisions.flush()

    def close(self) -> None:
        """Store the queued decisions and stop the writer (on shutdown)."""
        self._decisions.close()

    # ------------------------------------------------------------------ policies

    def default_policy(self, scope: str, gate: GateKind | str) -> GatePolicy:
        """The configured policy (version 0): the built-in default overlaid with each configuration level
        for ``scope``, lowest first, and within a level the keys common to every gate before the gate's own
        (namespace per-gate > namespace common > defaults per-gate > defaults common > built-in).

        Raises InvalidArgumentError naming ``policies.gates.<gate>[.<key>]`` for an unknown key, a value of
        the wrong type or out of range, or a gate entry that is not a mapping.
        """
        kind = GateKind.parse(gate)
        field_name = f"policies.gates.{kind.value}"
        found = self._config(scope) or {}
        levels: Sequence[GateConfig] = [found] if isinstance(found, Mapping) else found
        gate_keys = {g.value for g in GateKind}
        policy = DEFAULT_POLICIES[kind]
        for level in levels:
            if not isinstance(level, Mapping):
                raise InvalidArgumentError(
                    "policies.gates", f"must be a mapping of gates and policy keys, got {level!r}"
                )
            common = {k: v for k, v in level.items() if k not in gate_keys}
            policy = GatePolicy.from_dict(common, policy, field_name, validate=False)
            # ``retrieve:`` with nothing under it (YAML null) changes nothing.
            specific = level.get(kind.value)
            if specific is not None:
                policy = GatePolicy.from_dict(specific, policy, field_name, validate=False)
        return policy.validate(field_name)

    def validate_config(self, scopes: Sequence[str] = ("_/_",)) -> None:
        """Build every gate's configured policy for these scopes; raises InvalidArgumentError naming the
        bad key. Called at start-up so a typo in the YAML fails the start, not a later Decide."""
        for scope in scopes:
            for kind in GateKind:
                self.default_policy(scope, kind)

    def get_policy(self, scope: str, gate: GateKind | str) -> PolicyVersion:
        """The policy in effect: the newest stored version, else the configured default (version 0)."""
        kind = GateKind.parse(gate)
        cached = self._policy_cache.get((scope, kind))
        if cached is not None:
            return cached
        with reading(self._engine) as conn:
            pv = self._newest_version(conn, scope, kind)
        return self._remember(scope, pv)

    def apply_remote_change(self, scope: str, payload: Mapping[str, Any]) -> None:
        """Another replica stored ``payload["version"]`` of ``payload["gate"]``'s policy: load the newest
        version from the database (the feed row is committed with it, so it is visible)."""
        kind = GateKind.parse(payload["gate"])
        cached = self._policy_cache.get((scope, kind))
        if cached is not None and cached.version >= int(payload.get("version", 0)):
            return
        with reading(self._engine) as conn:
            pv = self._newest_version(conn, scope, kind)
        self._remember(scope, pv)

    def _remember(self, scope: str, pv: PolicyVersion) -> PolicyVersion:
        """Cache ``pv`` unless a newer version is cached already; returns the version now cached."""
        key = (scope, pv.gate)
        with self._lock:
            cached = self._policy_cache.get(key)
            if cached is None or cached.version <= pv.version:
                self._policy_cache[key] = pv
                return pv
            return cached

    def _newest_version(self, conn: Connection, scope: str, kind: GateKind) -> PolicyVersion:
        row = conn.execute(
            select(gate_policies)
            .where(and_(gate_policies.c.scope == scope, gate_policies.c.gate == kind.value))
            .order_by(gate_policies.c.version.desc())
            .limit(1)
        ).first()
        return self._row_to_version(scope, kind, row) if row is not None else self._default_version(scope, kind)

    def set_policy(
        self,
        scope: str,
        gate: GateKind | str,
        policy: GatePolicy | Mapping[str, Any],
        reason: str = "set by RPC",
    ) -> PolicyVersion:
        """Store ``policy`` as a new version (a Mapping overlays the policy in effect) and return it.

        The overlay reads the policy in effect inside the write transaction, under the gate's write lock,
        so concurrent partial updates (here or on another replica) each keep the others' fields.
        """
        kind = GateKind.parse(gate)
        if isinstance(policy, Mapping):
            changes = dict(policy)
            return self._append_version(scope, kind, lambda base: GatePolicy.from_dict(changes, base), reason)
        fixed = policy
        return self._append_version(scope, kind, lambda _base: fixed, reason)

    def list_policy_versions(self, scope: str, gate: GateKind | str) -> list[PolicyVersion]:
        """Every version, oldest first, starting with the configured default as version 0."""
        kind = GateKind.parse(gate)
        with reading(self._engine) as conn:
            rows = conn.execute(
                select(gate_policies)
                .where(and_(gate_policies.c.scope == scope, gate_policies.c.gate == kind.value))
                .order_by(gate_policies.c.version)
            ).all()
        return [self._default_version(scope, kind)] + [self._row_to_version(scope, kind, r) for r in rows]

    def rollback(self, scope: str, gate: GateKind | str, version: int) -> PolicyVersion:
        """Make ``version`` current again by appending a copy of it (history is never rewritten).

        Rolling back to a version that follows the configuration (version 0, or one stored by
        :meth:`reset_policy`) is a reset: the new version follows the configuration too, rather than
        freezing what it says today. Raises NotFoundError when that version does not exist.
        """
        kind = GateKind.parse(gate)
        target = next((v for v in self.list_policy_versions(scope, kind) if v.version == version), None)
        if target is None:
            raise NotFoundError("gate policy version", f"{kind.value} v{version}")
        if target.follows_config:
            return self.reset_policy(scope, kind, f"rollback to v{version} (the configured policy)")
        return self._append_version(scope, kind, lambda _base: target.policy, f"rollback to v{version}")

    def reset_policy(
        self, scope: str, gate: GateKind | str, reason: str = "reset to the configured policy"
    ) -> PolicyVersion:
        """Make the gate follow the configuration again: a new version (announced to replicas like any other)
        whose policy is whatever ``policies.*.gates`` says, read when it is used, so a configuration changed
        later applies after a restart. A later SetPolicy, Calibrate or rollback pins a snapshot again."""
        kind = GateKind.parse(gate)
        return self._append_version(
            scope, kind, lambda _base: self.default_policy(scope, kind), reason, follows_config=True
        )

    def _append_version(
        self,
        scope: str,
        kind: GateKind,
        build: Callable[[GatePolicy], GatePolicy],
        reason: str,
        *,
        follows_config: bool = False,
    ) -> PolicyVersion:
        """Store ``build(policy in effect)`` as the next version. The lock makes "read the newest version,
        insert newest + 1" atomic against writers of this gate in every process; an exception from
        ``build`` stores nothing."""
        now = time.time()
        with self._engine.begin() as conn:
            lock_for_write(conn, "gate_policies", scope, kind.value)
            current = self._newest_version(conn, scope, kind)
            policy = build(current.policy)
            policy.validate()
            version = current.version + 1
            conn.execute(
                insert(gate_policies).values(
                    scope=scope,
                    gate=kind.value,
                    version=version,
                    # A version that follows the configuration keeps today's values as a record only.
                    policy_json=json.dumps(policy.to_dict(), sort_keys=True),
                    reason=reason,
                    created_at=now,
                    follows_config=follows_config,
                )
            )
            if self._publisher is not None:
                self._publisher(conn, scope, {"gate": kind.value, "version": version})
        pv = PolicyVersion(
            gate=kind, version=version, policy=policy, reason=reason, created_at=now, follows_config=follows_config
        )
        self._remember(scope, pv)
        return pv

    def _default_version(self, scope: str, kind: GateKind) -> PolicyVersion:
        return PolicyVersion(
            gate=kind,
            version=0,
            policy=self.default_policy(scope, kind),
            reason="configured default",
            follows_config=True,
        )

    def _row_to_version(self, scope: str, kind: GateKind, row: Any) -> PolicyVersion:
        follows = bool(row.follows_config)
        policy = self.default_policy(scope, kind) if follows else GatePolicy.from_dict(json.loads(row.policy_json))
        return PolicyVersion(
            gate=kind,
            version=int(row.version),
            policy=policy,
            reason=row.reason,
            created_at=float(row.created_at),
            follows_config=follows,
        )

    # ------------------------------------------------------------------ decide

    def signals(
        self,
        stream: TokenStream,
        policy: GatePolicy,
        span: tuple[int, int] | None = None,
    ) -> dict[str, float]:
        """Every span signal of ``stream`` under ``policy``'s k and aggregation parameters.

        Raises InvalidArgumentError when the policy's variant needs data the tokens lack (``full``).
        """
        per_token = E.token_signals(stream.top, stream.sampled, stream.full_entropy, k=policy.top_k or None)
        if policy.variant not in per_token:
            raise InvalidArgumentError("tokens", f"policy variant {policy.variant!r} needs full_entropy on every token")
        aggs = list(E.DEFAULT_SIGNAL_AGGREGATIONS)
        if span is not None:
            aggs.append("span_mean")
        if policy.aggregation not in aggs:
            aggs.append(policy.aggregation)
        return E.span_signals(per_token, aggs, policy.params(span))

    def can_decide_now(self, scope: str, gate: GateKind | str, session_id: str = "") -> bool:
        """Whether ``decide`` would finish without reading the database: the policy in effect is cached and,
        where hysteresis applies, so is the session's last decision (never on a shared database, where
        another replica may have decided for the session since).

        A decision is a few hundred microseconds of numpy; a caller on an event loop uses this to skip the
        worker-thread hop, which costs more than that on a busy machine.
        """
        kind = GateKind.parse(gate)
        pv = self._policy_cache.get((scope, kind))
        if pv is None:
            return False
        if session_id and pv.policy.hysteresis > 0:
            return not self._shared and (scope, kind.value, session_id) in self._last_fire
        return True

    def decide(
        self,
        scope: str,
        gate: GateKind | str,
        tokens: Sequence[TokenLike] | TokenStream,
        *,
        session_id: str = "",
        span: tuple[int, int] | None = None,
        persist: bool = True,
        policy: PolicyVersion | None = None,
    ) -> GateDecision:
        """Decide whether ``gate`` fires for these tokens: ``fire ⇔ score > threshold``.

        ``session_id`` scopes the hysteresis (a gate that fired in this session stays on until the score
        drops to threshold − hysteresis). ``span`` is the answer span [start, end) for ``span_mean``.
        ``policy``: the version to decide under, when the caller read it to prepare the tokens (truncated to
        its ``top_k``); default the one in effect. Raises InvalidArgumentError for bad logprobs, naming
        ``tokens[i]...logprob``, and when the policy's signal is not finite for these tokens (never read as
        "do not fire").
        """
        kind = GateKind.parse(gate)
        pv = policy if policy is not None and policy.gate == kind else self.get_policy(scope, kind)
        stream = (
            tokens
            if isinstance(tokens, TokenStream)
            else TokenStream.from_tokens(tokens, top_k=pv.policy.top_k or None)
        )
        if len(stream) == 0:
            raise InvalidArgumentError("tokens", "at least one token is required")
        check_span(span, len(stream), "answer_span")
        signals = self.signals(stream, pv.policy, span)
        score = float(signals[pv.policy.signal])
        if not math.isfinite(score):
            # Inputs are bounded (MIN_LOGPROB, MAX_FULL_ENTROPY), so this is a guard, not a path: NaN > t is
            # False, and a gate must not quietly stay shut because the arithmetic broke.
            raise InvalidArgumentError(
                "tokens", f"the policy's signal {pv.policy.signal} is {score} for these tokens; no decision"
            )
        threshold = pv.policy.threshold
        hysteresis = bool(session_id) and pv.policy.hysteresis > 0
        if hysteresis and self._was_firing(scope, kind, session_id):
            threshold = pv.policy.threshold - pv.policy.hysteresis
        fire = score > threshold
        decision = GateDecision(
            decision_id=uuid.uuid4().hex,
            gate=kind,
            fire=fire,
            score=score,
            threshold=threshold,
            signals=signals,
            signal=pv.policy.signal,
            policy_version=pv.version,
            n_tokens=len(stream),
        )
        if persist:
            now = time.time()
            # On a shared database the next decision for this session may be another replica's: it reads
            # the state from the database, so this one must be there before we answer (not written behind).
            self._store_decision(scope, decision, session_id, pv.policy, now, now=hysteresis and self._shared)
            # Only a stored decision moves the session's hysteresis: a dry run (or a read-only caller's
            # Decide) must not switch the gate on or off for the session's later real decisions.
            if session_id:
                self._remember_fire(scope, kind, session_id, fire, now)
        return decision

    def _store_decision(
        self, scope: str, d: GateDecision, session_id: str, policy: GatePolicy, created_at: float, *, now: bool
    ) -> None:
        row = {
            "decision_id": d.decision_id,
            "scope": scope,
            "gate": d.gate.value,
            "session_id": session_id or None,
            "created_at": created_at,
            "policy_version": d.policy_version,
            "signal": d.signal,
            "score": _finite_or_none(d.score),
            "threshold": _finite_or_none(d.threshold),
            "fire": d.fire,
            "n_tokens": d.n_tokens,
            "signals_json": _dump_signals(d.signals),
            "signal_params": policy.signal_params,
            # Unlabelled until record_outcome; every row of a batch names the same columns.
            "label": None,
            "labelled_at": None,
        }
        if now:
            with self._engine.begin() as conn:
                conn.execute(insert(gate_decisions), [row])
        else:
            self._decisions.add(row)

    def _was_firing(self, scope: str, kind: GateKind, session_id: str) -> bool:
        key = (scope, kind.value, session_id)
        with self._lock:
            cached = self._last_fire.get(key)
        # One process (SQLite): the cache is the truth; a decision still queued for this key is in it.
        if cached is not None and not self._shared:
            return cached[0]
        with reading(self._engine) as conn:
            row = conn.execute(
                select(gate_decisions.c.fire, gate_decisions.c.created_at)
                .where(
                    and_(
                        gate_decisions.c.scope == scope,
                        gate_decisions.c.gate == kind.value,
                        gate_decisions.c.session_id == session_id,
                        gate_decisions.c.fire.is_not(None),
                    )
                )
                .order_by(gate_decisions.c.created_at.desc())
                .limit(1)
            ).first()
        # Shared database: the newer of what is stored (maybe another replica's) and what this process
        # decided last (maybe still queued, from before the policy had a hysteresis).
        if cached is not None and (row is None or cached[1] >= float(row.created_at)):
            return cached[0]
        return bool(row is not None and row.fire)

    def _remember_fire(self, scope: str, kind: GateKind, session_id: str, fire: bool, at: float) -> None:
        key = (scope, kind.value, session_id)
        with self._lock:
            self._last_fire[key] = (fire, at)
            self._last_fire.move_to_end(key)
            while len(self._last_fire) > _HYSTERESIS_CACHE:
                self._last_fire.popitem(last=False)

    # ------------------------------------------------------------------ outcomes

    def record_outcome(
        self,
        scope: str,
        *,
        needed: bool,
        decision_id: str = "",
        gate: GateKind | str | None = None,
        signals: Mapping[str, float] | None = None,
    ) -> str:
        """Label a decision (``decision_id``) or store bare ``signals`` with a label; returns the decision id.

        ``needed``: the action was in fact needed (retrieval/tool/escalation would have helped, or the
        answer given without it was wrong). Relabelling overwrites. Raises NotFoundError for an unknown
        decision id in this scope, InvalidArgumentError when neither a decision id nor signals are given,
        when a decision id comes with signals (the stored decision has its own), when ``gate`` is not the
        gate of that decision, or when a signal name is not ``"<variant>.<aggregation>"``.
        """
        now = time.time()
        if decision_id:
            if signals:
                raise InvalidArgumentError(
                    "signals", "give signals only without a decision_id (a stored decision keeps its own signals)"
                )
            expected = GateKind.parse(gate) if gate is not None else None
            self._decisions.flush()  # the decision may still be queued

            def label() -> str | None:
                with self._engine.begin() as conn:
                    where = and_(gate_decisions.c.decision_id == decision_id, gate_decisions.c.scope == scope)
                    row = conn.execute(select(gate_decisions.c.gate).where(where)).first()
                    if row is None:
                        return None
                    # Check before writing: a label meant for another gate must not land on this decision.
                    if expected is None or row.gate == expected.value:
                        conn.execute(update(gate_decisions).where(where).values(label=bool(needed), labelled_at=now))
                    return str(row.gate)

            stored_gate = find_row(self._engine, label)
            if stored_gate is None:
                raise NotFoundError("decision", decision_id)
            if expected is not None and stored_gate != expected.value:
                raise InvalidArgumentError(
                    "gate", f"decision {decision_id} is a {stored_gate} decision, not {expected.value}"
                )
            return decision_id
        if not signals:
            raise InvalidArgumentError("decision_id", "give a decision_id or the signals of the decision")
        if gate is None:
            raise InvalidArgumentError("gate", "required when recording bare signals")
        kind = GateKind.parse(gate)
        for name, value in signals.items():
            if not is_signal_name(name):
                # Calibrate turns the chosen name back into a policy's variant and aggregation.
                raise InvalidArgumentError(
                    f"signals[{name}]",
                    f"not a signal name: use \"<variant>.<aggregation>\" with a variant of {list(E.TOKEN_VARIANTS)} "
                    f"and an aggregation of {list(E.AGGREGATIONS)}",
                )
            if not math.isfinite(value):
                raise InvalidArgumentError(f"signals[{name}]", f"must be finite, got {value}")
        pv = self.get_policy(scope, kind)
        new_id = uuid.uuid4().hex
        with self._engine.begin() as conn:
            conn.execute(
                insert(gate_decisions).values(
                    decision_id=new_id,
                    scope=scope,
                    gate=kind.value,
                    created_at=now,
                    policy_version=pv.version,
                    signal=pv.policy.signal,
                    score=signals.get(pv.policy.signal),
                    threshold=None,
                    fire=None,
                    n_tokens=0,
                    signals_json=_dump_signals(dict(signals)),
                    # Signals computed elsewhere count as computed under the policy in effect now.
                    signal_params=pv.policy.signal_params,
                    label=bool(needed),
                    labelled_at=now,
                )
            )
        return new_id

    # ------------------------------------------------------------------ calibrate

    def calibrate(
        self, scope: str, gate: GateKind | str, objective: CalibrationObjective | None = None
    ) -> CalibrationResult:
        """Fit the gate's threshold (and signal) from recorded outcomes; store it as a new policy version.

        Only outcomes whose signals were computed with the policy's ``top_k`` and aggregation parameters
        (``GatePolicy.signal_params``) are used: a threshold fitted on signals computed under another k
        means nothing under this one. Decisions stored before the fingerprint existed count as computed
        under the policy version they recorded. The reply's message says how many outcomes were left out.

        Reports every signal's AUROC. Keeps the current policy, and says why, when there are too few
        outcomes, when no signal beats chance, when the objective cannot be met from this data, or when
        the signal parameters changed while it ran.
        """
        kind = GateKind.parse(gate)
        obj = (objective or CalibrationObjective()).validate()
        current = self.get_policy(scope, kind)
        params = current.policy.signal_params
        alike = self._computed_under(scope, kind, params)
        of_gate = and_(gate_decisions.c.scope == scope, gate_decisions.c.gate == kind.value)
        self._decisions.flush()
        with reading(self._engine) as conn:
            labelled = conn.execute(
                select(gate_decisions.c.signals_json, gate_decisions.c.label)
                .where(and_(of_gate, gate_decisions.c.label.is_not(None), alike))
                .order_by(gate_decisions.c.labelled_at.desc())
                .limit(_RECENT_DECISIONS)
            ).all()
            n_other = int(
                conn.execute(
                    select(func.count())
                    .select_from(gate_decisions)
                    .where(and_(of_gate, gate_decisions.c.label.is_not(None), ~alike))
                ).scalar_one()
            )
        sigs = [json.loads(r.signals_json) for r in labelled]
        labels = np.array([bool(r.label) for r in labelled], dtype=bool)
        n, n_pos = int(labels.size), int(labels.sum())
        left_out = (
            f" ({n_other} labelled outcomes computed under other signal parameters than the policy's "
            f"{params} were left out)"
            if n_other
            else ""
        )

        def keep(message: str, policy: PolicyVersion = current, **extra: Any) -> CalibrationResult:
            return CalibrationResult(
                updated=False,
                message=f"{message}{left_out}; kept policy v{policy.version}",
                policy=policy,
                n_outcomes=n,
                n_positive=n_pos,
                **extra,
            )

        if n < obj.min_outcomes or min(n_pos, n - n_pos) < obj.min_per_class:
            return keep(
                f"only {n} labelled outcomes ({n_pos} needed, {n - n_pos} not needed); calibration needs "
                f"at least {obj.min_outcomes} with at least {obj.min_per_class} of each label"
            )
        # Names that are no policy's signal (stored before RecordOutcome checked them) cannot be calibrated.
        common = {name for name in sigs[0] if is_signal_name(name)}
        for s in sigs[1:]:
            common &= set(s)
        aurocs: dict[str, float] = {}
        for name in sorted(common):
            vals = np.array([s[name] for s in sigs], dtype=np.float64)
            value = C.auroc(vals, labels)
            if math.isfinite(value):
                aurocs[name] = round(value, 6)
        if obj.signal:
            if obj.signal not in common:
                raise InvalidArgumentError(
                    "signal", f"{obj.signal!r} is not among the recorded signals {sorted(common)}"
                )
            chosen = obj.signal
        else:
            if not aurocs:
                return keep("no signal is present on every labelled outcome")
            # Ties go to the policy's current signal, then alphabetically, so reruns are stable.
            chosen = max(aurocs, key=lambda k: (aurocs[k], k == current.policy.signal, k))
            if aurocs[chosen] <= 0.5:
                return keep(
                    f"no signal predicts need better than chance (best AUROC {aurocs[chosen]:.3f})",
                    auroc=aurocs,
                )
        scores = np.array([s[chosen] for s in sigs], dtype=np.float64)
        a = b = math.nan
        if obj.kind == "fire_rate":
            pool = self._recent_scores(scope, kind, chosen, alike)
            pool = pool if pool.size >= n else scores
            threshold = C.fire_rate_threshold(pool, obj.target_fire_rate)
        elif obj.kind == "recall":
            t = C.conformal_recall_threshold(scores[labels], obj.alpha)
            if t is None:
                need = math.ceil(1.0 / obj.alpha - 1.0)
                return keep(
                    f"recall ≥ {1 - obj.alpha:g} needs >= {need} needed-labelled outcomes, have {n_pos}",
                    auroc=aurocs,
                    signal=chosen,
                )
            threshold = t
        else:
            a, b = C.logistic_fit(scores, labels)
            t = C.logistic_threshold(a, b, obj.probability_cutoff)
            if t is None:
                return keep(f"logistic fit has slope b={b:.4g} <= 0 on {chosen}", auroc=aurocs, signal=chosen)
            threshold = t
        variant, _, aggregation = chosen.partition(".")
        fitted = {"variant": variant, "aggregation": aggregation, "threshold": threshold}
        new_policy = GatePolicy.from_dict(fitted, current.policy)
        fires = scores > threshold
        fire_rate = float(fires.mean())
        recall = float(fires[labels].mean()) if n_pos else math.nan
        auc = aurocs.get(chosen, math.nan)
        reason = (
            f"calibrated ({obj.kind}) on {n} outcomes: signal {chosen} (AUROC {auc:.3f}), "
            f"threshold {threshold:.6g}, fire rate {fire_rate:.3f}, recall {recall:.3f}{left_out}"
        )
        if obj.dry_run:
            pv = PolicyVersion(gate=kind, version=current.version, policy=new_policy, reason="dry run: " + reason)
        else:

            def overlay(base: GatePolicy) -> GatePolicy:
                # Overlay the fit on the policy in effect at commit, so a concurrent change of other fields
                # stays; but not on one whose signals are computed differently from those fitted on.
                if base.signal_params != params:
                    raise _SignalParamsChanged
                return GatePolicy.from_dict(fitted, base)

            try:
                pv = self._append_version(scope, kind, overlay, reason)
            except _SignalParamsChanged:
                now = self.get_policy(scope, kind)
                return keep(
                    f"the policy's signal parameters changed while calibrating (now {now.policy.signal_params}); "
                    "nothing stored, calibrate again once outcomes under them exist",
                    policy=now,
                    auroc=aurocs,
                    signal=chosen,
                )
        return CalibrationResult(
            updated=not obj.dry_run,
            message=("dry run: " + reason) if obj.dry_run else reason,
            policy=pv,
            n_outcomes=n,
            n_positive=n_pos,
            auroc=aurocs,
            signal=chosen,
            fire_rate=fire_rate,
            recall=recall,
            logistic_a=a,
            logistic_b=b,
        )

    def _computed_under(self, scope: str, kind: GateKind, params: str) -> Any:
        """SQL condition: the decision's signals were computed with ``params`` (``GatePolicy.signal_params``).

        Rows stored before decisions carried the fingerprint count as computed under the policy version
        they recorded (version 0 by today's configuration, the best record there is of it). NULL-safe, so
        its negation counts the others.
        """
        versions = [v.version for v in self.list_policy_versions(scope, kind) if v.policy.signal_params == params]
        fp = gate_decisions.c.signal_params
        return or_(
            and_(fp.is_not(None), fp == params),
            and_(fp.is_(None), gate_decisions.c.policy_version.in_(versions)),
        )

    def _recent_scores(self, scope: str, kind: GateKind, signal: str, alike: Any) -> np.ndarray:
        self._decisions.flush()
        with reading(self._engine) as conn:
            rows = conn.execute(
                select(gate_decisions.c.signals_json)
                .where(and_(gate_decisions.c.scope == scope, gate_decisions.c.gate == kind.value, alike))
                .order_by(gate_decisions.c.created_at.desc())
                .limit(_RECENT_DECISIONS)
            ).all()
        vals = [json.loads(r.signals_json).get(signal) for r in rows]
        return np.array([v for v in vals if v is not None], dtype=np.float64)


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _dump_signals(signals: Mapping[str, float]) -> str:
    # JSON has no NaN/inf; a non-finite signal carries no information for calibration anyway.
    return json.dumps({k: v for k, v in signals.items() if math.isfinite(v)}, sort_keys=True)
