"""The training data set: labeled images under ``images_labeled_by_folder/``, manifests, and the count of images
not trained on yet that decides whether a training check trains."""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from labelloop import db, labels
from labelloop.modeling.images import ImageRejected, check_image, content_hash
from labelloop.modeling.models import ModelStatus, UnusableImage
from labelloop.modeling.training import MIN_NEGATIVES, NEGATIVE_LABEL, LabeledImage
from labelloop.modeling.versions import get_version, latest_version
from labelloop.parameters import service as parameters
from labelloop.storage import service as storage
from labelloop.storage.models import LABELED_FOLDER

# A label a reviewer has just introduced often has one image; it should not stop the other labels from
# training. It joins once it has this many distinct images (one to train on, one to test on).
MIN_IMAGES_PER_LABEL = 2
# Images answered None of the Above on Detection loops (parameter Learn-From-None-Of-The-Above): they train the
# hidden class training.NEGATIVE_LABEL, and are never under images_labeled_by_folder/ (no folder is a label).
NONE_OF_THE_ABOVE_FOLDER = "images_none_of_the_above/"
log = logging.getLogger(__name__)


def labeled_objects() -> list[tuple[str, str, str]]:
    """Every (key, label, etag) under ``images_labeled_by_folder/<label>/``."""
    found = [(info.key, storage.label_of(info.key), info.etag) for info in storage.list_objects(LABELED_FOLDER)]
    return [(key, label, etag) for key, label, etag in found if label]


def learns_from_none_of_the_above() -> bool:
    """Whether None of the Above answers are training data (parameter Learn-From-None-Of-The-Above)."""
    with db.session() as session:
        return bool(parameters.value(parameters.LEARN_FROM_NONE_OF_THE_ABOVE, session=session))


def negative_objects() -> list[tuple[str, str, str]]:
    """Every (key, hidden class, etag) under ``images_none_of_the_above/`` when Learn-From-None-Of-The-Above is
    on; none when it is off (the copies stay in the bucket, unused)."""
    if not learns_from_none_of_the_above():
        return []
    return [(info.key, NEGATIVE_LABEL, info.etag) for info in storage.list_objects(NONE_OF_THE_ABOVE_FOLDER)]


def dataset_digest(images: list[tuple[str, str, str]]) -> str:
    """One hash of a data set's (key, label, etag) triples, whatever their order."""
    digest = hashlib.sha256()
    for key, label, etag in sorted(images):
        digest.update(f"{key}\x00{label}\x00{etag}\n".encode())
    return digest.hexdigest()


@dataclass
class TrainingData:
    """What training would use now: the trainable (key, label, etag) triples, and what it leaves out and why."""

    images: list[tuple[str, str, str]]
    left_out_labels: dict[str, str] = field(default_factory=dict)  # label -> reason and what to do
    unusable: list[dict[str, str]] = field(default_factory=list)  # {key, label, reason, found_by}
    labeled: int = 0  # images that are images, in every label (those of left-out labels included)
    # (key, NEGATIVE_LABEL, etag) of the None of the Above images that train the hidden class (none when fewer
    # than MIN_NEGATIVES distinct ones, or when Learn-From-None-Of-The-Above is off)
    negatives: list[tuple[str, str, str]] = field(default_factory=list)

    def trainable(self) -> list[tuple[str, str, str]]:
        """Every image a training would use: the labels' and the hidden class's."""
        return [*self.images, *self.negatives]

    def per_label(self) -> list[tuple[str, int]]:
        """Trainable images per label, most first."""
        counts = Counter(label for _, label, _ in self.images)
        return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


def left_out_reason(distinct: int, label: str) -> str:
    """Why a label with ``distinct`` images cannot train, and what to do about it."""
    return (f"{distinct} distinct image(s); a label needs {MIN_IMAGES_PER_LABEL} to be trained: add more images "
            f"to {LABELED_FOLDER}{label}/ or remove that folder")


def unusable_images(*, session: Session) -> dict[tuple[str, str], UnusableImage]:
    """Training images found unusable, by (key, ETag)."""
    return {(row.object_key, row.etag): row for row in session.scalars(select(UnusableImage))}


