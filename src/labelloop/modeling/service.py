"""Model version operations: create a version with its manifest, train and evaluate it, judge it at the F1 gate,
deploy it blue-green (also a roll back), stop it, export it.

Version records live in ``versions.py``, the training data set in ``dataset.py``, this process's serving
endpoint in ``endpoint.py``.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from labelloop import db, memory
from labelloop.config import get_settings
from labelloop.modeling import dataset, endpoint, gate, int8
from labelloop.modeling.export import build_full_model_onnx
from labelloop.modeling.images import view_key
from labelloop.modeling.models import ModelStatus, ModelVersion
from labelloop.modeling.training import NEGATIVE_LABEL, LabeledImage, TrainingDataError, TrainingResult, train_head
from labelloop.modeling.versions import (
    SERVABLE,
    ModelError,
    change_status,
    get_version,
    head_of,
    notify_status,
    serving_version,
    version_for_run,
)
from labelloop.parameters import service as parameters
from labelloop.storage import service as storage

# ── the training branch ──────────────────────────────────────────────────────


def create_version_with_manifest(run_id: str) -> dict[str, Any]:
    """Create the next model version for this run (once per run) and write ``manifests/<version>.json``."""
    with db.session() as session:
        existing = version_for_run(run_id, session=session)
        if existing is not None and existing.manifest_key:
            return {"version": existing.version, "manifest_key": existing.manifest_key,
                    "images": existing.image_count}
        number = (session.scalar(select(ModelVersion.id).order_by(ModelVersion.id.desc())) or 0) + 1
        row = existing or ModelVersion(version=f"v{number}", run_id=run_id, input_view=parameters.value(
            parameters.MODEL_INPUT_VIEW, session=session))
        session.add(row)
        session.flush()
        version = row.version
    written = dataset.write_manifest(version, run_id)
    usable, _ = dataset.trainable_entries(written["entries"])
    images = [e for e in written["entries"] if e.get("split") != "rejected"  # labeled images that are images
              and e["label"] != NEGATIVE_LABEL]
    change_status(version, ModelStatus.TRAINING_IN_PROGRESS, f"training on {len(usable)} images", run_id,
                  manifest_key=written["manifest_key"], image_count=len(images),
                  dataset_digest=written["dataset_digest"],
                  labels=sorted({e["label"] for e in usable} - {NEGATIVE_LABEL}),
                  progress={"phase": "starting", "done": 0, "total": len(usable),
                            "started_at": db.utcnow().isoformat()})
    return {"version": version, "manifest_key": written["manifest_key"], "images": len(usable)}


class ProgressWriter:
    """Writes a training's progress onto its version row (at most every ``every_s`` seconds, and at each new
    phase), where the dashboard reads it while the version trains."""

    def __init__(self, version: str, every_s: float = 1.0) -> None:
        self.version = version
        self.every_s = every_s
        self.started_at = db.utcnow().isoformat()
        self._phase: str | None = None
        self._written = 0.0

    def __call__(self, phase: str, done: int, total: int) -> None:
        now = time.monotonic()
        if phase == self._phase and now - self._written < self.every_s and done < total:
            return
        self._phase, self._written = phase, now
        with db.session() as session:
            get_version(self.version, session=session).progress = {
                "phase": phase, "done": done, "total": total, "started_at": self.started_at,
                "updated_at": db.utcnow().isoformat()}


def train_version(version: str, run_id: str) -> dict[str, Any]:
    """Train ``version`` on its manifest; TRAINING_COMPLETED with metrics, or TRAINING_FAILED saying why."""
    with db.session() as session:
        row = get_version(version, session=session)
        options = {"final_on_all": parameters.value(parameters.TRAIN_FINAL_MODEL_ON_ALL_IMAGES, session=session),
                   "balance_labels": parameters.value(parameters.BALANCE_LABELS_IN_TRAINING, session=session),
                   "view": view_key(row.input_view)}
        quantize = parameters.value(parameters.QUANTIZE_BACKBONE, session=session)
        threshold = parameters.value(parameters.MINIMUM_LABEL_DETECTION_CONFIDENCE, session=session)
    if row.has_head:  # the step is being retried after it finished training (the row's session has closed)
        return {"trained": True, "version": version, "f1": row.f1}
    manifest = dataset.read_manifest(row.manifest_key)
    usable, left_out = dataset.trainable_entries(manifest["images"])
    started = time.perf_counter()
    try:
        result, twin = _train(dataset.labeled_examples(usable), version, options, quantize, threshold)
    except TrainingDataError as exc:
        change_status(version, ModelStatus.TRAINING_FAILED, str(exc), run_id, training_ended_at=db.utcnow(),
                      progress=None)
        return {"trained": False, "version": version, "reason": str(exc)}
    finally:
        memory.release_free_memory(after=f"training of {version}")
    seconds = time.perf_counter() - started
    rejected = _rejected_images(manifest["images"], result.rejected)
    used = [e for e in usable if e["key"] not in result.rejected]
    evaluation = {**result.evaluation.to_dict(), "left_out_labels": left_out, "training_options": options,
                  "suspect_labels": result.suspects,
                  "deployed_model_trained_on": "training and test split" if options["final_on_all"]
                  else "training split", "int8": twin.record if twin else None}
    excluded = [{**e, "split": "left out", "reason": left_out[e["label"]]} for e in manifest["images"]
                if e["label"] in left_out]
    dataset.store_manifest(row.manifest_key, {**manifest, "images": result.manifest() + excluded + [
        e for e in manifest["images"] if e.get("split") == "rejected"]})
    note = f"; left out {', '.join(sorted(left_out))} (too few images)" if left_out else ""
    if rejected:
        note += f"; {len(rejected)} unusable image(s) left out"
    if options["final_on_all"]:
        note += f"; then trained on all {len(result.train_keys) + len(result.test_keys)} images"
    change_status(version, ModelStatus.TRAINING_COMPLETED, f"F1 {result.evaluation.f1:.3f} on "
                  f"{len(result.test_keys)} test images{note}", run_id, head=result.head.to_bytes(),
                  evaluation={**evaluation, "rejected": result.rejected, "rejected_images": rejected,
                              "timings": result.timings},
                  f1=result.evaluation.f1, labels=result.head.labels, train_images=len(result.train_keys),
                  test_images=len(result.test_keys), training_seconds=seconds, training_ended_at=db.utcnow(),
                  dataset_digest=dataset.entries_digest(used), progress=None, **_backbone_fields(twin))
    return {"trained": True, "version": version, "f1": result.evaluation.f1,
            "images_embedded": result.images_embedded, "images_from_cache": result.images_from_cache,
            "rejected": result.rejected, "left_out_labels": left_out, "seconds": round(seconds, 3)}


def _train(examples: list[LabeledImage], version: str, options: dict[str, Any], quantize: bool,
           threshold: float) -> tuple[TrainingResult, int8.Twin | None]:
    """The head trained on ``examples`` (with Quantize-Backbone, its int8 twin's result when that serves) on a
    backbone session of its own, which goes back with its memory when this returns."""
    embedder, cache = endpoint.training_embedder()
    result = train_head(examples, embedder, cache, **options, progress=ProgressWriter(version))
    if not quantize:
        return result, None
    fp32_path, fp32_fingerprint = embedder.path, embedder.fingerprint
    # The fp32 session goes back before the twin's embeds: kept, its arena added ~320 MiB to the training's peak
    # (README Performance, item 65).
    del embedder, cache
    twin = _int8_twin(examples, result, fp32_path, fp32_fingerprint, options, threshold, ProgressWriter(version))
    return twin.result, twin


def _int8_twin(examples: list[LabeledImage], result: TrainingResult, fp32_path: Path, fp32_fingerprint: str,
               options: dict[str, Any], threshold: float, progress: ProgressWriter) -> int8.Twin:
    """Quantize-Backbone: the version's int8 twin (``modeling/int8.py``), trained on the same images and split."""
    settings = get_settings()
    return int8.train_twin(examples, result, fp32_path, fp32_fingerprint, folder=settings.cache_dir,
                           embeddings=settings.cache_dir / "embeddings", threshold=threshold, options=options,
                           progress=progress, recipe=int8.recipe_named(settings.int8_weights, int8.cpu_flags()))


def _backbone_fields(twin: int8.Twin | None) -> dict[str, Any]:
    """The version row's backbone columns: the int8 file and its fingerprint when the int8 twin serves."""
    if twin is None or twin.backbone is None:
        return {"backbone_fingerprint": None, "backbone_int8": None}
    return {"backbone_fingerprint": twin.record["backbone_fingerprint"], "backbone_int8": twin.backbone.read_bytes()}


def _rejected_images(entries: list[dict[str, Any]], decoder: dict[str, str]) -> list[dict[str, str]]:
    """Every image of the manifest that could not train, with the reason: rejected at its header when the
    manifest was written, or by the decoder in training (those are remembered as unusable too)."""
    found = []
    for entry in entries:
        reason = entry.get("reason") if entry.get("split") == "rejected" else decoder.get(entry["key"])
        if reason is None:
            continue
        if entry["key"] in decoder:
            dataset.record_unusable(entry["key"], entry["etag"], reason, "training")
        found.append({"key": entry["key"], "label": entry["label"], "reason": reason})
    return found


def write_evaluation(version: str) -> dict[str, Any]:
    """Write ``evaluation/<version>.json`` (per-label metrics, F1, confusion matrix, thresholds, timing)."""
    with db.session() as session:
        row = get_version(version, session=session)
        document = {"model_version": version, "created_at": row.created_at.isoformat(),
                    "training_seconds": row.training_seconds, **row.evaluation}
        key = f"evaluation/{version}.json"
        row.evaluation_key = key
    storage.put_object(key, json.dumps(document, indent=2, default=str).encode(), source="training")
    return {"evaluation_key": key, "f1": document.get("f1"),
            "per_label": {m["label"]: round(m["f1"], 4) for m in document.get("per_label", [])}}


def apply_f1_gate(version: str, run_id: str, found: dict[str, Any]) -> dict[str, Any]:
    """Judge ``version`` at the F1 gate on the human answers in ``found`` (``modeling/gate.py``) and store the
    verdict in its evaluation under "gate"; a refused version is TRAINING_FAILED, its metrics kept."""
    result = gate.judge(version, found)
    refusal = result.pop("refusal")
    with db.session() as session:
        row = get_version(version, session=session)
        row.evaluation = {**row.evaluation, "gate": result}
    if refusal:
        change_status(version, ModelStatus.TRAINING_FAILED, refusal, run_id)
    return result


def record_trained_images(version: str) -> dict[str, Any]:
    """Store how many images this version trained on (training and test split, not those left out) as
    ``previous_trained_images``: the training check counts new trainable images against it."""
    with db.session() as session:
        row = get_version(version, session=session)
        count = row.train_images + row.test_images
        parameters.update_system_state(session=session, previous_trained_images=count, last_trained_version=version)
    return {"previous_trained_images": count}


# ── deploy, roll back, stop ──────────────────────────────────────────────────


def check_deployable(version: str, *, session: Session) -> ModelVersion:
    """The version, if it has finished training and can be deployed; else :class:`ModelError` saying why."""
    row = get_version(version, session=session)
    if not row.has_head or row.status not in SERVABLE:
        raise ModelError(f"model version {version} is {row.status} and cannot be deployed; deployable "
                         "versions have finished training (TRAINING_COMPLETED or STOPPED)")
    return row


def check_stoppable(version: str, *, session: Session) -> ModelVersion:
    """The version, if it is RUNNING; else :class:`ModelError`."""
    row = get_version(version, session=session)
    if row.status != ModelStatus.RUNNING.value:
        raise ModelError(f"model version {version} is {row.status}, not RUNNING")
    return row


def start_version(version: str, run_id: str | None = None) -> dict[str, Any]:
    """Blue side: load and warm ``version`` in this process while the current version keeps serving."""
    with db.session() as session:
        row = get_version(version, session=session)
        if row.status == ModelStatus.RUNNING.value:
            return {"version": version, "status": row.status, "already_serving": True}
        check_deployable(version, session=session)
    change_status(version, ModelStatus.STARTING, "loading and warming up", run_id)
    try:
        loaded = endpoint.load(version)
    except Exception as exc:
        change_status(version, ModelStatus.FAILED, f"could not start: {exc}", run_id)
        raise
    return {"version": version, "status": ModelStatus.STARTING.value, "labels": loaded.labels}


def switch_endpoint(version: str, run_id: str | None = None) -> dict[str, Any]:
    """Make ``version`` the serving one in one transaction; the previous version is left STOPPING."""
    with db.session() as session:
        row = get_version(version, session=session)
        previous = serving_version(session=session)
        previous_name = previous.version if previous else None
        if previous is not None and previous.version != version:
            previous.status = ModelStatus.STOPPING.value
            previous.status_message = f"replaced by {version}"
        row.status = ModelStatus.RUNNING.value
        row.status_message = "serving"
        row.deployed_at = db.utcnow()
        row.stopped_at = None
        parameters.update_system_state(session=session, serving_version=version)
    endpoint.switch_to(version)
    notify_status(version, ModelStatus.RUNNING, "the endpoint now serves this version", run_id)
    return {"version": version, "status": ModelStatus.RUNNING.value,
            "previous": previous_name if previous_name != version else None}


def stop_version(version: str | None, run_id: str | None = None) -> dict[str, Any]:
    """Finish stopping ``version`` (a replaced one, or the serving one: then nothing serves)."""
    if version is None:
        return {"stopped": None}
    with db.session() as session:
        row = get_version(version, session=session)
        was_serving = row.status == ModelStatus.RUNNING.value
        if was_serving:
            parameters.update_system_state(session=session, serving_version=None)
            row.status = ModelStatus.STOPPING.value
    if was_serving:
        notify_status(version, ModelStatus.STOPPING, "the endpoint stops serving", run_id)
        endpoint.stop_serving(version)
    change_status(version, ModelStatus.STOPPED, "stopped", run_id, stopped_at=db.utcnow())
    return {"stopped": version, "was_serving": was_serving}


# ── export ───────────────────────────────────────────────────────────────────


def export_onnx(version: str, *, session: Session) -> bytes:
    """One ONNX file of ``version``: the backbone it serves with (fp32, or its int8 twin) + head + softmax, label
    names in the metadata."""
    row = get_version(version, session=session)
    head, backbone = head_of(row), endpoint.version_backbone(row)
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "model.onnx"
        build_full_model_onnx(backbone, head, out, model_version=version, input_view=row.input_view)
        data = out.read_bytes()
    memory.release_free_memory(after=f"export of {version}")
    return data


def suspect_labels(version: str, *, session: Session) -> list[dict[str, Any]]:
    """The training images whose folder label ``version``'s training confidently disagreed with (key, label,
    predicted, confidence), surest first; ``VersionNotFound`` for an unknown version."""
    return list((get_version(version, session=session).evaluation or {}).get("suspect_labels") or [])
