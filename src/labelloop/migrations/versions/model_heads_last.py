"""model versions: the head and the int8 backbone stored after every other column (SQLite)

Revision ID: model_heads_last
Revises: event_log_big_table_indexes
Create Date: 2026-12-07 13:00:00

SQLite stores a row's values in column order, a large value in a chain of overflow pages that it walks page by page
(reading each one) to reach any value stored after it. ``progress``, ``backbone_fingerprint``, ``warm_start`` and
``input_view`` were added after ``head`` (13 MB with a full familiarity bank), and the last two after
``backbone_int8`` (about 9 MB): reading a version without its head (``ModelVersion.head`` is deferred) still read
every page of it. The table is rebuilt with the two files last, the other columns in their order. PostgreSQL keeps
large values out of the row (TOAST) and reads them only when selected: nothing to do there.
"""

from collections.abc import Sequence

from alembic import op

revision: str = 'model_heads_last'
down_revision: str | None = 'event_log_big_table_indexes'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = 'model_versions'
# Every column of the table, in the order of the rebuilt one: the two files last.
ORDER = ('id', 'version', 'status', 'status_message', 'created_at', 'training_ended_at', 'deployed_at', 'stopped_at',
         'run_id', 'labels', 'f1', 'evaluation', 'image_count', 'train_images', 'test_images', 'training_seconds',
         'manifest_key', 'evaluation_key', 'dataset_digest', 'progress', 'backbone_fingerprint', 'warm_start',
         'input_view', 'head', 'backbone_int8')


def upgrade() -> None:
    if op.get_bind().dialect.name != 'sqlite':
        return
    with op.batch_alter_table(TABLE, recreate='always', partial_reordering=[ORDER]):
        pass


def downgrade() -> None:
    """Nothing: the order matters to SQLite's reads alone."""
