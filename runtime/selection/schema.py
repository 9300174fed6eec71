"""Tables of answer selection: every selection with its features and outcome, and fitted selector models."""

from __future__ import annotations

from sqlalchemy import Boolean, Column, Float, Index, Integer, MetaData, String, Table, Text

metadata = MetaData()

#: One row per Select call. ``features_json`` holds the label-free feature matrix so the learned
#: selector can be refitted from the database alone; ``correct_json`` is filled by RecordOutcome.
select_selections = Table(
    "select_selections",
    metadata,
    Column("selection_id", String(64), primary_key=True),
    Column("scope", String(300), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("n_candidates", Integer, nullable=False),
    Column("chosen_index", Integer, nullable=False),
    Column("default_index", Integer, nullable=False),
    Column("method", String(32), nullable=False),
    # Normalised answers, so an outcome given as the correct answer text can be matched later.
    Column("answers_json", Text, nullable=False),
    Column("clusters_json", Text, nullable=False),
    Column("feature_names_json", Text, nullable=False),
    Column("features_json", Text, nullable=False),
    # JSON list of bools per candidate (null: unknown for that candidate).
    Column("correct_json", Text, nullable=True),
    Column("labelled_at", Float, nullable=True),
    Index("ix_select_selections_scope_labelled", "scope", "labelled_at"),
)

#: Fitted selector models per namespace, newest version last; ``active`` only when the model beat the
#: agreement default on held-back outcomes.
select_models = Table(
    "select_models",
    metadata,
    Column("scope", String(300), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("created_at", Float, nullable=False),
    Column("active", Boolean, nullable=False),
    # {"feature_names", "mean", "scale", "coef", "intercept"}: a standardised logistic regression.
    Column("model_json", Text, nullable=False),
    Column("n_sets", Integer, nullable=False),
    Column("heldout_default_accuracy", Float, nullable=True),
    Column("heldout_learned_accuracy", Float, nullable=True),
    Column("message", Text, nullable=False, default=""),
)
