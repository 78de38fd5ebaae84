"""Silent-error control: the exact bound, the routing rules a detection can meet, on a real (SQLite) database
migrated to head."""

from __future__ import annotations

import typing
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from conftest import ADMIN_PASSWORD, Server, wait_until
from images import smile_logo, upload_training_set
from labelloop import db
from labelloop.detection import service, warm_start
from labelloop.detection import silent_errors as silent
from labelloop.detection.models import DetectionEvent, DetectionStatus
from labelloop.modeling import endpoint
from labelloop.modeling.models import ModelVersion
from labelloop.modeling.serving import PreviousHead, Serving
from labelloop.parameters import service as parameters
from labelloop.review import service as review
from labelloop.review.models import HumanLoop, HumanLoopSource
from test_console_web import signed_in_client


def test_the_bound_is_exact_clopper_pearson_and_covers_the_truth() -> None:
    assert silent.upper_bound(0, 0) is None
    assert silent.upper_bound(5, 5) == 1.0
    # 0 wrong of n: 1 - 0.05^(1/n); 59 clean audits are the fewest that put the bound under 5 %.
    assert silent.upper_bound(0, 59) == pytest.approx(1 - 0.05 ** (1 / 59))
    assert silent.upper_bound(0, 59) < 0.05 < silent.upper_bound(0, 58)
    assert silent.upper_bound(3, 100) == pytest.approx(0.0757, abs=1e-4)
    rng = np.random.default_rng(7)
    for rate, n in ((0.03, 40), (0.1, 200), (0.01, 500)):
        covered = [silent.upper_bound(int(k), n) >= rate for k in rng.binomial(n, rate, 2000)]
        assert np.mean(covered) >= 0.95, (rate, n)


def audit(label: str, confidence: float, wrong: bool) -> silent.Audit:
    return silent.Audit(label, confidence, wrong, True)


def test_a_label_with_confident_mistakes_gets_a_raised_threshold_that_comes_down_with_evidence() -> None:
    few = [audit("a", 80, True)] + [audit("a", 95, False)] * 3
    assert silent.raised_threshold("a", few, 5.0) is None, "too few audits to act on"
    mistakes = [audit("a", 80, True), audit("a", 86, True)] + [audit("a", 90 + i / 10, False) for i in range(8)]
    raised = silent.raised_threshold("a", mistakes, 5.0)
    assert raised == pytest.approx(86.01), "just above the most confident mistake while no cut-off meets 5 %"
    assert silent.raised_threshold("b", mistakes, 5.0) is None, "another label is not touched"
    # Sixty clean audits above 90 bound the rate there under 5 %: the threshold comes down to them.
    evidence = mistakes + [audit("a", 91 + i / 10, False) for i in range(60)]
    assert silent.raised_threshold("a", evidence, 5.0) == pytest.approx(90.0)
    assert silent.raised_threshold("a", [audit("a", 75, False)] * 30, 5.0) is None, "nothing wrong, nothing raised"


def estimate(audits: list[silent.Audit], target: float = 5.0, opened: int | None = None) -> silent.Estimate:
    return silent.estimate_from("v1", target, audits, len(audits) if opened is None else opened)


def route(confidence: float, found: silent.Estimate, audits: list[silent.Audit] = (), *, label: str = "a",
          request_id: str | None = None, review: bool = True, weight: float = 1.0) -> silent.Route:
    return silent.route(label, confidence, request_id or str(uuid.uuid4()), base=70.0,
                        base_name=silent.MINIMUM_CONFIDENCE, review=review, found=found, audits=list(audits),
                        weight=weight)


def request_drawing(at_least: float) -> str:
    """A request id whose audit draw is at least ``at_least`` (so it is not audited at a lower rate)."""
    return next(rid for i in range(1000) if silent.draw(rid := f"request-{i}") >= at_least)


