"""model versions may serve an int8 backbone of their own

Revision ID: throughput_int8_backbone
Revises: silent_routing_rule
Create Date: 2026-12-05 19:40:00

* ``model_versions.backbone_fingerprint``: the fingerprint of the int8 backbone the version serves with
  (Quantize-Backbone); NULL for the shared fp32 backbone (every version before this one).
* ``model_versions.backbone_int8``: that ONNX file (about 9 MB), so every worker can load it.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = 'throughput_int8_backbone'
down_revision: str | None = 'silent_routing_rule'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('model_versions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('backbone_fingerprint', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('backbone_int8', sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('model_versions', schema=None) as batch_op:
        batch_op.drop_column('backbone_int8')
        batch_op.drop_column('backbone_fingerprint')
