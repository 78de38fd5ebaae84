"""Silent-error control on real photographs: the seed's fixed rule against Maximum-Silent-Error-Rate 5 % and 2 %.

    .venv/bin/python -m bench.loop_simulation.silent [--task scenes|logos|objects] [--seeds 0 1 2] \
        [--batch-size 100] [--publish]

Data (--task): the real-image benchmark's **scenes** task (bench/real_images: crops of 18 real photographs, one label
each; the test crops come from the part of each photo no training crop touches) with its **open set** (crops of
photographs never trained on, about a tenth of the stream: whatever label the model gives them is wrong), or
its **logos** (21 applications' icons as drawn by different themes; open set: 240 applications never trained
on) or **objects** (Tux Paint's photo stamps, 5 labels; open set: other kinds of things). v1 is
trained on 2 crops per label; the rest of the training pool and the open set arrive in seeded random order, in
batches. The held-out test crops score macro-F1.

It runs in one process, as `offline.py` does: `train_head` trains each version (the product's defaults:
balanced labels, final model on all images) and `Head.predict_proba` gives the detections' confidences, on
embeddings from the product's backbone; **every routing decision is `labelloop.detection.silent_errors.route`**,
the function the server's detection step calls, with the audits of the serving version as the server would
have them (`estimate_from`, `raised_threshold`, `audit_rate`). The simulated reviewer answers every loop
truthfully (None of the Above for an open-set image). Detection loops' answers become training data; audit
answers do not, except in the arms whose audits train (ARMS: "split" is the server's Audit-Training-Share,
--train-share of them drawn by `silent_errors.audit_trains`; "corrections" is Train-On-Audit-Corrections).
Learn-From-None-Of-The-Above is on, as the server's default (--ignore-none-of-the-above: the seed's behaviour):
a None of the Above answer that becomes training data trains the hidden class (`World.train`, as
`negatives.py`). A new version trains after a batch that brought ≥ Minimum-Untrained-Images (10) new trainable
images (audit answers that train count, as the server's training check counts them, except in the "ride"
arms); a backtest of fewer than 20 audits starts cold, as in the server.

Per arm, per version: detections, the true silent-error rate of the auto-accepted ones, the bound labelloop
showed at the end of the version (from its answered audits), whether the bound covered the truth (the true
rate of the detections that were auto-accepted or would have been: audited ones included), the share sent to
humans, human answers so far (labels plus audits) and held-out macro-F1; and where its human answers went, by
kind (KINDS: "Detection" loops, raised-threshold loops, audits by the rate that drew them), with the macro-F1 of
the same version trained on the "Detection" loops' answers alone (the table's second part: in all, and before
the version that reached the fixed rule's macro-F1). The "oracle" arms are measurements, not policies: every
audit trains and still judges later versions (the most audits that train can do for macro-F1). Outputs:
bench/out/loop_simulation/silent-TASK.{json,md,svg}; --publish copies the table and plot to
docs/silent_errors_TASK.{md,svg}.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from bench.real_images.data import Item, logo_task, object_task, scene_task
from sklearn.metrics import f1_score

from labelloop.detection import silent_errors as silent
from labelloop.modeling.embedding import Embedder, EmbeddingCache, embed_cached
from labelloop.modeling.export import ensure_backbone_onnx
from labelloop.modeling.images import content_hash
from labelloop.modeling.training import NEGATIVE_LABEL, Head, LabeledImage, train_head
from labelloop.web import plots

from .run import DOCS, OUT

THRESHOLD = 70.0  # Minimum-Label-Detection-Confidence, the seed's default
MIN_UNTRAINED = 10  # Minimum-Untrained-Images, the seed's default
# Audits that also train (Audit-Training-Share): "split" makes the audits a hash draws (the share
# --train-share) training data at once and keeps the others out of it for ever (the estimates and backtests);
# "lag" makes a version's audits training data once the next version is deployed (after its backtest is built).
# "ride": audit answers train but do not count towards Minimum-Untrained-Images (they never start a training
# by themselves, so a version is retrained when the fixed rule's would be: on the labels of Detection loops).
# "corrections": the audit answers that disagree with the model train (Train-On-Audit-Corrections); a later
# version's backtest counts those it trained on as silent errors, as the server's does.
ARMS = {"fixed rule": (0.0, False, None), "target 5 %": (5.0, False, None), "target 2 %": (2.0, False, None),
        "target 5 %, warm start": (5.0, True, None), "target 2 %, warm start": (2.0, True, None),
        "target 5 %, warm, audits train (split)": (5.0, True, "split"),
        "target 5 %, warm, audits train (lag)": (5.0, True, "lag"),
        "target 2 %, warm, audits train (split)": (2.0, True, "split"),
        "target 5 %, warm, audits ride (split)": (5.0, True, "split ride"),
        "target 5 %, warm, audits ride (lag)": (5.0, True, "lag ride"),
        "target 2 %, warm, audits ride (split)": (2.0, True, "split ride"),
        "target 5 %, warm, corrections train": (5.0, True, "corrections"),
        "target 5 %, warm, audits train (split) and corrections": (5.0, True, "split corrections"),
        # A measurement, not a policy: every audit trains and still judges later versions (their backtests keep
        # it as if untrained, so the bound is not valid): the most training audits can do for macro-F1.
        "target 5 %, warm, every audit trains (oracle)": (5.0, True, "oracle"),
        # The same with audits drawn more often the less confident the detection (``audit_weight``).
        "target 5 %, warm, every audit trains, unsure drawn more (oracle)": (5.0, True, "oracle weighted"),
        }  # target, warm start, audit training
DEFAULT_ARMS = ["fixed rule", "target 5 %", "target 2 %", "target 5 %, warm start", "target 2 %, warm start",
                "target 5 %, warm, audits train (split)", "target 2 %, warm, audits train (split)"]
CHARTED = ("fixed rule", "target 5 %", "target 5 %, warm start")  # the plot's lines (all five crowd it)
TASKS = {"scenes": scene_task, "logos": logo_task, "objects": object_task}
NONE_OF_THE_ABOVE = "None of the Above"


@dataclass
class World:
    """The scenes task with an embedding per image."""

    labels: list[str]
    pool: list[Item]
    holdout: list[Item]
    open_set: list[Item]
    embedder: Embedder
    cache: EmbeddingCache
    vectors: dict[str, np.ndarray] = field(default_factory=dict)
    digests: dict[str, str] = field(default_factory=dict)

    def x(self, items: list[Item]) -> np.ndarray:
        return np.stack([self.vectors[item.key] for item in items])

    def train(self, labeled: list[Item], seed: int, negatives: list[Item] | None = None) -> Head:
        """A version trained on the labeled images and, as the hidden class (Learn-From-None-Of-The-Above), the
        None of the Above ones (``negatives``), with the product's defaults."""
        examples = [LabeledImage(f"images_labeled_by_folder/{i.label}/{i.key.replace('/', '_')}", i.label,
                                 i.load, self.digests[i.key]) for i in labeled]
        examples += [LabeledImage(f"images_none_of_the_above/{i.key.replace('/', '_')}", NEGATIVE_LABEL, i.load,
                                  self.digests[i.key]) for i in negatives or []]
        return train_head(examples, self.embedder, self.cache, seed=seed, balance_labels=True,
                          final_on_all=True).head

    def first_labeled(self, rng: np.random.Generator, per_label: int = 2) -> tuple[list[Item], list[Item]]:
        """v1's training images (``per_label`` of each label, drawn by ``rng``) and the rest of the pool."""
        by_label: dict[str, list[Item]] = {}
        for item in self.pool:
            by_label.setdefault(item.label, []).append(item)
        first = [by_label[label][i] for label in self.labels
                 for i in rng.permutation(len(by_label[label]))[:per_label]]
        keys = {item.key for item in first}
        return first, [item for item in self.pool if item.key not in keys]

    def macro_f1(self, head: Head) -> float:
        predicted = [head.labels[i] for i in head.predict_proba(self.x(self.holdout)).argmax(1)]
        return float(f1_score([i.label for i in self.holdout], predicted, average="macro"))


