"""durable answers, pinned content, undo rounds, Label Audit loops, task time limit

Revision ID: rv_answer_durability_audit
Revises: fh_redetect_progress_unusable
Create Date: 2026-12-05 16:45:00

* ``human_loops.detection_id`` becomes nullable: a Label Audit loop reviews a training image, not a detection.
* ``human_loops.object_etag``: the content pinned when the loop opened; the reviewer sees it and only it is copied.
* ``human_loops.leased_at``: when the reviewer took the task (A2I's ``acceptanceTime``).
* ``human_loops.answer_round``, ``apply_started_at``, ``applied_at``: an undo starts a new round; the run that
  applies an answer marks when it started (no undo after that) and when it finished (the sweep's test).
* ``task_template.task_time_limit_seconds``: A2I's ``TaskTimeLimitInSeconds`` (default 3,600 s).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = 'rv_answer_durability_audit'
down_revision: str | None = 'fh_redetect_progress_unusable'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('human_loops', schema=None) as batch_op:
        batch_op.alter_column('detection_id', existing_type=sa.Integer(), nullable=True)
        batch_op.add_column(sa.Column('object_etag', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('leased_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('answer_round', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('apply_started_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('applied_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index('ix_human_loops_applied_at', ['applied_at'], unique=False)
    # Loops answered before this revision were applied by then (or are swept: output_key is the old test).
    op.execute("UPDATE human_loops SET applied_at = completed_at WHERE output_key IS NOT NULL")
    with op.batch_alter_table('task_template', schema=None) as batch_op:
        batch_op.add_column(sa.Column('task_time_limit_seconds', sa.Integer(), nullable=False,
                                      server_default='3600'))


def downgrade() -> None:
    with op.batch_alter_table('task_template', schema=None) as batch_op:
        batch_op.drop_column('task_time_limit_seconds')
    with op.batch_alter_table('human_loops', schema=None) as batch_op:
        batch_op.drop_index('ix_human_loops_applied_at')
        batch_op.drop_column('applied_at')
        batch_op.drop_column('apply_started_at')
        batch_op.drop_column('answer_round')
        batch_op.drop_column('leased_at')
        batch_op.drop_column('object_etag')
        batch_op.alter_column('detection_id', existing_type=sa.Integer(), nullable=False)
