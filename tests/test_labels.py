"""One rule for label names (labelloop.labels), applied the same by storage, training and the task template."""

from __future__ import annotations

import unicodedata
from urllib.parse import quote

import pytest

from conftest import Server
from images import smile_logo
from labelloop import labels
from labelloop.modeling.dataset import label_names

NFC = unicodedata.normalize("NFC", "café")
NFD = unicodedata.normalize("NFD", "café")


@pytest.mark.parametrize("name", ["a:b", "a*", "why?", 'say"', "<b>", "a|b", "a/b", "a\\b", "dot.", ".hidden",
                                  "", "   ", "x" * 101, "🙂" * 64, "zero\u200bwidth", "tab\there"])
def test_names_that_cannot_be_labels_are_refused_with_the_rule(name: str) -> None:
    with pytest.raises(labels.InvalidLabel, match="a label has 1-100 characters"):
        labels.check_label(name)


def test_labels_are_nfc_without_surrounding_spaces() -> None:
    assert NFC != NFD and labels.check_label(NFD) == NFC
    assert labels.check_label("  red  ") == "red"
    assert labels.check_label("amazon_logo") == "amazon_logo"


def test_case_and_normalisation_twins_are_one_label() -> None:
    assert labels.check_new_label("red", ["red", "blue"]) == "red"
    with pytest.raises(labels.InvalidLabel, match="differs from the existing label 'red' only in letter case"):
        labels.check_new_label("Red", ["red"])
    with pytest.raises(labels.InvalidLabel, match="existing label 'Café'"):
        labels.check_new_label(NFD, ["Café"])


def test_training_merges_twins_and_leaves_out_folders_that_are_not_labels() -> None:
    names, invalid = label_names({"red", "Red", NFD, "a:b", "blue"})
    assert names == {"Red": "Red", "red": "Red", NFD: NFC, "blue": "blue"}
    assert set(invalid) == {"a:b"} and "rename the folder images_labeled_by_folder/a:b/" in invalid["a:b"]


def test_storage_applies_the_rule_to_label_folders(shared_server: Server) -> None:
    with shared_server.client() as api:
        for bad in ("a:b", "why?", "dot.", 'say"'):
            response = api.put(f"/objects/images_labeled_by_folder/{quote(bad)}/x.png", content=smile_logo(1))
            assert response.status_code == 400 and "the folder under images_labeled_by_folder/ names the label" \
                in response.json()["detail"], response.text
        # macOS writes NFD: the image joins the NFC label, it does not start a second one.
        first = api.put(f"/objects/images_labeled_by_folder/{NFC}/1.png", content=smile_logo(1))
        second = api.put(f"/objects/images_labeled_by_folder/{NFD}/2.png", content=smile_logo(2))
        assert first.status_code == second.status_code == 201, second.text
        assert second.json()["key"] == f"images_labeled_by_folder/{NFC}/2.png"
        folders = {key["key"].split("/")[1] for key in api.get("/objects", params={
            "prefix": "images_labeled_by_folder/"}).json()}
        assert NFD not in folders and NFC in folders
        # A case-only twin of an existing label is refused, naming it.
        assert api.put("/objects/images_labeled_by_folder/red/1.png", content=smile_logo(3)).status_code == 201
        twin = api.put("/objects/images_labeled_by_folder/Red/1.png", content=smile_logo(4))
        assert twin.status_code == 400 and "existing label 'red'" in twin.json()["detail"]
        # The task template's extra labels follow the same rule.
        refused = api.put("/task-template", json={"extra_labels": ["RED"]})
        assert refused.status_code == 422 and "existing label 'red'" in refused.json()["detail"], refused.text
        refused = api.put("/task-template", json={"extra_labels": ["a:b"]})
        assert refused.status_code == 422 and "a label has 1-100 characters" in refused.json()["detail"]
        accepted = api.put("/task-template", json={"extra_labels": [f" {NFD} ", "green"]})
        assert accepted.status_code == 200 and accepted.json()["extra_labels"] == [NFC, "green"], accepted.text
