"""Tables of the entropy gates: policy versions (append-only history) and decisions with their outcomes."""

from __future__ import annotations

from sqlalchemy import Boolean, Column, Float, Index, Integer, MetaData, String, Table, Text, false

metadata = MetaData()

#: Every version of every gate policy; the highest version of (scope, gate) is in effect. Rollback
#: appends a copy of an older version, so the history is never rewritten.
gate_policies = Table(
    "gate_policies",
    metadata,
    Column("scope", String(300), primary_key=True),
    Column("gate", String(32), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("policy_json", Text, nullable=False),
    Column("reason", Text, nullable=False, default=""),
    # Unix seconds; float keeps ordering simple on both SQLite and Postgres.
    Column("created_at", Float, nullable=False),
    # True: this version follows the configuration (ResetPolicy); policy_json only records what it said then.
    Column("follows_config", Boolean, nullable=False, default=False, server_default=false()),
)

#: One row per Decide (and per RecordOutcome given bare signals), with every computed signal so that
#: calibration can compare variants afterwards; ``label`` is filled by RecordOutcome.
gate_decisions = Table(
    "gate_decisions",
    metadata,
    Column("decision_id", String(64), primary_key=True),
    Column("scope", String(300), nullable=False),
    Column("gate", String(32), nullable=False),
    Column("session_id", String(300), nullable=True),
    Column("created_at", Float, nullable=False),
    Column("policy_version", Integer, nullable=False, default=0),
    Column("signal", String(64), nullable=False, default=""),
    Column("score", Float, nullable=True),
    Column("threshold", Float, nullable=True),
    # NULL for outcomes recorded from bare signals (no decision was made by us).
    Column("fire", Boolean, nullable=True),
    Column("n_tokens", Integer, nullable=False, default=0),
    Column("signals_json", Text, nullable=False),
    # GatePolicy.signal_params of the policy the signals were computed under (top_k and the aggregation
    # parameters); calibration fits only on rows matching the policy it writes into. NULL: stored before
    # the fingerprint existed (migration 0006).
    Column("signal_params", String(128), nullable=True),
    # True: the action was needed (retrieval/tool/escalation would have helped, or the answer was wrong).
    Column("label", Boolean, nullable=True),
    Column("labelled_at", Float, nullable=True),
    Index("ix_gate_decisions_scope_gate_created", "scope", "gate", "created_at"),
    Index("ix_gate_decisions_session", "scope", "gate", "session_id", "created_at"),
)
