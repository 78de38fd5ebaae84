"""Object metadata and the bucket's folder names."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

LABELED_FOLDER = "images_labeled_by_folder/"
DETECTION_FOLDER = "images_for_detection/"
HUMAN_LOOP_FOLDER = "a2i-human-loop-data/"
EVALUATION_FOLDER = "evaluation/"
MANIFEST_FOLDER = "manifests/"
BUCKET_FOLDERS = (LABELED_FOLDER, DETECTION_FOLDER, HUMAN_LOOP_FOLDER, EVALUATION_FOLDER, MANIFEST_FOLDER)


class ObjectInfo(BaseModel):
    """One stored object, as S3 would list it."""

    key: str
    size: int
    etag: str
    last_modified: datetime
    content_type: str | None = None
    # Set on an upload: the same bytes were already stored at this key, so nothing changed (no new run).
    unchanged: bool = False
    message: str | None = None
    run_id: str | None = None  # the "object created" run of an upload under an event folder (uploads for detection
    # that arrive together share one run, each with its own detection event)
