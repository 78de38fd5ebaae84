"""reviewers paused from review by an admin

Revision ID: rv_paused_reviewers
Revises: rv_reviewers_consolidation
Create Date: 2026-12-05 17:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = 'rv_paused_reviewers'
down_revision: str | None = 'rv_reviewers_consolidation'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('task_template', schema=None) as batch_op:
        batch_op.add_column(sa.Column('paused_reviewers', sa.JSON(), nullable=False, server_default='[]'))


def downgrade() -> None:
    with op.batch_alter_table('task_template', schema=None) as batch_op:
        batch_op.drop_column('paused_reviewers')