def test_routing_rules_say_which_sent_a_detection_to_a_human_and_why() -> None:
    assert set(typing.get_args(silent.RoutingRule)) == set(silent.RULE_MEANINGS), "the API filter knows every rule"
    cold = estimate([])
    below = route(55.0, cold)
    assert (below.rule, below.threshold, below.to_review) == (silent.Rule.BELOW_CONFIDENCE, 70.0, True)
    assert below.reason == "confidence 55.0 is below Minimum-Label-Detection-Confidence 70"
    # A new version is cold: every detection at or above the threshold is audited until answers come in.
    assert silent.audit_rate(cold) == 1.0
    first = route(93.0, cold)
    assert first.rule == silent.Rule.AUDIT and first.to_review and "no answered audit" in first.reason
    assert silent.audit_rate(estimate([], opened=19)) == 1.0, "a new version's first 20 are all audited"
    assert silent.audit_rate(estimate([], opened=79)) == pytest.approx(0.25)
    assert silent.audit_rate(estimate([], opened=10_000)) == silent.MINIMUM_RATE_ABOVE_TARGET
    clean = [audit("a", 90, False)] * 59
    assert silent.audit_rate(estimate(clean)) == silent.STEADY_RATE
    assert estimate(clean).sentence == "auto-accepted: ≤ 5.0 % wrong, 95 % confidence, from 59 audits"
    # The rate in words: a rate of 0.8 is not "1 in 1".
    assert [silent.audit_share(r) for r in (1.0, 0.8, 0.25, 0.02)] == [
        "1 in 1", "80 % of confident detections", "1 in 4", "1 in 50"]
    # Off: the seed's rule alone, nothing audited.
    assert silent.audit_rate(estimate([], target=0.0)) == 0.0
    assert route(93.0, estimate([], target=0.0)).rule == silent.Rule.AUTO_ACCEPTED
    assert route(55.0, cold, review=False).rule == silent.Rule.REVIEW_OFF
    # A label with confident mistakes: below its raised threshold goes to review, above it passes.
    mistakes = [audit("a", 80, True), audit("a", 86, True)] + [audit("a", 90 + i / 10, False) for i in range(8)]
    found = estimate(mistakes, opened=100)
    quiet = request_drawing(silent.audit_rate(found))
    raised = route(85.0, found, mistakes, request_id=quiet)
    assert raised.rule == silent.Rule.BELOW_RAISED_THRESHOLD and raised.threshold == pytest.approx(86.01)
    assert "threshold silent-error control set for a" in raised.reason
    assert route(99.0, found, mistakes, request_id=quiet).rule == silent.Rule.AUTO_ACCEPTED
    assert route(85.0, found, mistakes, label="b", request_id=quiet).rule == silent.Rule.AUTO_ACCEPTED


def test_an_audit_weight_scales_the_draw_and_the_server_routes_as_before() -> None:
    """The simulation's importance-weighted trial multiplies the audit rate by a weight (capped at every one);
    the server passes none, and a weight of 1 routes exactly as before."""
    found = estimate([], opened=79)  # 20 / 80: one in four
    drawing = {name: next(rid for i in range(5000) if low <= silent.draw(rid := f"request-{i}") < high)
               for name, (low, high) in {"1/8-1/4": (0.125, 0.25), "1/4-1/2": (0.25, 0.5)}.items()}
    assert route(93.0, found, request_id=drawing["1/8-1/4"]).rule == silent.Rule.AUDIT
    assert route(93.0, found, request_id=drawing["1/8-1/4"], weight=0.5).rule == silent.Rule.AUTO_ACCEPTED
    assert route(93.0, found, request_id=drawing["1/4-1/2"]).rule == silent.Rule.AUTO_ACCEPTED
    doubled = route(93.0, found, request_id=drawing["1/4-1/2"], weight=2.0)
    assert doubled.rule == silent.Rule.AUDIT and "audited (1 in 2)" in doubled.reason
    assert "audited (1 in 1)" in route(93.0, found, request_id=drawing["1/4-1/2"], weight=50.0).reason
    assert route(55.0, found, weight=50.0).rule == silent.Rule.BELOW_CONFIDENCE, "below the threshold: a label"


def test_a_warm_start_bound_is_stratified_and_covers_the_truth() -> None:
    """The stratified bound holds at 95 % whatever the strata's rates and share (each part at 1 − 0.05/3)."""
    rng = np.random.default_rng(11)
    cases = ((0.01, 0.2, 0.1, 150, 15, 300), (0.03, 0.03, 0.3, 60, 30, 100), (0.0, 0.5, 0.05, 200, 5, 500),
             (0.04, 0.0, 0.5, 80, 40, 200))
    for r_known, r_new, share, n_known, n_new, counted in cases:
        truth = (1 - share) * r_known + share * r_new
        covered = []
        for _ in range(600):
            known = [audit("a", 90, True)] * rng.binomial(n_known, r_known)
            new = [audit("a", 90, True)] * rng.binomial(n_new, r_new)
            known += [audit("a", 90, False)] * (n_known - len(known))
            new += [audit("a", 90, False)] * (n_new - len(new))
            _, bound = silent.stratified_bound(known, new, int(rng.binomial(counted, share)), counted)
            covered.append(bound >= 100 * truth)
        assert np.mean(covered) >= 0.95, (r_known, r_new, share)
    # No audit of the new stratum yet: it may be all wrong, so the bound is at least its share.
    _, unseen = silent.stratified_bound([audit("a", 90, False)] * 200, [], 10, 100)
    assert unseen >= 10.0
    # No backtest (the previous version was sure of none of the audited images): the point rate still shows.
    assert silent.stratified_bound([], [audit("a", 90, True), audit("a", 90, False)], 10, 100)[0] == 5.0