def world(name: str) -> World:
    task = TASKS[name](0)
    embedder = Embedder(ensure_backbone_onnx(OUT / "cache"))
    cache = EmbeddingCache.for_embedder(OUT / "offline-embeddings", embedder)
    pool = [item for label in task.labels for item in task.pool[label]]
    found = World(task.labels, pool, task.test, task.open, embedder, cache)
    items = pool + task.test + task.open
    started = time.perf_counter()
    sources = {}
    for item in items:
        data = item.load()
        found.digests[item.key] = content_hash(data)
        sources[found.digests[item.key]] = data
    got = embed_cached(embedder, cache, sources)
    found.vectors = {item.key: got.get(found.digests[item.key]) for item in items}
    print(f"{name}: {len(pool)} pool, {len(task.test)} held out, {len(task.open)} open-set crops embedded in "
          f"{time.perf_counter() - started:.0f} s", flush=True)
    return found


@dataclass
class Version:
    """One version's life in one arm."""

    arm: str
    seed: int
    version: int
    macro_f1: float
    human_answers_before: int  # labels + audits answered before it served
    detections: int = 0
    auto_accepted: int = 0
    silent_errors: int = 0
    would_accept: int = 0  # auto-accepted or audited at or above the threshold in force
    would_accept_wrong: int = 0
    to_humans: int = 0
    audits: int = 0
    labels_given: int = 0
    bound: float | None = None  # percent, the bound shown at the end of the version
    warm: bool = False  # started warm (a backtest and a stratified bound) rather than cold
    backtest: int = 0  # backtest audits it started with
    new_share: float | None = None  # its would-be auto-accepted detections the previous version was unsure of
    # Where its human answers went, by kind (KINDS): "Detection" loops below the base threshold, loops below a
    # raised threshold, and audits by the rate that drew them (1: the cold start; above the steady rate while
    # the bound is above the target; the steady rate once it meets it).
    detection_loops: int = 0
    raised_loops: int = 0
    cold_audits: int = 0
    decay_audits: int = 0
    steady_audits: int = 0
    f1_labels_only: float | None = None  # macro-F1 trained on the "Detection" loops' answers alone (None: the same)

    @property
    def true_rate(self) -> float | None:
        return 100 * self.silent_errors / self.auto_accepted if self.auto_accepted else None

    @property
    def covered(self) -> bool | None:
        if self.bound is None or not self.would_accept:
            return None
        return self.bound >= 100 * self.would_accept_wrong / self.would_accept

    def row(self) -> dict[str, Any]:
        return {**asdict(self), "true_rate": self.true_rate, "covered": self.covered,
                "human_share": self.to_humans / self.detections if self.detections else None}


