"""detection events say which rule routed them and why

Revision ID: silent_routing_rule
Revises: ql_label_audit_loops
Create Date: 2026-12-05 16:50:00

* ``detection_events.routing_rule``: the rule that sent the detection to a human (below the confidence
  threshold, below its label's assumed threshold, below a threshold raised by silent-error control, an audit)
  or let it through (auto-accepted); NULL for detections recorded before.
* ``detection_events.review_reason``: the same decision in words, with the figures it was taken on.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = 'silent_routing_rule'
down_revision: str | None = 'ql_label_audit_loops'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('detection_events', schema=None) as batch_op:
        batch_op.add_column(sa.Column('routing_rule', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('review_reason', sa.Text(), nullable=True))
        batch_op.create_index('ix_detection_events_routing_rule', ['routing_rule'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('detection_events', schema=None) as batch_op:
        batch_op.drop_index('ix_detection_events_routing_rule')
        batch_op.drop_column('review_reason')
        batch_op.drop_column('routing_rule')
