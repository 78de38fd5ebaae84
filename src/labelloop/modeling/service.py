"""Model versions: train, evaluate, gate, deploy blue-green, roll back, stop; detection with the serving one."""

from __future__ import annotations

import io
import logging
import threading
import time
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from labelloop import db
from labelloop.config import get_settings
from labelloop.modeling.models import ModelStatus, ModelVersion
from labelloop.modeling.serving import LoadedVersion, NoModelServing, Serving, ranked
from labelloop.parameters import service as parameters

log = logging.getLogger(__name__)

SERVABLE = {ModelStatus.TRAINING_COMPLETED.value, ModelStatus.STOPPED.value, ModelStatus.RUNNING.value,
            ModelStatus.STARTING.value, ModelStatus.STOPPING.value}


class ModelError(ValueError):
    """A model operation that is not possible now; the message says why."""


class VersionNotFound(KeyError):
    """No model version has this name."""


# ── versions ─────────────────────────────────────────────────────────────────


def get_version(session: Session, version: str) -> ModelVersion:
    """The model version named ``version``."""
    row = session.scalar(select(ModelVersion).where(ModelVersion.version == version))
    if row is None:
        raise VersionNotFound(f"no model version {version!r}")
    return row


def list_versions(session: Session) -> list[ModelVersion]:
    """Every model version, newest first."""
    return list(session.scalars(select(ModelVersion).order_by(ModelVersion.id.desc())))


def serving_version(session: Session) -> ModelVersion | None:
    """The version whose status is RUNNING, if any."""
    return session.scalar(select(ModelVersion).where(ModelVersion.status == ModelStatus.RUNNING.value))


def describe(row: ModelVersion, *, with_evaluation: bool = True) -> dict[str, Any]:
    """A model version as the API shows it."""
    data = {column: getattr(row, column) for column in (
        "version", "status", "status_message", "created_at", "training_ended_at", "deployed_at", "stopped_at",
        "run_id", "labels", "f1", "image_count", "train_images", "test_images", "training_seconds",
        "manifest_key", "evaluation_key")}
    data["evaluation"] = row.evaluation if with_evaluation else None
    return data


def set_status(version: str, status: ModelStatus, message: str = "", **fields: Any) -> dict[str, Any]:
    """Record a status change of ``version`` (and any other fields) and return the version."""
    with db.session() as session:
        row = get_version(session, version)
        row.status = status.value
        row.status_message = message
        for name, value in fields.items():
            setattr(row, name, value)
        log.info("model version status", extra={"version": version, "status": status.value, "detail": message})
        return describe(row, with_evaluation=False)


# ── head artifacts (kept in the database) ────────────────────────────────────


def head_from_bytes(data: bytes) -> Any:
    """Load a head stored by training (``Head.to_bytes``)."""
    from labelloop.modeling.training import Head

    return Head.load(io.BytesIO(data))


# ── the backbone file ────────────────────────────────────────────────────────


def backbone_path() -> Any:
    """The backbone ONNX file, built in a child process when missing or stale.

    Torch is needed only to build the file; building it in a child process keeps torch (some 500 MB of
    resident memory) out of the serving and training processes.
    """
    import subprocess
    import sys

    from labelloop.modeling.export import backbone_fingerprint, backbone_onnx_path, stored_fingerprint

    cache_dir = get_settings().cache_dir
    path = backbone_onnx_path(cache_dir)
    if stored_fingerprint(path) == backbone_fingerprint():
        return path
    log.info("building the backbone ONNX file", extra={"path": str(path)})
    code = "import sys; from labelloop.modeling.export import ensure_backbone_onnx; ensure_backbone_onnx(sys.argv[1])"
    finished = subprocess.run([sys.executable, "-c", code, str(cache_dir)], capture_output=True, text=True,
                              check=False)
    if finished.returncode != 0:
        raise ModelError(f"could not build the backbone ONNX file: {finished.stderr.strip()[-2000:]}")
    return path


# ── serving in this process ──────────────────────────────────────────────────

_serving: Serving | None = None
_serving_lock = threading.Lock()
_synced_at = 0.0
_sync_lock = threading.Lock()
SYNC_SECONDS = 1.0


