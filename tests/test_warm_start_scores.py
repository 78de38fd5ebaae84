"""A warm start scores the stored images (answered audits and the previous version's latest detections) with both
heads: each head in one call on all of them, with the same answer per image as one image at a time (real heads with
a familiarity bank; one image at a time paid a whole block of the bank's product each)."""

from __future__ import annotations

from typing import Any

import numpy as np

from labelloop.detection import warm_start
from labelloop.modeling.predict import ranked
from labelloop.modeling.training import Head

DIM = 1280


def head_with_bank(labels: list[str], seed: int) -> Head:
    """A head of ``labels`` with a familiarity bank of 12 rows a label that weighs in (a non-zero slope)."""
    rng = np.random.default_rng(seed)
    bank = rng.standard_normal((len(labels), 12, DIM))
    return Head(labels, rng.standard_normal((len(labels), DIM)), rng.standard_normal(len(labels)),
                bank=bank / np.linalg.norm(bank, axis=2, keepdims=True), familiar_slope=8.0,
                familiar_offset=rng.uniform(-1, 1, len(labels)))


class Counted:
    """A head that counts its calls."""

    def __init__(self, head: Head) -> None:
        self.head, self.labels, self.calls = head, head.labels, 0

    def predict_proba(self, embeddings: np.ndarray) -> Any:
        self.calls += 1
        return self.head.predict_proba(embeddings)


def test_both_heads_score_every_image_in_one_call_with_the_answers_of_one_image_at_a_time() -> None:
    new, previous = Counted(head_with_bank(["a", "b", "c"], 0)), Counted(head_with_bank(["a", "b"], 1))
    plan = warm_start.Plan("v2", "v1", new, previous, backbone=(None, None), thresholds={}, audits=[], window=[])
    rng = np.random.default_rng(2)
    vectors = {(f"digest-{i}", "orig"): rng.standard_normal(DIM).astype(np.float32) for i in range(21)}
    scored = warm_start.scored_by_both(plan, vectors)
    assert (new.calls, previous.calls) == (1, 1)
    for (digest, _), vector in vectors.items():
        alone = tuple(ranked(list(h.labels), h.head.predict_proba(vector[None, :])[0])[0] for h in (new, previous))
        assert scored[digest] == alone, digest
    assert len({top for top, _ in scored.values()}) > 1, "the heads answer differently on different images"
    assert warm_start.scored_by_both(plan, {}) == {}