def record_unusable(key: str, etag: str, reason: str, found_by: str) -> None:
    """Remember that this content at this key cannot train (once; the first reason found stays)."""
    with db.session() as session:
        if session.scalar(select(UnusableImage.id).where(UnusableImage.object_key == key,
                                                         UnusableImage.etag == etag)) is not None:
            return
        session.add(UnusableImage(object_key=key, etag=etag, reason=reason[:2000], found_by=found_by))
        try:
            session.flush()
        except IntegrityError:  # recorded by another run a moment ago
            session.rollback()
            return
    log.warning("training image unusable", extra={"key": key, "etag": etag, "reason": reason,
                                                  "found_by": found_by})


def label_names(folders: set[str]) -> tuple[dict[str, str], dict[str, str]]:
    """The label each folder under images_labeled_by_folder/ trains as, by the one label rule
    (``labelloop.labels``): NFC, and folders that differ only in letter case or normalisation merged into
    the first of them in sorted order (with a warning); and the folders that cannot be labels, with why."""
    names: dict[str, str] = {}
    invalid: dict[str, str] = {}
    first: dict[str, str] = {}
    for folder in sorted(folders):
        try:
            label = labels.check_label(folder)
        except labels.InvalidLabel as exc:
            invalid[folder] = f"{exc}; rename the folder {LABELED_FOLDER}{folder}/"
            continue
        names[folder] = first.setdefault(labels.identity(label), label)
        if names[folder] != folder:
            log.warning("label folder trains as another label", extra={"folder": folder, "label": names[folder]})
    return names, invalid


def training_data() -> TrainingData:
    """The labeled images training would use now: known-unusable images and labels with too few distinct
    images (by ETag) left out, each with the reason. Reads the listing and one table, never the images."""
    with db.session() as session:
        known = {pair: (row.reason, row.found_by) for pair, row in unusable_images(session=session).items()}
    usable, unusable = [], []
    found = labeled_objects()
    names, invalid = label_names({label for _, label, _ in found})
    for key, folder, etag in found:
        label = names.get(folder, folder)
        if folder in invalid:
            continue
        if (key, etag) in known:
            reason, found_by = known[(key, etag)]
            unusable.append({"key": key, "label": label, "reason": reason, "found_by": found_by})
        else:
            usable.append((key, label, etag))
    distinct: dict[str, set[str]] = {}
    for _, label, etag in usable:
        distinct.setdefault(label, set()).add(etag)
    left_out = {label: left_out_reason(len(etags), label) for label, etags in distinct.items()
                if len(etags) < MIN_IMAGES_PER_LABEL} | invalid
    negatives = [t for t in negative_objects() if (t[0], t[2]) not in known]
    if len({etag for _, _, etag in negatives}) < MIN_NEGATIVES:
        negatives = []
    return TrainingData([t for t in usable if t[1] not in left_out], left_out, unusable, len(usable), negatives)


def check_new_training(trigger: str, data: TrainingData | None = None) -> dict[str, Any]:
    """The seed's check: automatic training on (for scheduled checks), and enough new trainable images.

    Only images that can train count (not the unusable ones, not those of labels left out). The trainable set
    of the newest version, unchanged, is not trained again, whatever became of that version. ``data``: the
    training data when the caller has read it already.
    """
    with db.session() as session:
        enabled = parameters.value(parameters.ENABLE_AUTOMATIC_TRAINING, session=session)
        minimum = parameters.value(parameters.MINIMUM_UNTRAINED_IMAGES, session=session)
        previous = int(parameters.system_state(session=session).get("previous_trained_images", 0))
        last = latest_version(session=session)
        last_digest = last.dataset_digest if last is not None else None
        last_name, last_failed = (last.version, last.status == ModelStatus.TRAINING_FAILED.value) if last else ("", 0)
    data = data or training_data()
    untrained = len(data.trainable()) - previous
    decision = {"trigger": trigger, "automatic_training_enabled": enabled, "labeled_images": data.labeled,
                "trainable_images": len(data.images), "none_of_the_above_images": len(data.negatives),
                "labels": sorted({label for _, label, _ in data.images}), "previous_trained_images": previous,
                "untrained_images": untrained, "minimum_untrained_images": minimum,
                "left_out_labels": data.left_out_labels, "unusable_images": len(data.unusable)}
    if not enabled and trigger.startswith("schedule"):
        return {**decision, "train": False, "reason": "automatic training is disabled"}
    if untrained < minimum:
        return {**decision, "train": False,
                "reason": f"{untrained} new labeled image(s) since the last training; {minimum} needed"}
    if last_digest and last_digest == dataset_digest(data.trainable()):
        if last_failed:
            return {**decision, "train": False, "reason": "these images already trained a version that failed "
                    f"the F1 gate ({last_name}); add or relabel images first", "unchanged_since": last_name}
        return {**decision, "train": False, "unchanged_since": last_name,
                "reason": f"the trainable images are exactly those {last_name} was trained on: no new version "
                          "(add or relabel images to train one)"}
    return {**decision, "train": True, "reason": f"{untrained} new labeled images ≥ {minimum}"}


