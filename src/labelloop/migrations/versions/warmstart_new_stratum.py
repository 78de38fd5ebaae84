"""warm start in the server: the backtest stored with a version, the stratum of each detection

Revision ID: warmstart_new_stratum
Revises: review_gold_tasks
Create Date: 2026-12-05 20:30:00

* ``model_versions.warm_start``: the version's warm start, stored when it is first deployed to replace another
  (``detection.warm_start``): the previous version, the backtest audits and the previous version's detection
  counts; NULL for a cold start (every version before this one).
* ``detection_events.new_stratum``: with a warm start, whether the previous version would not have
  auto-accepted the image (the "new" stratum); NULL for a version without a warm start.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = 'warmstart_new_stratum'
down_revision: str | None = 'review_gold_tasks'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('model_versions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('warm_start', sa.JSON(), nullable=True))
    with op.batch_alter_table('detection_events', schema=None) as batch_op:
        batch_op.add_column(sa.Column('new_stratum', sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('detection_events', schema=None) as batch_op:
        batch_op.drop_column('new_stratum')
    with op.batch_alter_table('model_versions', schema=None) as batch_op:
        batch_op.drop_column('warm_start')
