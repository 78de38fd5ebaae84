"""The warm start of a version that replaces another (``silent_errors.Warm``), built when it is first deployed.

* **Backtest**: earlier answered audits (any version's "Human Sampling" answers on auto-accepted or would-be
  auto-accepted detections, whose image is still stored with the same content) that the new version did not
  train on (content hash not in its manifest), scored by the new version (its label and confidence recomputed,
  judged against its own threshold), kept where the previous version would auto-accept the image too (the
  known stratum). An audit it did train on is left out only where Audit-Training-Share drew it (by its request
  id, never by the answer: those left out are a random part of the audits); one in its training data for
  another reason (Train-On-Audit-Corrections copies the answers that caught a mistake) counts as a silent
  error, the worst case, since leaving the corrections out would keep only the audits that agreed.
* **The new stratum's share**: the previous version's latest ``WINDOW`` detections scored by the new version:
  of those it would auto-accept, how many the previous version would not have. An image the new version trained
  on reads more confident than it would, so it counts only where that raises the share (a trained-on image
  the previous version was sure of is left out).

A backtest of fewer than ``COLD_AUDITS`` audits starts cold: its known stratum would be audited at the cold rate
anyway, and the new stratum's own cold start would come on top. Both versions must read the same kind of
embeddings (the shared fp32 backbone, or the same int8 one, and the same input view, crop or letterbox):
otherwise the new version starts cold, and serving does not compare the heads either. (A previous head fed the
other view's embeddings would be judged on inputs it never saw; embedding every image twice, once per view, to
compare them would double the backbone's cost of every detection for the life of the version. The first
letterbox version after crop ones starts cold, as after a switch of backbone.) Stored with the version
(``ModelVersion.warm_start``); serving then gives each detection the previous head's confidence on the same
embedding, which puts it in its stratum (``detection.service.new_stratum``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from labelloop import db
from labelloop.detection import silent_errors
from labelloop.detection.models import DetectionEvent, DetectionStatus
from labelloop.detection.service import base_threshold
from labelloop.modeling import dataset
from labelloop.modeling.embedding import embed_cached
from labelloop.modeling.endpoint import version_embedder
from labelloop.modeling.images import content_hash, view_key
from labelloop.modeling.predict import ranked
from labelloop.modeling.versions import get_version, head_of, serving_version
from labelloop.parameters import service as parameters
from labelloop.storage import service as storage

log = logging.getLogger(__name__)

WINDOW = 500  # the previous version's latest detections that count the new stratum's share


@dataclass(frozen=True)
class Stored:
    """A detected image still stored with the content it was detected with."""

    digest: str
    data: bytes
    label: str | None  # the human answer (audits) or the previous version's label
    confidence: float | None  # the previous version's confidence (window)


@dataclass
class Plan:
    """What a warm start is built from, read in one transaction (the images are read and embedded after)."""

    version: str
    previous: str
    head: Any
    previous_head: Any
    backbone: tuple[Any, Any]  # the new version's backbone session and embedding cache (the previous reads the same)
    thresholds: dict[tuple[str, str], float]  # (version, label) -> the base threshold in force
    audits: list[tuple[str, str, str, str]]  # answered audits: key, etag, answer, request id

    def accepts(self, name: str, label: str, confidence: float) -> bool:
        """Whether version ``name`` would auto-accept ``label`` at ``confidence`` (its base threshold)."""
        return confidence >= self.thresholds.get((name, label), 100.0)
    window: list[tuple[str, str, str, float]]  # the previous version's detections: key, etag, label, confidence
    share: float = 0.0  # Audit-Training-Share (0–1): the audits it draws became training data
    view: str = "orig"  # both versions' input view (an images.VIEWS key)


def store(version: str) -> dict[str, Any] | None:
    """Build and store ``version``'s warm start against the version serving now, unless it has one or has
    already detected (a rollback keeps what it had); None: it starts cold (and why is logged)."""
    plan = _plan(version)
    if not isinstance(plan, Plan):
        return plan
    built = build(plan)
    if len(built.backtest) < silent_errors.COLD_AUDITS:  # two cold starts (known and new) would audit more
        log.info("cold start: too small a backtest", extra={"version": version, "previous": plan.previous,
                                                           "backtest": len(built.backtest)})
        return None
    warm = built.to_stored(plan.previous)
    with db.session() as session:
        get_version(version, session=session).warm_start = warm
    log.info("warm start stored", extra={"version": version, "previous": plan.previous,
                                         "backtest": len(warm["backtest"]), "new_accepted": warm["new_accepted"],
                                         "accepted": warm["accepted"]})
    return warm


def _plan(version: str) -> Plan | dict[str, Any] | None:
    """The plan of ``version``'s warm start, or what it already has (its stored one, or None: cold)."""
    with db.session() as session:
        row = get_version(version, session=session)
        previous = serving_version(session=session)
        if row.warm_start is not None or _has_detected(version, session=session):
            return row.warm_start
        if not row.has_head or previous is None or previous.version == version or not previous.has_head:
            return None
        if previous.backbone_fingerprint != row.backbone_fingerprint or previous.input_view != row.input_view:
            log.info("cold start: the previous version reads other embeddings",
                     extra={"version": version, "previous": previous.version, "input_view": row.input_view,
                            "previous_input_view": previous.input_view})
            return None
        values = parameters.values(session=session)
        thresholds = {(name, label): base_threshold(label, name, values, session=session)[0]
                      for name, labels in ((version, row.labels), (previous.version, previous.labels))
                      for label in labels or []}
        return Plan(version, previous.version, head_of(row), head_of(previous), version_embedder(row), thresholds,
                    _answered_audits(version, session=session), _window(previous.version, session=session),
                    parameters.value(parameters.AUDIT_TRAINING_SHARE, session=session) / 100, view_key(row.input_view))