def warm_audit(wrong: bool = False, new: bool = False) -> silent.Audit:
    return silent.Audit("a", 90, wrong, True, new)


def test_a_warm_start_audits_only_what_the_backtest_does_not_cover() -> None:
    """A version replacing another starts from the backtest: the known stratum at the steady rate once its own
    bound meets the target; the new stratum (images the previous version was unsure of) starts cold."""
    warm = silent.Warm(tuple([warm_audit()] * 150), new_accepted=3, accepted=300)
    started = silent.estimate_from("v2", 5.0, [], 0, warm)
    cold = silent.estimate_from("v2", 5.0, [], 0)
    assert cold.overall.upper_bound is None and silent.audit_rate(cold) == 1.0
    assert started.warm and started.known.audits == 150 and started.new_share == 0.01
    assert started.above_target, "nothing seen in the new stratum yet"
    assert silent.audit_rate(started, new=False) == silent.STEADY_RATE
    assert silent.audit_rate(started, new=True) == 1.0
    routed = route(93.0, started, started_audits := list(warm.backtest), request_id=request_drawing(0.5))
    assert routed.rule == silent.Rule.AUTO_ACCEPTED, "a known image is not audited at the cold rate"
    new = silent.route("a", 93.0, "r", base=70.0, base_name=silent.MINIMUM_CONFIDENCE, review=True, found=started,
                       audits=started_audits, new=True)
    assert new.rule == silent.Rule.AUDIT and "new to this version" in new.reason and "warm start" in new.reason
    # A few clean answers in the new stratum bring the bound under the target: everything relaxes.
    fresh = [warm_audit(new=True)] * 12
    relaxed = silent.estimate_from("v2", 5.0, fresh, 12, warm.counting(True), new_opened=12)
    assert not relaxed.above_target and silent.audit_rate(relaxed, new=True) == silent.STEADY_RATE
    # A mistake in the backtest keeps the known stratum audited (its own bound is above the target).
    worse = silent.Warm(tuple([warm_audit()] * 40 + [warm_audit(wrong=True)] * 3), 3, 300)
    found = silent.estimate_from("v2", 5.0, [], 0, worse)
    assert found.known.upper_bound > 5.0 and silent.audit_rate(found) == pytest.approx(20 / 44)


@pytest.fixture
def database(tmp_path: Path) -> Iterator[None]:
    db.init(f"sqlite:///{tmp_path / 'app.db'}")
    with db.session() as session:
        parameters.ensure_defaults(session=session)
        session.add(ModelVersion(version="v1", status="RUNNING", labels=["a", "b"], evaluation={"per_label": [
            {"label": "a", "assumed_threshold": 0.83}, {"label": "b", "assumed_threshold": None}]}))
    yield
    db.close()


def detected(label: str, confidence: float, *, request_id: str | None = None, version: str = "v1",
             new_stratum: bool | None = None) -> DetectionEvent:
    return DetectionEvent(request_id=request_id or str(uuid.uuid4()), object_key=f"images_for_detection/{uuid.uuid4()}",
                          etag=uuid.uuid4().hex, status=DetectionStatus.DETECTED, model_version=version, label=label,
                          confidence=confidence, human_review_enabled=True, new_stratum=new_stratum)


def decide(event: DetectionEvent) -> silent.Route:
    with db.session() as session:
        values = parameters.values(session=session)
        session.add(event)
        session.flush()
        return service.decide_route(event, values, session=session)


def answered_audits(label: str, confidence: float, answers: list[str]) -> None:
    with db.session() as session:
        for answer in answers:
            event = detected(label, confidence)
            event.routing_rule, event.threshold, event.sampled = silent.Rule.AUDIT, 70.0, True
            event.human_label, event.human_answered_at = answer, db.utcnow()
            session.add(event)


