"""Initial schema: every component's tables (generated from their MetaData, then kept as is).

Revision ID: 0001
Revises: 
Create Date: 2026-11-22 21:31:37.232437
"""
from alembic import op
import sqlalchemy as sa


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('change_feed',
    sa.Column('seq', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('component', sa.String(length=32), nullable=False),
    sa.Column('scope', sa.String(length=300), nullable=False),
    sa.Column('origin', sa.String(length=64), nullable=False),
    sa.Column('payload', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('seq')
    )
    op.create_table('namespaces',
    sa.Column('key', sa.String(length=300), nullable=False),
    sa.Column('tenant', sa.String(length=128), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('key')
    )
    with op.batch_alter_table('namespaces', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_namespaces_tenant'), ['tenant'], unique=False)

    op.create_table('memory_edges',
    sa.Column('namespace', sa.String(length=255), nullable=False),
    sa.Column('src', sa.BigInteger(), nullable=False),
    sa.Column('dst', sa.BigInteger(), nullable=False),
    sa.Column('weight', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('namespace', 'src', 'dst')
    )
    op.create_table('memory_messages',
    sa.Column('namespace', sa.String(length=255), nullable=False),
    sa.Column('id', sa.String(length=255), nullable=False),
    sa.Column('session_id', sa.String(length=255), nullable=False),
    sa.Column('seq', sa.BigInteger(), nullable=False),
    sa.Column('speaker', sa.Text(), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('time', sa.DateTime(timezone=True), nullable=True),
    sa.Column('metadata_json', sa.Text(), nullable=False),
    sa.Column('content_hash', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('namespace', 'id')
    )
    with op.batch_alter_table('memory_messages', schema=None) as batch_op:
        batch_op.create_index('ix_memory_messages_session', ['namespace', 'session_id', 'seq'], unique=False)

    op.create_table('memory_namespace_state',
    sa.Column('namespace', sa.String(length=255), nullable=False),
    sa.Column('generation', sa.BigInteger(), nullable=False),
    sa.Column('next_seq', sa.BigInteger(), nullable=False),
    sa.Column('consolidated_generation', sa.BigInteger(), nullable=False),
    sa.Column('clusters', sa.Integer(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('namespace')
    )
    op.create_table('memory_pending_sessions',
    sa.Column('namespace', sa.String(length=255), nullable=False),
    sa.Column('session_id', sa.String(length=255), nullable=False),
    sa.PrimaryKeyConstraint('namespace', 'session_id')
    )
    op.create_table('memory_unit_messages',
    sa.Column('namespace', sa.String(length=255), nullable=False),
    sa.Column('message_id', sa.String(length=255), nullable=False),
    sa.Column('unit_id', sa.String(length=255), nullable=False),
    sa.PrimaryKeyConstraint('namespace', 'message_id', 'unit_id')
    )
    with op.batch_alter_table('memory_unit_messages', schema=None) as batch_op:
        batch_op.create_index('ix_memory_unit_messages_unit', ['namespace', 'unit_id'], unique=False)

    op.create_table('memory_units',
    sa.Column('namespace', sa.String(length=255), nullable=False),
    sa.Column('id', sa.String(length=255), nullable=False),
    sa.Column('key', sa.BigInteger(), nullable=False),
    sa.Column('granularity', sa.String(length=16), nullable=False),
    sa.Column('session_id', sa.String(length=255), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('message_ids_json', sa.Text(), nullable=False),
    sa.Column('time_start', sa.DateTime(timezone=True), nullable=True),
    sa.Column('time_end', sa.DateTime(timezone=True), nullable=True),
    sa.Column('weight', sa.Float(), nullable=False),
    sa.Column('vector', sa.LargeBinary(), nullable=False),
    sa.Column('model', sa.String(length=128), nullable=False),
    sa.PrimaryKeyConstraint('namespace', 'id')
    )
    with op.batch_alter_table('memory_units', schema=None) as batch_op:
        batch_op.create_index('ix_memory_units_key', ['namespace', 'key'], unique=True)
        batch_op.create_index('ix_memory_units_session', ['namespace', 'session_id'], unique=False)

    op.create_table('guard_clusters',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('scope', sa.String(length=300), nullable=False),
    sa.Column('category', sa.String(length=100), nullable=False),
    sa.Column('stage_group', sa.String(length=32), nullable=False),
    sa.Column('rule_text', sa.Text(), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('guard_clusters', schema=None) as batch_op:
        batch_op.create_index('ix_guard_clusters_scope', ['scope', 'id'], unique=False)

    op.create_table('guard_events',
    sa.Column('scope', sa.String(length=300), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('summary', sa.Text(), nullable=False),
    sa.Column('payload', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('scope', 'version')
    )
    op.create_table('guard_leaves',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('scope', sa.String(length=300), nullable=False),
    sa.Column('category', sa.String(length=100), nullable=False),
    sa.Column('stage_group', sa.String(length=32), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('label', sa.String(length=16), nullable=False),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('cluster_id', sa.BigInteger(), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('note', sa.Text(), nullable=False),
    sa.Column('embedding', sa.LargeBinary(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('guard_leaves', schema=None) as batch_op:
        batch_op.create_index('ix_guard_leaves_scope', ['scope', 'id'], unique=False)

    op.create_table('guard_rules',
    sa.Column('scope', sa.String(length=300), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('body', sa.JSON(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('scope', 'name')
    )
    op.create_table('guard_settings',
    sa.Column('scope', sa.String(length=300), nullable=False),
    sa.Column('settings', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('scope')
    )
    op.create_table('guard_verdicts',
    sa.Column('verdict_id', sa.String(length=64), nullable=False),
    sa.Column('scope', sa.String(length=300), nullable=False),
    sa.Column('stage', sa.String(length=16), nullable=False),
    sa.Column('decision', sa.String(length=16), nullable=False),
    sa.Column('harm_score', sa.Float(), nullable=False),
    sa.Column('entropy', sa.Float(), nullable=False),
    sa.Column('category', sa.String(length=100), nullable=False),
    sa.Column('decided_by', sa.String(length=16), nullable=False),
    sa.Column('memory_version', sa.Integer(), nullable=False),
    sa.Column('evidence', sa.JSON(), nullable=False),
    sa.Column('request_text', sa.Text(), nullable=False),
    sa.Column('tool_name', sa.String(length=200), nullable=False),
    sa.Column('arguments_json', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('feedback', sa.String(length=16), nullable=False),
    sa.Column('feedback_note', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('verdict_id')
    )
    with op.batch_alter_table('guard_verdicts', schema=None) as batch_op:
        batch_op.create_index('ix_guard_verdicts_scope_time', ['scope', 'created_at'], unique=False)

    op.create_table('tool_audit',
    sa.Column('seq', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('scope', sa.String(length=300), nullable=False),
    sa.Column('tool_name', sa.String(length=128), nullable=False),
    sa.Column('tool_version', sa.Integer(), nullable=False),
    sa.Column('caller', sa.String(length=300), nullable=False),
    sa.Column('arguments_sha256', sa.String(length=64), nullable=False),
    sa.Column('outcome', sa.String(length=32), nullable=False),
    sa.Column('stopped_at', sa.String(length=32), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('duration_ms', sa.Float(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('verdicts', sa.Text(), nullable=False),
    sa.Column('truncated', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('seq'),
    sa.UniqueConstraint('id')
    )
    with op.batch_alter_table('tool_audit', schema=None) as batch_op:
        batch_op.create_index('ix_tool_audit_scope_seq', ['scope', 'seq'], unique=False)

    op.create_table('tool_mcp_servers',
    sa.Column('scope', sa.String(length=300), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('spec', sa.Text(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('scope', 'name')
    )
    op.create_table('tool_policies',
    sa.Column('scope', sa.String(length=300), nullable=False),
    sa.Column('policy', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('scope')
    )
    op.create_table('tool_versions',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('scope', sa.String(length=300), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('content_key', sa.String(length=64), nullable=False),
    sa.Column('definition', sa.Text(), nullable=False),
    sa.Column('deleted', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('scope', 'name', 'version', name='uq_tool_versions_scope_name_version')
    )
    with op.batch_alter_table('tool_versions', schema=None) as batch_op:
        batch_op.create_index('ix_tool_versions_scope_name', ['scope', 'name'], unique=False)

    op.create_table('gate_decisions',
    sa.Column('decision_id', sa.String(length=64), nullable=False),
    sa.Column('scope', sa.String(length=300), nullable=False),
    sa.Column('gate', sa.String(length=32), nullable=False),
    sa.Column('session_id', sa.String(length=300), nullable=True),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('policy_version', sa.Integer(), nullable=False),
    sa.Column('signal', sa.String(length=64), nullable=False),
    sa.Column('score', sa.Float(), nullable=True),
    sa.Column('threshold', sa.Float(), nullable=True),
    sa.Column('fire', sa.Boolean(), nullable=True),
    sa.Column('n_tokens', sa.Integer(), nullable=False),
    sa.Column('signals_json', sa.Text(), nullable=False),
    sa.Column('label', sa.Boolean(), nullable=True),
    sa.Column('labelled_at', sa.Float(), nullable=True),
    sa.PrimaryKeyConstraint('decision_id')
    )
    with op.batch_alter_table('gate_decisions', schema=None) as batch_op:
        batch_op.create_index('ix_gate_decisions_scope_gate_created', ['scope', 'gate', 'created_at'], unique=False)
        batch_op.create_index('ix_gate_decisions_session', ['scope', 'gate', 'session_id', 'created_at'], unique=False)

    op.create_table('gate_policies',
    sa.Column('scope', sa.String(length=300), nullable=False),
    sa.Column('gate', sa.String(length=32), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('policy_json', sa.Text(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('scope', 'gate', 'version')
    )
    op.create_table('select_models',
    sa.Column('scope', sa.String(length=300), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('model_json', sa.Text(), nullable=False),
    sa.Column('n_sets', sa.Integer(), nullable=False),
    sa.Column('heldout_default_accuracy', sa.Float(), nullable=True),
    sa.Column('heldout_learned_accuracy', sa.Float(), nullable=True),
    sa.Column('message', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('scope', 'version')
    )
    op.create_table('select_selections',
    sa.Column('selection_id', sa.String(length=64), nullable=False),
    sa.Column('scope', sa.String(length=300), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('n_candidates', sa.Integer(), nullable=False),
    sa.Column('chosen_index', sa.Integer(), nullable=False),
    sa.Column('default_index', sa.Integer(), nullable=False),
    sa.Column('method', sa.String(length=32), nullable=False),
    sa.Column('answers_json', sa.Text(), nullable=False),
    sa.Column('clusters_json', sa.Text(), nullable=False),
    sa.Column('feature_names_json', sa.Text(), nullable=False),
    sa.Column('features_json', sa.Text(), nullable=False),
    sa.Column('correct_json', sa.Text(), nullable=True),
    sa.Column('labelled_at', sa.Float(), nullable=True),
    sa.PrimaryKeyConstraint('selection_id')
    )
    with op.batch_alter_table('select_selections', schema=None) as batch_op:
        batch_op.create_index('ix_select_selections_scope_labelled', ['scope', 'labelled_at'], unique=False)

    op.create_table('agent_store_items',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('scope', sa.String(length=300), nullable=False),
    sa.Column('path', sa.String(length=1000), nullable=False),
    sa.Column('key', sa.String(length=1000), nullable=False),
    sa.Column('value_json', sa.Text(), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('updated_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('scope', 'path', 'key', name='uq_agent_store_items_scope_path_key')
    )
    with op.batch_alter_table('agent_store_items', schema=None) as batch_op:
        batch_op.create_index('ix_agent_store_items_scope_path', ['scope', 'path'], unique=False)

    op.create_table('agent_store_vectors',
    sa.Column('item_id', sa.Integer(), nullable=False),
    sa.Column('field', sa.String(length=300), nullable=False),
    sa.Column('vector', sa.LargeBinary(), nullable=False),
    sa.ForeignKeyConstraint(['item_id'], ['agent_store_items.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('item_id', 'field')
    )


def downgrade() -> None:
    op.drop_table('agent_store_vectors')
    with op.batch_alter_table('agent_store_items', schema=None) as batch_op:
        batch_op.drop_index('ix_agent_store_items_scope_path')

    op.drop_table('agent_store_items')
    with op.batch_alter_table('select_selections', schema=None) as batch_op:
        batch_op.drop_index('ix_select_selections_scope_labelled')

    op.drop_table('select_selections')
    op.drop_table('select_models')
    op.drop_table('gate_policies')
    with op.batch_alter_table('gate_decisions', schema=None) as batch_op:
        batch_op.drop_index('ix_gate_decisions_session')
        batch_op.drop_index('ix_gate_decisions_scope_gate_created')

    op.drop_table('gate_decisions')
    with op.batch_alter_table('tool_versions', schema=None) as batch_op:
        batch_op.drop_index('ix_tool_versions_scope_name')

    op.drop_table('tool_versions')
    op.drop_table('tool_policies')
    op.drop_table('tool_mcp_servers')
    with op.batch_alter_table('tool_audit', schema=None) as batch_op:
        batch_op.drop_index('ix_tool_audit_scope_seq')

    op.drop_table('tool_audit')
    with op.batch_alter_table('guard_verdicts', schema=None) as batch_op:
        batch_op.drop_index('ix_guard_verdicts_scope_time')

    op.drop_table('guard_verdicts')
    op.drop_table('guard_settings')
    op.drop_table('guard_rules')
    with op.batch_alter_table('guard_leaves', schema=None) as batch_op:
        batch_op.drop_index('ix_guard_leaves_scope')

    op.drop_table('guard_leaves')
    op.drop_table('guard_events')
    with op.batch_alter_table('guard_clusters', schema=None) as batch_op:
        batch_op.drop_index('ix_guard_clusters_scope')

    op.drop_table('guard_clusters')
    with op.batch_alter_table('memory_units', schema=None) as batch_op:
        batch_op.drop_index('ix_memory_units_session')
        batch_op.drop_index('ix_memory_units_key')

    op.drop_table('memory_units')
    with op.batch_alter_table('memory_unit_messages', schema=None) as batch_op:
        batch_op.drop_index('ix_memory_unit_messages_unit')

    op.drop_table('memory_unit_messages')
    op.drop_table('memory_pending_sessions')
    op.drop_table('memory_namespace_state')
    with op.batch_alter_table('memory_messages', schema=None) as batch_op:
        batch_op.drop_index('ix_memory_messages_session')

    op.drop_table('memory_messages')
    op.drop_table('memory_edges')
    with op.batch_alter_table('namespaces', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_namespaces_tenant'))

    op.drop_table('namespaces')
    op.drop_table('change_feed')