@dataclass
class Stream:
    """What an arm knows as versions replace each other: the audited images (their answers known) and the
    serving version's detections (for the next version's warm start)."""

    audited: list[Item] = field(default_factory=list)
    window: list[tuple[Item, bool]] = field(default_factory=list)  # (image, the serving version was confident)


@dataclass
class Answers:
    """The training data human answers made, as the server keeps it: a label's images, and with
    Learn-From-None-Of-The-Above (``learn``) the None of the Above ones as the hidden class; ``drawn``: audited
    images that train because a hash drew them (Audit-Training-Share, or the "lag" arms), left out of backtests;
    an audited image that trains for another reason (a correction) counts there as a silent error."""

    known: set[str]
    labeled: list[Item]
    learn: bool = True
    negatives: list[Item] = field(default_factory=list)
    drawn: set[str] = field(default_factory=set)
    extra: set[str] = field(default_factory=set)  # from audits or raised-threshold loops, not "Detection" loops
    oracle: set[str] = field(default_factory=set)  # "oracle" arms: audits that train yet stay in backtests

    def add(self, item: Item) -> bool:
        """Put a truthful answer's image where the server would; whether it became training data."""
        if item.label in self.known:
            self.labeled.append(item)
            return True
        if self.learn:  # an open-set image: the answer is None of the Above
            self.negatives.append(item)
            return True
        return False

    @property
    def trained(self) -> set[str]:
        """The keys of every training image (labels and hidden class)."""
        return {item.key for item in [*self.labeled, *self.negatives]}

    def without_extra(self) -> tuple[list[Item], list[Item]]:
        """The training data of "Detection" loops alone (labels, hidden class): what the fixed rule's answers
        would have made of the same stream."""
        return ([i for i in self.labeled if i.key not in self.extra],
                [i for i in self.negatives if i.key not in self.extra])