def write_manifest(version: str, run_id: str) -> dict[str, Any]:
    """Write ``manifests/<version>.json``: every labeled image with its label, content hash and ETag.

    Each image's header is checked as it is read: one that is not an image is marked ``rejected`` with the
    reason (and remembered as unusable). The digest and count are those of the trainable images."""
    with db.session() as session:
        known = {pair: row.reason for pair, row in unusable_images(session=session).items()}
    entries = []
    for key, label, _ in [*labeled_objects(), *negative_objects()]:
        info, data = storage.get_object(key)
        entry = {"key": key, "label": label, "sha256": content_hash(data), "etag": info.etag}
        problem = known.get((key, info.etag)) or image_problem(data)
        if problem:
            record_unusable(key, info.etag, problem, "training")
            entry.update(split="rejected", reason=problem)
        entries.append(entry)
    key = f"manifests/{version}.json"
    store_manifest(key, {"version": version, "created_by_run": run_id, "images": entries})
    usable, _ = trainable_entries(entries)
    return {"manifest_key": key, "entries": entries, "trainable": len(usable),
            "dataset_digest": entries_digest(usable)}


def image_problem(data: bytes) -> str | None:
    """Why these bytes cannot be a training image (from the header), or None."""
    try:
        check_image(data)
    except ImageRejected as exc:
        return exc.reason
    return None


def check_stored_image(key: str, etag: str) -> str | None:
    """Check a training image that arrived without labelloop seeing it (an S3 event): why it cannot train, or
    None. An unusable one is remembered, so it is not counted as training data."""
    try:
        info, data = storage.get_object(key)
    except storage.ObjectNotFound:
        return None
    problem = image_problem(data)
    if problem:
        record_unusable(key, info.etag if info.etag else etag, problem, "arrival check")
    return problem


def entries_digest(entries: list[dict[str, Any]]) -> str:
    """The data set digest of manifest entries (as :func:`dataset_digest` of their key, label and ETag)."""
    return dataset_digest([(e["key"], e["label"], e["etag"]) for e in entries])


def store_manifest(key: str, manifest: dict[str, Any]) -> None:
    """Write a manifest document to the bucket."""
    storage.put_object(key, json.dumps(manifest, indent=1).encode(), source="training")


def manifest_of(version: str) -> dict[str, Any]:
    """The version's manifest (after training: every image with its label, hash, split and test decision)."""
    with db.session() as session:
        key = get_version(version, session=session).manifest_key
    return read_manifest(key)


def read_manifest(key: str) -> dict[str, Any]:
    """A manifest document from the bucket."""
    return json.loads(storage.get_object(key)[1])


def labeled_examples(entries: list[dict[str, Any]]) -> list[LabeledImage]:
    """Training examples of manifest entries; each image's bytes are read only if it must be embedded."""
    return [LabeledImage(key=e["key"], label=e["label"], content_hash=e["sha256"],
                         content=partial(_object_bytes, e["key"])) for e in entries]


def _object_bytes(key: str) -> bytes:
    return storage.get_object(key)[1]


def trainable_entries(entries: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Manifest entries that can train (not rejected, of labels with enough distinct images), and why the
    other labels were left out."""
    usable = [e for e in entries if e.get("split") != "rejected"]
    distinct: dict[str, set[str]] = {}
    for entry in usable:
        distinct.setdefault(entry["label"], set()).add(entry["sha256"])
    left_out = {label: left_out_reason(len(hashes), label)
                for label, hashes in distinct.items() if len(hashes) < MIN_IMAGES_PER_LABEL}
    hidden_left_out = len(distinct.get(NEGATIVE_LABEL, ())) < MIN_NEGATIVES  # not a label: listed nowhere
    left_out.pop(NEGATIVE_LABEL, None)
    return [e for e in usable if e["label"] not in left_out
            and not (hidden_left_out and e["label"] == NEGATIVE_LABEL)], left_out
