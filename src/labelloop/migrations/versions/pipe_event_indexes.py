"""the detection event log's indexes: only those a query reads by, partial where the column is NULL or false

Revision ID: pipe_event_indexes
Revises: letterbox_input_view
Create Date: 2026-12-07 02:00:00

An upload's PUT inserts its detection event before it is detected: every index of the table took an entry then,
also those of the columns still NULL (model_version, label, routing_rule, detected_at, previous_event_id) or false
(sampled). Now (README Performance, item 37):

* ``ix_detection_events_request_id`` (unique) is dropped: no query reads by the request id (a new uuid4 per event).
* ``detected_at``, ``label``, ``routing_rule``, ``previous_event_id``: the same indexes, leaving out NULL rows (every
  query on them compares the column, which implies it is not NULL); ``sampled``: only the sampled rows.
* ``model_version`` becomes ``(model_version, routing_rule)`` without NULL versions: the audits a version opened are
  counted in the index alone (the silent-error estimate reads them once per batch of detections).

``created_at`` and ``status`` stay as they were; so does the unique first-arrival index.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = 'pipe_event_indexes'
down_revision: str | None = 'letterbox_input_view'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = 'detection_events'
# The indexes this revision replaces: name, columns, unique.
BEFORE = (('ix_detection_events_request_id', ['request_id'], True),
          ('ix_detection_events_detected_at', ['detected_at'], False),
          ('ix_detection_events_model_version', ['model_version'], False),
          ('ix_detection_events_label', ['label'], False),
          ('ix_detection_events_sampled', ['sampled'], False),
          ('ix_detection_events_routing_rule', ['routing_rule'], False),
          ('ix_detection_events_previous_event_id', ['previous_event_id'], False))


def _not_null(column: str) -> dict[str, sa.TextClause]:
    return {'sqlite_where': sa.text(f'{column} IS NOT NULL'), 'postgresql_where': sa.text(f'{column} IS NOT NULL')}


# The partial indexes it makes: name, columns, WHERE per dialect (as in labelloop.detection.models).
AFTER = (('ix_detection_events_detected_at', ['detected_at'], _not_null('detected_at')),
         ('ix_detection_events_version_rule', ['model_version', 'routing_rule'], _not_null('model_version')),
         ('ix_detection_events_label', ['label'], _not_null('label')),
         ('ix_detection_events_routing_rule', ['routing_rule'], _not_null('routing_rule')),
         ('ix_detection_events_sampled', ['sampled'],
          {'sqlite_where': sa.text('sampled IS 1'), 'postgresql_where': sa.text('sampled IS true')}),
         ('ix_detection_events_previous_event_id', ['previous_event_id'], _not_null('previous_event_id')))


def upgrade() -> None:
    for name, _columns, _unique in BEFORE:
        op.drop_index(name, table_name=TABLE)
    for name, columns, where in AFTER:
        op.create_index(name, TABLE, columns, unique=False, **where)


def downgrade() -> None:
    for name, _columns, _where in AFTER:
        op.drop_index(name, table_name=TABLE)
    for name, columns, unique in BEFORE:
        op.create_index(name, TABLE, columns, unique=unique)