def test_the_estimate_counts_answered_audits_of_auto_accepted_detections_per_version(database: None) -> None:
    assert parameters.DEFINITIONS[parameters.MAXIMUM_SILENT_ERROR_RATE].default == "5.0", "on by default"
    assert decide(detected("a", 93.0)).rule == silent.Rule.AUDIT, "cold start: audited"
    assert decide(detected("a", 50.0)).rule == silent.Rule.BELOW_CONFIDENCE
    answered_audits("a", 95.0, ["a"] * 60)
    answered_audits("b", 90.0, ["b"] * 8 + ["None of the Above", "a"])  # None of the Above is a silent error too
    with db.session() as session:
        found = silent.estimate("v1", 5.0, session=session)
        assert (found.overall.audits, found.overall.wrong) == (70, 2)
        assert found.overall.upper_bound == pytest.approx(100 * silent.upper_bound(2, 70), abs=0.01)
        assert (found.per_label["a"].wrong, found.per_label["b"].wrong) == (0, 2)
        assert found.per_label["a"].upper_bound < 5.0 < found.per_label["b"].upper_bound
        assert silent.estimate("v2", 5.0, session=session).overall.audits == 0, "an audit judges its own version"
        points = silent.history("v1", session=session)
        assert len(points) == 70 and points[-1]["wrong"] == 2
    event = detected("b", 89.0, request_id=request_drawing(0.5))
    routed = decide(event)
    assert routed.rule == silent.Rule.BELOW_RAISED_THRESHOLD and routed.threshold == pytest.approx(90.01)
    assert service.needs_human_review({**service.as_dict(event), "routing_rule": routed.rule})


def request_training(trains: bool, share: float = 0.5) -> str:
    """A request id whose audit answer the Audit-Training-Share ``share`` makes training data (or not)."""
    return next(rid for rid in (str(uuid.uuid4()) for _ in range(1000)) if silent.audit_trains(rid, share) == trains)


def test_the_audit_training_share_draws_which_audit_answers_train(database: None) -> None:
    """Audit-Training-Share: the audits a hash of the detection's request id draws become training data whatever
    the answer, the others never (unless they correct the model with Train-On-Audit-Corrections); 0 by default,
    as the seed: no sampled answer trains. The draw is independent of the audit's own (another salt)."""
    assert parameters.DEFINITIONS[parameters.AUDIT_TRAINING_SHARE].default == "0.0"
    with db.session() as session:
        loops = []
        for rid in (request_training(True), request_training(False)):
            event = detected("a", 95.0, request_id=rid)
            session.add(event)
            session.flush()
            loops.append(HumanLoop(name=f"sampling-{rid}", source=HumanLoopSource.SAMPLING, detection_id=event.id,
                                   object_key=event.object_key, model_label="a", answer_label="a"))
        session.add_all(loops)
        session.flush()
        drawn, kept = loops
        assert not review.teaches(drawn, session=session) and not review.teaches(kept, session=session)
        parameters.change(parameters.AUDIT_TRAINING_SHARE, "50", changed_by="test", session=session)
        assert review.teaches(drawn, session=session), "drawn: an answer that agrees with the model trains too"
        assert not review.teaches(kept, session=session), "not drawn: stays out for every later backtest"
        kept.answer_label = "b"
        assert not review.teaches(kept, session=session), "the answer does not decide"
        parameters.change(parameters.TRAIN_ON_AUDIT_CORRECTIONS, "true", changed_by="test", session=session)
        assert review.teaches(kept, session=session), "a correction, with Train-On-Audit-Corrections"
        parameters.change(parameters.AUDIT_TRAINING_SHARE, "100", changed_by="test", session=session)
        drawn.answer_label = kept.answer_label = "a"
        assert review.teaches(drawn, session=session) and review.teaches(kept, session=session)
    draws = [str(i) for i in range(2000)]
    assert abs(sum(silent.audit_trains(rid, 0.5) for rid in draws) - 1000) < 100
    both = sum(silent.audit_trains(rid, 0.5) and silent.draw(rid) < 0.5 for rid in draws)
    assert abs(both - 500) < 80, "independent of the audit draw"