def serving() -> Serving:
    """This process's model server (created on first use; builds the backbone ONNX file if missing)."""
    global _serving
    with _serving_lock:
        if _serving is None:
            from labelloop.modeling.embedding import Embedder

            path = backbone_path()
            with db.session() as session:
                units = parameters.value(session, parameters.MINIMUM_INFERENCE_UNITS)
            _serving = Serving(lambda threads: Embedder(path, threads=threads), units=units)
        return _serving


def close_serving() -> None:
    """Stop this process's inference units."""
    global _serving
    with _serving_lock:
        if _serving is not None:
            _serving.close()
        _serving = None


def load(version: str) -> LoadedVersion:
    """Load and warm ``version`` in this process without switching to it."""
    with db.session() as session:
        row = get_version(session, version)
        if row.head is None:
            raise ModelError(f"model version {version} has no trained head ({row.status})")
        head = head_from_bytes(row.head)
    return serving().warm(version, head)


def sync_serving(force: bool = False) -> str | None:
    """Make this process serve what the database says is RUNNING (other processes may have switched).

    Checked at most once a second on the request path; callers that arrive while a check loads a version
    wait for it, so none of them is told that nothing serves. Returns the version now serving here.
    """
    global _synced_at
    server = serving()
    if not force and time.monotonic() - _synced_at < SYNC_SECONDS:
        return server.active.version if server.active else None
    with _sync_lock:
        if not force and time.monotonic() - _synced_at < SYNC_SECONDS:
            return server.active.version if server.active else None
        with db.session() as session:
            wanted = serving_version(session)
            wanted_name = wanted.version if wanted else None
            units = parameters.value(session, parameters.MINIMUM_INFERENCE_UNITS)
        server.set_units(units)
        active = server.active
        if wanted_name is None and active is not None:
            server.stop()
        elif wanted_name is not None and (active is None or active.version != wanted_name):
            server.switch(load(wanted_name))
        _synced_at = time.monotonic()
        return wanted_name


def detect_inputs(inputs: np.ndarray) -> tuple[str, list[list[dict[str, Any]]]]:
    """Detect preprocessed images (N×3×224×224): the version used and, per image, every label best first."""
    sync_serving()
    loaded, probabilities = serving().submit(inputs).result(timeout=120)
    return loaded.version, [ranked(loaded.labels, row) for row in probabilities]


# ── deploy, roll back, stop ──────────────────────────────────────────────────


def _notify_status(version: str, status: ModelStatus, message: str, run_id: str | None) -> None:
    from labelloop.notifications.service import notify

    notify("model.status", f"labelloop: model {version} — Status: {status.value}",
           f"Model version {version}: Status: {status.value}. {message}".strip(), model_version=version,
           status=status.value, run_id=run_id, dedupe_key=f"{run_id}:{version}:{status.value}" if run_id else None)


def change_status(version: str, status: ModelStatus, message: str = "", run_id: str | None = None,
                  **fields: Any) -> dict[str, Any]:
    """Record and notify a status change of ``version``."""
    described = set_status(version, status, message, **fields)
    _notify_status(version, status, message, run_id)
    return described


def start_version(version: str, run_id: str | None = None) -> dict[str, Any]:
    """Blue side: load and warm ``version`` in this process while the current version keeps serving."""
    with db.session() as session:
        row = get_version(session, version)
        if row.status == ModelStatus.RUNNING.value:
            return {"version": version, "status": row.status, "already_serving": True}
        if row.status not in SERVABLE or row.head is None:
            raise ModelError(f"model version {version} is {row.status} and cannot be deployed; deployable "
                             "versions have finished training (TRAINING_COMPLETED or STOPPED)")
    change_status(version, ModelStatus.STARTING, "loading and warming up", run_id)
    try:
        loaded = load(version)
    except Exception as exc:
        change_status(version, ModelStatus.FAILED, f"could not start: {exc}", run_id)
        raise
    return {"version": version, "status": ModelStatus.STARTING.value, "labels": loaded.labels}


