"""The hidden "none of the above" class: images reviewers answered None of the Above train as a class whose
softmax share lowers every real label's confidence, and which never is, or changes, an answer.

Handwritten digits (scikit-learn's scans): the head knows digits 0-4; digits 5-9 are the kinds it never trained
on, some of which reviewers answered None of the Above (the negatives), and held-out ones are the test.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from labelloop.modeling.embedding import Embedder, EmbeddingCache
from labelloop.modeling.export import build_full_model_onnx
from labelloop.modeling.images import prepare
from labelloop.modeling.training import (
    DEFAULT_C_GRID,
    NEGATIVE_LABEL,
    Head,
    LabeledImage,
    _Design,
    _fit_head,
    add_hidden_class,
    l2_normalize,
    out_of_fold_logits,
    softmax,
    train_head,
)

from .conftest import pick

KNOWN = {f"digit-{n}" for n in range(5)}


def _as_negatives(examples: list[LabeledImage]) -> list[LabeledImage]:
    return [LabeledImage(f"images_none_of_the_above/{e.key.rsplit('/', 1)[-1]}", NEGATIVE_LABEL, e.content)
            for e in examples]


def test_negatives_lower_confidence_on_images_like_them_and_are_never_an_answer(
        digits: list[tuple[str, bytes]], embedder: Embedder, cache: EmbeddingCache, backbone_onnx: Path,
        tmp_path: Path) -> None:
    import onnxruntime as ort

    labeled = [e for e in pick(digits, 12, prefix="neg-train") if e.label in KNOWN]
    negatives = _as_negatives([e for e in pick(digits, 8, prefix="neg-none") if e.label not in KNOWN])
    held_out = pick(digits, 10, skip=12, prefix="neg-test")
    plain = train_head(labeled, embedder, cache, balance_labels=True, final_on_all=True)
    hidden = train_head(labeled + negatives, embedder, cache, balance_labels=True, final_on_all=True)
    assert hidden.head.labels == plain.head.labels == sorted(KNOWN)
    assert hidden.head.hidden == 1 and hidden.head.W.shape[0] == 6 and plain.head.hidden == 0
    np.testing.assert_array_equal(hidden.head.W[:5], plain.head.W)  # the labels' rows are fitted without it
    assert NEGATIVE_LABEL not in {s["label"] for s in hidden.suspects} | {s["predicted"] for s in hidden.suspects}
    assert all(e.key not in hidden.test_keys for e in negatives)  # the hidden class trains, never tests
    assert {row["label"] for row in hidden.manifest() if row["key"].startswith("images_none_of_the_above/")} \
        == {NEGATIVE_LABEL}

    strangers = embedder.embed_images([e.data() for e in held_out if e.label not in KNOWN])
    known = [e for e in held_out if e.label in KNOWN]
    x_known = embedder.embed_images([e.data() for e in known])
    before, after = plain.head.predict_proba(strangers).max(1), hidden.head.predict_proba(strangers).max(1)
    assert after.mean() < before.mean() - 0.15, (before.mean(), after.mean())
    assert (after >= 0.7).mean() < (before >= 0.7).mean(), ((before >= 0.7).mean(), (after >= 0.7).mean())
    proba = hidden.head.predict_proba(x_known)
    assert proba.shape == (len(known), 5) and np.all(proba.sum(1) <= 1 + 1e-9)
    right = np.array(hidden.head.labels)[proba.argmax(1)] == np.array([e.label for e in known])
    every = np.vstack([strangers, x_known])  # the hidden class changes confidence, never the answer
    np.testing.assert_array_equal(hidden.head.predict_proba(every).argmax(1), plain.head.predict_proba(every).argmax(1))
    assert right.mean() >= 0.8 and (proba.max(1)[right] >= 0.7).mean() >= 0.6, right.mean()

    loaded = Head.load(io.BytesIO(hidden.head.to_bytes()))
    assert loaded.hidden == 1 and loaded.labels == hidden.head.labels
    np.testing.assert_allclose(loaded.predict_proba(strangers), hidden.head.predict_proba(strangers), atol=1e-6)
    data = [e.data() for e in held_out[:6]]
    out = build_full_model_onnx(backbone_onnx, hidden.head, tmp_path / "hidden.onnx")
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"input": np.stack([prepare(d) for d in data])})
    np.testing.assert_allclose(got, hidden.head.predict_proba(embedder.embed_images(data)), atol=1e-4, rtol=0)


def test_a_single_negative_is_left_out_as_a_label_would_be(digits: list[tuple[str, bytes]], embedder: Embedder,
                                                          cache: EmbeddingCache) -> None:
    labeled = [e for e in pick(digits, 4, prefix="neg-one") if e.label in ("digit-0", "digit-1")]
    one = _as_negatives([e for e in pick(digits, 1, prefix="neg-one-none") if e.label == "digit-7"])
    result = train_head(labeled + one, embedder, cache)
    assert result.head.hidden == 0 and result.head.labels == ["digit-0", "digit-1"]
    assert one[0].key not in result.train_keys


def test_hidden_row_options_change_confidence_never_the_answer(digits: list[tuple[str, bytes]],
                                                              embedder: Embedder) -> None:
    """The fitting options the open-set benchmark compares (bench/real_images/openset_sweep.py): out-of-fold
    offsets, the negatives' share and the penalty move the hidden row only."""
    labeled = [e for e in pick(digits, 12, prefix="neg-train") if e.label in KNOWN]
    labels = sorted(KNOWN)
    x = l2_normalize(embedder.embed_images([e.data() for e in labeled]))
    y = np.array([labels.index(e.label) for e in labeled])
    design = _Design(x, y, np.ones(len(y)), np.arange(len(y)))
    head = _fit_head(design, labels, c_grid=DEFAULT_C_GRID, folds=3, seed=0, meta={})[0]
    negatives = list(embedder.embed_images(
        [e.data() for e in pick(digits, 8, prefix="neg-none") if e.label not in KNOWN]))
    held_out = embedder.embed_images([e.data() for e in pick(digits, 10, skip=12, prefix="neg-test")])

    oof = out_of_fold_logits(design, len(labels), head.meta["C"], head.temperature)
    assert oof.shape == (len(y), len(labels))
    # images the head did not train on score lower than its own training images do
    assert softmax(oof).max(1).mean() < softmax(head.logits(x)).max(1).mean()
    plain = add_hidden_class(head, design, negatives)
    fits = {"oof": add_hidden_class(head, design, negatives, known_logits=oof),
            "half": add_hidden_class(head, design, negatives, share=0.5),
            "penalty": add_hidden_class(head, design, negatives, penalty=0.1)}
    answers = head.predict_proba(held_out).argmax(1)
    for name, fitted in fits.items():
        assert fitted.hidden == 1, name
        np.testing.assert_array_equal(fitted.W[:len(labels)], head.W)
        np.testing.assert_array_equal(fitted.predict_proba(held_out).argmax(1), answers)
    strangers = np.stack(negatives)
    # negatives weighing half the fit push their own kind's confidence further down than weighing as one label
    assert fits["half"].predict_proba(strangers).max(1).mean() < plain.predict_proba(strangers).max(1).mean()
    # out-of-fold offsets: the labels' images enter the fit as unseen ones score, so the hidden row takes less
    # from unseen images of the labels (the benchmark's +6 to +15 points of right answers confident on objects)
    tested = pick(digits, 10, skip=12, prefix="neg-test")
    known = held_out[[e.label in KNOWN for e in tested]]
    assert fits["oof"].predict_proba(known).max(1).mean() > plain.predict_proba(known).max(1).mean()