def warm_start(w: World, head: Head, previous: Head, stream: Stream, answers: Answers) -> silent.Warm | None:
    """The backtest of ``head`` replacing ``previous``: the earlier audits it did not train on, scored by it,
    that both would auto-accept (one it trained on as a correction counts as wrong, one a draw made training
    data is left out, as the server's ``detection.warm_start.backtest_of``); and the new stratum's share counted
    on ``previous``'s detections. None (a cold start) for a backtest of fewer than COLD_AUDITS audits, as the
    server's ``detection.warm_start.store``."""
    backtest: list[silent.Audit] = []
    trained = answers.trained - answers.oracle  # an oracle arm's audits judge as if it never trained on them
    usable = [item for item in stream.audited if item.key not in trained or item.key not in answers.drawn]
    if usable:
        before, after = previous.predict_proba(w.x(usable)), head.predict_proba(w.x(usable))
        for item, old, p in zip(usable, before, after, strict=True):
            label, confidence = head.labels[int(p.argmax())], float(100 * p.max())
            if 100 * old.max() < THRESHOLD:
                continue
            if item.key in trained:  # a correction it trained on: the worst case
                backtest.append(silent.Audit(label, confidence, True, True))
            else:
                backtest.append(silent.Audit(label, confidence, item.label != label, confidence >= THRESHOLD))
    # A window image it trained on reads more confident than it would: counted only where that errs high.
    window = [(item, sure) for item, sure in stream.window if not (sure and item.key in trained)]
    new = accepted = 0
    if window:
        for (_, sure), p in zip(window, head.predict_proba(w.x([item for item, _ in window])), strict=True):
            if 100 * p.max() >= THRESHOLD:
                accepted += 1
                new += not sure
    return silent.Warm(tuple(backtest), new, accepted) if len(backtest) >= silent.COLD_AUDITS else None


def trains(scheme: str | None, request_id: str, share: float) -> bool:
    """Whether an audit's answer becomes training data at once (``split``: drawn by a hash of its id, as
    ``silent_errors.audit_trains`` draws it in the server)."""
    return scheme is not None and scheme.startswith("split") and silent.audit_trains(request_id, share)


def run_arm(w: World, arm: str, target: float, seed: int, batch_size: int, warm_start_on: bool = False,
            audit_training: str | None = None, share: float = 0.5, learn: bool = True) -> list[Version]:
    """One arm over one seeded stream: the versions it served (``audit_training``: None, "split", "lag" or
    "corrections", see ARMS; ``learn``: Learn-From-None-Of-The-Above)."""
    rng = np.random.default_rng(seed)
    labeled, rest = w.first_labeled(rng)
    rest = rest + w.open_set
    stream = [rest[i] for i in rng.permutation(len(rest))]
    taught = Answers(set(w.labels), labeled, learn)
    head, answers, untrained = w.train(labeled, seed), 0, 0
    previous: Head | None = None
    versions = [Version(arm, seed, 1, w.macro_f1(head), 0)]
    audits: list[silent.Audit] = []
    seen, warm, new_opened = Stream(), None, 0
    pending: list[Item] = []  # "lag": this version's answered audits, training data once the next one deploys
    rides = bool(audit_training and audit_training.endswith("ride"))
    for start in range(0, len(stream), batch_size):
        batch = stream[start:start + batch_size]
        current = versions[-1]
        proba = head.predict_proba(w.x(batch))
        before = previous.predict_proba(w.x(batch)).max(1) if warm is not None else np.ones(len(batch))
        for item, p, old in zip(batch, proba, before, strict=True):
            label, confidence = head.labels[int(p.argmax())], float(100 * p.max())
            new = warm is not None and 100 * old < THRESHOLD
            found = silent.estimate_from(f"v{current.version}", target, audits, current.audits, warm, new_opened)
            request_id = f"{seed}-{arm}-{item.key}"
            routed = silent.route(label, confidence, request_id, base=THRESHOLD,
                                  base_name=silent.MINIMUM_CONFIDENCE, review=True, found=found,
                                  audits=[*warm.backtest, *audits] if warm else audits, new=new,
                                  weight=audit_weight(confidence) if "weighted" in (audit_training or "") else 1.0)
            wrong = item.label != label  # an open-set crop is always wrong
            current.detections += 1
            seen.window.append((item, confidence >= THRESHOLD))
            if warm is not None and confidence >= THRESHOLD:
                warm = warm.counting(new)
            if routed.to_review:
                current.to_humans += 1
                answers += 1
            tally(current, routed.rule, silent.audit_rate(found, new))
            if routed.rule == silent.Rule.AUDIT:
                current.audits += 1
                new_opened += new
                seen.audited.append(item)
                audits.append(silent.Audit(label, confidence, wrong, confidence >= routed.threshold, new))
                drawn = trains(audit_training, request_id, share)
                oracle = (audit_training or "").startswith("oracle")
                if drawn or oracle or (wrong and "corrections" in (audit_training or "")):  # corrections: T-O-A-C
                    taught.drawn |= {item.key} if drawn else set()
                    taught.oracle |= {item.key} if oracle else set()
                    taught.extra.add(item.key)
                    untrained += taught.add(item) and not rides
                elif audit_training and audit_training.startswith("lag"):
                    pending.append(item)
                    taught.drawn.add(item.key)
                    taught.extra.add(item.key)
            elif routed.to_review:
                current.labels_given += item.label in taught.known
                if routed.rule == silent.Rule.BELOW_RAISED_THRESHOLD:
                    taught.extra.add(item.key)
                untrained += taught.add(item)
            if routed.rule == silent.Rule.AUTO_ACCEPTED:
                current.auto_accepted += 1
                current.silent_errors += wrong
            if routed.rule == silent.Rule.AUTO_ACCEPTED or (routed.rule == silent.Rule.AUDIT
                                                            and confidence >= routed.threshold):
                current.would_accept += 1
                current.would_accept_wrong += wrong
        ended = silent.estimate_from("v", target, audits, current.audits, warm, new_opened)
        current.bound, current.new_share = ended.overall.upper_bound, ended.new_share
        if untrained >= MIN_UNTRAINED:
            previous, untrained, audits, new_opened = head, 0, [], 0
            head = w.train(taught.labeled, seed, taught.negatives)
            warm = warm_start(w, head, previous, seen, taught) if warm_start_on else None
            seen.window = []
            untrained += sum(taught.add(item) for item in pending) * (not rides)
            pending = []
            versions.append(Version(arm, seed, current.version + 1, w.macro_f1(head), answers, warm=warm is not None,
                                    backtest=len(warm.backtest) if warm else 0))
            if taught.extra & taught.trained:  # what the same version would score on "Detection" answers alone
                labels_only, negatives_only = taught.without_extra()
                versions[-1].f1_labels_only = w.macro_f1(w.train(labels_only, seed, negatives_only))
    return versions