def switch_endpoint(version: str, run_id: str | None = None) -> dict[str, Any]:
    """Make ``version`` the serving one in one transaction; the previous version is left STOPPING."""
    with db.session() as session:
        row = get_version(session, version)
        previous = serving_version(session)
        previous_name = previous.version if previous else None
        if previous is not None and previous.version != version:
            previous.status = ModelStatus.STOPPING.value
            previous.status_message = f"replaced by {version}"
        row.status = ModelStatus.RUNNING.value
        row.status_message = "serving"
        row.deployed_at = db.utcnow()
        row.stopped_at = None
        parameters.update_system_state(session, serving_version=version)
    loaded = serving().active
    if loaded is None or loaded.version != version:
        serving().switch(load(version))
    _notify_status(version, ModelStatus.RUNNING, "the endpoint now serves this version", run_id)
    return {"version": version, "status": ModelStatus.RUNNING.value,
            "previous": previous_name if previous_name != version else None}


def stop_version(version: str | None, run_id: str | None = None) -> dict[str, Any]:
    """Finish stopping ``version`` (a replaced one, or the serving one: then nothing serves)."""
    if version is None:
        return {"stopped": None}
    with db.session() as session:
        row = get_version(session, version)
        was_serving = row.status == ModelStatus.RUNNING.value
        if was_serving:
            parameters.update_system_state(session, serving_version=None)
            row.status = ModelStatus.STOPPING.value
    if was_serving:
        _notify_status(version, ModelStatus.STOPPING, "the endpoint stops serving", run_id)
        active = serving().active
        if active is not None and active.version == version:
            serving().stop()
    change_status(version, ModelStatus.STOPPED, "stopped", run_id, stopped_at=db.utcnow())
    return {"stopped": version, "was_serving": was_serving}


__all__ = ["ModelError", "NoModelServing", "VersionNotFound", "detect_inputs", "serving", "sync_serving"]


def prepare_image(data: bytes) -> np.ndarray:
    """Decode and preprocess one uploaded image into a 1×3×224×224 batch (raises ``ImageRejected``)."""
    from labelloop.modeling.images import prepare

    return prepare(data)[None, ...]


def export_onnx(session: Session, version: str) -> bytes:
    """One ONNX file of ``version``: backbone + head + softmax, label names in the metadata."""
    import tempfile
    from pathlib import Path

    from labelloop.modeling.export import build_full_model_onnx

    row = get_version(session, version)
    if row.head is None:
        raise ModelError(f"model version {version} has no trained head ({row.status})")
    backbone = backbone_path()
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "model.onnx"
        build_full_model_onnx(backbone, head_from_bytes(row.head), out, model_version=version)
        return out.read_bytes()


# ── the training branch ──────────────────────────────────────────────────────


def labeled_images() -> list[tuple[str, str]]:
    """Every (key, label) under ``images_labeled_by_folder/<label>/``."""
    from labelloop.storage import service as storage
    from labelloop.storage.models import LABELED_FOLDER

    pairs = [(info.key, storage.label_of(info.key)) for info in storage.list_objects(LABELED_FOLDER)]
    return [(key, label) for key, label in pairs if label]


def _dataset_digest(images: list[tuple[str, str, str]]) -> str:
    import hashlib

    digest = hashlib.sha256()
    for key, label, etag in sorted(images):
        digest.update(f"{key}\x00{label}\x00{etag}\n".encode())
    return digest.hexdigest()


def check_new_training(trigger: str) -> dict[str, Any]:
    """The seed's check: automatic training on (for scheduled checks), and enough new labeled images.

    A data set that already failed the F1 gate unchanged is not trained again.
    """
    from labelloop.storage import service as storage
    from labelloop.storage.models import LABELED_FOLDER

    with db.session() as session:
        enabled = parameters.value(session, parameters.ENABLE_AUTOMATIC_TRAINING)
        minimum = parameters.value(session, parameters.MINIMUM_UNTRAINED_IMAGES)
        previous = int(parameters.system_state(session).get("previous_trained_images", 0))
        last = session.scalar(select(ModelVersion).order_by(ModelVersion.id.desc()))
        last_failed = last.dataset_digest if last and last.status == ModelStatus.TRAINING_FAILED.value else None
    infos = [(i.key, storage.label_of(i.key), i.etag) for i in storage.list_objects(LABELED_FOLDER)]
    images = [(key, label, etag) for key, label, etag in infos if label]
    untrained = len(images) - previous
    decision = {"trigger": trigger, "automatic_training_enabled": enabled, "labeled_images": len(images),
                "labels": sorted({label for _, label, _ in images}), "previous_trained_images": previous,
                "untrained_images": untrained, "minimum_untrained_images": minimum}
    if not enabled and trigger.startswith("schedule"):
        return {**decision, "train": False, "reason": "automatic training is disabled"}
    if untrained < minimum:
        return {**decision, "train": False,
                "reason": f"{untrained} new labeled image(s) since the last training; {minimum} needed"}
    if last_failed and last_failed == _dataset_digest(images):
        return {**decision, "train": False, "reason": "these images already trained a version that failed the "
                f"F1 gate ({last.version}); add or relabel images first"}
    return {**decision, "train": True, "reason": f"{untrained} new labeled images ≥ {minimum}"}