def test_a_backtest_leaves_out_only_the_audits_the_share_drew_into_training() -> None:
    """A version is never judged by an audit it trained on: drawn by Audit-Training-Share (a random part of the
    audits), it is left out; in its training data for another reason (a correction copied by
    Train-On-Audit-Corrections), leaving it out would keep only the agreeing audits, so it counts as wrong."""
    plan = warm_start.Plan("v2", "v1", None, None, (None, None), {("v1", "a"): 70.0, ("v2", "a"): 70.0},
                           [], [], share=0.5)
    audits = {name: (warm_start.Stored(name, b"", "a", None), drawn) for name, drawn in
              (("drawn-trained", True), ("drawn-untrained", True), ("kept", False), ("correction", False),
               ("previous-unsure", False))}
    scored = {name: (("a", 90.0), ("a", 60.0 if name == "previous-unsure" else 95.0)) for name in audits}
    found = warm_start.backtest_of(plan, list(audits.values()), scored, {"drawn-trained", "correction"})
    assert found == [silent.Audit("a", 90.0, False, True), silent.Audit("a", 90.0, False, True),
                     silent.Audit("a", 90.0, True, True)], "drawn-untrained and kept judge it; the correction is wrong"


def test_label_assumed_thresholds_route_when_the_option_is_on(database: None) -> None:
    with db.session() as session:
        parameters.change(parameters.MAXIMUM_SILENT_ERROR_RATE, "0", changed_by="test", session=session)
    assert decide(detected("a", 80.0)).rule == silent.Rule.AUTO_ACCEPTED, "the seed's rule: 80 ≥ 70"
    with db.session() as session:
        parameters.change(parameters.USE_LABEL_ASSUMED_THRESHOLDS, "true", changed_by="test", session=session)
    by_label = decide(detected("a", 80.0))
    assert (by_label.rule, by_label.threshold) == (silent.Rule.BELOW_LABEL_THRESHOLD, 83.0)
    assert by_label.reason == "confidence 80.0 is below a's assumed threshold 83"
    assert decide(detected("b", 80.0)).rule == silent.Rule.AUTO_ACCEPTED, "no assumed threshold: the global one"
    assert decide(detected("b", 60.0)).rule == silent.Rule.BELOW_CONFIDENCE


def test_a_warm_version_routes_by_the_stratum_of_each_detection(database: None) -> None:
    """The server's side of the warm start: the stored backtest, each event's stratum from the previous
    version's confidence, and the stratified estimate."""
    warm = silent.Warm(tuple([warm_audit()] * 150), new_accepted=3, accepted=300)
    with db.session() as session:
        session.add(ModelVersion(version="v2", status="RUNNING", labels=["a", "b"], warm_start=warm.to_stored("v1")))
        values = parameters.values(session=session)
        assert service.new_stratum("v1", ("a", 99.0), values, session=session) is None, "v1 started cold"
        assert service.new_stratum("v2", ("a", 90.0), values, session=session) is False, "v1 would accept it"
        assert service.new_stratum("v2", ("b", 60.0), values, session=session) is True, "below v1's threshold"
        assert service.new_stratum("v2", None, values, session=session) is True, "unknown counts as new"
    quiet = request_drawing(0.5)
    known = decide(detected("a", 93.0, request_id=quiet, version="v2", new_stratum=False))
    assert known.rule == silent.Rule.AUTO_ACCEPTED, "the backtest covers the known stratum: the steady rate"
    fresh = decide(detected("a", 93.0, request_id=request_drawing(0.9), version="v2", new_stratum=True))
    assert fresh.rule == silent.Rule.AUDIT and "(new to this version" in fresh.reason, "the new stratum is cold"
    assert "audited (1 in 1)" in fresh.reason
    with db.session() as session:
        for event in session.scalars(select(DetectionEvent).where(DetectionEvent.model_version == "v2")):
            event.threshold = 70.0  # as _record stores the routing
            event.routing_rule = silent.Rule.AUDIT if event.new_stratum else silent.Rule.AUTO_ACCEPTED
        found = silent.estimate("v2", 5.0, session=session)
        assert found.warm and (found.backtest, found.new_opened, found.audits_opened) == (150, 1, 1)
        assert (found.known.audits, found.new.audits) == (150, 0)
        assert found.new_share == pytest.approx(4 / 302, abs=1e-4), "the stored counts and its own detections"
        _, bound = silent.stratified_bound(list(warm.backtest), [], 4, 302)
        assert found.overall.upper_bound == bound and "(warm start: backtest and new-stratum audits)" in found.sentence
        assert silent.estimate("v1", 5.0, session=session).warm is False
        answered = session.scalar(select(DetectionEvent).where(DetectionEvent.new_stratum.is_(True)))
        answered.sampled, answered.human_label, answered.human_answered_at = True, "a", db.utcnow()
        session.flush()
        found = silent.estimate("v2", 5.0, session=session)
        assert (found.new.audits, found.overall.audits) == (1, 151)
        plotted = silent.history("v2", session=session)  # the plot shows the stratified bound too
        assert [p["audits"] for p in plotted] == [1] and plotted[-1]["upper_bound"] == found.overall.upper_bound


