"""several reviewers per task: every answer kept, consolidation settings

Revision ID: rv_reviewers_consolidation
Revises: rv_answer_durability_audit
Create Date: 2026-12-05 16:50:00

* ``human_answers``: one row per person and loop (a reviewer's answer, or an operator's correction).
* ``human_loops.required_answers``: distinct reviewers the loop waits for (escalation adds one).
* ``task_template.reviewers_per_task`` (by source) and ``min_agreement``.
Loops answered before keep their answer as one reviewer's row.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = 'rv_reviewers_consolidation'
down_revision: str | None = 'rv_answer_durability_audit'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('human_answers',
                    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
                    sa.Column('loop_id', sa.Integer(), nullable=False),
                    sa.Column('worker', sa.String(length=64), nullable=False),
                    sa.Column('label', sa.String(length=255), nullable=False),
                    sa.Column('kind', sa.String(length=16), nullable=False),
                    sa.Column('accepted_at', sa.DateTime(timezone=True), nullable=True),
                    sa.Column('submitted_at', sa.DateTime(timezone=True), nullable=False),
                    sa.ForeignKeyConstraint(['loop_id'], ['human_loops.id']),
                    sa.PrimaryKeyConstraint('id'),
                    sa.UniqueConstraint('loop_id', 'worker', name='uq_human_answers_loop_worker'))
    with op.batch_alter_table('human_answers', schema=None) as batch_op:
        batch_op.create_index('ix_human_answers_loop_id', ['loop_id'], unique=False)
        batch_op.create_index('ix_human_answers_worker', ['worker'], unique=False)
        batch_op.create_index('ix_human_answers_submitted_at', ['submitted_at'], unique=False)
    with op.batch_alter_table('human_loops', schema=None) as batch_op:
        batch_op.add_column(sa.Column('required_answers', sa.Integer(), nullable=False, server_default='1'))
    with op.batch_alter_table('task_template', schema=None) as batch_op:
        batch_op.add_column(sa.Column('reviewers_per_task', sa.JSON(), nullable=False, server_default='{}'))
        batch_op.add_column(sa.Column('min_agreement', sa.Float(), nullable=False, server_default='0.6'))
    op.execute("INSERT INTO human_answers (loop_id, worker, label, kind, accepted_at, submitted_at) "
               "SELECT id, answered_by, answer_label, 'review', leased_at, completed_at FROM human_loops "
               "WHERE answer_label IS NOT NULL AND answered_by IS NOT NULL AND completed_at IS NOT NULL")


def downgrade() -> None:
    with op.batch_alter_table('task_template', schema=None) as batch_op:
        batch_op.drop_column('min_agreement')
        batch_op.drop_column('reviewers_per_task')
    with op.batch_alter_table('human_loops', schema=None) as batch_op:
        batch_op.drop_column('required_answers')
    op.drop_table('human_answers')
