"""The upload pipeline writes a detection's answer, its human loop and its notification in one transaction: all
or nothing, and a retried step repeats nothing (routing._detect_now on a real application database; only the
inference is given, as the serving model would answer)."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import func, select

from labelloop import db
from labelloop.detection import service as detections
from labelloop.detection import silent_errors
from labelloop.detection.models import DetectionEvent, DetectionStatus
from labelloop.loop import routing
from labelloop.modeling.models import ModelVersion
from labelloop.notifications import service as notifications
from labelloop.notifications.models import Notification
from labelloop.parameters import service as parameters
from labelloop.review.models import HumanLoop

pytestmark = pytest.mark.same_on_every_database  # in-process, each on its own SQLite file


@pytest.fixture
def database(tmp_path: Path) -> Iterator[None]:
    db.init(f"sqlite:///{tmp_path / 'app.db'}")
    with db.session() as session:
        parameters.ensure_defaults(session=session)
        session.add(ModelVersion(version="v1", status="RUNNING", labels=["cat", "dog"], evaluation={}))
    yield
    db.close()


def answered(confidence: float) -> detections.Outcome:
    """What the serving model answers for an image: ``cat`` at ``confidence`` (0–100)."""
    return detections.Outcome("detected", version="v1", labels=[
        {"name": "cat", "confidence": confidence}, {"name": "dog", "confidence": 100 - confidence}])


def counts(event_id: int) -> tuple[str, int, int]:
    with db.session() as session:
        event = session.get(DetectionEvent, event_id)
        loops = session.scalar(select(func.count(HumanLoop.id)).where(HumanLoop.detection_id == event_id))
        notes = session.scalar(select(func.count(Notification.id)))
        return event.status, loops, notes


def test_answer_loop_and_notification_are_written_together_once(database: None,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    event = detections.record_arrival("images_for_detection/a.jpg", "e" * 32, "detection-run-a")
    assert detections.record_arrival("images_for_detection/a.jpg", "e" * 32, "detection-run-a") == event, \
        "the same upload, recorded again (a retried step), is the same event"
    # unsure: a human loop
    monkeypatch.setattr(detections, "infer_all", lambda events: [answered(20.0) for _ in events])
    broken = notifications.stage

    def failing(*args: object, **kwargs: object) -> object:
        raise RuntimeError("the disk filled up while the notification was written")

    monkeypatch.setattr(notifications, "stage", failing)
    with pytest.raises(RuntimeError):
        routing._detect_now(event, "detection-run-a")
    assert counts(event["id"]) == (DetectionStatus.WAITING_FOR_MODEL, 0, 0), "nothing half-written"

    monkeypatch.setattr(notifications, "stage", broken)
    done = routing._detect_now(detections.read_event(event["id"]), "detection-run-a")  # the step, retried
    assert done["detection"]["status"] == DetectionStatus.DETECTED and done["human_loop"] is not None
    assert counts(event["id"]) == (DetectionStatus.DETECTED, 1, 1)
    with db.session() as session:
        note = session.get(Notification, done["notification"])
        assert note.deliveries == {"feed": "stored"}, "no channel configured: stored in the same transaction"
        assert session.get(DetectionEvent, event["id"]).human_loop_name == done["human_loop"]["name"]

    again = routing._detect_now(detections.read_event(event["id"]), "detection-run-a")  # retried once more
    assert again["notification"] == done["notification"] and again["human_loop"] is None
    assert counts(event["id"]) == (DetectionStatus.DETECTED, 1, 1), "a retried step repeats nothing"


def test_a_confident_detection_opens_no_loop_and_a_missing_model_leaves_it_waiting(
        database: None, monkeypatch: pytest.MonkeyPatch) -> None:
    with db.session() as session:
        parameters.change(parameters.MAXIMUM_SILENT_ERROR_RATE, "0", session=session, changed_by="test")
    sure = detections.record_arrival("images_for_detection/b.jpg", "b" * 32, "detection-run-b")
    monkeypatch.setattr(detections, "infer_all", lambda events: [answered(97.0) for _ in events])
    assert routing._detect_now(sure, "detection-run-b")["human_loop"] is None
    assert counts(sure["id"]) == (DetectionStatus.DETECTED, 0, 1)

    waiting = detections.record_arrival("images_for_detection/c.jpg", "c" * 32, "detection-run-c")
    monkeypatch.setattr(detections, "infer_all",
                        lambda events: [detections.Outcome("waiting", "no version serves") for _ in events])
    done = routing._detect_now(waiting, "detection-run-c")
    assert done["detection"]["status"] == DetectionStatus.WAITING_FOR_MODEL and done["human_loop"] is None
    with db.session() as session:
        assert session.get(Notification, done["notification"]).event_type == "detection.waiting_for_model"


def test_a_part_written_by_another_execution_is_found_not_repeated(database: None,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Another execution of the same run stored the notification a moment ago (its unique key clashes at the
    commit): the parts are written one by one, and the notification is the one already there."""
    event = detections.record_arrival("images_for_detection/d.jpg", "d" * 32, "detection-run-d")
    with db.session() as session:
        earlier = notifications.record("detection.detected", "earlier", "stored by another execution",
                                       session=session, dedupe_key=f"detection-{event['id']}:DETECTED").id
    monkeypatch.setattr(detections, "infer_all", lambda events: [answered(20.0) for _ in events])
    done = routing._detect_now(event, "detection-run-d")
    assert done["notification"] == earlier and done["human_loop"] is not None
    assert counts(event["id"]) == (DetectionStatus.DETECTED, 1, 1)


