"""Silent-error control: how often an auto-accepted detection is wrong, measured by audits, and the routing
rule that keeps it under Maximum-Silent-Error-Rate.

* **Audits.** While the target is on (and Enable-A2I-Workflow is true), a random share of the detections at or
  above the confidence threshold go to a human as "Human Sampling" loops while the bound is above the target
  or unknown: every one of a new version's first ``COLD_AUDITS`` (cold start), then ``COLD_AUDITS / (audits
  opened + 1)`` of them (never under ``MINIMUM_RATE_ABOVE_TARGET``); ``STEADY_RATE`` once the bound is at or
  below the target.
  The draw is a hash of the detection's request id, so a repeated step draws the same. Audits are not
  training data, except the share Audit-Training-Share draws (``audit_trains``: another hash of the request id,
  never the answer; 0 by default) and answers that correct the model with Train-On-Audit-Corrections on.
* **The estimate**, per serving version: the answered audits (and the seed's every-n-th sampling answers) of
  detections that were auto-accepted or would have been (confidence at or above the threshold in force for
  them); an answer other than the model's label, *None of the Above* included, is a silent error. The bound is
  the **exact one-sided Clopper–Pearson** upper limit at 95 % (``beta.ppf(0.95, k + 1, n - k)``): it never
  understates the rate, whatever n, which the normal approximation does for small n and rates near 0. Per label
  the same, on that label's audits. An audit judges only the version that made the detection, so a version
  trained on an answer is never judged by it.
* **Acting.** For a label whose audits put the bound above the target, detections below a raised threshold
  go to review as "Detection" loops: the lowest audited confidence above which the label's audits bound the
  rate at or below the target, or else just above the most confident wrong audit. Audits keep coming from the
  whole range at or above the base threshold, so as answers accumulate the raised threshold comes down again.
* **Warm start** (``Warm``, ``estimate_from(..., warm=)``): a version that replaces another need not start from
  nothing. Its detections split in two strata by what the *previous* version would have done with the same
  image: **known** (the previous version would have auto-accepted it too) and **new** (it would not: the part of
  the stream the new version has just become confident about). The known stratum is seeded by a **backtest**:
  earlier audits (true label answered) that the new version did not train on, scored by it, that both it and
  the previous version would auto-accept. The new stratum gets its own cold start (it has no backtest: its
  images went to humans and became training data). The bound is stratified (``stratified_bound``):
  rate = (1 − p)·r_known + p·r_new ≤ U_known + U_p·max(0, U_new − U_known), each part an exact Clopper–Pearson
  bound at 1 − 0.05/3 (``STRATA_SPLIT``), so all three hold together with ≥ 95 % (union bound) and so does the
  sum, whatever p. p, the new stratum's share of the would-be auto-accepted detections, is counted on the
  previous version's detections scored by the new one, and on the new version's own. In the server the
  backtest and the previous version's counts are stored with the version when it is first deployed
  (``detection.warm_start``, ``ModelVersion.warm_start``), and each detection's stratum with its event
  (``DetectionEvent.new_stratum``, from the previous head's confidence on the same embedding).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from sqlalchemy import bindparam, func, select
from sqlalchemy.orm import Session

from labelloop.detection.models import DetectionEvent, DetectionStatus
from labelloop.modeling.models import ModelVersion

CONFIDENCE_LEVEL = 0.95
COLD_AUDITS = 20
MINIMUM_RATE_ABOVE_TARGET = 0.1
STEADY_RATE = 0.02
# Warm start: how the 5 % a bound may miss is shared between its three parts (known stratum, new stratum, the
# new stratum's share); fixed in advance, so the union bound holds. Thirds: giving the known stratum 0.6, the
# new one 0.3 and the share 0.1 changed nothing in the simulation (README, "Silent errors").
STRATA_SPLIT = (1 / 3, 1 / 3, 1 / 3)
MIN_AUDITS_TO_RAISE = 5
# A trial, off: also raise one threshold for all of a version's labels from its audits pooled (the simulation's
# --version-wide; README, "Silent errors": tried, not adopted).
VERSION_WIDE = False
# Audits that train: the share of audit answers a hash of the detection's request id makes training data in the
# simulation's "split" arms (the measured setting; the server's Audit-Training-Share parameter is 0 by default,
# as the seed); the others never are, so every later version's backtest keeps them.
AUDIT_TRAINING_SHARE = 0.5
MINIMUM_CONFIDENCE = "Minimum-Label-Detection-Confidence"  # the seed's rule, by the name of its parameter


class Rule:
    """Which rule routed a detection (stored on the event as ``routing_rule``)."""

    AUTO_ACCEPTED = "auto-accepted"
    BELOW_CONFIDENCE = "below-confidence"  # the seed's global Minimum-Label-Detection-Confidence
    BELOW_LABEL_THRESHOLD = "below-label-threshold"  # the label's assumed threshold (Use-Label-Assumed-Thresholds)
    BELOW_RAISED_THRESHOLD = "below-raised-threshold"  # raised by silent-error control for the label
    AUDIT = "audit"  # a random audit of the auto-accepted stream ("Human Sampling" loop)
    REVIEW_OFF = "review-off"  # Enable-A2I-Workflow is false


RULE_MEANINGS = {  # what each rule does, in the user's words (the parameters page lists them)
    Rule.BELOW_CONFIDENCE: "below Minimum-Label-Detection-Confidence: a 'Detection' loop, as the seed routes",
    Rule.BELOW_LABEL_THRESHOLD: "below its label's assumed threshold (Use-Label-Assumed-Thresholds true): a "
                                "'Detection' loop",
    Rule.AUDIT: "drawn at random to audit the auto-accepted detections (Maximum-Silent-Error-Rate above 0): a "
                "'Human Sampling' loop, training data only when Audit-Training-Share draws it, or when it "
                "corrects the model and Train-On-Audit-Corrections is true",
    Rule.BELOW_RAISED_THRESHOLD: "below the threshold silent-error control raised for a label whose audits "
                                 "bound its silent errors above Maximum-Silent-Error-Rate: a 'Detection' loop",
    Rule.AUTO_ACCEPTED: "at or above every threshold and not drawn for audit: no human sees it",
    Rule.REVIEW_OFF: "Enable-A2I-Workflow is false: no human sees it",
}
# The rules by name, as a type (the API's filter refuses any other name with a 422 that lists them).
RoutingRule = Literal["below-confidence", "below-label-threshold", "below-raised-threshold", "audit", "auto-accepted",
                      "review-off"]
TO_REVIEW = {Rule.BELOW_CONFIDENCE, Rule.BELOW_LABEL_THRESHOLD, Rule.BELOW_RAISED_THRESHOLD, Rule.AUDIT}


@dataclass(frozen=True)
class Audit:
    """One answered audit of a detection the version made."""

    label: str
    confidence: float
    wrong: bool
    auto_accepted: bool  # at or above the threshold in force when it was detected
    new: bool = False  # warm start: the previous version would not have auto-accepted it (the "new" stratum)


@dataclass(frozen=True)
class Warm:
    """A version's warm start (see the module's docstring): its backtest and the new stratum's share."""

    backtest: tuple[Audit, ...]  # earlier audits it did not train on, scored by it, in the known stratum
    new_accepted: int  # would-be auto-accepted detections the previous version would not have auto-accepted
    accepted: int  # would-be auto-accepted detections counted (the previous version's, scored, and its own)

    def counting(self, new: bool) -> Warm:
        """The same warm start with one more would-be auto-accepted detection counted."""
        return Warm(self.backtest, self.new_accepted + int(new), self.accepted + 1)

    def to_stored(self, previous: str) -> dict[str, Any]:
        """JSON-ready form, as stored with the version (``ModelVersion.warm_start``)."""
        return {"previous": previous, "backtest": [asdict(audit) for audit in self.backtest],
                "new_accepted": self.new_accepted, "accepted": self.accepted}

    @classmethod
    def from_stored(cls, stored: dict[str, Any]) -> Warm:
        """The warm start stored with a version (``to_stored``)."""
        return cls(tuple(Audit(**audit) for audit in stored["backtest"]), stored["new_accepted"], stored["accepted"])