def audit_weight(confidence: float) -> float:
    """The "weighted" arms' audit rate multiplier: 2 at the threshold, 1 half-way to 100, 0.1 near 100."""
    return max(0.1, 2 * (100 - confidence) / (100 - THRESHOLD))


def tally(version: Version, rule: str, rate: float) -> None:
    """Count a human answer by its kind (see ``Version``); ``rate``: the audit rate in force for it."""
    if rule == silent.Rule.BELOW_CONFIDENCE:
        version.detection_loops += 1
    elif rule == silent.Rule.BELOW_RAISED_THRESHOLD:
        version.raised_loops += 1
    elif rule == silent.Rule.AUDIT and rate >= 1.0:
        version.cold_audits += 1
    elif rule == silent.Rule.AUDIT and rate > silent.STEADY_RATE:
        version.decay_audits += 1
    elif rule == silent.Rule.AUDIT:
        version.steady_audits += 1


F1_TOLERANCE = 0.005  # "the same macro-F1": within this of the fixed rule's final one (one test crop ≈ 0.003)


KINDS = ("detection_loops", "raised_loops", "cold_audits", "decay_audits", "steady_audits")  # Version's tallies


def reaching(rows: list[dict[str, Any]], arm: str, seed: int) -> dict[str, Any] | None:
    """``arm``'s first version whose macro-F1 is the fixed rule's final one on the same seed (within
    F1_TOLERANCE); None without a fixed-rule run or when it never gets there."""
    fixed = [r for r in rows if r["arm"] == "fixed rule" and r["seed"] == seed]
    if not fixed:
        return None
    goal = max(fixed, key=lambda r: r["version"])["macro_f1"] - F1_TOLERANCE
    reached = [r for r in rows if r["arm"] == arm and r["seed"] == seed and r["macro_f1"] >= goal]
    return min(reached, key=lambda r: r["version"]) if reached else None


def answers_to_reach(rows: list[dict[str, Any]], arm: str, seed: int) -> int | None:
    """Human answers ``arm`` spent before its first version whose macro-F1 is the fixed rule's final one on the
    same seed (within F1_TOLERANCE); None without a fixed-rule run or when it never gets there."""
    found = reaching(rows, arm, seed)
    return found["human_answers_before"] if found else None


