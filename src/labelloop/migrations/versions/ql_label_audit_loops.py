"""Label Audit loops: a human loop may review a training image instead of a detection

Revision ID: ql_label_audit_loops
Revises: fh_redetect_progress_unusable
Create Date: 2026-12-05 17:20:00

``human_loops.detection_id`` becomes nullable: a "Label Audit" loop reviews a training image whose folder label
the model doubts (the model page's suspect labels), not a detection.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = 'ql_label_audit_loops'
down_revision: str | None = 'fh_redetect_progress_unusable'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('human_loops', schema=None) as batch_op:
        batch_op.alter_column('detection_id', existing_type=sa.Integer(), nullable=True)


def downgrade() -> None:
    with op.batch_alter_table('human_loops', schema=None) as batch_op:
        batch_op.alter_column('detection_id', existing_type=sa.Integer(), nullable=False)
