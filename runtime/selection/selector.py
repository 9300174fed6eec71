"""``AnswerSelector``: choose one answer among several agents' candidates.

Untrained default (documented, always available): agreement clusters; the largest cluster wins; ties
between clusters — and all-singleton sets — go to the lower mean token entropy. A learned selector
(logistic regression over label-free features, per namespace) replaces it only after it beat the
default on held-back recorded outcomes.

Replicas sharing one database: Train numbers its model under a per-scope write lock and publishes
``{"version"}`` to the change feed; other replicas reload the scope's model in ``apply_remote_change``.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import Connection, Engine, and_, func, insert, select, update

from core import entropy as E
from core.embedding import Embedder, answered_from_cache
from core.errors import FieldViolation, InvalidArgumentError, NotFoundError
from core.sqlread import reading
from core.sqlwrite import lock_for_write
from runtime.gates.types import TokenStream, check_span, typed_setting
from runtime.selection.agreement import cluster_answers, is_empty_answer, normalize_answer, texts_to_embed
from runtime.selection.features import FEATURE_NAMES, candidate_features
from runtime.selection.schema import select_models, select_selections
from runtime.selection.types import Candidate, Selection, TrainResult
from runtime.write_behind import RowWriter, find_row

log = logging.getLogger(__name__)

ConfigLookup = Callable[[str], Mapping[str, Any]]

#: Largest magnitude of a stored feature that training uses. Logprobs are at least MIN_LOGPROB (−1e5), so
#: no feature computed now comes near; rows stored before that floor existed can hold 1e308, which turns
#: the standardisation into inf/NaN and made every later Train fail.
_FEATURE_LIMIT = 1e6

#: ``publisher(connection, scope, payload)``: records a new model for other replicas, inside the
#: transaction that stores it (``rt.changes.publish`` with the component name bound).
Publisher = Callable[[Connection, str, dict[str, Any]], None]


@dataclass(frozen=True)
class SelectorConfig:
    """Per-namespace settings (``policies.defaults.select`` / ``policies.namespaces.<ns>.select``)."""

    #: Cosine similarity at which long answers agree.
    similarity: float = 0.85
    #: Answers with at least this many words (normalised) may merge by embedding.
    min_words: int = 4
    #: Use a learned model when one is active for the namespace.
    learned: bool = True
    #: Labelled selections needed before a model is fitted.
    min_train_sets: int = 40
    #: Share of labelled selections held back to compare the model with the default.
    heldout_fraction: float = 0.3
    #: Refit automatically after this many new outcomes (0 = only on Train).
    retrain_every: int = 25

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> SelectorConfig:
        """Overlay a config mapping on the defaults; unknown keys, values of the wrong type and values
        out of range raise InvalidArgumentError naming ``policies.select.<key>``."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidArgumentError(
                f"policies.select.{unknown[0]}", f"unknown key; choose from {sorted(known)}"
            )
        base = cls()
        typed = {k: typed_setting(f"policies.select.{k}", getattr(base, k), v) for k, v in data.items()}
        return cls(**typed).validate()

    def validate(self) -> SelectorConfig:
        """Raise InvalidArgumentError naming each key out of range; return self."""
        v: list[FieldViolation] = []
        if not 0.0 < self.similarity <= 1.0:
            v.append(FieldViolation("policies.select.similarity", "a cosine similarity; must be in (0, 1]"))
        if self.min_words < 0:
            v.append(FieldViolation("policies.select.min_words", "must be >= 0"))
        # Training needs at least one selection to fit on and one held back to compare on.
        if self.min_train_sets < 2:
            v.append(FieldViolation("policies.select.min_train_sets", "must be >= 2"))
        if not 0.0 < self.heldout_fraction < 1.0:
            v.append(FieldViolation("policies.select.heldout_fraction", "must be in (0, 1)"))
        if self.retrain_every < 0:
            v.append(FieldViolation("policies.select.retrain_every", "must be >= 0 (0 = only on Train)"))
        if v:
            raise InvalidArgumentError(v)
        return self