@dataclass
class Bound:
    """Silent errors among audits: count, point rate and the one-sided upper bound (percent)."""

    audits: int
    wrong: int
    rate: float | None
    upper_bound: float | None

    @classmethod
    def of(cls, audits: list[Audit]) -> Bound:
        """The bound from these audits."""
        wrong = sum(audit.wrong for audit in audits)
        bound = upper_bound(wrong, len(audits))
        return cls(len(audits), wrong, round(100 * wrong / len(audits), 2) if audits else None,
                   None if bound is None else round(100 * bound, 2))


@dataclass
class Estimate:
    """A version's silent-error estimate against the target, overall and per label."""

    model_version: str | None
    target: float  # percent; 0 when silent-error control is off
    overall: Bound
    per_label: dict[str, Bound] = field(default_factory=dict)
    audits_opened: int = 0
    confidence_level: float = CONFIDENCE_LEVEL
    method: str = "exact one-sided Clopper–Pearson upper bound (beta.ppf(0.95, k + 1, n − k))"
    known: Bound | None = None  # warm start: the known stratum (backtest and its own audits there)
    new: Bound | None = None  # warm start: the new stratum (its own audits there)
    new_share: float | None = None  # warm start: the new stratum's share of would-be auto-accepted detections
    new_opened: int = 0  # warm start: audits opened in the new stratum
    backtest: int = 0  # warm start: backtest audits (they count as audits opened in the known stratum)

    @property
    def warm(self) -> bool:
        """Whether the estimate is a warm start's stratified one."""
        return self.known is not None

    @property
    def above_target(self) -> bool:
        """Whether the bound is unknown or above the target (so more goes to humans)."""
        return self.overall.upper_bound is None or self.overall.upper_bound > self.target

    @property
    def sentence(self) -> str:
        """"auto-accepted: ≤ 3.1 % wrong, 95 % confidence, from 212 audits" (or why there is none yet)."""
        if self.overall.upper_bound is None:
            return f"auto-accepted: no answered audit of {self.model_version or 'a serving version'} yet"
        backtest = " (warm start: backtest and new-stratum audits)" if self.warm else ""
        return (f"auto-accepted: ≤ {self.overall.upper_bound:.1f} % wrong, {100 * CONFIDENCE_LEVEL:g} % "
                f"confidence, from {self.overall.audits} audits{backtest}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, as the API shows it."""
        return {**asdict(self), "above_target": self.above_target, "sentence": self.sentence,
                "audit_rate": audit_rate(self)}


def upper_bound(wrong: int, audits: int, level: float = CONFIDENCE_LEVEL) -> float | None:
    """Exact one-sided Clopper–Pearson upper bound (0–1) of a rate seen ``wrong`` times in ``audits``; None
    without audits."""
    if audits <= 0:
        return None
    if wrong >= audits:
        return 1.0
    # beta.ppf(level, wrong + 1, audits - wrong), bit-identical (bench/bound_identity.py): scipy.stats took
    # ~0.6 s of every server start to import; scipy.special, a third of that, is loaded by the first bound only.
    from scipy.special import betaincinv  # at first use: not a start-up cost

    return float(betaincinv(wrong + 1, audits - wrong, level))


# The estimate's reads, built once (SQLAlchemy Core, the version bound at execution): a batch of detections reads
# them once per version, and building a statement like these cost more CPU than running it (README Performance,
# item 35).
_EVENTS = DetectionEvent.__table__
_VERSION = bindparam("version")
_OF_VERSION = _EVENTS.c.model_version == _VERSION
_FIRST_DETECTIONS = (_OF_VERSION, _EVENTS.c.status == DetectionStatus.DETECTED, _EVENTS.c.previous_event_id.is_(None))
_AUDITS = select(_EVENTS.c.label, _EVENTS.c.confidence, _EVENTS.c.threshold, _EVENTS.c.human_label,
                 _EVENTS.c.new_stratum).where(
    *_FIRST_DETECTIONS, _EVENTS.c.sampled.is_(True), _EVENTS.c.human_label.is_not(None),
    _EVENTS.c.routing_rule.in_([Rule.AUDIT, Rule.AUTO_ACCEPTED, Rule.BELOW_RAISED_THRESHOLD])).order_by(
    _EVENTS.c.human_answered_at, _EVENTS.c.id)
_AUDITS_OPENED = select(func.count(_EVENTS.c.id)).where(_OF_VERSION, _EVENTS.c.routing_rule == Rule.AUDIT)
_NEW_AUDITS_OPENED = _AUDITS_OPENED.where(_EVENTS.c.new_stratum.is_(True))
_WARM_START = select(ModelVersion.__table__.c.warm_start).where(ModelVersion.__table__.c.version == _VERSION)
_WOULD_ACCEPT = select(func.count(_EVENTS.c.id),
                       func.count(_EVENTS.c.id).filter(_EVENTS.c.new_stratum.is_(True))).where(
    *_FIRST_DETECTIONS, _EVENTS.c.threshold.is_not(None), _EVENTS.c.confidence >= _EVENTS.c.threshold)


def audits_of(version: str, *, session: Session) -> list[Audit]:
    """The answered audits of detections ``version`` made, oldest answer first (re-detections left out)."""
    rows = session.execute(_AUDITS, {"version": version})
    return [Audit(label, confidence, human != label, confidence >= (threshold or 0.0), bool(new))
            for label, confidence, threshold, human, new in rows]


def audits_opened(version: str, *, session: Session) -> int:
    """How many audits of ``version``'s detections were opened (answered or not)."""
    return session.scalar(_AUDITS_OPENED, {"version": version}) or 0


def warm_of(version: str, *, session: Session) -> Warm | None:
    """``version``'s warm start: the stored backtest and counts, plus its own would-be auto-accepted
    detections (None: a cold start)."""
    stored = session.scalar(_WARM_START, {"version": version})
    if not stored:
        return None
    warm = Warm.from_stored(stored)
    accepted, new = session.execute(_WOULD_ACCEPT, {"version": version}).one()
    return Warm(warm.backtest, warm.new_accepted + new, warm.accepted + accepted)


def new_audits_opened(version: str, *, session: Session) -> int:
    """How many audits of ``version``'s detections in the new stratum were opened (answered or not)."""
    return session.scalar(_NEW_AUDITS_OPENED, {"version": version}) or 0


@dataclass(frozen=True)
class Counts:
    """What a version's estimate is computed from: its answered audits, how many audits were opened (in the new
    stratum too) and its warm start with its would-be auto-accepted detections (None: a cold start)."""

    audits: tuple[Audit, ...]
    opened: int
    warm: Warm | None = None
    new_opened: int = 0

    def estimate(self, version: str, target: float) -> tuple[Estimate, list[Audit]]:
        """The estimate and the audits that judge it (its own; with a warm start, its backtest first)."""
        audits = list(self.audits)
        if self.warm is None:
            return estimate_from(version, target, audits, self.opened), audits
        return (estimate_from(version, target, audits, self.opened, self.warm, self.new_opened),
                [*self.warm.backtest, *audits])

    def routed(self, *, audit: bool, new: bool, accepted: bool) -> Counts:
        """The counts once one more detection of the version is routed, as reading them again would give:
        ``audit``, it opened an audit; ``new``, its stratum; ``accepted``, a would-be auto-accepted first
        arrival (confidence at or above its threshold). Answers do not come with routing: the audits stay."""
        if not audit and (self.warm is None or not accepted):
            return self  # nothing counted changed: the batch's estimate stands (it is computed again on a new object)
        warm = self.warm.counting(new) if self.warm is not None and accepted else self.warm
        return Counts(self.audits, self.opened + audit, warm, self.new_opened + (audit and new))


def counts_of(version: str, *, session: Session) -> Counts:
    """What ``version``'s estimate is computed from, read from the detections."""
    warm = warm_of(version, session=session)
    return Counts(tuple(audits_of(version, session=session)), audits_opened(version, session=session), warm,
                  new_audits_opened(version, session=session) if warm is not None else 0)


def estimate_with_audits(version: str, target: float, *, session: Session) -> tuple[Estimate, list[Audit]]:
    """The silent-error estimate of ``version`` (stratified with a warm start) and the audits that judge it
    (its own; with a warm start, its backtest first)."""
    return counts_of(version, session=session).estimate(version, target)


def estimate(version: str | None, target: float, *, session: Session) -> Estimate:
    """The silent-error estimate of ``version`` (audits of auto-accepted detections only; with a warm start,
    the stratified bound)."""
    if version is None:
        return Estimate(None, target, Bound.of([]))
    return estimate_with_audits(version, target, session=session)[0]


def estimate_from(version: str, target: float, audits: list[Audit], opened: int, warm: Warm | None = None,
                  new_opened: int = 0) -> Estimate:
    """The estimate from a version's answered ``audits`` (those of auto-accepted detections count) and the
    number of audits ``opened`` so far; with a ``warm`` start, stratified (``new_opened``: audits opened in the
    new stratum, also counted in ``opened``)."""
    accepted = [audit for audit in audits if audit.auto_accepted]
    if warm is not None:
        accepted = [audit for audit in warm.backtest if audit.auto_accepted] + accepted
    labels = sorted({audit.label for audit in accepted})
    per_label = {label: Bound.of([a for a in accepted if a.label == label]) for label in labels}
    if warm is None:
        return Estimate(version, target, Bound.of(accepted), per_label, opened)
    known, new = [a for a in accepted if not a.new], [a for a in accepted if a.new]
    rate, bound = stratified_bound(known, new, warm.new_accepted, warm.accepted)
    overall = Bound(len(accepted), sum(a.wrong for a in accepted), rate, bound)
    return Estimate(version, target, overall, per_label, opened, known=Bound.of(known), new=Bound.of(new),
                    new_share=round(warm.new_accepted / warm.accepted, 4) if warm.accepted else None,
                    new_opened=new_opened, backtest=len(warm.backtest))


def stratified_bound(known: list[Audit], new: list[Audit], new_accepted: int, accepted: int,
                     level: float = CONFIDENCE_LEVEL) -> tuple[float | None, float]:
    """Point rate and upper bound (percent) of the silent-error rate over two strata: ``known`` audits sample
    one, ``new`` audits the other, whose share of the would-be auto-accepted detections is ``new_accepted`` of
    ``accepted``. Each of the three parts is bounded at 1 − (1 − level)·its STRATA_SPLIT share, so together
    they hold at ``level``; the rate (1 − p)·r_known + p·r_new is then at most U_known + U_p·max(0, U_new −
    U_known). The point rate takes a stratum without audits as right (it is the bound that assumes nothing)."""
    miss = 1 - level
    k_known, k_new = sum(a.wrong for a in known), sum(a.wrong for a in new)
    r_known = upper_bound(k_known, len(known), 1 - miss * STRATA_SPLIT[0])
    r_new = upper_bound(k_new, len(new), 1 - miss * STRATA_SPLIT[1])
    share = upper_bound(new_accepted, accepted, 1 - miss * STRATA_SPLIT[2])
    r_known, r_new, share = (1.0 if r is None else r for r in (r_known, r_new, share))
    bound = r_known + share * max(0.0, r_new - r_known)
    rate = None
    if (known or new) and accepted:
        p = new_accepted / accepted
        rate = round(100 * ((1 - p) * (k_known / len(known) if known else 0.0)
                            + p * (k_new / len(new) if new else 0.0)), 2)
    return rate, round(100 * min(1.0, bound), 2)


def history(version: str, *, session: Session) -> list[dict[str, Any]]:
    """The bound after each answered audit of auto-accepted detections, oldest first (for the plot); with a
    warm start the stratified one (the backtest first, the share as counted now)."""
    accepted = [audit for audit in audits_of(version, session=session) if audit.auto_accepted]
    warm = warm_of(version, session=session)
    strata: tuple[list[Audit], list[Audit]] = ([a for a in warm.backtest if a.auto_accepted] if warm else [], [])
    points, wrong = [], 0
    for n, audit in enumerate(accepted, start=1):
        wrong += audit.wrong
        if warm is None:
            bound = round(100 * upper_bound(wrong, n), 2)
        else:
            strata[audit.new].append(audit)  # (known, new)[its stratum]
            bound = stratified_bound(*strata, warm.new_accepted, warm.accepted)[1]
        points.append({"audits": n, "wrong": wrong, "upper_bound": bound})
    return points


def audit_rate(found: Estimate, new: bool = False) -> float:
    """The share of would-be auto-accepted detections to audit now (0 while the target is off). With a warm
    start, per stratum (``new``: the previous version would not have auto-accepted it): the known stratum's
    backtest counts as audits opened, and it stays at the steady rate while its own bound meets the target."""
    if found.target <= 0:
        return 0.0
    if not found.above_target:
        return STEADY_RATE
    opened = found.audits_opened
    if found.warm and new:
        opened = found.new_opened
    elif found.warm:
        assert found.known is not None
        if found.known.upper_bound is not None and found.known.upper_bound <= found.target:
            return STEADY_RATE
        opened = found.backtest + found.audits_opened - found.new_opened
    return max(MINIMUM_RATE_ABOVE_TARGET, min(1.0, COLD_AUDITS / (opened + 1)))


def raised_threshold(label: str | None, audits: list[Audit], target: float) -> float | None:
    """The confidence (0–100) below which ``label``'s detections go to review because its audits bound the
    silent-error rate above ``target``; None when they do not (or too few audits to say). ``label`` None: every
    label's audits pooled."""
    mine = sorted((a for a in audits if label is None or a.label == label), key=lambda a: -a.confidence)
    if len(mine) < MIN_AUDITS_TO_RAISE or not any(a.wrong for a in mine):
        return None
    if 100 * upper_bound(sum(a.wrong for a in mine), len(mine)) <= target:
        return None
    wrong, candidates = 0, []
    for n, audit in enumerate(mine, start=1):  # most confident first: each cut keeps audits ≥ its confidence
        wrong += audit.wrong
        if 100 * upper_bound(wrong, n) <= target:
            candidates.append(audit.confidence)
    if candidates:
        return min(candidates)
    return min(100.0, max(a.confidence for a in mine if a.wrong) + 0.01)


def draw(request_id: str) -> float:
    """A number in [0, 1) fixed by the request id: whether a detection is audited does not change on retry."""
    return int.from_bytes(hashlib.sha256(request_id.encode()).digest()[:8], "big") / 2 ** 64


def audit_trains(request_id: str, share: float) -> bool:
    """Whether the answer to the audit of detection ``request_id`` becomes training data when ``share`` (0–1)
    of audit answers do. Drawn by a hash of the request id (salted, so independent of the audit's own draw),
    never by the answer: the audits left out of the training data are a random part of all audits, and a
    backtest that leaves out those a version trained on stays an unbiased sample."""
    return share > 0 and draw(f"training:{request_id}") < share


@dataclass(frozen=True)
class Route:
    """The routing decision of one detection: the rule, the threshold in force (0–100) and why, in words."""

    rule: str
    threshold: float
    reason: str

    @property
    def to_review(self) -> bool:
        """Whether a human sees it."""
        return self.rule in TO_REVIEW


def audit_share(rate: float) -> str:
    """An audit rate in words: "1 in 1" (every one), "80 %" above one in two, else "1 in N" (N rounded)."""
    if rate >= 0.995:
        return "1 in 1"
    if rate > 0.5:
        return f"{rate * 100:.0f} % of confident detections"
    return f"1 in {1 / rate:.0f}"


def route(label: str, confidence: float, request_id: str, *, base: float, base_name: str, review: bool,
          found: Estimate, audits: list[Audit], new: bool = False, weight: float = 1.0) -> Route:
    """Decide who sees a detection: ``base`` is the threshold of the seed's rule (or the label's assumed
    threshold, named ``base_name``), ``found`` the serving version's estimate and ``audits`` its audits (with a
    warm start, its backtest too); ``new``: with a warm start, the previous version would not have
    auto-accepted this image; ``weight`` multiplies its audit rate (1 in the server; the loop simulation's
    importance-weighted trial draws confident detections less often than unsure ones)."""
    if not review:
        return Route(Rule.REVIEW_OFF, base, "Enable-A2I-Workflow is false: no detection goes to human review")
    if confidence < base:
        rule = Rule.BELOW_CONFIDENCE if base_name == MINIMUM_CONFIDENCE else Rule.BELOW_LABEL_THRESHOLD
        return Route(rule, base, f"confidence {confidence:.1f} is below {base_name} {base:g}")
    raised = raised_threshold(label, audits, found.target) if found.target > 0 else None
    if VERSION_WIDE and found.target > 0:
        raised = max(raised or 0.0, raised_threshold(None, audits, found.target) or 0.0) or None
    threshold = max(base, raised or 0.0)
    rate = min(1.0, audit_rate(found, new) * weight)
    if draw(request_id) < rate:
        stratum = " (new to this version: the previous one was not confident)" if found.warm and new else ""
        of = f" of {found.model_version}" if found.overall.upper_bound is not None else ""  # else the sentence names it
        return Route(Rule.AUDIT, threshold, f"audited ({audit_share(rate)}){stratum}: {found.sentence}{of}, "
                     f"target {found.target:g} %")
    if confidence < threshold:
        bound = found.per_label.get(label)
        shown = f"≤ {bound.upper_bound:.1f} % wrong from {bound.audits} audits" if bound and bound.audits else \
            "audits found it wrong"
        return Route(Rule.BELOW_RAISED_THRESHOLD, threshold,
                     f"confidence {confidence:.1f} is below {threshold:.1f}, the threshold silent-error control "
                     f"set for {label} ({shown}; target {found.target:g} %)")
    return Route(Rule.AUTO_ACCEPTED, threshold, f"confidence {confidence:.1f} is at or above {threshold:g}")
