"""gold tasks (honeypots): labeled images with a known label, served to reviewers to score them

Revision ID: review_gold_tasks
Revises: throughput_int8_backbone
Create Date: 2026-12-05 19:40:00

* ``gold_tasks``: the images an operator marked as gold, with their known label (removed ones stay, inactive).
* ``human_loops.gold_task_id``: the gold task a "Gold" loop serves to one reviewer.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = 'review_gold_tasks'
down_revision: str | None = 'throughput_int8_backbone'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('gold_tasks',
                    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
                    sa.Column('object_key', sa.String(length=1024), nullable=False),
                    sa.Column('object_etag', sa.String(length=64), nullable=True),
                    sa.Column('label', sa.String(length=255), nullable=False),
                    sa.Column('active', sa.Boolean(), nullable=False),
                    sa.Column('added_by', sa.String(length=64), nullable=False),
                    sa.Column('added_at', sa.DateTime(timezone=True), nullable=False),
                    sa.PrimaryKeyConstraint('id'),
                    sa.UniqueConstraint('object_key'))
    with op.batch_alter_table('gold_tasks', schema=None) as batch_op:
        batch_op.create_index('ix_gold_tasks_active', ['active'], unique=False)
    with op.batch_alter_table('human_loops', schema=None) as batch_op:
        batch_op.add_column(sa.Column('gold_task_id', sa.Integer(), nullable=True))
        batch_op.create_index('ix_human_loops_gold_task_id', ['gold_task_id'], unique=False)
        batch_op.create_foreign_key('fk_human_loops_gold_task_id', 'gold_tasks', ['gold_task_id'], ['id'])


def downgrade() -> None:
    with op.batch_alter_table('human_loops', schema=None) as batch_op:
        batch_op.drop_constraint('fk_human_loops_gold_task_id', type_='foreignkey')
        batch_op.drop_index('ix_human_loops_gold_task_id')
        batch_op.drop_column('gold_task_id')
    op.drop_table('gold_tasks')
