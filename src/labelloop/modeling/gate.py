"""The F1 gate: deploy a trained version when the evidence says it is good enough, or better than what serves.

A version passes on the first of three measures that holds (all three go into the run record and the version's
evaluation, so a user sees why it deployed or not):

1. **test split** — its F1 on its own test split ≥ Minimum-F1-Score (the seed's rule).
2. **production estimate** — its F1 estimated for production traffic ≥ Minimum-F1-Score
   (`evaluation.ProductionEstimate`: the test images that came from human review, weighted by the share of
   detections that go to review, plus the human-sampling answers for the rest).
3. **better than the serving version** — the new version's production estimate ≥ the serving version's, both
   computed on the same human answers, ones neither has trained on (the new version's test images from human
   review that the serving one never saw, and the human-sampling answers). A model below the minimum should
   still replace a worse one: keeping the worse one serving protects nobody.

Why not the test split alone: under the human loop the test split fills up with the images the model found
hardest, so its F1 reads low (measured on load_digits: 0.41–0.75 while the same versions scored 0.78–0.95
on held-out images), and from a handful of starting images nothing would ever deploy.

Each version's head judges embeddings of its own backbone: a version trained with Quantize-Backbone whose int8
twin serves is judged on its int8 embeddings, the serving version it is compared with on its own (and each on
its own input view, crop or letterbox).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from labelloop import db
from labelloop.modeling import dataset
from labelloop.modeling.embedding import Embedder, EmbeddingCache, embed_cached
from labelloop.modeling.endpoint import version_embedder
from labelloop.modeling.evaluation import production_estimate
from labelloop.modeling.images import content_hash, view_key
from labelloop.modeling.training import TrainingDataError, train_head
from labelloop.modeling.versions import get_version, head_of, serving_version
from labelloop.parameters import service as parameters
from labelloop.storage import service as storage

# Sampling answers a paired comparison needs, times the confident share of traffic (the absolute estimate
# needs evaluation.MIN_AUDIT_ANSWERS): measured on load_digits, a young model sends most detections to review
# and human sampling yields about one confident answer per 50 detections at interval 20; asking for 10 kept
# the first model serving through five better versions.
MIN_AUDIT_ANSWERS_COMPARED = 5


@dataclass
class Evidence:
    """What the gate judges a version on: its manifest and the human answers about production traffic."""

    rows: list[dict[str, Any]]  # the version's manifest rows (test rows carry the evaluated head's decision)
    reviewed_keys: set[str]  # training-data keys that came from human review of low-confidence detections
    review_share: float  # share of detections that went to human review
    audit: dict[str, tuple[str, np.ndarray]]  # content hash -> (human-sampling answer, embedding)
    audit_images: dict[str, bytes] = field(default_factory=dict)  # content hash -> the answered image

    def test_rows(self) -> list[dict[str, Any]]:
        """The version's test images with its evaluated head's decision."""
        return [row for row in self.rows if row.get("split") == "test" and "predicted" in row]


# A version's backbone session and embedding cache (``endpoint.version_embedder``): a version trained with
# Quantize-Backbone is judged on its own int8 embeddings, the others on the shared fp32 backbone's.
Backbone = tuple[Embedder, EmbeddingCache]


def _embeddings(sources: dict[str, Any], backbone: Backbone, view: str = "orig") -> dict[str, np.ndarray]:
    """Embeddings of ``view`` (a version's input view, an images.VIEWS key) by content hash (from the cache;
    images that do not decode are left out)."""
    if not sources:
        return {}
    embedder, cache = backbone
    vectors = embed_cached(embedder, cache, sources, (view,))
    return {digest: vectors.get(digest, view) for digest in sources if digest not in vectors.rejected}


def gather(version: str, found: dict[str, Any], backbone: Backbone, view: str = "orig") -> Evidence:
    """The version's manifest and the human answers in ``found`` (what human review knows, as
    ``review.service.review_evidence`` gives it), embedded by the version's ``backbone`` on its ``view``;
    answers about images in its data set are left out."""
    rows = dataset.manifest_of(version)["images"]
    known = {row["sha256"] for row in rows if row.get("sha256")}
    answers: dict[str, tuple[str, bytes]] = {}
    for key, label in found["audit"]:
        try:
            data = storage.get_object(key)[1]
        except storage.ObjectNotFound:  # deleted since it was answered
            continue
        if (digest := content_hash(data)) not in known:
            answers[digest] = (label, data)
    vectors = _embeddings({digest: data for digest, (_, data) in answers.items()}, backbone, view)
    return Evidence(rows, found["reviewed_keys"], found["review_share"],
                    {digest: (answers[digest][0], vector) for digest, vector in vectors.items()},
                    {digest: answers[digest][1] for digest in vectors})


def decide(head: Any, vectors: list[np.ndarray]) -> list[str]:
    """The label a head gives each embedding."""
    if not vectors:
        return []
    return [head.labels[int(i)] for i in head.predict_proba(np.stack(vectors)).argmax(axis=1)]


def estimate(evidence: Evidence, head: Any) -> dict[str, Any]:
    """The production estimate of the version whose deployable head is `head`."""
    reviewed = [(row["label"], row["predicted"]) for row in evidence.test_rows()
                if row["key"] in evidence.reviewed_keys]
    labels = [label for label, _ in evidence.audit.values()]
    audit = list(zip(labels, decide(head, [vector for _, vector in evidence.audit.values()]), strict=True))
    return production_estimate(reviewed, audit, evidence.review_share).to_dict()


def _decisions_without(evidence: Evidence, fresh: list[dict[str, Any]], vectors: dict[str, np.ndarray],
                       options: dict[str, Any], backbone: Backbone) -> list[str]:
    """The new version's decisions on `fresh` test images from a model that has not trained on them but on
    everything else it has: its deployed model did train on them when it trains on all images, and its
    evaluated one (80 % of the images) would be compared with a serving model trained on all of its own."""
    if not options.get("final_on_all"):  # the deployed model is the evaluated one: it never saw its test split
        return [row["predicted"] for row in fresh]
    left = {row["sha256"] for row in fresh}
    usable, _ = dataset.trainable_entries([row for row in evidence.rows if row.get("split") in ("train", "test")
                                           and row["sha256"] not in left])
    embedder, cache = backbone
    try:
        head = train_head(dataset.labeled_examples(usable), embedder, cache, final_on_all=True,
                          balance_labels=bool(options.get("balance_labels")), view=options.get("view", "orig")).head
    except TrainingDataError:  # without them a label has too few images: judge by the evaluated model
        return [row["predicted"] for row in fresh]
    return decide(head, [vectors[row["sha256"]] for row in fresh])


def versus_serving(version: str, evidence: Evidence, head: Any, options: dict[str, Any],
                   backbone: Backbone) -> dict[str, Any] | None:
    """Both versions' production estimates on the same images, ones neither has trained on: the new version's
    test images from human review that the serving version never saw, and the human-sampling answers; each
    version embeds them with its own backbone (``backbone`` for the new one). None when no other version
    serves."""
    with db.session() as session:
        serving = serving_version(session=session)
        if serving is None or serving.version == version or not serving.has_head:
            return None
        name, serving_head, serving_view = serving.version, head_of(serving), view_key(serving.input_view)
        serving_backbone = version_embedder(serving)
    view = options.get("view", "orig")
    same_backbone = serving_backbone[0].fingerprint == backbone[0].fingerprint and serving_view == view
    seen = {row["sha256"] for row in dataset.manifest_of(name)["images"] if row.get("sha256")}
    fresh = [row for row in evidence.test_rows() if row["key"] in evidence.reviewed_keys and row["sha256"] not in seen]
    sources = {row["sha256"]: (lambda key=row["key"]: storage.get_object(key)[1]) for row in fresh}
    vectors = _embeddings(sources, backbone, view)
    old_vectors = vectors if same_backbone else _embeddings(sources, serving_backbone, serving_view)
    fresh = [row for row in fresh if row["sha256"] in vectors and row["sha256"] in old_vectors]
    audit = {digest: answer for digest, answer in evidence.audit.items() if digest not in seen}
    audit_labels, audit_vectors = [label for label, _ in audit.values()], [vector for _, vector in audit.values()]
    if same_backbone:
        old_audit_vectors = audit_vectors
    else:
        embedded = _embeddings({digest: evidence.audit_images[digest] for digest in audit}, serving_backbone,
                               serving_view)
        old_audit_vectors = [embedded[digest] for digest in audit]
    truth = [row["label"] for row in fresh]

    def judged(reviewed: list[str], sampled: list[str]) -> Any:
        return production_estimate(list(zip(truth, reviewed, strict=True)),
                                   list(zip(audit_labels, sampled, strict=True)), evidence.review_share,
                                   min_audit=MIN_AUDIT_ANSWERS_COMPARED)

    new = judged(_decisions_without(evidence, fresh, vectors, options, backbone) if fresh else [],
                 decide(head, audit_vectors))
    old = judged(decide(serving_head, [old_vectors[row["sha256"]] for row in fresh]),
                 decide(serving_head, old_audit_vectors))
    return {"serving_version": name, "reviewed_test_images": len(fresh), "audit_answers": len(audit),
            "f1": new.to_dict()["f1"], "serving_f1": old.to_dict()["f1"], "reason": new.reason}


def _verdict(f1: float, minimum: float, production: dict[str, Any],
             compared: dict[str, Any] | None) -> str | None:
    """Which measure passes the gate (see the module docstring), or None."""
    if f1 >= minimum:
        return "test split"
    if production["f1"] is not None and production["f1"] >= minimum:
        return "production estimate"
    if compared and compared["f1"] is not None and compared["f1"] >= compared["serving_f1"]:
        return f"better than the serving version {compared['serving_version']}"
    return None


def _refusal(f1: float, minimum: float, production: dict[str, Any], compared: dict[str, Any] | None) -> str:
    estimated = (f"{production['f1']:.3f} estimated for production traffic" if production["f1"] is not None
                 else f"no production estimate ({production['reason']})")
    message = f"F1 {f1:.3f} on the test split and {estimated} are below Minimum-F1-Score {minimum}"
    if compared and compared["f1"] is not None:
        message += (f"; on the same human answers, none of them trained on, it is estimated at {compared['f1']:.3f}, "
                    f"the serving version {compared['serving_version']} at {compared['serving_f1']:.3f}")
    elif compared:
        message += (f"; no comparison with the serving version {compared['serving_version']} "
                    f"({compared['reason']} that neither has trained on)")
    return message + "; the version is kept but not deployed"


def judge(version: str, found: dict[str, Any]) -> dict[str, Any]:
    """The gate's verdict on `version` (see the module docstring) from its metrics and the human answers in
    `found`: every measure, whether it passed and on which, and the refusal message when it did not."""
    with db.session() as session:
        minimum = parameters.value(parameters.MINIMUM_F1_SCORE, session=session)
        row = get_version(version, session=session)
        f1, head = row.f1 or 0.0, head_of(row)
        options = {**(row.evaluation.get("training_options") or {}), "view": view_key(row.input_view)}
        backbone = version_embedder(row)
    evidence = gather(version, found, backbone, options["view"])
    production = estimate(evidence, head)
    compared = versus_serving(version, evidence, head, options, backbone)
    passed_on = _verdict(f1, minimum, production, compared)
    return {"f1": f1, "minimum_f1": minimum, "production_estimate": production, "versus_serving": compared,
            "passed": passed_on is not None, "passed_on": passed_on,
            "refusal": None if passed_on else _refusal(f1, minimum, production, compared)}