def assert_v2_starts_cold(**v2: typing.Any) -> None:
    """A version v2 (with the ``v2`` columns) replacing v1 that reads other embeddings starts cold: no backtest
    is stored, and serving does not compare the heads even if one were (every detection counts as new)."""
    with db.session() as session:
        session.add(ModelVersion(version="v2", status="TRAINED", labels=["a", "b"], head=b"v2's head", **v2))
    assert warm_start.store("v2") is None
    with db.session() as session:
        row = session.scalar(select(ModelVersion).where(ModelVersion.version == "v2"))
        assert row.warm_start is None
        row.warm_start = {"previous": "v1"}  # as if stored: the heads still read different embeddings
        assert endpoint._previous_head(row, session=session) is None


def test_a_version_on_another_backbone_starts_cold(database: None) -> None:
    """An int8 twin (Quantize-Backbone) reads other embeddings than the fp32 version it replaces: no backtest,
    and serving does not compare the heads (every detection counts as new, which is always valid)."""
    with db.session() as session:
        session.scalar(select(ModelVersion).where(ModelVersion.version == "v1")).head = b"v1's head"
    assert_v2_starts_cold(backbone_fingerprint="int8-0123")


class PixelMeans:
    """A stand-in backbone for the micro-batcher: each image's mean per channel (the server test runs the real one)."""

    def embed(self, inputs: np.ndarray) -> np.ndarray:
        return inputs.mean(axis=(2, 3))


class LinearHead:
    """A softmax head on the three-number embedding."""

    def __init__(self, labels: list[str], seed: int) -> None:
        self.labels = labels
        self.weights = np.random.default_rng(seed).normal(size=(3, len(labels))) * 20

    def predict_proba(self, embeddings: np.ndarray) -> np.ndarray:
        z = np.exp(embeddings @ self.weights)
        return z / z.sum(axis=1, keepdims=True)


def test_serving_gives_the_previous_heads_top_answer_on_the_same_embedding() -> None:
    server = Serving(lambda threads: PixelMeans(), units=1)  # type: ignore[arg-type,return-value]
    old, new = LinearHead(["a", "b"], 0), LinearHead(["a", "b", "c"], 1)
    inputs = np.random.default_rng(2).uniform(-1, 1, (4, 3, 224, 224)).astype(np.float32)
    try:
        server.switch(server.warm("v1", old))
        cold = server.submit_compared(inputs).result(timeout=60)
        server.switch(server.warm("v2", new, previous=PreviousHead("v1", old)))
        warm = server.submit_compared(inputs).result(timeout=60)
        version, plain = server.submit(inputs).result(timeout=60)
    finally:
        server.close()
    assert cold.version.version == "v1" and cold.previous is None, "no previous head: every detection is new"
    assert warm.version.version == version.version == "v2"
    np.testing.assert_allclose(warm.probabilities, plain)
    expected = [(old.labels[int(row.argmax())], 100 * float(row.max())) for row in cold.probabilities]
    assert [label for label, _ in warm.previous] == [label for label, _ in expected]
    np.testing.assert_allclose([c for _, c in warm.previous], [c for _, c in expected], atol=1e-3)