Scored = dict[str, tuple[tuple[str, float], tuple[str, float]]]  # digest -> (new head's top, previous head's top)


def build(plan: Plan) -> silent_errors.Warm:
    """The backtest and the new stratum's counts (see the module's docstring)."""
    trained = {r["sha256"] for r in dataset.manifest_of(plan.version)["images"] if r.get("sha256")}
    audits = [(item, silent_errors.audit_trains(rid, plan.share)) for key, etag, answer, rid in plan.audits
              if (item := _stored(key, etag, answer, None))]
    window = [item for key, etag, label, confidence in plan.window if (item := _stored(key, etag, label, confidence))]
    vectors = embed_cached(*plan.backbone, {item.digest: item.data for item in [a for a, _ in audits] + window},
                           (plan.view,))
    scored = scored_by_both(plan, vectors.vectors)
    backtest = backtest_of(plan, audits, scored, trained)
    new = accepted = 0
    for item in window:
        sure = plan.accepts(plan.previous, item.label, item.confidence)
        if item.digest not in scored or (sure and item.digest in trained):
            continue
        if plan.accepts(plan.version, *scored[item.digest][0]):
            accepted, new = accepted + 1, new + (not sure)
    return silent_errors.Warm(tuple(backtest), new, accepted)


def backtest_of(plan: Plan, audits: list[tuple[Stored, bool]], scored: Scored, trained: set[str]
                ) -> list[silent_errors.Audit]:
    """The backtest from the answered ``audits`` (each with whether Audit-Training-Share drew it), ``scored``
    by both heads, for a version that trained on the content hashes ``trained``: in the known stratum only;
    one drawn and trained on is left out, one trained on but not drawn (a correction) counts as wrong."""
    backtest = []
    for item, drawn in audits:
        if (drawn and item.digest in trained) or item.digest not in scored:
            continue
        (label, confidence), previous = scored[item.digest]
        if not plan.accepts(plan.previous, *previous):
            continue
        if item.digest in trained:  # not drawn, so it trains for what its answer said: the worst case
            backtest.append(silent_errors.Audit(label, confidence, True, True))
        else:
            backtest.append(silent_errors.Audit(label, confidence, item.label != label,
                                                plan.accepts(plan.version, label, confidence)))
    return backtest


def scored_by_both(plan: Plan, vectors: dict[tuple[str, str], np.ndarray]) -> Scored:
    """Each embedded image (``vectors``: (digest, view) -> embedding) scored by the new and the previous head, each
    head in one call on all of them: a head's answer on an image is bit for bit the same in any batch (README
    Performance, item 45), and one embedding at a time paid a whole block of the familiarity bank's product each
    (600 images, 10 × 256 bank: 785 against 89 ms of CPU per head)."""
    if not vectors:
        return {}
    stacked = np.stack(list(vectors.values()))
    return dict(zip([digest for digest, _ in vectors],
                    zip(_tops(plan.head, stacked), _tops(plan.previous_head, stacked), strict=True), strict=True))


def _tops(head: Any, vectors: np.ndarray) -> list[tuple[str, float]]:
    """A head's top label and confidence (0–100) on each embedding."""
    labels = list(head.labels)
    return [ranked(labels, row)[0] for row in head.predict_proba(vectors)]


def _has_detected(version: str, *, session: Session) -> bool:
    return session.scalar(select(DetectionEvent.id).where(DetectionEvent.model_version == version).limit(1)) is not None


def _answered_audits(version: str, *, session: Session) -> list[tuple[str, str, str, str]]:
    """Every other version's answered audits: key, ETag, the answer and the detection's request id."""
    rows = session.execute(select(DetectionEvent.object_key, DetectionEvent.etag, DetectionEvent.human_label,
                                  DetectionEvent.request_id).where(
        DetectionEvent.model_version != version, DetectionEvent.status == DetectionStatus.DETECTED,
        DetectionEvent.previous_event_id.is_(None), DetectionEvent.sampled.is_(True),
        DetectionEvent.human_label.is_not(None),
        DetectionEvent.routing_rule.in_([silent_errors.Rule.AUDIT, silent_errors.Rule.AUTO_ACCEPTED,
                                         silent_errors.Rule.BELOW_RAISED_THRESHOLD])).order_by(DetectionEvent.id))
    return [(key, etag, answer, request_id) for key, etag, answer, request_id in rows]


def _window(previous: str, *, session: Session) -> list[tuple[str, str, str, float]]:
    """The previous version's latest WINDOW detections: key, ETag, its label and confidence."""
    rows = session.execute(select(DetectionEvent.object_key, DetectionEvent.etag, DetectionEvent.label,
                                  DetectionEvent.confidence).where(
        DetectionEvent.model_version == previous, DetectionEvent.status == DetectionStatus.DETECTED,
        DetectionEvent.previous_event_id.is_(None)).order_by(DetectionEvent.id.desc()).limit(WINDOW))
    return [(key, etag, label, confidence) for key, etag, label, confidence in rows]


def _stored(key: str, etag: str, label: str | None, confidence: float | None) -> Stored | None:
    """The image at ``key`` if it still has the content detected (``etag``); None when gone or replaced."""
    try:
        info, data = storage.get_object(key)
    except storage.ObjectNotFound:
        return None
    if info.etag != etag:
        return None
    return Stored(content_hash(data), data, label, confidence)
