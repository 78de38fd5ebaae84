"""the detection event log's indexes that grew with the table: by version and rule, re-detections, answered audits

Revision ID: event_log_big_table_indexes
Revises: letterbox_input_view
Create Date: 2026-12-07 05:00:00

The indexes whose reads grew with the table (README Performance, items 37 and 42):

* ``model_version`` becomes ``(model_version, routing_rule)`` without the events no version detected yet: the audits
  a version opened (the silent-error estimate reads them once per batch of detections) are counted in the index
  alone, instead of reading every event of the version from the table.
* ``previous_event_id`` holds the re-detections alone (the column NOT NULL): a re-detection's lookup reads it as
  before, and the waiting uploads' sweep (``previous_event_id IS NULL``) reads the status index instead of the
  whole of this one.
* ``(model_version, human_answered_at)`` of the answered sampled events (new): a version's answered audits, in the
  order the estimate reads them (``silent_errors.audits_of``, once per batch of detections), instead of every
  sampled event of every version read from the table by the ``sampled`` index.

An upload's event (inserted by its PUT, no version, not sampled, no answer) enters none of the three. The other
indexes stay as they were.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = 'event_log_big_table_indexes'
down_revision: str | None = 'letterbox_input_view'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = 'detection_events'
# The indexes this revision replaces: name, columns (whole-table, not unique).
BEFORE = (('ix_detection_events_model_version', ['model_version']),
          ('ix_detection_events_previous_event_id', ['previous_event_id']))


def _not_null(column: str) -> dict[str, sa.TextClause]:
    """The WHERE of an index that leaves out the rows whose ``column`` is NULL, on both databases."""
    return {'sqlite_where': sa.text(f'{column} IS NOT NULL'), 'postgresql_where': sa.text(f'{column} IS NOT NULL')}


# The partial indexes it makes: name, columns, WHERE (as in labelloop.detection.models).
AFTER = (('ix_detection_events_version_rule', ['model_version', 'routing_rule'], _not_null('model_version')),
         ('ix_detection_events_previous_event_id', ['previous_event_id'], _not_null('previous_event_id')),
         ('ix_detection_events_answered_audits', ['model_version', 'human_answered_at'],
          {'sqlite_where': sa.text('sampled IS 1 AND human_label IS NOT NULL'),
           'postgresql_where': sa.text('sampled IS true AND human_label IS NOT NULL')}))


def upgrade() -> None:
    for name, _columns in BEFORE:
        op.drop_index(name, table_name=TABLE)
    for name, columns, where in AFTER:
        op.create_index(name, TABLE, columns, unique=False, **where)


def downgrade() -> None:
    for name, _columns, _where in AFTER:
        op.drop_index(name, table_name=TABLE)
    for name, columns in BEFORE:
        op.create_index(name, TABLE, columns, unique=False)