@pytest.mark.timeout(600)
def test_a_new_version_is_audited_and_the_console_shows_the_bound(server: Server) -> None:
    api = server.client()
    upload_training_set(api, 5)
    check = server.wait_run(api.post("/training/check").json()["run_id"], timeout=300)
    assert check["status"] == "SUCCESS", check
    wait_until(lambda: api.get("/models/v1").json()["status"] == "RUNNING", 120, 0.25, "v1 RUNNING")
    keys = [f"images_for_detection/confident-{i}.png" for i in range(6)]
    for i, key in enumerate(keys):
        assert api.put(f"/objects/{key}", content=smile_logo(100 + i)).status_code == 201
    events = wait_until(lambda: (found := {e["object_key"]: e for e in api.get("/detections").json()
                                           if e["object_key"] in keys and e["human_loop_name"]})
                        and len(found) == len(keys) and found, 120, 0.25, "six audited detections")
    for event in events.values():  # cold start: each confident detection of a new version is audited
        assert event["confidence"] >= 70 and event["routing_rule"] == "audit" and event["sampled"], event
        assert event["review_reason"].startswith("audited (1 in 1): auto-accepted: no answered audit of v1")
    loops = [api.get(f"/human-loops/{e['human_loop_name']}").json() for e in events.values()]
    assert {loop["source"] for loop in loops} == {"Human Sampling"}
    labeled = len(api.get("/objects", params={"prefix": "images_labeled_by_folder/"}).json())
    for i, loop in enumerate(loops):  # two reviewers' answers say the model was wrong
        answer = api.post(f"/human-loops/{loop['name']}/answer", json={"label": "aws_logo" if i < 2 else "amazon_logo"})
        assert server.wait_run(answer.json()["run_id"])["status"] == "SUCCESS"
    assert len(api.get("/objects", params={"prefix": "images_labeled_by_folder/"}).json()) == labeled, \
        "audit answers are never training data"
    report = api.get("/sampling/silent-errors").json()
    bound = round(100 * silent.upper_bound(2, 6), 2)
    assert (report["model_version"], report["target"], report["overall"]["audits"]) == ("v1", 5.0, 6)
    assert (report["overall"]["wrong"], report["overall"]["upper_bound"]) == (2, bound)
    assert report["per_label"]["amazon_logo"]["audits"] == 6 and report["above_target"]
    assert report["sentence"] == f"auto-accepted: ≤ {bound:.1f} % wrong, 95 % confidence, from 6 audits"
    assert [p["audits"] for p in report["history"]] == [1, 2, 3, 4, 5, 6]
    assert {r["label"] for r in report["routing"]} == {"amazon_logo", "aws_logo"}
    assert api.get("/sampling/silent-errors", params={"version": "v9"}).status_code == 404
    # Opted in, an audit answer that corrects the model becomes training data; one that agrees does not.
    assert api.put("/parameters/Train-On-Audit-Corrections", json={"value": "true"}).status_code == 200
    more = ["images_for_detection/corrected.png", "images_for_detection/agreed.png"]
    for i, key in enumerate(more):
        assert api.put(f"/objects/{key}", content=smile_logo(200 + i)).status_code == 201
    audited = wait_until(lambda: (found := {e["object_key"]: e for e in api.get("/detections").json()
                                            if e["object_key"] in more and e["human_loop_name"]})
                         and len(found) == 2 and found, 120, 0.25, "two more audits")
    copies = {}
    for key, label in zip(more, ("aws_logo", "amazon_logo"), strict=True):
        name = audited[key]["human_loop_name"]
        answer = api.post(f"/human-loops/{name}/answer", json={"label": label})
        assert server.wait_run(answer.json()["run_id"])["status"] == "SUCCESS"
        copies[key] = api.get(f"/human-loops/{name}").json()["copied_key"]
    assert copies[more[0]].startswith("images_labeled_by_folder/aws_logo/humanLoopName-sampling-")
    assert copies[more[1]] is None
    # Both still judge v1, which never trained on them, where they fell in its auto-accepted stream (at or above
    # the threshold in force, which the first audits' mistakes may have raised for amazon_logo).
    accepted = [audited[key]["confidence"] >= audited[key]["threshold"] for key in more]
    now = api.get("/sampling/silent-errors").json()
    assert (now["overall"]["audits"], now["overall"]["wrong"]) == (6 + sum(accepted), 2 + accepted[0])
    with signed_in_client(server, "admin", ADMIN_PASSWORD) as client:
        for path in ("/dashboard", "/models/v1"):  # the sentence of now (the two more audits may have counted)
            page = client.get(path).text
            assert now["sentence"] in page and "Silent errors of v1 by audits answered" in page, path
        settings = client.get("/parameters").text
        assert "Who sees a detection" in settings and 'href="/detections?rule=audit"' in settings
        log = client.get("/detections", params={"rule": "audit"}).text  # the rule and its reason on every row
        assert all(key.rsplit("/", 1)[-1] in log for key in keys) and "audited (1 in 1): auto-accepted" in log
        assert "Pick a routing rule from the list." in client.get("/detections", params={"rule": "nobody"}).text
    # Audit-Training-Share at 100: every audit answer trains, one that agrees with the model too.
    assert api.put("/parameters/Train-On-Audit-Corrections", json={"value": "false"}).status_code == 200
    assert api.put("/parameters/Audit-Training-Share", json={"value": "100"}).status_code == 200
    drawn = "images_for_detection/drawn.png"
    assert api.put(f"/objects/{drawn}", content=smile_logo(210)).status_code == 201
    [event] = wait_until(lambda: [e for e in api.get("/detections").json()
                                  if e["object_key"] == drawn and e["human_loop_name"]], 120, 0.25, "its audit")
    assert event["routing_rule"] == "audit", event
    answer = api.post(f"/human-loops/{event['human_loop_name']}/answer", json={"label": event["label"]})
    assert server.wait_run(answer.json()["run_id"])["status"] == "SUCCESS"
    copied = api.get(f"/human-loops/{event['human_loop_name']}").json()["copied_key"]
    assert copied.startswith(f"images_labeled_by_folder/{event['label']}/humanLoopName-sampling-"), copied