def create_version_with_manifest(run_id: str) -> dict[str, Any]:
    """Create the next model version for this run (once per run) and write ``manifests/<version>.json``."""
    import hashlib
    import json

    from labelloop.storage import service as storage

    with db.session() as session:
        existing = session.scalar(select(ModelVersion).where(ModelVersion.run_id == run_id))
        if existing is not None and existing.manifest_key:
            return {"version": existing.version, "manifest_key": existing.manifest_key,
                    "images": existing.image_count}
        number = (session.scalar(select(ModelVersion.id).order_by(ModelVersion.id.desc())) or 0) + 1
        row = existing or ModelVersion(version=f"v{number}", run_id=run_id)
        session.add(row)
        session.flush()
        version = row.version
    entries, digest_input = [], []
    for key, label in labeled_images():
        info, data = storage.get_object(key)
        entries.append({"key": key, "label": label, "sha256": hashlib.sha256(data).hexdigest(), "etag": info.etag})
        digest_input.append((key, label, info.etag))
    manifest_key = f"manifests/{version}.json"
    storage.put_object(manifest_key, json.dumps({"version": version, "created_by_run": run_id,
                                                 "images": entries}, indent=1).encode(), source="training")
    change_status(version, ModelStatus.TRAINING_IN_PROGRESS, f"training on {len(entries)} images", run_id,
                  manifest_key=manifest_key, image_count=len(entries), dataset_digest=_dataset_digest(digest_input),
                  labels=sorted({e["label"] for e in entries}))
    return {"version": version, "manifest_key": manifest_key, "images": len(entries)}


_embedder: Any = None
_embedder_lock = threading.Lock()


def training_embedder() -> tuple[Any, Any]:
    """The backbone session and embedding cache this process trains with."""
    global _embedder
    from labelloop.modeling.embedding import Embedder, EmbeddingCache

    cache_dir = get_settings().cache_dir
    with _embedder_lock:
        if _embedder is None:
            _embedder = Embedder(backbone_path())
        return _embedder, EmbeddingCache.for_embedder(cache_dir / "embeddings", _embedder)


def _manifest(version: str) -> tuple[ModelVersion, dict[str, Any]]:
    import json

    from labelloop.storage import service as storage

    with db.session() as session:
        row = get_version(session, version)
    return row, json.loads(storage.get_object(row.manifest_key)[1])


def manifest_of(version: str) -> dict[str, Any]:
    """The version's manifest (after training: every image with its label, hash, split and test decision)."""
    return _manifest(version)[1]