@dataclass(frozen=True)
class _Model:
    version: int
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float

    def logit(self, x: np.ndarray) -> np.ndarray:
        """log-odds of being right, per candidate row of ``x``."""
        return np.asarray(((x - self.mean) / self.scale) @ self.coef + self.intercept, dtype=np.float64)


class AnswerSelector:
    """Answer selection for every namespace of one process (synchronous; run it via ``rt.offload``).

    ``publisher`` tells other replicas about models trained here (see ``apply_remote_change``).
    """

    def __init__(
        self,
        engine: Engine,
        embedder: Embedder | None = None,
        config: ConfigLookup | Mapping[str, Any] | None = None,
        publisher: Publisher | None = None,
        *,
        durable_records: bool = False,
    ):
        """``durable_records``: store each selection before ``select`` returns (``storage.durable_records``)."""
        self._engine = engine
        self._publisher = publisher
        self._embedder = embedder
        if config is None:
            self._config: ConfigLookup = lambda _scope: {}
        elif callable(config):
            self._config = config
        else:
            frozen = dict(config)
            self._config = lambda _scope: frozen
        self._lock = threading.Lock()
        # scope -> (newest stored model version, 0 for none; the active model or None). Only moves forward.
        self._models: dict[str, tuple[int, _Model | None]] = {}
        # Selections are records for later labelling: nobody waits for their fsync (unless durable_records).
        self._selections = RowWriter(engine, select_selections, durable=durable_records)

    def flush(self) -> None:
        """Wait until every selection made so far is stored."""
        self._selections.flush()

    def close(self) -> None:
        """Store the queued selections and stop the writer (on shutdown)."""
        self._selections.close()

    def config(self, scope: str) -> SelectorConfig:
        """The selection settings in effect for ``scope``."""
        return SelectorConfig.from_mapping(self._config(scope) or {})

    # ------------------------------------------------------------------ select

    def select_now(self, scope: str, candidates: Sequence[Candidate]) -> Selection | None:
        """``select`` if it can finish at once on the calling thread, else None (then call ``select`` in a worker).

        At once means: the scope's learned model (when the scope uses one) is already loaded, and every answer
        the agreement clustering would embed is in the embedder's cache. The selection is then a few hundred
        microseconds of numpy, less than an event loop's hop to a worker thread and back on a busy machine.
        """
        cfg = self.config(scope)
        if cfg.learned:
            with self._lock:
                if scope not in self._models:
                    return None
        if self._embedder is not None:
            texts = texts_to_embed([c.answer for c in candidates], min_words=cfg.min_words)
            if texts and not answered_from_cache(self._embedder, texts):
                return None
        return self.select(scope, candidates)

    def select(self, scope: str, candidates: Sequence[Candidate], *, persist: bool = True) -> Selection:
        """Choose one candidate. Raises InvalidArgumentError for no candidates or bad logprobs."""
        if not candidates:
            raise InvalidArgumentError("candidates", "at least one candidate is required")
        cfg = self.config(scope)
        answers = [c.answer for c in candidates]
        streams = [_stream(c.tokens, f"candidates[{i}].tokens") for i, c in enumerate(candidates)]
        firsts = [
            _stream(c.first_round_tokens, f"candidates[{i}].first_round_tokens")
            for i, c in enumerate(candidates)
        ]
        spans = [c.answer_span for c in candidates]
        for i, (span, stream) in enumerate(zip(spans, streams, strict=True)):
            check_span(span, len(stream) if stream is not None else 0, f"candidates[{i}].answer_span")
        clusters = cluster_answers(
            answers, self._embedder, similarity=cfg.similarity, min_words=cfg.min_words
        )
        features, mean_entropy = candidate_features(answers, streams, firsts, spans, clusters)
        n = len(candidates)
        sizes = [len(c) for c in clusters]
        sem = E.discrete_entropy(sizes)
        norm_sem = sem / math.log(n) if n > 1 else 0.0
        empty = [is_empty_answer(a) for a in answers]
        default_index, default_scores = _agreement_choice(clusters, mean_entropy, n, empty)
        method, index, scores = "agreement", default_index, default_scores
        confidence = default_scores[default_index]
        model = self._active_model(scope) if cfg.learned else None
        if model is not None:
            # Argmax on the logit: probabilities can saturate to equal 1.0.
            logits = model.logit(features)
            probs = 1.0 / (1.0 + np.exp(-logits))
            # An empty answer is chosen only when every answer is empty, whatever the model thinks of it.
            index = int(np.argmax(np.where(empty, -np.inf, logits))) if not all(empty) else int(np.argmax(logits))
            method, scores, confidence = "learned", [float(p) for p in probs], float(probs[index])
        selection = Selection(
            selection_id=uuid.uuid4().hex,
            index=index,
            answer=answers[index],
            confidence=confidence,
            scores=scores,
            clusters=[list(c) for c in clusters],
            semantic_entropy=sem,
            normalized_semantic_entropy=min(1.0, max(0.0, norm_sem)),
            method=method,
            mean_entropy=mean_entropy,
            default_index=default_index,
        )
        if persist:
            self._selections.add(
                {
                    "selection_id": selection.selection_id,
                    "scope": scope,
                    "created_at": time.time(),
                    "n_candidates": n,
                    "chosen_index": index,
                    "default_index": default_index,
                    "method": method,
                    "answers_json": json.dumps([normalize_answer(a) for a in answers]),
                    "clusters_json": json.dumps(selection.clusters),
                    "feature_names_json": json.dumps(FEATURE_NAMES),
                    "features_json": json.dumps(np.round(features, 8).tolist()),
                    # Unlabelled until record_outcome; every row of a batch names the same columns.
                    "correct_json": None,
                    "labelled_at": None,
                }
            )
        return selection

    # ------------------------------------------------------------------ outcomes and training

    def record_outcome(
        self,
        scope: str,
        selection_id: str,
        *,
        correct_indices: Sequence[int] | None = None,
        correct_answer: str | None = None,
    ) -> list[bool]:
        """Label a selection: which candidates were right (by index, or by matching the correct answer's
        normalised text). Returns the per-candidate labels. May refit the namespace's model.

        Raises NotFoundError for an unknown selection id in this scope, InvalidArgumentError when both or
        neither of ``correct_indices`` and ``correct_answer`` are given.
        """
        if correct_indices and correct_answer is not None and correct_answer.strip():
            # Two labellings that may disagree: using one silently would store a label the caller did not mean.
            raise InvalidArgumentError("correct_answer", "set correct_indices or correct_answer, not both")
        self._selections.flush()  # the selection may still be queued

        def lookup() -> Any:
            with reading(self._engine) as conn:
                return conn.execute(
                    select(select_selections.c.n_candidates, select_selections.c.answers_json).where(
                        and_(select_selections.c.selection_id == selection_id, select_selections.c.scope == scope)
                    )
                ).first()

        row = find_row(self._engine, lookup)
        if row is None:
            raise NotFoundError("selection", selection_id)
        n = int(row.n_candidates)
        if correct_answer is not None and correct_answer.strip():
            target = normalize_answer(correct_answer)
            labels = [a == target for a in json.loads(row.answers_json)]
        elif correct_indices is not None:
            bad = [
                FieldViolation(f"correct_indices[{j}]", f"{i} is not a candidate index (0..{n - 1})")
                for j, i in enumerate(correct_indices)
                if not 0 <= i < n
            ]
            if bad:
                raise InvalidArgumentError(bad)
            labels = [i in set(correct_indices) for i in range(n)]
        else:
            raise InvalidArgumentError("correct_indices", "give correct_indices or correct_answer")
        with self._engine.begin() as conn:
            conn.execute(
                update(select_selections)
                .where(select_selections.c.selection_id == selection_id)
                .values(correct_json=json.dumps(labels), labelled_at=time.time())
            )
        cfg = self.config(scope)
        if cfg.retrain_every > 0:
            with reading(self._engine) as conn:
                count = conn.execute(
                    select(func.count())
                    .select_from(select_selections)
                    .where(
                        and_(select_selections.c.scope == scope, select_selections.c.labelled_at.is_not(None))
                    )
                ).scalar_one()
            if count >= cfg.min_train_sets and count % cfg.retrain_every == 0:
                # The label is committed: a failed refit must not turn this call into an error (the caller
                # would retry a write that took place). The next refit, or Train, tries again.
                try:
                    self.train(scope)
                except Exception:
                    log.exception("automatic retrain of the answer selector for %s failed", scope)
        return labels

    def train(self, scope: str, *, seed: int = 0) -> TrainResult:
        """Fit the learned selector on recorded outcomes; activate it only if it beats the default on a
        held-back share of them (per-set accuracy: the chosen candidate was right)."""
        from sklearn.linear_model import LogisticRegression

        cfg = self.config(scope)
        with reading(self._engine) as conn:
            rows = conn.execute(
                select(
                    select_selections.c.features_json,
                    select_selections.c.feature_names_json,
                    select_selections.c.correct_json,
                    select_selections.c.default_index,
                )
                .where(
                    and_(select_selections.c.scope == scope, select_selections.c.correct_json.is_not(None))
                )
                .order_by(select_selections.c.labelled_at)
            ).all()
        recorded = [
            (
                np.array(json.loads(r.features_json), dtype=np.float64),
                np.array(json.loads(r.correct_json)),
                r.default_index,
            )
            for r in rows
            if tuple(json.loads(r.feature_names_json)) == FEATURE_NAMES
        ]
        # A set whose features are not finite or absurdly large (stored before logprobs had a floor) would
        # make the standardisation NaN, and scikit-learn refuse every fit from then on: leave it out.
        sets = [st for st in recorded if np.all(np.abs(st[0]) <= _FEATURE_LIMIT)]
        n_sets = len(sets)
        dropped = len(recorded) - n_sets
        skipped = f" ({dropped} with non-finite or out-of-range features left out)" if dropped else ""
        if n_sets < cfg.min_train_sets:
            return TrainResult(
                active=False,
                message=(
                    f"only {n_sets} labelled selections{skipped}, need {cfg.min_train_sets}; keeping the default"
                ),
                n_sets=n_sets,
            )
        rng = np.random.default_rng(seed)
        order = rng.permutation(n_sets)
        n_held = max(1, round(cfg.heldout_fraction * n_sets))
        held, train = order[:n_held], order[n_held:]
        if len(train) == 0:
            return TrainResult(
                active=False,
                message=(
                    f"not enough data: {n_sets} labelled selections all held back "
                    f"(heldout_fraction {cfg.heldout_fraction}); keeping the default"
                ),
                n_sets=n_sets,
            )
        x = np.concatenate([sets[i][0] for i in train])
        y = np.concatenate([sets[i][1] for i in train]).astype(int)
        if len(set(y.tolist())) < 2:
            return TrainResult(
                active=False,
                message="training outcomes hold only one label; keeping the default",
                n_sets=n_sets,
            )
        mean = x.mean(axis=0)
        scale = x.std(axis=0)
        # Constant features (all answers one word, say) have a float-noise std; do not blow them up.
        scale[scale < 1e-9] = 1.0
        clf = LogisticRegression(C=1.0, max_iter=1000)
        clf.fit((x - mean) / scale, y)
        model = _Model(0, mean, scale, clf.coef_[0].astype(np.float64), float(clf.intercept_[0]))
        default_hits = [bool(sets[i][1][sets[i][2]]) for i in held]
        learned_hits = [bool(sets[i][1][int(np.argmax(model.logit(sets[i][0])))]) for i in held]
        d_acc, l_acc = float(np.mean(default_hits)), float(np.mean(learned_hits))
        active = l_acc > d_acc
        message = (
            f"held-back accuracy on {n_held} selections: learned {l_acc:.3f} vs default {d_acc:.3f}; "
            + ("learned selector active" if active else "keeping the agreement default")
            + skipped
        )
        with self._engine.begin() as conn:
            # Versions are newest + 1: serialise the writers of this scope's models in every process.
            lock_for_write(conn, "select_models", scope)
            current = conn.execute(
                select(func.max(select_models.c.version)).where(select_models.c.scope == scope)
            ).scalar()
            version = int(current or 0) + 1
            conn.execute(
                insert(select_models).values(
                    scope=scope,
                    version=version,
                    created_at=time.time(),
                    active=active,
                    model_json=json.dumps(
                        {
                            "feature_names": list(FEATURE_NAMES),
                            "mean": mean.tolist(),
                            "scale": scale.tolist(),
                            "coef": model.coef.tolist(),
                            "intercept": model.intercept,
                        }
                    ),
                    n_sets=n_sets,
                    heldout_default_accuracy=d_acc,
                    heldout_learned_accuracy=l_acc,
                    message=message,
                )
            )
            if self._publisher is not None:
                self._publisher(conn, scope, {"version": version})
        stored = _Model(version, mean, scale, model.coef, model.intercept) if active else None
        self._remember_model(scope, version, stored)
        return TrainResult(
            active=active,
            message=message,
            n_sets=n_sets,
            n_train_sets=len(train),
            n_heldout_sets=n_held,
            heldout_default_accuracy=d_acc,
            heldout_learned_accuracy=l_acc,
            model_version=version,
        )

    def apply_remote_change(self, scope: str, payload: Mapping[str, Any]) -> None:
        """Another replica stored model ``payload["version"]`` for ``scope``: load the scope's newest model
        (committed with the feed row, so visible) unless that version or a newer one is cached already."""
        with self._lock:
            cached = self._models.get(scope)
        if cached is not None and cached[0] >= int(payload.get("version", 0)):
            return
        self._remember_model(scope, *self._load_model(scope))

    def _active_model(self, scope: str) -> _Model | None:
        with self._lock:
            if scope in self._models:
                return self._models[scope][1]
        return self._remember_model(scope, *self._load_model(scope))

    def _remember_model(self, scope: str, version: int, model: _Model | None) -> _Model | None:
        """Cache ``scope``'s model of ``version`` unless a newer one is cached; returns the one cached."""
        with self._lock:
            cached = self._models.get(scope)
            if cached is None or cached[0] <= version:
                self._models[scope] = (version, model)
                return model
            return cached[1]

    def _load_model(self, scope: str) -> tuple[int, _Model | None]:
        """The newest stored version for ``scope`` (0 when none) and its model if that one is active."""
        with reading(self._engine) as conn:
            row = conn.execute(
                select(select_models.c.version, select_models.c.active, select_models.c.model_json)
                .where(select_models.c.scope == scope)
                .order_by(select_models.c.version.desc())
                .limit(1)
            ).first()
        if row is None:
            return 0, None
        model: _Model | None = None
        if row.active:
            data = json.loads(row.model_json)
            if tuple(data["feature_names"]) == FEATURE_NAMES:
                model = _Model(
                    int(row.version),
                    np.array(data["mean"]),
                    np.array(data["scale"]),
                    np.array(data["coef"]),
                    float(data["intercept"]),
                )
        return int(row.version), model


def _stream(tokens: Any, field_name: str) -> TokenStream | None:
    if isinstance(tokens, TokenStream):
        return tokens if len(tokens) else None
    if not tokens:
        return None
    return TokenStream.from_tokens(tokens, field_name=field_name)


def _agreement_choice(
    clusters: list[list[int]], mean_entropy: list[float], n: int, empty: Sequence[bool]
) -> tuple[int, list[float]]:
    """The untrained default: largest cluster; ties (and all singletons) → lower mean token entropy.

    Empty answers (``empty``: nothing left after normalisation) lose to every other answer. Candidates
    without tokens count as maximally uncertain in a tie; remaining ties go to the earliest. Inside the
    winning cluster the candidate with the lowest mean entropy is returned.
    """

    def ent(i: int) -> float:
        v = mean_entropy[i]
        return math.inf if math.isnan(v) else v

    def cluster_key(c: list[int]) -> tuple[bool, float, float, int]:
        return (all(empty[i] for i in c), -len(c), float(np.mean([ent(i) for i in c])), min(c))

    best = min(clusters, key=cluster_key)
    index = min(best, key=lambda i: (ent(i), i))
    scores = [0.0] * n
    for c in clusters:
        for i in c:
            scores[i] = len(c) / n
    return index, scores