def detections_of(api, keys: list[str]) -> dict[str, dict]:  # type: ignore[no-untyped-def]
    """The routed detection event of each key, once all of them are routed (else {})."""
    found = {e["object_key"]: e for e in api.get("/detections", params={"status": "DETECTED"}).json()
             if e["object_key"] in keys and e["routing_rule"]}
    return found if len(found) == len(keys) else {}


@pytest.mark.timeout(900)
def test_a_replacing_version_starts_warm_from_the_audits_of_the_one_it_replaces(server: Server) -> None:
    api = server.client()
    upload_training_set(api, 5)
    assert server.wait_run(api.post("/training/check").json()["run_id"], timeout=300)["status"] == "SUCCESS"
    wait_until(lambda: api.get("/models/v1").json()["status"] == "RUNNING", 120, 0.25, "v1 RUNNING")
    before = [f"images_for_detection/before-{i}.png" for i in range(30)]
    for i, key in enumerate(before):
        assert api.put(f"/objects/{key}", content=smile_logo(300 + i)).status_code == 201
    events = wait_until(lambda: detections_of(api, before), 300, 0.5, "v1's detections routed")
    audited = [e for e in events.values() if e["routing_rule"] == "audit"]
    assert len(audited) >= 20, "v1 started cold: its first 20 confident detections were all audited"
    runs = [api.post(f"/human-loops/{e['human_loop_name']}/answer", json={"label": e["label"]}).json()["run_id"]
            for e in audited]  # reviewers agree with v1 every time
    assert all(server.wait_run(run)["status"] == "SUCCESS" for run in runs)
    # v2 replaces v1: its deploy step stores a backtest of v1's audits (v2 never trained on them).
    upload_training_set(api, 5, offset=5)
    check = server.wait_run(api.post("/training/check").json()["run_id"], timeout=300)
    assert check["status"] == "SUCCESS", check
    wait_until(lambda: api.get("/models/v2").json()["status"] == "RUNNING", 120, 0.25, "v2 RUNNING")
    started = api.get("/sampling/silent-errors").json()
    assert (started["model_version"], started["backtest"]) == ("v2", len(audited)), started
    assert started["known"]["audits"] == len(audited) and started["known"]["wrong"] == 0
    warm = api.get("/models/v2").json()["warm_start"]
    assert (warm["previous"], warm["backtest_audits"]) == ("v1", len(audited)), warm
    assert api.get("/models/v1").json()["warm_start"] is None, "the first version starts cold"
    after = [f"images_for_detection/after-{i}.png" for i in range(14)]
    for i, key in enumerate(after):
        assert api.put(f"/objects/{key}", content=smile_logo(400 + i)).status_code == 201
    routed = [e for e in wait_until(lambda: detections_of(api, after), 300, 0.5, "v2's detections routed").values()
              if e["model_version"] == "v2"]  # (the first may have met v1 in a process not yet switched)
    assert all(e["new_stratum"] is not None for e in routed)
    known = [e for e in routed if not e["new_stratum"] and e["confidence"] >= e["threshold"]]
    assert len(known) >= 8, routed  # images v1 was sure of too
    # A cold start audits all of a version's first 20 confident detections; the backtest (k ≈ 28 clean answers)
    # lets v2 audit its known stratum at 20 / (k + opened + 1): all 14 would happen about once in 3,000 runs.
    assert sum(e["routing_rule"] == "audit" for e in known) < len(known), known
    for e in routed:  # the new stratum (v1 would not have auto-accepted) still starts cold
        if e["new_stratum"] and e["confidence"] >= e["threshold"]:
            assert e["routing_rule"] == "audit" and "(new to this version" in e["review_reason"], e
    report = api.get("/sampling/silent-errors").json()
    assert report["sentence"].endswith("(warm start: backtest and new-stratum audits)"), report
    assert report["overall"]["audits"] >= len(audited) and report["known"]["audits"] >= len(audited)
    with signed_in_client(server, "admin", ADMIN_PASSWORD) as client:
        for path in ("/dashboard", "/models/v2"):
            assert report["sentence"] in client.get(path).text, path
        assert "known stratum" in client.get("/detections").text