def test_a_batch_whose_event_was_deleted_detects_the_others_and_lists_it(
        database: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """An upload's detection event deleted before its batch's run read it: the run detects the rest and records
    the missing one (id and key) in its output; that upload's summary says so."""
    uploads = [detections.record_arrival(f"images_for_detection/{name}.jpg", name * 32, "detection-run-batch")
               for name in "fgh"]
    with db.session() as session:
        session.delete(session.get(DetectionEvent, uploads[1]["id"]))
    monkeypatch.setattr(detections, "infer_all", lambda events: [answered(97.0) for _ in events])
    ids, keys = [u["id"] for u in uploads], [u["object_key"] for u in uploads]
    with caplog.at_level("WARNING", logger="labelloop.loop.routing"):
        done = routing.detect_uploads(ids, "detection-run-batch", keys)
    assert done["keys"] == [keys[0], keys[2]]
    assert [item["detection_id"] for item in done["detections"]] == [ids[0], ids[2]]
    assert [item["status"] for item in done["detections"]] == [DetectionStatus.DETECTED] * 2
    assert done["missing"] == [{"detection_id": ids[1], "key": keys[1], "status": "MISSING",
                                "status_message": "its detection event was deleted before the batch was detected"}]
    logged = [r for r in caplog.records if getattr(r, "detection_id", None) == ids[1]]
    assert logged and logged[0].key == keys[1] and logged[0].run_id == "detection-run-batch"
    output = {"branch": "detection", **done}
    assert routing.upload_summary(output, keys[1])["status"] == "MISSING"
    assert routing.upload_summary(output, keys[2])["detection_id"] == ids[2]
    assert counts(ids[0])[0] == counts(ids[2])[0] == DetectionStatus.DETECTED

    gone = [detections.record_arrival(f"images_for_detection/{name}.jpg", name * 32, "detection-run-gone")
            for name in "ij"]
    with db.session() as session:  # every event of a batch gone: nothing to detect, all listed
        for item in gone:
            session.delete(session.get(DetectionEvent, item["id"]))
    again = routing.detect_uploads([u["id"] for u in gone], "detection-run-gone", [u["object_key"] for u in gone])
    assert again["detections"] == [] and again["keys"] == []
    assert [item["key"] for item in again["missing"]] == [u["object_key"] for u in gone]


def open_audits(opened: int, answered: int = 0) -> None:
    """Audits of v1 opened before (cat at 95.0), the first ``answered`` of them answered, one in four wrong."""
    for i in range(opened):
        earlier = detections.record_arrival(f"images_for_detection/old/{i}.jpg", f"{i:032x}", "detection-old")
        with db.session() as session:
            event = session.get(DetectionEvent, earlier["id"])
            event.status, event.model_version, event.label, event.confidence = "DETECTED", "v1", "cat", 95.0
            event.threshold, event.routing_rule, event.sampled = 70.0, "audit", True
            if i < answered:
                event.human_label, event.human_answered_at = ("dog" if i % 4 == 0 else "cat"), db.utcnow()


def test_a_batch_computes_the_estimate_again_only_when_its_counts_change(database: None,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A cold start's confident detection that is not audited changes none of the estimate's counts, so the next
    image is routed on the estimate already computed; an audit opened changes them (README Performance, item 35:
    the estimate was computed again for every image)."""
    open_audits(200, answered=8)  # past the cold start: about one confident image in ten is audited
    events = [detections.record_arrival(f"images_for_detection/new/{i}.jpg", f"{i + 1000:032x}", "detection-new")
              for i in range(40)]
    monkeypatch.setattr(detections, "infer_all", lambda evs: [answered(99.5) for _ in evs])
    computed: list[int] = []
    estimate = silent_errors.Counts.estimate

    def counted(counts: silent_errors.Counts, version: str, target: float) -> object:
        computed.append(counts.opened)
        return estimate(counts, version, target)

    monkeypatch.setattr(silent_errors.Counts, "estimate", counted)
    done = routing._detect_all(events, "detection-new")
    rules = [item["detection"]["routing_rule"] for item in done]
    audited = [i for i, rule in enumerate(rules) if rule == "audit"]
    assert set(rules) == {"audit", "auto-accepted"} and len(audited) < len(events) // 2, rules
    assert computed == [200 + sum(1 for i in audited if i < at) for at in [0, *(i + 1 for i in audited
                                                                                 if i + 1 < len(events))]]


@pytest.mark.parametrize("warm", [False, True], ids=["cold start", "warm start"])
def test_a_batch_routes_every_image_as_image_by_image_routing_would(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    warm: bool) -> None:
    """A batch reads the silent-error estimate's counts once and keeps them in memory as it routes (each audit it
    opens; with a warm start, whose estimate counts every would-be auto-accepted detection, those too): every
    image is routed on the estimate, and to the route, that the same images routed one transaction each get, on
    a copy of the same database."""
    db.init(f"sqlite:///{tmp_path / 'batch.db'}")
    backtest = silent_errors.Warm(tuple([silent_errors.Audit("cat", 95.0, False, True)] * 40), 2, 60)
    with db.session() as session:
        parameters.ensure_defaults(session=session)
        session.add(ModelVersion(version="v1", status="RUNNING", labels=["cat", "dog"], evaluation={},
                                 warm_start=backtest.to_stored("v0") if warm else None))
    open_audits(25, answered=12)  # the audit rate is below 1, so some images are audited, some not
    events = [detections.record_arrival(f"images_for_detection/new/{i}.jpg", f"{i + 100:032x}", "detection-new")
              for i in range(60)]
    confidence = {event["id"]: (99.5, 88.0, 76.0, 40.0)[i % 4] for i, event in enumerate(events)}
    # With a warm start, every other image is one the replaced version v0 would have auto-accepted too (the known
    # stratum, which the backtest covers: auto-accepted, and counted by the next image's estimate).
    known = {event["id"]: warm and i % 2 == 0 for i, event in enumerate(events)}
    monkeypatch.setattr(detections, "infer_all", lambda evs: [
        replace(answered(confidence[e["id"]]), previous=("cat", 99.0) if known[e["id"]] else None) for e in evs])
    db.close()
    shutil.copy(tmp_path / "batch.db", tmp_path / "one_by_one.db")
    reads, used = [], []
    counts_of, route = silent_errors.counts_of, silent_errors.route

    def read(*args: object, **kwargs: object) -> object:
        reads.append(1)
        return counts_of(*args, **kwargs)

    def routed(*args: object, **kwargs: object) -> object:
        used.append(kwargs["found"])  # the estimate each image is routed on
        return route(*args, **kwargs)

    monkeypatch.setattr(silent_errors, "counts_of", read)
    monkeypatch.setattr(silent_errors, "route", routed)

    def routes(run: Callable[[], object], database: str) -> tuple[list[tuple[object, ...]], int, list[object]]:
        db.init(f"sqlite:///{tmp_path / database}")
        reads.clear()
        used.clear()
        run()
        with db.session() as session:
            found = [session.get(DetectionEvent, event["id"]) for event in events]
            loops = session.scalar(select(func.count(HumanLoop.id)))
            rows = [(e.status, e.routing_rule, e.threshold, e.review_reason, e.sampled) for e in found]
        db.close()
        return [*rows, ("loops", loops)], len(reads), list(used)

    batch, batch_reads, batch_used = routes(lambda: routing._detect_all(events, "detection-new"), "batch.db")
    alone, alone_reads, alone_used = routes(lambda: [routing._detect_now(event, "detection-new") for event in events],
                                            "one_by_one.db")
    assert batch == alone
    rules = [row[1] for row in batch[:-1]]
    assert {"audit", "auto-accepted", "below-confidence"} <= set(rules), rules
    assert batch_used == alone_used  # the same estimate for every image (audits are drawn from request ids)
    assert rules.count("audit") >= 2 and batch_reads == 1 < alone_reads, (batch_reads, alone_reads, rules)
    if warm:  # the counts moved within the batch: each would-be auto-accepted image counted for the next one
        shares = [found.new_share for found in batch_used if found.new_share is not None]
        assert len(set(shares)) > 10, shares
