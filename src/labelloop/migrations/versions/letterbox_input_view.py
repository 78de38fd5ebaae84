"""the input view of each model version

Revision ID: letterbox_input_view
Revises: warmstart_new_stratum
Create Date: 2026-12-06 02:10:00

* ``model_versions.input_view``: the view the version's head was trained on and every request for it is
  prepared with: ``crop`` (the centre crop; every version before this column) or ``letterbox`` (the whole image,
  long side 224, padded; the default for new versions, parameter Model-Input-View).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = 'letterbox_input_view'
down_revision: str | None = 'warmstart_new_stratum'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('model_versions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('input_view', sa.String(length=16), nullable=False, server_default='crop'))


def downgrade() -> None:
    with op.batch_alter_table('model_versions', schema=None) as batch_op:
        batch_op.drop_column('input_view')