def kinds_to_reach(rows: list[dict[str, Any]], arm: str, seed: int) -> dict[str, int] | None:
    """The answers of ``answers_to_reach`` by kind (KINDS), and the reaching version's macro-F1 trained on the
    "Detection" loops' answers alone (``f1_labels_only``, its own where nothing else trained)."""
    found = reaching(rows, arm, seed)
    if found is None:
        return None
    before = [r for r in rows if r["arm"] == arm and r["seed"] == seed and r["version"] < found["version"]]
    return {**{kind: sum(r.get(kind, 0) for r in before) for kind in KINDS}, "version": found["version"],
            "macro_f1": found["macro_f1"], "f1_labels_only": found.get("f1_labels_only") or found["macro_f1"]}


def f1_at_fixed_cost(rows: list[dict[str, Any]], arm: str, seed: int) -> float | None:
    """The macro-F1 ``arm`` served with once it had spent as many human answers as the fixed rule spent in all on
    the same seed (its last version started by then); None without a fixed-rule run."""
    fixed = [r for r in rows if r["arm"] == "fixed rule" and r["seed"] == seed]
    if not fixed:
        return None
    spent = sum(r["to_humans"] for r in fixed)
    started = [r for r in rows if r["arm"] == arm and r["seed"] == seed and r["human_answers_before"] <= spent]
    return max(started, key=lambda r: r["version"])["macro_f1"]


def summary(rows: list[dict[str, Any]], arm: str) -> dict[str, Any]:
    """One arm over every seed: totals and medians."""
    mine = [r for r in rows if r["arm"] == arm]
    seeds = sorted({r["seed"] for r in mine})
    reach = [answers_to_reach(rows, arm, s) for s in seeds]
    reached = [r for r in reach if r is not None]

    def per_seed(key: str) -> list[float]:
        return [sum(r[key] for r in mine if r["seed"] == s) for s in seeds]

    auto, wrong = per_seed("auto_accepted"), per_seed("silent_errors")
    rates = [100 * w / a if a else 0.0 for w, a in zip(wrong, auto, strict=True)]
    detections, humans = per_seed("detections"), per_seed("to_humans")
    cold_done = [r for r in mine if r["audits"] >= silent.COLD_AUDITS or r.get("warm")]
    judged = [r["covered"] for r in mine if r["covered"] is not None]
    last = [max((r for r in mine if r["seed"] == s), key=lambda r: r["version"]) for s in seeds]
    return {"arm": arm, "seeds": len(seeds), "versions": float(np.median([len([r for r in mine if r["seed"] == s])
                                                                          for s in seeds])),
            "true_rate": float(np.median(rates)), "auto_accepted": sum(auto),
            "true_rate_after_cold": (100 * sum(r["silent_errors"] for r in cold_done)
                                     / max(1, sum(r["auto_accepted"] for r in cold_done))) if cold_done else None,
            "human_share": float(np.median([h / d for h, d in zip(humans, detections, strict=True)])),
            "human_answers": float(np.median(humans)), "human_answers_range": [min(humans), max(humans)],
            "answers_to_fixed_f1_range": [min(reached), max(reached)] if reached else None,
            "true_rate_range": [min(rates), max(rates)],
            "answers_to_fixed_f1": float(np.median([r for r in reach if r is not None]))
            if any(r is not None for r in reach) else None,
            "reached_fixed_f1": sum(r is not None for r in reach),
            "f1_at_fixed_cost": float(np.median(at)) if (at := [f for s in seeds
                                                              if (f := f1_at_fixed_cost(rows, arm, s)) is not None])
            else None,
            "final_macro_f1": float(np.median([r["macro_f1"] for r in last])),
            "to_reach_by_kind": {key: float(np.median([k[key] for k in by_kind])) for key in by_kind[0]}
            if (by_kind := [k for s in seeds if (k := kinds_to_reach(rows, arm, s))]) else None,
            "by_kind": {kind: float(np.median(per_seed(kind))) if all(kind in r for r in mine) else None
                        for kind in KINDS},
            "coverage": float(np.mean(judged)) if judged else None, "covered_versions": len(judged),
            "last_bound": float(np.median([r["bound"] for r in last if r["bound"] is not None]))
            if any(r["bound"] is not None for r in last) else None}


def _fmt(value: Any, pattern: str) -> str:
    return "—" if value is None else pattern.format(value)


def _range(pair: list[float] | None, pattern: str = "{:.0f}") -> str:
    return "—" if pair is None else f"{pattern.format(pair[0])}–{pattern.format(pair[1])}"


