"""The training data set: labeled images under ``images_labeled_by_folder/``, manifests, and the count of images
not trained on yet that decides whether a training check trains."""

from __future__ import annotations

import hashlib
import json
from functools import partial
from typing import Any

from labelloop import db
from labelloop.modeling.images import content_hash
from labelloop.modeling.models import ModelStatus
from labelloop.modeling.training import LabeledImage
from labelloop.modeling.versions import get_version, latest_version
from labelloop.parameters import service as parameters
from labelloop.storage import service as storage
from labelloop.storage.models import LABELED_FOLDER

# A label a reviewer has just introduced often has one image; it should not stop the other labels from
# training. It joins once it has this many distinct images (one to train on, one to test on).
MIN_IMAGES_PER_LABEL = 2


def labeled_objects() -> list[tuple[str, str, str]]:
    """Every (key, label, etag) under ``images_labeled_by_folder/<label>/``."""
    found = [(info.key, storage.label_of(info.key), info.etag) for info in storage.list_objects(LABELED_FOLDER)]
    return [(key, label, etag) for key, label, etag in found if label]


def dataset_digest(images: list[tuple[str, str, str]]) -> str:
    """One hash of a data set's (key, label, etag) triples, whatever their order."""
    digest = hashlib.sha256()
    for key, label, etag in sorted(images):
        digest.update(f"{key}\x00{label}\x00{etag}\n".encode())
    return digest.hexdigest()


def check_new_training(trigger: str) -> dict[str, Any]:
    """The seed's check: automatic training on (for scheduled checks), and enough new labeled images.

    A data set that already failed the F1 gate unchanged is not trained again.
    """
    with db.session() as session:
        enabled = parameters.value(parameters.ENABLE_AUTOMATIC_TRAINING, session=session)
        minimum = parameters.value(parameters.MINIMUM_UNTRAINED_IMAGES, session=session)
        previous = int(parameters.system_state(session=session).get("previous_trained_images", 0))
        last = latest_version(session=session)
        last_failed = last.dataset_digest if last and last.status == ModelStatus.TRAINING_FAILED.value else None
    images = labeled_objects()
    untrained = len(images) - previous
    decision = {"trigger": trigger, "automatic_training_enabled": enabled, "labeled_images": len(images),
                "labels": sorted({label for _, label, _ in images}), "previous_trained_images": previous,
                "untrained_images": untrained, "minimum_untrained_images": minimum}
    if not enabled and trigger.startswith("schedule"):
        return {**decision, "train": False, "reason": "automatic training is disabled"}
    if untrained < minimum:
        return {**decision, "train": False,
                "reason": f"{untrained} new labeled image(s) since the last training; {minimum} needed"}
    if last_failed and last_failed == dataset_digest(images):
        return {**decision, "train": False, "reason": "these images already trained a version that failed the "
                f"F1 gate ({last.version}); add or relabel images first"}
    return {**decision, "train": True, "reason": f"{untrained} new labeled images ≥ {minimum}"}


def write_manifest(version: str, run_id: str) -> dict[str, Any]:
    """Write ``manifests/<version>.json``: every labeled image with its label, content hash and ETag."""
    entries, triples = [], []
    for key, label, _ in labeled_objects():
        info, data = storage.get_object(key)
        entries.append({"key": key, "label": label, "sha256": content_hash(data), "etag": info.etag})
        triples.append((key, label, info.etag))
    key = f"manifests/{version}.json"
    store_manifest(key, {"version": version, "created_by_run": run_id, "images": entries})
    return {"manifest_key": key, "entries": entries, "dataset_digest": dataset_digest(triples)}


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
    """Manifest entries of labels with enough distinct images, and why the other labels were left out."""
    distinct: dict[str, set[str]] = {}
    for entry in entries:
        distinct.setdefault(entry["label"], set()).add(entry["sha256"])
    left_out = {label: f"{len(hashes)} distinct image(s); a label needs {MIN_IMAGES_PER_LABEL} to be trained"
                for label, hashes in distinct.items() if len(hashes) < MIN_IMAGES_PER_LABEL}
    return [e for e in entries if e["label"] not in left_out], left_out