def train_version(version: str, run_id: str) -> dict[str, Any]:
    """Train ``version`` on its manifest; TRAINING_COMPLETED with metrics, or TRAINING_FAILED saying why."""
    import json

    from labelloop.modeling.training import TrainingDataError, train_head
    from labelloop.storage import service as storage

    row, manifest = _manifest(version)
    if row.head is not None:  # the step is being retried after it finished training
        return {"trained": True, "version": version, "f1": row.f1}
    usable, left_out = trainable_entries(manifest["images"])
    examples = labeled_examples(usable)
    with db.session() as session:
        options = {"final_on_all": parameters.value(session, parameters.TRAIN_FINAL_MODEL_ON_ALL_IMAGES),
                   "balance_labels": parameters.value(session, parameters.BALANCE_LABELS_IN_TRAINING)}
    embedder, cache = training_embedder()
    started = time.perf_counter()
    try:
        result = train_head(examples, embedder, cache, **options)
    except TrainingDataError as exc:
        change_status(version, ModelStatus.TRAINING_FAILED, str(exc), run_id, training_ended_at=db.utcnow())
        return {"trained": False, "version": version, "reason": str(exc)}
    seconds = time.perf_counter() - started
    evaluation = {**result.evaluation.to_dict(), "left_out_labels": left_out, "training_options": options,
                  "deployed_model_trained_on": "training and test split" if options["final_on_all"]
                  else "training split"}
    excluded = [{**e, "split": "left out", "reason": left_out[e["label"]]} for e in manifest["images"]
                if e["label"] in left_out]
    storage.put_object(row.manifest_key, json.dumps({**manifest, "images": result.manifest() + excluded},
                                                    indent=1).encode(), source="training")
    note = f"; left out {', '.join(sorted(left_out))} (too few images)" if left_out else ""
    if options["final_on_all"]:
        note += f"; then trained on all {len(result.train_keys) + len(result.test_keys)} images"
    change_status(version, ModelStatus.TRAINING_COMPLETED, f"F1 {result.evaluation.f1:.3f} on "
                  f"{len(result.test_keys)} test images{note}", run_id, head=result.head.to_bytes(),
                  evaluation={**evaluation, "rejected": result.rejected, "timings": result.timings},
                  f1=result.evaluation.f1, labels=result.head.labels, train_images=len(result.train_keys),
                  test_images=len(result.test_keys), training_seconds=seconds, training_ended_at=db.utcnow())
    return {"trained": True, "version": version, "f1": result.evaluation.f1,
            "images_embedded": result.images_embedded, "images_from_cache": result.images_from_cache,
            "rejected": result.rejected, "left_out_labels": left_out, "seconds": round(seconds, 3)}


def labeled_examples(entries: list[dict[str, Any]]) -> list[Any]:
    """Training examples of manifest entries; each image's bytes are read only if it must be embedded."""
    from functools import partial

    from labelloop.modeling.training import LabeledImage
    from labelloop.storage import service as storage

    return [LabeledImage(key=e["key"], label=e["label"], content_hash=e["sha256"],
                         content=partial(lambda key: storage.get_object(key)[1], e["key"])) for e in entries]


MIN_IMAGES_PER_LABEL = 2


def trainable_entries(entries: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Manifest entries of labels with enough distinct images, and why the other labels were left out.

    A label a reviewer has just introduced often has one image; it should not stop the other labels from
    training. It joins once it has MIN_IMAGES_PER_LABEL (one to train on, one to test on).
    """
    distinct: dict[str, set[str]] = {}
    for entry in entries:
        distinct.setdefault(entry["label"], set()).add(entry["sha256"])
    left_out = {label: f"{len(hashes)} distinct image(s); a label needs {MIN_IMAGES_PER_LABEL} to be trained"
                for label, hashes in distinct.items() if len(hashes) < MIN_IMAGES_PER_LABEL}
    return [e for e in entries if e["label"] not in left_out], left_out


def write_evaluation(version: str) -> dict[str, Any]:
    """Write ``evaluation/<version>.json`` (per-label metrics, F1, confusion matrix, thresholds, timing)."""
    import json

    from labelloop.storage import service as storage

    with db.session() as session:
        row = get_version(session, version)
        document = {"model_version": version, "created_at": row.created_at.isoformat(),
                    "training_seconds": row.training_seconds, **row.evaluation}
        key = f"evaluation/{version}.json"
        row.evaluation_key = key
    storage.put_object(key, json.dumps(document, indent=2, default=str).encode(), source="training")
    return {"evaluation_key": key, "f1": document.get("f1"),
            "per_label": {m["label"]: round(m["f1"], 4) for m in document.get("per_label", [])}}


def record_trained_images(version: str) -> dict[str, Any]:
    """Store this version's image count as ``previous_trained_images``."""
    with db.session() as session:
        count = get_version(session, version).image_count
        parameters.update_system_state(session, previous_trained_images=count, last_trained_version=version)
    return {"previous_trained_images": count}
