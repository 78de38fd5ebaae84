"""re-detection events point to the earlier one; training progress on the version; unusable training images

Revision ID: fh_redetect_progress_unusable
Revises: 0003
Create Date: 2026-12-01 21:00:00

* ``detection_events.previous_event_id``: a re-detection is a new event for the same object that points to the
  event it repeats. The unique (object_key, etag) constraint becomes a unique index over first arrivals only
  (``previous_event_id IS NULL``), so an upload still gets exactly one event while re-detections add more.
* ``model_versions.progress``: the training step's phase and counts, read by the dashboard while it trains.
* ``unusable_images``: training images (key and ETag) found unusable, with the reason; they are not counted
  as training data while that content stays at that key.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = 'fh_redetect_progress_unusable'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FIRST_ARRIVAL = sa.text("previous_event_id IS NULL")


def upgrade() -> None:
    with op.batch_alter_table('detection_events', schema=None) as batch_op:
        batch_op.add_column(sa.Column('previous_event_id', sa.Integer(), nullable=True))
        batch_op.drop_constraint('uq_detection_object', type_='unique')
        batch_op.create_index('ix_detection_events_previous_event_id', ['previous_event_id'], unique=False)
    op.create_index('uq_detection_first_arrival', 'detection_events', ['object_key', 'etag'], unique=True,
                    sqlite_where=FIRST_ARRIVAL, postgresql_where=FIRST_ARRIVAL)
    with op.batch_alter_table('model_versions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('progress', sa.JSON(), nullable=True))
    op.create_table('unusable_images',
                    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
                    sa.Column('object_key', sa.String(length=1024), nullable=False),
                    sa.Column('etag', sa.String(length=64), nullable=False),
                    sa.Column('reason', sa.Text(), nullable=False),
                    sa.Column('found_by', sa.String(length=64), nullable=False),
                    sa.Column('found_at', sa.DateTime(timezone=True), nullable=False),
                    sa.PrimaryKeyConstraint('id'),
                    sa.UniqueConstraint('object_key', 'etag', name='uq_unusable_image'))


def downgrade() -> None:
    op.drop_table('unusable_images')
    with op.batch_alter_table('model_versions', schema=None) as batch_op:
        batch_op.drop_column('progress')
    op.drop_index('uq_detection_first_arrival', table_name='detection_events')
    with op.batch_alter_table('detection_events', schema=None) as batch_op:
        batch_op.drop_index('ix_detection_events_previous_event_id')
        batch_op.create_unique_constraint('uq_detection_object', ['object_key', 'etag'])
        batch_op.drop_column('previous_event_id')
