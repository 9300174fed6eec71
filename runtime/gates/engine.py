"""``GateEngine``: entropy gates per namespace — decide, record outcomes, calibrate, version policies.

Transport-neutral and synchronous (the servicer runs it through ``rt.offload``). Every decision is
stored with all of its signals, so calibration can later compare variants on the same outcomes.

Several replicas may share one database: a policy change takes a per-(scope, gate) write lock, reads the
version it builds on inside the same transaction and publishes ``{"gate", "version"}`` to the change feed;
other replicas reload that gate's policy in ``apply_remote_change``. The policy cache only moves forward
(a higher version replaces a lower one), so a slow read can never put an older policy back.
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
from sqlalchemy import Connection, Engine, and_, insert, select, update

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
)
from runtime.write_behind import RowWriter, find_row

#: Configured policy for a scope: ``{"retrieve": {...}, "escalate": {...}}`` plus optional top-level
#: keys that apply to every gate (``{"top_k": 10}``). ``Settings.policy("gates", scope)`` fits.
ConfigLookup = Callable[[str], Mapping[str, Any]]

#: ``publisher(connection, scope, payload)``: records a policy change for other replicas, inside the
#: transaction that makes it (``rt.changes.publish`` with the component name bound).
Publisher = Callable[[Connection, str, dict[str, Any]], None]

# Recent decisions, labelled or not, used for the fire-rate objective.
_RECENT_DECISIONS = 5000
_HYSTERESIS_CACHE = 10_000


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
        # Last fire per (scope, gate, session) for hysteresis; falls back to the database on a miss.
        self._last_fire: OrderedDict[tuple[str, str, str], bool] = OrderedDict()
        self._decisions = RowWriter(engine, gate_decisions, durable=durable_records)

    def flush(self) -> None:
        """Wait until every decision made so far is stored."""
        self._decisions.flush()

    def close(self) -> None:
        """Store the queued decisions and stop the writer (on shutdown)."""
        self._decisions.close()

    # ------------------------------------------------------------------ policies

    def default_policy(self, scope: str, gate: GateKind | str) -> GatePolicy:
        """The configured policy (version 0): built-in default overlaid with the config for ``scope``."""
        kind = GateKind.parse(gate)
        cfg = dict(self._config(scope) or {})
        gate_keys = {g.value for g in GateKind}
        common = {k: v for k, v in cfg.items() if k not in gate_keys}
        specific = cfg.get(kind.value) or {}
        policy = GatePolicy.from_dict(common, DEFAULT_POLICIES[kind], field_name=f"policies.gates.{kind.value}")
        return GatePolicy.from_dict(specific, policy, field_name=f"policies.gates.{kind.value}")

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
        return self._row_to_version(kind, row) if row is not None else self._default_version(scope, kind)

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
        return [self._default_version(scope, kind)] + [self._row_to_version(kind, r) for r in rows]

    def rollback(self, scope: str, gate: GateKind | str, version: int) -> PolicyVersion:
        """Make ``version`` current again by appending a copy of it (history is never rewritten).

        Raises NotFoundError when that version does not exist.
        """
        kind = GateKind.parse(gate)
        target = next((v for v in self.list_policy_versions(scope, kind) if v.version == version), None)
        if target is None:
            raise NotFoundError("gate policy version", f"{kind.value} v{version}")
        return self._append_version(scope, kind, lambda _base: target.policy, f"rollback to v{version}")

    def _append_version(
        self, scope: str, kind: GateKind, build: Callable[[GatePolicy], GatePolicy], reason: str
    ) -> PolicyVersion:
        """Store ``build(policy in effect)`` as the next version. The lock makes "read the newest version,
        insert newest + 1" atomic against writers of this gate in every process."""
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
                    policy_json=json.dumps(policy.to_dict(), sort_keys=True),
                    reason=reason,
                    created_at=now,
                )
            )
            if self._publisher is not None:
                self._publisher(conn, scope, {"gate": kind.value, "version": version})
        pv = PolicyVersion(gate=kind, version=version, policy=policy, reason=reason, created_at=now)
        self._remember(scope, pv)
        return pv

    def _default_version(self, scope: str, kind: GateKind) -> PolicyVersion:
        return PolicyVersion(gate=kind, version=0, policy=self.default_policy(scope, kind), reason="configured default")

    @staticmethod
    def _row_to_version(kind: GateKind, row: Any) -> PolicyVersion:
        policy = GatePolicy.from_dict(json.loads(row.policy_json))
        return PolicyVersion(
            gate=kind,
            version=int(row.version),
            policy=policy,
            reason=row.reason,
            created_at=float(row.created_at),
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
        where hysteresis applies, so is the session's last decision.

        A decision is a few hundred microseconds of numpy; a caller on an event loop uses this to skip the
        worker-thread hop, which costs more than that on a busy machine.
        """
        kind = GateKind.parse(gate)
        pv = self._policy_cache.get((scope, kind))
        if pv is None:
            return False
        if session_id and pv.policy.hysteresis > 0:
            return (scope, kind.value, session_id) in self._last_fire
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
    ) -> GateDecision:
        """Decide whether ``gate`` fires for these tokens: ``fire ⇔ score > threshold``.

        ``session_id`` scopes the hysteresis (a gate that fired in this session stays on until the score
        drops to threshold − hysteresis). ``span`` is the answer span [start, end) for ``span_mean``.
        Raises InvalidArgumentError for NaN/inf/positive logprobs, naming ``tokens[i]...logprob``.
        """
        kind = GateKind.parse(gate)
        stream = tokens if isinstance(tokens, TokenStream) else TokenStream.from_tokens(tokens)
        if len(stream) == 0:
            raise InvalidArgumentError("tokens", "at least one token is required")
        check_span(span, len(stream), "answer_span")
        pv = self.get_policy(scope, kind)
        policy = pv.policy
        signals = self.signals(stream, policy, span)
        score = float(signals[policy.signal])
        threshold = policy.threshold
        if session_id and policy.hysteresis > 0 and self._was_firing(scope, kind, session_id):
            threshold = policy.threshold - policy.hysteresis
        fire = score > threshold
        decision = GateDecision(
            decision_id=uuid.uuid4().hex,
            gate=kind,
            fire=fire,
            score=score,
            threshold=threshold,
            signals=signals,
            signal=policy.signal,
            policy_version=pv.version,
            n_tokens=len(stream),
        )
        if persist:
            self._store_decision(scope, decision, session_id)
            # Only a stored decision moves the session's hysteresis: a dry run (or a read-only caller's
            # Decide) must not switch the gate on or off for the session's later real decisions.
            if session_id:
                self._remember_fire(scope, kind, session_id, fire)
        return decision

    def _store_decision(self, scope: str, d: GateDecision, session_id: str) -> None:
        self._decisions.add(
            {
                "decision_id": d.decision_id,
                "scope": scope,
                "gate": d.gate.value,
                "session_id": session_id or None,
                "created_at": time.time(),
                "policy_version": d.policy_version,
                "signal": d.signal,
                "score": _finite_or_none(d.score),
                "threshold": _finite_or_none(d.threshold),
                "fire": d.fire,
                "n_tokens": d.n_tokens,
                "signals_json": _dump_signals(d.signals),
                # Unlabelled until record_outcome; every row of a batch names the same columns.
                "label": None,
                "labelled_at": None,
            }
        )

    def _was_firing(self, scope: str, kind: GateKind, session_id: str) -> bool:
        key = (scope, kind.value, session_id)
        with self._lock:
            if key in self._last_fire:
                return self._last_fire[key]
        # No flush: a decision still queued for this key is in _last_fire (remembered when it was made).
        with reading(self._engine) as conn:
            row = conn.execute(
                select(gate_decisions.c.fire)
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
        return bool(row is not None and row.fire)

    def _remember_fire(self, scope: str, kind: GateKind, session_id: str, fire: bool) -> None:
        key = (scope, kind.value, session_id)
        with self._lock:
            self._last_fire[key] = fire
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

        Reports every signal's AUROC. Keeps the current policy, and says why, when there are too few
        outcomes, when no signal beats chance, or when the objective cannot be met from this data.
        """
        kind = GateKind.parse(gate)
        obj = (objective or CalibrationObjective()).validate()
        current = self.get_policy(scope, kind)
        self._decisions.flush()
        with reading(self._engine) as conn:
            labelled = conn.execute(
                select(gate_decisions.c.signals_json, gate_decisions.c.label)
                .where(
                    and_(
                        gate_decisions.c.scope == scope,
                        gate_decisions.c.gate == kind.value,
                        gate_decisions.c.label.is_not(None),
                    )
                )
                .order_by(gate_decisions.c.labelled_at.desc())
                .limit(_RECENT_DECISIONS)
            ).all()
        sigs = [json.loads(r.signals_json) for r in labelled]
        labels = np.array([bool(r.label) for r in labelled], dtype=bool)
        n, n_pos = int(labels.size), int(labels.sum())

        def keep(message: str, **extra: Any) -> CalibrationResult:
            return CalibrationResult(
                updated=False,
                message=f"{message}; kept policy v{current.version}",
                policy=current,
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
            pool = self._recent_scores(scope, kind, chosen)
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
            f"threshold {threshold:.6g}, fire rate {fire_rate:.3f}, recall {recall:.3f}"
        )
        if obj.dry_run:
            pv = PolicyVersion(gate=kind, version=current.version, policy=new_policy, reason="dry run: " + reason)
        else:
            # Overlay the fit on the policy in effect at commit, so a concurrent change of other fields stays.
            pv = self._append_version(scope, kind, lambda base: GatePolicy.from_dict(fitted, base), reason)
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

    def _recent_scores(self, scope: str, kind: GateKind, signal: str) -> np.ndarray:
        self._decisions.flush()
        with reading(self._engine) as conn:
            rows = conn.execute(
                select(gate_decisions.c.signals_json)
                .where(and_(gate_decisions.c.scope == scope, gate_decisions.c.gate == kind.value))
                .order_by(gate_decisions.c.created_at.desc())
                .limit(_RECENT_DECISIONS)
            ).all()
        vals = [json.loads(r.signals_json).get(signal) for r in rows]
        return np.array([v for v in vals if v is not None], dtype=np.float64)


def is_signal_name(name: str) -> bool:
    """Whether ``name`` is ``"<variant>.<aggregation>"`` of a known variant and aggregation."""
    variant, dot, aggregation = name.partition(".")
    return bool(dot) and variant in E.TOKEN_VARIANTS and aggregation in E.AGGREGATIONS


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _dump_signals(signals: Mapping[str, float]) -> str:
    # JSON has no NaN/inf; a non-finite signal carries no information for calibration anyway.
    return json.dumps({k: v for k, v in signals.items() if math.isfinite(v)}, sort_keys=True)