def table(result: dict[str, Any]) -> str:
    nota = "on" if result.get("learn_from_none_of_the_above", True) else "off"
    lines = [f"{result['task']} task ({result['open_share']:.0%} of the stream open-set), threshold 70, seeds "
             f"{result['seeds']}, batch {result['batch_size']}, Learn-From-None-Of-The-Above {nota}; medians over "
             "seeds, (min–max) over seeds.", "",
             "| rule | true silent-error rate of auto-accepted | after cold start (pooled) "
             "| bound shown, last version | bound covers truth (versions) | sent to humans | human answers "
             "| answers to reach the fixed rule's macro-F1 (seeds that did) | macro-F1 at the fixed rule's answers "
             "| final macro-F1 | versions |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in result["summary"]:
        rate = f"{s['true_rate']:.1f} % ({_range(s.get('true_rate_range'), '{:.1f}')})" if s.get(
            "auto_accepted", 1) else "— (none auto-accepted)"
        lines.append(f"| {s['arm']} | {rate} "
                     f"| {_fmt(s['true_rate_after_cold'], '{:.1f} %')} | {_fmt(s['last_bound'], '≤ {:.1f} %')} "
                     f"| {_fmt(s['coverage'], '{:.0%}')} ({s['covered_versions']}) | {s['human_share']:.0%} "
                     f"| {s['human_answers']:.0f} ({_range(s.get('human_answers_range'))}) "
                     f"| {_fmt(s['answers_to_fixed_f1'], '{:.0f}')} ({_range(s.get('answers_to_fixed_f1_range'))}; "
                     f"{s['reached_fixed_f1']} of {s['seeds']}) | {_fmt(s.get('f1_at_fixed_cost'), '{:.3f}')} "
                     f"| {s['final_macro_f1']:.3f} | {s['versions']:.0f} |")
    return "\n".join(lines) + "\n" + kinds_table(result)


def kinds_table(result: dict[str, Any]) -> str:
    """Where each arm's human answers went (KINDS), in all and before it reached the fixed rule's macro-F1."""
    rows = [s for s in result["summary"] if s.get("to_reach_by_kind")]
    if not rows:
        return ""
    names = ("Detection loops", "raised-threshold loops", "cold-start audits (rate 1)",
             "audits above target (rate < 1)", "steady audits (1 in 50)")
    lines = ["", "Where the answers went (medians over seeds of each count; in all / before the version that reached "
             "the fixed rule's macro-F1), and that version's macro-F1 against the same version trained on its "
             "\"Detection\" loops' answers alone.", "",
             f"| rule | {' | '.join(names)} | reached at version | macro-F1 there (Detection answers alone) |",
             "|---|" + "---|" * (len(names) + 2)]
    for s in rows:
        reach, total = s["to_reach_by_kind"], s["by_kind"]
        cells = [f"{_fmt(total.get(kind), '{:.0f}')} / {reach[kind]:.0f}" for kind in KINDS]
        lines.append(f"| {s['arm']} | {' | '.join(cells)} | {reach['version']:.0f} "
                     f"| {reach['macro_f1']:.3f} ({reach['f1_labels_only']:.3f}) |")
    return "\n".join(lines) + "\n"


def chart(rows: list[dict[str, Any]], seed: int) -> str:
    """True silent-error rate of each version's auto-accepted detections, per arm, for one seed."""
    mine = [r for r in rows if r["seed"] == seed]
    count = max(r["version"] for r in mine)
    arms = [arm for arm in CHARTED if any(r["arm"] == arm for r in mine)] or \
        [arm for arm in ARMS if any(r["arm"] == arm for r in mine)]
    def by_version(arm: str, key: str) -> list[float | None]:
        return [next((r[key] for r in mine if r["arm"] == arm and r["version"] == v), None)
                for v in range(1, count + 1)]

    series = [(arm, by_version(arm, "true_rate")) for arm in arms]
    series += [(f"bound, {arm.replace('target ', '').replace(', warm start', ' warm')}", by_version(arm, "bound"))
               for arm in arms if ARMS[arm][0]]
    return str(plots.line_chart([f"v{v}" for v in range(1, count + 1)], series,
                                label=f"True silent-error rate of auto-accepted detections by version (seed {seed})",
                                y_min=0, y_format="{:.0f}", y_title="% wrong", reference=(5.0, "5 %"),
                                value_format="{:.1f} %", width=900))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--task", choices=sorted(TASKS), default="scenes")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=DEFAULT_ARMS)
    parser.add_argument("--train-share", type=float, default=silent.AUDIT_TRAINING_SHARE,
                        help="audits that train (split arms): the share of audit answers that become training data")
    parser.add_argument("--cold-audits", type=int, default=silent.COLD_AUDITS,
                        help="audit policy under trial: a new version's audits at rate 1")
    parser.add_argument("--floor", type=float, default=silent.MINIMUM_RATE_ABOVE_TARGET,
                        help="audit policy under trial: the lowest audit rate while the bound is above the target")
    parser.add_argument("--split", type=float, nargs=3, default=silent.STRATA_SPLIT,
                        help="warm start under trial: shares of the bound's 5 %% (known, new, share)")
    parser.add_argument("--ignore-none-of-the-above", action="store_true",
                        help="Learn-From-None-Of-The-Above off (the seed's behaviour): None of the Above answers "
                             "never train; on by default, as in the server")
    parser.add_argument("--tag", default="", help="appended to the output files' names (runs side by side)")
    parser.add_argument("--version-wide", action="store_true")
    parser.add_argument("--combine", nargs="+", metavar="JSON",
                        help="run nothing: merge these outputs (the same task and policy, other seeds, e.g. one "
                             "process per seed side by side) into one table and plot")
    parser.add_argument("--publish", action="store_true")
    args = parser.parse_args()
    if args.combine:
        result = combined(args.combine)
        write(result, f"silent-{result['task']}" + (f"-{args.tag}" if args.tag else ""), args.publish)
        return
    # The policy is the product's module constants; a trial sets them for this process only.
    trial = (args.cold_audits, args.floor, tuple(args.split), args.train_share) != (
        silent.COLD_AUDITS, silent.MINIMUM_RATE_ABOVE_TARGET, tuple(silent.STRATA_SPLIT), silent.AUDIT_TRAINING_SHARE)
    silent.COLD_AUDITS, silent.MINIMUM_RATE_ABOVE_TARGET = args.cold_audits, args.floor
    silent.STRATA_SPLIT = tuple(args.split)
    silent.VERSION_WIDE = args.version_wide
    w = world(args.task)
    rows = []
    for seed in args.seeds:
        for arm in args.arms:
            target, warm_start_on, audit_training = ARMS[arm]
            started = time.perf_counter()
            versions = run_arm(w, arm, target, seed, args.batch_size, warm_start_on, audit_training,
                               args.train_share, learn=not args.ignore_none_of_the_above)
            rows += [v.row() for v in versions]
            print(f"seed {seed} {arm}: {len(versions)} versions in {time.perf_counter() - started:.0f} s", flush=True)
    result = {"task": args.task, "seeds": args.seeds, "batch_size": args.batch_size,
              "open_share": len(w.open_set) / (len(w.pool) - 2 * len(w.labels) + len(w.open_set)),
              "cold_audits": args.cold_audits, "floor": args.floor,
              "learn_from_none_of_the_above": not args.ignore_none_of_the_above,
              "summary": [summary(rows, arm) for arm in args.arms], "rows": rows}
    name = f"silent-{args.task}" + (f"-cold-{args.cold_audits}-floor-{args.floor:g}-split-"
                                    f"{'-'.join(f'{x:g}' for x in args.split)}-share-{args.train_share:g}"
                                    if trial else "") + ("-nota-off" if args.ignore_none_of_the_above else "") + (
        f"-{args.tag}" if args.tag else "")
    write(result, name, args.publish and not trial and not args.ignore_none_of_the_above)


def combined(paths: list[str]) -> dict[str, Any]:
    """One result from the outputs of runs of other seeds (the first one's settings; the arms of all)."""
    parts = [json.loads(Path(path).read_text()) for path in paths]
    rows = [row for part in parts for row in part["rows"]]
    arms = list(dict.fromkeys(s["arm"] for part in parts for s in part["summary"]))
    return {**parts[0], "seeds": sorted({row["seed"] for row in rows}),
            "summary": [summary(rows, arm) for arm in arms], "rows": rows}


def write(result: dict[str, Any], name: str, publish: bool) -> None:
    """The result's JSON, table and plot under OUT/``name``; ``publish``: the table and plot to docs/ too."""
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}.json").write_text(json.dumps(result, indent=1))
    (OUT / f"{name}.md").write_text(table(result))
    (OUT / f"{name}.svg").write_text(chart(result["rows"], result["seeds"][0]))
    print(table(result))
    if publish:
        for suffix in ("md", "svg"):
            shutil.copy(OUT / f"{name}.{suffix}", DOCS / f"silent_errors_{result['task']}.{suffix}")


if __name__ == "__main__":
    main()
