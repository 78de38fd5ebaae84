"""What counts as training data: unusable images and labels with too few images are left out of every count,
with the reason; a trainable set unchanged since the newest version trains no new version.

Runs the modeling data set code in this process on a real SQLite database and a local bucket (no server, no
backbone): fast and exact.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from images import box_logo, smile_logo
from labelloop import config, db
from labelloop.modeling import dataset
from labelloop.modeling.models import ModelStatus, ModelVersion
from labelloop.parameters import service as parameters
from labelloop.storage import service as storage


@pytest.fixture
def bucket(tmp_path: Path) -> Iterator[None]:
    settings = config.configure(home=tmp_path / "home")
    settings.resolved_home.mkdir(parents=True)
    db.init(settings.app_database_url)
    storage.ensure_bucket()
    with db.session() as session:
        parameters.ensure_defaults(session=session)
    yield
    db.close()
    config.configure()


def put(key: str, data: bytes) -> str:
    """Store an object straight into the bucket, as an S3 client would (no upload check): its ETag."""
    return storage.put_object(key, data, source="test").etag


def test_unusable_images_and_thin_labels_are_not_training_data(bucket: None) -> None:
    for i in range(3):
        put(f"images_labeled_by_folder/amazon_logo/a{i}.png", smile_logo(i))
        put(f"images_labeled_by_folder/aws_logo/b{i}.png", box_logo(i))
    put("images_labeled_by_folder/lonely/only.png", smile_logo(9))
    pdf_etag = put("images_labeled_by_folder/aws_logo/notes.png", b"%PDF-1.4 a document, not an image")

    # Found at arrival (an S3 upload labelloop did not see): remembered, with the reason.
    problem = dataset.check_stored_image("images_labeled_by_folder/aws_logo/notes.png", pdf_etag)
    assert problem is not None and "PDF" in problem
    data = dataset.training_data()
    assert sorted(key for key, _, _ in data.images) == sorted(
        [f"images_labeled_by_folder/amazon_logo/a{i}.png" for i in range(3)]
        + [f"images_labeled_by_folder/aws_logo/b{i}.png" for i in range(3)])
    assert data.per_label() == [("amazon_logo", 3), ("aws_logo", 3)]
    assert list(data.left_out_labels) == ["lonely"] and "add more images" in data.left_out_labels["lonely"]
    assert [(u["key"], u["found_by"]) for u in data.unusable] == [
        ("images_labeled_by_folder/aws_logo/notes.png", "arrival check")]

    # The training check counts only what can train: 6, not 8 (7 are images, one of a label left out).
    decision = dataset.check_new_training("requested by test")
    assert decision["trainable_images"] == 6 and decision["untrained_images"] == 6
    assert decision["labeled_images"] == 7
    assert decision["left_out_labels"] == data.left_out_labels and decision["unusable_images"] == 1

    # Replaced by a real image (a new ETag at the same key), it counts again.
    put("images_labeled_by_folder/aws_logo/notes.png", box_logo(7))
    assert len(dataset.training_data().images) == 7


def test_the_manifest_marks_what_cannot_train_and_its_digest_is_that_of_the_trainable_set(bucket: None) -> None:
    for i in range(2):
        put(f"images_labeled_by_folder/amazon_logo/a{i}.png", smile_logo(i))
        put(f"images_labeled_by_folder/aws_logo/b{i}.png", box_logo(i))
    put("images_labeled_by_folder/aws_logo/page.png", b"<!doctype html><html>hello</html>")
    written = dataset.write_manifest("v1", "run-1")
    rejected = [e for e in written["entries"] if e.get("split") == "rejected"]
    assert [e["key"] for e in rejected] == ["images_labeled_by_folder/aws_logo/page.png"]
    assert "HTML" in rejected[0]["reason"]
    assert written["trainable"] == 4
    assert written["dataset_digest"] == dataset.dataset_digest(dataset.training_data().images)


def test_an_unchanged_trainable_set_trains_no_new_version(bucket: None) -> None:
    for i in range(5):
        put(f"images_labeled_by_folder/amazon_logo/a{i}.png", smile_logo(i))
        put(f"images_labeled_by_folder/aws_logo/b{i}.png", box_logo(i))
    assert dataset.check_new_training("requested by test")["train"] is True
    # The newest version trained on exactly these images and serves, yet previous_trained_images lags behind
    # (e.g. it was deployed by hand after the F1 gate refused it): still no new version.
    digest = dataset.dataset_digest(dataset.training_data().images)
    with db.session() as session:
        session.add(ModelVersion(version="v2", status=ModelStatus.RUNNING.value, dataset_digest=digest,
                                 image_count=10))
    decision = dataset.check_new_training("requested by test")
    assert decision["train"] is False and decision["unchanged_since"] == "v2"
    assert "exactly those v2 was trained on" in decision["reason"]
    # One more image changes the set: it trains (Minimum-Untrained-Images counts from 0 here).
    put("images_labeled_by_folder/aws_logo/b9.png", box_logo(9))
    assert dataset.check_new_training("requested by test")["train"] is True
