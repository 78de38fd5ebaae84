"""Train a model version's head on cached backbone embeddings.

Pipeline (`train_head`):

1. **Validate**: at least two labels, and every label with at least two distinct images (one to train on,
   one to test on); otherwise `TrainingDataError` says what is wrong and what is required.
2. **Embed** every distinct image once through `embed_cached`: the cache is keyed by content hash, so a
   retrain runs the backbone only on new images. Images that do not decode are left out and reported.
3. **Split**, stratified and deterministic (`split_examples`): per label, distinct images are ranked by
   sha256(seed, content hash) and the first round(20 %) — at least one, at most all but one — are the test
   split (Rekognition's 80/20 when no test set is given). Same data ⇒ same split; identical content under two
   keys always lands on the same side, so a duplicate never leaks from training into the test.
4. **Head**: L2-normalised embeddings → multinomial logistic regression (softmax, L2 penalty on W,
   L-BFGS; our own ~30 lines of numpy/scipy so folds can warm-start each other). Measured on load_digits
   by bench/bench_head.py (3 random draws, test on all other images): weak regularisation wins (macro-F1
   0.875 at C = 1000, 0.867 at 100, 0.774 at 1 with 20/label), standardising features loses (0.827) and
   augmented views (flip, centre zoom, corner zooms, all four) scored 0.000 to 0.014 *below* no
   augmentation while costing a backbone pass per view and training image. So the default is **no
   augmentation**; `augment=("flip",)` etc. switch views on, weighted 1/V so each image counts once.
5. **Calibration**: temperature scaling fitted on *out-of-fold* logits of a stratified k-fold (k ≤ 3)
   cross-validation on the training split only. The same out-of-fold logits choose C from a small grid
   (lowest calibrated log-loss). The test split is never used to fit anything, so the reported test metrics
   (and the calibration error measured on it) are honest. Fitting T on the test split would be cheaper but
   would leak into the reported calibration; fold models train on (k-1)/k of the data, so the temperature
   is slightly conservative (measured within ~7 % of the test-optimal T on load_digits, ECE ≈ 0.01–0.02).
   When a label has a single training image no fold can hold it out: T = 1 and the evaluation says so.
6. **Evaluate** the calibrated head on the test split (`evaluation.evaluate`).
7. **Suspect training labels** (`suspect_labels`): the out-of-fold probabilities of step 5 come from models
   that did not train on the image; where another label gets ≥ 70 the image is listed as a suspect (a wrong
   folder, or an odd image), for an operator to send to review as "Label Audit" loops.
8. **Final training on all images** (`final_on_all=True`; parameter `Train-Final-Model-On-All-Images`, on
   by default; the argument's default here is off): after step 6, steps 4, 5 and 7 run once more on every usable
   image, training and test split, and that head is the one returned (and deployed). The reported metrics
   stay those of step 6, an honest held-out estimate of a model trained on 80 % of the data, so slightly
   pessimistic for the deployed one.
   Why: with the human loop, the labeled images are the ones the model was unsure of, the most informative
   there are, and the default split keeps a fifth of them out of the model for good; with 2 images per label
   the first model would learn from one (and could not be calibrated). Measured with
   bench/loop_simulation/offline.py (load_digits, 3 seeded plans, threshold 70): held-out macro-F1 of the
   loop's last version +0.010 to +0.015, of full supervision −0.006 to +0.009.

**Label balance** (`balance_labels=True`; parameter `Balance-Labels-In-Training`, on by default): each
label's images together weigh the same in the fit (row weight n / (labels · n_label)), instead of each image
weighing the same. Human review sends the images the model is unsure of, so labels arrive in skewed numbers
(the confusable ones often) and the softmax biases would learn that skew as a prior. Measured the same way,
with final training on all images: the loop's last version +0.002 to +0.006 macro-F1, full supervision (whose
labels arrive balanced) unchanged to 4 decimals.

Small dense linear algebra runs with one BLAS thread: measured here on two (shared) cores, multi-threaded
OpenBLAS made these N×1280 products 5–10× slower, and erratic, under load.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import math
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from labelloop.files import atomic_write_bytes
from labelloop.modeling.bank_graph import BANK, bank_rows, nearest_cosine_model
from labelloop.modeling.embedding import CachedEmbeddings, Embedder, EmbeddingCache, embed_cached
from labelloop.modeling.evaluation import Evaluation, evaluate
from labelloop.modeling.images import VIEWS, content_hash

TEST_FRACTION = 0.2
DEFAULT_C_GRID = (100.0, 1000.0)
DEFAULT_FOLDS = 3
MAX_ITER = 500
GTOL = 1e-5
NORM_EPS = 1e-12
# 3: one familiarity factor per image (the softmax-weighted mean of the labels' familiarities), so the answer
# is always the softmax's; 2: per-label factors (nearest-neighbour familiarity); 1: centroid familiarity.
# Heads of every format load and predict as they were saved.
HEAD_FORMAT = 3


class TrainingDataError(ValueError):
    """The labeled images cannot train a model; the message says what is wrong and what is required."""


@dataclass(frozen=True)
class LabeledImage:
    """One training image: its object key, label and bytes (or a loader), optionally its sha256 hex.

    Give `content_hash` when it is known (e.g. from the manifest): a retrain then reads no bytes of images
    whose embeddings are cached.
    """

    key: str
    label: str
    content: bytes | Callable[[], bytes]
    content_hash: str | None = None

    def data(self) -> bytes:
        """The image bytes (calls the loader)."""
        return self.content() if callable(self.content) else self.content

    def digest(self) -> str:
        """sha256 hex of the content (reads it unless content_hash was given)."""
        return self.content_hash or content_hash(self.data())


# ── the head ────────────────────────────────────────────────────────────────────────────────────────


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows divided by their L2 norm (float64)."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), NORM_EPS)


# Products of a batch of embeddings with a head's matrices run on blocks of exactly this many rows, the last block
# padded with zeros: OpenBLAS picks its kernel by the number of rows, and the kernels round differently (up to
# 2.6e-6 in a float32 cosine on a Zen 3), so an image's confidence, shown to 4 decimals, would otherwise depend on
# the batch it happened to be served in. 8 is the micro-batcher's largest batch: a full batch is one product.
PRODUCT_ROWS = 8


def rowwise_product(rows: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """``rows @ matrix``, each row's result bit-identical whatever other rows come with it (``PRODUCT_ROWS``)."""
    return in_blocks(rows, lambda block: block @ matrix, matrix.shape[1], np.result_type(rows, matrix))


def in_blocks(rows: np.ndarray, product: Callable[[np.ndarray], np.ndarray], width: int,
              dtype: np.dtype | type) -> np.ndarray:
    """``product`` of ``rows`` (N×``width`` of ``dtype``), run on blocks of exactly ``PRODUCT_ROWS`` rows, the last
    padded with zeros, so that each row's result does not depend on the rows that come with it."""
    count = len(rows)
    padded = np.zeros((-(-count // PRODUCT_ROWS) * PRODUCT_ROWS, rows.shape[1]), dtype=rows.dtype)
    padded[:count] = rows
    blocks = [product(padded[start:start + PRODUCT_ROWS]) for start in range(0, len(padded), PRODUCT_ROWS)]
    if not blocks:
        return np.zeros((0, width), dtype=dtype)
    return np.concatenate(blocks)[:count]


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax, numerically stable."""
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@dataclass
class Head:
    """Linear head: confidence = softmax((normalise(embedding) · Wᵀ + b) / temperature) × familiarity.

    `W` is labels×1280 and `b` has one entry per label (both stored float32, as the ONNX export uses them).

    Familiarity answers "does this image look like the training images of this label at all?", which a
    closed-set softmax cannot: a picture of something never seen still gets ~100 % for whichever label it is
    least unlike. Per label j it is sigmoid(familiar_slope · s_j + familiar_offset_j), where s_j is the cosine
    of the image to its **nearest training image of label j**: `bank` is labels×R×1280, unit rows, each
    label's training images (at most MAX_BANK_PER_LABEL), padded to R by repeating its own rows (a repeat does
    not change a maximum, and the equal row count keeps the ONNX graph a reshape and a max).
    Slope and offsets are fitted on the training images alone (`_nearest_familiarity`): a logistic
    regression telling each image's similarity to the *other* images of its own label (leave-one-out) from
    the similarity of every other label's images to this label: the other labels are the only examples of
    "something else" the training data has, so they say how close an unrelated image comes under this
    label. Each offset is then raised where needed so familiarity is ≥ COVERAGE_FAMILIARITY at the
    COVERAGE_QUANTILE of the label's own leave-one-out similarities (`coverage_offset`): labels that look
    alike keep their confidence. Format 3 (`format`) multiplies every label by one factor per image,
    Σ softmax × familiarity, so the answer is the softmax's; format-2 heads keep per-label factors. Chosen on
    the real-image benchmark (bench/real_images) over the centroid rule of format-1 heads (`centroids`,
    `familiar_at`, `familiar_scale`: still loaded and applied for heads saved before).

    `hidden`: W and b may end with rows of a hidden "none of the above" class (`add_hidden_class`) that take part
    in the softmax and whose columns `predict_proba` drops: `labels` are the real labels only.
    """

    labels: list[str]
    W: np.ndarray
    b: np.ndarray
    temperature: float = 1.0
    normalize: bool = True
    meta: dict[str, Any] = field(default_factory=dict)
    centroids: np.ndarray | None = None
    familiar_at: np.ndarray | None = None
    familiar_scale: np.ndarray | None = None
    bank: np.ndarray | None = None
    familiar_slope: float = 0.0
    familiar_offset: np.ndarray | None = None
    format: int = HEAD_FORMAT
    hidden: int = 0  # trailing rows of W and b that are the hidden "none of the above" class (`add_hidden_class`)

    def __post_init__(self) -> None:
        self.labels = list(self.labels)
        self.hidden = int(self.hidden)
        self.W = np.asarray(self.W, dtype=np.float32).reshape(len(self.labels) + self.hidden, -1)
        self.b = np.asarray(self.b, dtype=np.float32).reshape(len(self.labels) + self.hidden)
        self.temperature = float(self.temperature)
        self.familiar_slope = float(self.familiar_slope)
        if self.bank is not None:
            self.bank = np.asarray(self.bank, dtype=np.float32).reshape(len(self.labels), -1, self.W.shape[1])
            self.familiar_offset = np.asarray(self.familiar_offset, dtype=np.float32).reshape(len(self.labels))
        if self.centroids is not None:
            self.centroids = np.asarray(self.centroids, dtype=np.float32).reshape(len(self.labels), -1)
            self.familiar_at = np.asarray(self.familiar_at, dtype=np.float32).reshape(len(self.labels))
            self.familiar_scale = np.asarray(self.familiar_scale, dtype=np.float32).reshape(len(self.labels))

    @functools.cached_property
    def _nearest_cosines(self) -> Callable[[np.ndarray], np.ndarray]:
        """The bank's product on one block of ``PRODUCT_ROWS`` unit rows (float32) → the cosine to each label's
        nearest bank row (float32, block × labels), in ONNX Runtime on the calling thread (no thread pool), with
        the graph the exported model computes it with (`bank_graph.nearest_cosine_nodes`). ONNX Runtime packs the
        bank for its kernel once, when the session is made; numpy's BLAS packed it again for every batch: a block
        of 8 against a 10 × 256 bank took 2.1 ms of CPU that way, 0.6 this way (README Performance, item 45).
        The bank is given from the head's array; the session keeps a copy of it and its packed form (for a 10 × 256
        bank 12 MiB more than the transposed copy the numpy product kept)."""
        import onnxruntime as ort


        assert self.bank is not None
        rows = bank_rows(self.bank)
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.enable_cpu_mem_arena = False
        options.add_external_initializers([BANK], [ort.OrtValue.ortvalue_from_numpy(rows)])
        session = ort.InferenceSession(nearest_cosine_model(self.bank.shape, PRODUCT_ROWS), options,
                                       providers=["CPUExecutionProvider"])

        def product(block: np.ndarray) -> np.ndarray:
            return session.run(None, {"head_z": block})[0]

        return product

    def nearest_similarity(self, embeddings: np.ndarray) -> np.ndarray:
        """N×labels: cosine of each image to its nearest training image of each label.

        In float32, as the familiarity's slope and offsets were fitted (`_nearest_familiarity`) and as the
        exported graph computes it, with the same graph (`_nearest_cosines`, README Performance, items 38 and 45);
        an image's cosines do not depend on the batch it comes in (`in_blocks`)."""
        assert self.bank is not None
        unit = l2_normalize(embeddings).astype(np.float32)
        return in_blocks(unit, self._nearest_cosines, len(self.labels), np.float32).astype(np.float64)

    def familiarity(self, embeddings: np.ndarray) -> np.ndarray:
        """Per image and label, how much the image resembles that label's training images (0-1)."""
        if self.bank is not None:
            z = self.familiar_slope * self.nearest_similarity(embeddings) + self.familiar_offset
            return 1.0 / (1.0 + np.exp(-z))
        if self.centroids is None:
            return np.ones((len(embeddings), len(self.labels)))
        cos = rowwise_product(l2_normalize(embeddings), self.centroids.T.astype(np.float64))
        z = (cos - self.familiar_at) / self.familiar_scale
        return 1.0 / (1.0 + np.exp(-z))

    def logits(self, embeddings: np.ndarray) -> np.ndarray:
        """Calibrated logits N×(labels + hidden) (already divided by the temperature); a hidden class's column
        comes last."""
        x = l2_normalize(embeddings) if self.normalize else np.asarray(embeddings, dtype=np.float64)
        return (rowwise_product(x, self.W.T.astype(np.float64)) + self.b) / self.temperature

    def predict_proba(self, embeddings: np.ndarray) -> np.ndarray:
        """Confidences N×labels (0-1), columns in `labels` order: calibrated softmax × familiarity.

        Format 3: every label's softmax times one factor per image, Σ_k softmax_k · familiarity_k (for a
        confident softmax, the familiarity of its answer), so familiarity lowers confidence but never changes
        which label wins (per-label factors did: −10 points of macro-F1 on fruit against vegetable photos at
        5 per label, bench/real_images). Formats 1–2: per-label factors, as saved.

        A hidden class (`hidden`) takes part in the softmax and its column is then dropped: its share lowers
        every label's confidence and it is never an answer (the familiarity factor weighs the real labels'
        share of the softmax)."""
        proba, familiar = visible_softmax(self.logits(embeddings), self.hidden), self.familiarity(embeddings)
        if self.bank is not None and self.format >= 3:
            weights = proba / np.maximum(proba.sum(axis=1, keepdims=True), NORM_EPS) if self.hidden else proba
            return proba * np.sum(weights * familiar, axis=1, keepdims=True)
        return proba * familiar

    def to_bytes(self) -> bytes:
        """The head as `.npz` bytes (no pickled objects)."""
        buffer = io.BytesIO()
        header = {"format": self.format, "labels": self.labels, "temperature": self.temperature,
                  "normalize": self.normalize, "meta": self.meta, "familiar_slope": self.familiar_slope}
        if self.hidden:
            header["hidden"] = self.hidden
        arrays = {"W": self.W, "b": self.b}
        if self.centroids is not None:
            arrays.update(centroids=self.centroids, familiar_at=self.familiar_at, familiar_scale=self.familiar_scale)
        if self.bank is not None:
            arrays.update(bank=self.bank, familiar_offset=self.familiar_offset)
        np.savez(buffer, header=np.array(json.dumps(header)), **arrays)
        return buffer.getvalue()

    def save(self, target: str | Path | BinaryIO) -> None:
        """Write to a path (atomically) or a binary file object."""
        data = self.to_bytes()
        if isinstance(target, str | Path):
            atomic_write_bytes(target, data)
        else:
            target.write(data)

    @classmethod
    def load(cls, source: str | Path | BinaryIO) -> Head:
        """Read a head written by `save`."""
        with np.load(source, allow_pickle=False) as npz:
            header = json.loads(str(npz["header"]))
            familiar = {name: npz[name] for name in ("centroids", "familiar_at", "familiar_scale", "bank",
                                                     "familiar_offset") if name in npz}
            return cls(labels=header["labels"], W=npz["W"], b=npz["b"], temperature=header["temperature"],
                       normalize=header["normalize"], meta=header.get("meta", {}),
                       familiar_slope=header.get("familiar_slope", 0.0), format=int(header.get("format", 1)),
                       hidden=int(header.get("hidden", 0)), **familiar)


def visible_softmax(logits: np.ndarray, hidden: int) -> np.ndarray:
    """The softmax of every column, without the last `hidden` ones (rows then sum to at most 1)."""
    proba = softmax(logits)
    return proba[:, :proba.shape[1] - hidden] if hidden else proba


# ── fitting ─────────────────────────────────────────────────────────────────────────────────────────


def _objective(x: np.ndarray, y: np.ndarray, w: np.ndarray, lam: float, n_labels: int) -> Callable:
    """Weighted mean cross-entropy + lam/2·‖W‖² and its gradient, over θ = [W (D×L) ravelled, b]."""
    n, d = x.shape
    x32 = x.astype(np.float32)
    onehot = np.eye(n_labels)[y]
    weights = (w / w.sum())[:, None]

    def f(theta: np.ndarray) -> tuple[float, np.ndarray]:
        coef = theta[:d * n_labels].reshape(d, n_labels)
        z = (x32 @ coef.astype(np.float32)).astype(np.float64) + theta[d * n_labels:]
        z -= z.max(axis=1, keepdims=True)
        ez = np.exp(z)
        total = ez.sum(axis=1, keepdims=True)
        loss = float(np.sum(weights[:, 0] * (np.log(total[:, 0]) - z[np.arange(n), y])))
        grad_z = (ez / total - onehot) * weights
        grad_w = (x32.T @ grad_z.astype(np.float32)).astype(np.float64) + lam * coef
        return loss + 0.5 * lam * float(np.sum(coef * coef)), np.concatenate([grad_w.ravel(), grad_z.sum(0)])

    return f


def fit_softmax(x: np.ndarray, y: np.ndarray, n_labels: int, c: float, *, weights: np.ndarray | None = None,
                theta0: np.ndarray | None = None) -> np.ndarray:
    """Multinomial logistic regression; returns θ = [W (D×L) ravelled, b]. Penalty lam = 1/(C·n)."""
    from scipy.optimize import minimize
    from threadpoolctl import threadpool_limits

    n, d = x.shape
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    start = np.zeros(d * n_labels + n_labels) if theta0 is None else theta0
    objective = _objective(x, y, w, 1.0 / (c * n), n_labels)
    with threadpool_limits(limits=1, user_api="blas"):
        result = minimize(objective, start, jac=True, method="L-BFGS-B",
                          options={"maxiter": MAX_ITER, "gtol": GTOL})
    return result.x


def _theta_logits(theta: np.ndarray, x: np.ndarray, n_labels: int) -> np.ndarray:
    d = x.shape[1]
    return x @ theta[:d * n_labels].reshape(d, n_labels) + theta[d * n_labels:]


def log_loss(logits: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-likelihood of the true labels under softmax(logits)."""
    z = logits - logits.max(axis=1, keepdims=True)
    lse = np.log(np.exp(z).sum(axis=1))
    return float(np.mean(lse - z[np.arange(len(y)), y]))


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """Temperature T > 0 minimising the log-loss of softmax(logits / T) (bounded search on log T)."""
    from scipy.optimize import minimize_scalar

    result = minimize_scalar(lambda t: log_loss(logits / math.exp(t), y), bounds=(-4.0, 4.0), method="bounded")
    return float(math.exp(result.x))


# ── data: validation, split ─────────────────────────────────────────────────────────────────────────


def validate_examples(examples: Sequence[LabeledImage], digests: dict[str, str], note: str = "") -> None:
    """Raise TrainingDataError unless there are ≥ 2 labels and ≥ 2 distinct images per label."""
    per_label: dict[str, set[str]] = defaultdict(set)
    for example in examples:
        per_label[example.label].add(digests[example.key])
    if len(per_label) < 2:
        found = ", ".join(repr(label) for label in per_label) or "none"
        raise TrainingDataError(
            f"training needs images of at least 2 labels; found {len(per_label)} ({found}){note}. "
            "Add images under images_labeled_by_folder/<label>/ for at least two labels.")
    few = {label: len(items) for label, items in per_label.items() if len(items) < 2}
    if few:
        listed = ", ".join(f"{label!r} ({n})" for label, n in sorted(few.items()))
        raise TrainingDataError(
            f"every label needs at least 2 distinct images (one for training, one for testing); "
            f"too few for {listed}{note}. Add images to those labels or remove their folders.")


def _rank(seed: int, digest: str) -> str:
    return hashlib.sha256(f"{seed}:{digest}".encode()).hexdigest()


@dataclass
class Split:
    """Train/test partition of the examples."""

    train: list[LabeledImage]
    test: list[LabeledImage]

    @property
    def train_keys(self) -> list[str]:
        """Object keys of the training images."""
        return [e.key for e in self.train]

    @property
    def test_keys(self) -> list[str]:
        """Object keys of the test images."""
        return [e.key for e in self.test]


def split_examples(examples: Sequence[LabeledImage], digests: dict[str, str], *, seed: int = 0,
                   test_fraction: float = TEST_FRACTION, test_keys: Collection[str] | None = None) -> Split:
    """Deterministic stratified split (see module docstring); `test_keys` gives an explicit test set."""
    if test_keys is not None:
        chosen = set(test_keys)
        split = Split([e for e in examples if e.key not in chosen], [e for e in examples if e.key in chosen])
        missing = sorted({e.label for e in examples} - {e.label for e in split.train})
        if missing:
            raise TrainingDataError(f"the given test set leaves no training image for {missing}; "
                                    "every label needs at least one training image.")
        return split
    by_label: dict[str, list[str]] = defaultdict(list)
    for example in examples:
        digest = digests[example.key]
        if digest not in by_label[example.label]:
            by_label[example.label].append(digest)
    test_digests: set[tuple[str, str]] = set()
    for label, items in by_label.items():
        ranked = sorted(items, key=lambda d: _rank(seed, d))
        n_test = min(len(ranked) - 1, max(1, math.floor(test_fraction * len(ranked) + 0.5)))
        test_digests.update((label, d) for d in ranked[:n_test])
    is_test = [(e.label, digests[e.key]) in test_digests for e in examples]
    return Split([e for e, t in zip(examples, is_test, strict=True) if not t],
                 [e for e, t in zip(examples, is_test, strict=True) if t])


# ── training ────────────────────────────────────────────────────────────────────────────────────────


@dataclass
class TrainingResult:
    """Everything a training run produced."""

    head: Head
    split: Split
    evaluation: Evaluation
    digests: dict[str, str]
    images_embedded: int
    images_from_cache: int
    rejected: dict[str, str] = field(default_factory=dict)  # object key -> reason
    timings: dict[str, float] = field(default_factory=dict)
    # test image key -> (label, confidence 0-100) the evaluated head decided: what the F1 gate compares
    test_decisions: dict[str, tuple[str, float]] = field(default_factory=dict)
    # training images whose folder label the out-of-fold model confidently disagrees with (`suspect_labels`)
    suspects: list[dict[str, Any]] = field(default_factory=list)

    @property
    def train_keys(self) -> list[str]:
        """Object keys of the training images."""
        return self.split.train_keys

    @property
    def test_keys(self) -> list[str]:
        """Object keys of the test images."""
        return self.split.test_keys

    def manifest(self) -> list[dict[str, str]]:
        """One record per image: key, label, sha256 and split ('train'/'test'/'rejected'); test images also
        carry the evaluated head's decision (`predicted`, `confidence` 0–100)."""
        rows = [{"key": e.key, "label": e.label, "sha256": self.digests[e.key], "split": name}
                for name, part in (("train", self.split.train), ("test", self.split.test)) for e in part]
        for row in rows:
            if row["key"] in self.test_decisions:
                row["predicted"], row["confidence"] = self.test_decisions[row["key"]]
        return rows + [{"key": key, "sha256": self.digests.get(key, ""), "split": "rejected", "reason": reason}
                       for key, reason in self.rejected.items()]


@dataclass
class _Design:
    """Training rows: features, label index, weight and the image (group) each row comes from."""

    x: np.ndarray
    y: np.ndarray
    weight: np.ndarray
    group: np.ndarray
    images: list[tuple[str, str]] = field(default_factory=list)  # (content hash, label) of each group


def _design(train: Sequence[LabeledImage], digests: dict[str, str], vectors: CachedEmbeddings,
            index: dict[str, int], views: Sequence[str], balance_labels: bool = False) -> _Design:
    """One row per (distinct image, label) and view, weighted 1/V, in an order independent of the input's.

    `balance_labels`: each label's images weigh the same in total (image weight n / (labels · n_label)).
    """
    pairs = sorted({(digests[e.key], e.label) for e in train})
    rows, ys, groups = [], [], []
    for g, (digest, label) in enumerate(pairs):
        for view in views:
            rows.append(vectors.get(digest, view))
            ys.append(index[label])
            groups.append(g)
    y = np.array(ys)
    weight = np.full(len(rows), 1.0 / len(views))
    if balance_labels:
        images = np.bincount(np.array([index[label] for _, label in pairs]), minlength=len(index))
        present = int(np.count_nonzero(images))
        weight *= len(pairs) / (present * images[y])
    return _Design(l2_normalize(np.stack(rows)), y, weight, np.array(groups), pairs)


def _folds(design: _Design, k: int, seed: int) -> np.ndarray:
    """Fold number per group, stratified by label, deterministic (groups are in content-hash order)."""
    n_groups = int(design.group.max()) + 1
    label_of = np.zeros(n_groups, dtype=np.int64)
    label_of[design.group] = design.y
    rng = np.random.default_rng(seed)
    fold = np.zeros(n_groups, dtype=np.int64)
    for label in np.unique(label_of):
        members = np.flatnonzero(label_of == label)
        fold[members] = (np.arange(len(members)) + rng.integers(k)) % k
    return fold


def _cross_validate(design: _Design, n_labels: int, k: int, c_grid: Sequence[float], seed: int
                    ) -> tuple[float, float, dict[str, Any], np.ndarray | None, np.ndarray]:
    """Pick C by calibrated out-of-fold log-loss; returns (C, T, report, warm start θ, the chosen C's
    calibrated out-of-fold probabilities: one row per image, in group order)."""
    fold_of_group = _folds(design, k, seed)
    row_fold = fold_of_group[design.group]
    first = np.unique(design.group, return_index=True)[1]  # the first view (the primary one) of each image
    theta, best, report = None, None, {}
    for c in sorted(c_grid):
        oof = np.zeros((len(first), n_labels))
        for f in range(k):
            train = row_fold != f
            theta = fit_softmax(design.x[train], design.y[train], n_labels, c,
                                weights=design.weight[train], theta0=theta)
            held = fold_of_group == f
            oof[held] = _theta_logits(theta, design.x[first[held]], n_labels)
        y = design.y[first]
        t = fit_temperature(oof, y)
        nll = log_loss(oof / t, y)
        report[f"C={c:g}"] = {"oof_nll": nll, "temperature": t,
                              "oof_accuracy": float(np.mean(oof.argmax(1) == y))}
        if best is None or nll < best[2]:
            best = (c, t, nll, theta, softmax(oof / t))
    assert best is not None
    return best[0], best[1], report, best[3], best[4]


def _fit_head(design: _Design, labels: list[str], *, c_grid: Sequence[float], folds: int, seed: int,
              meta: dict[str, Any]) -> tuple[Head, np.ndarray | None]:
    """Cross-validate C and T on the training rows, then fit the final head on all of them.

    Returns the head and the calibrated out-of-fold probabilities of its images (one row per image, in
    group order; None when no fold could hold a label out)."""
    per_label = np.bincount(design.y[np.unique(design.group, return_index=True)[1]], minlength=len(labels))
    k = int(min(folds, per_label.min()))
    oof = None
    if k >= 2:
        c, t, report, theta0, oof = _cross_validate(design, len(labels), k, c_grid, seed)
        method = f"temperature scaling on {k}-fold out-of-fold logits of the training split"
    else:
        c, t, report, theta0 = max(c_grid), 1.0, {}, None
        method = "none: a label has a single training image, so no fold can hold it out (T = 1)"
    theta = fit_softmax(design.x, design.y, len(labels), c, weights=design.weight, theta0=theta0)
    d = design.x.shape[1]
    coef = theta[:d * len(labels)].reshape(d, len(labels)).T
    familiar = _nearest_familiarity(design, len(labels))
    meta = {**meta, "C": c, "folds": k, "calibration": method, "cv": report,
            "familiarity": "nearest training image" if familiar else "none: no label has two training images"}
    return Head(labels, coef, theta[d * len(labels):], t, True, meta, **familiar), oof


NO_MATCH = -4.0  # below any cosine: stands in for "no other image of this label"
MAX_BANK_PER_LABEL = 256
FAMILIAR_PENALTY = 1e-3
FAMILIAR_PRIOR = 0.5  # weight of a label's own images against the other labels' in the familiarity fit
COVERAGE_QUANTILE = 0.1  # familiarity at this quantile of a label's own leave-one-out similarities …
COVERAGE_FAMILIARITY = 0.9  # … is at least this (coverage_offset)


def _nearest_familiarity(design: _Design, n_labels: int) -> dict[str, Any]:
    """The nearest-neighbour familiarity of a head: its bank of training images and the fitted slope/offsets.

    Per label k, positives are its images' cosines to their nearest *other* image of k (leave-one-out),
    negatives the cosines of every other label's images to their nearest image of k; one logistic regression
    (shared slope, an offset per label, a small L2 penalty) separates them, each label's positives weighing
    FAMILIAR_PRIOR of its term and its negatives the rest (at ½, familiarity is ½ where an image is as likely
    its label's as something else's). ½ is the benchmark's choice: on a stream where half the images are of
    kinds never trained on it gave the fewest silent errors and the lowest calibration error; a higher prior
    trades silent errors for confident answers (bench/real_images/README.md, "prior"). Then each label's offset
    is raised by `coverage_offset` (the coverage constraint). The bank keeps at most
    MAX_BANK_PER_LABEL images per label (in content-hash order), padded to one row count by repeating each
    label's own rows. Empty (no familiarity factor) when no label has two
    training images.
    """
    from scipy.optimize import minimize
    from threadpoolctl import threadpool_limits

    first = np.unique(design.group, return_index=True)[1]  # one row (primary view) per image
    x, y = design.x[first], design.y[first]
    keep = np.concatenate([np.flatnonzero(y == k)[:MAX_BANK_PER_LABEL] for k in range(n_labels)])
    bank, bank_y = x[keep], y[keep]
    with threadpool_limits(limits=1, user_api="blas"):
        cos = (x.astype(np.float32) @ bank.T.astype(np.float32)).astype(np.float64)
    cos[keep, np.arange(len(keep))] = NO_MATCH  # an image is not its own neighbour
    nearest = np.stack([np.where(bank_y[None, :] == k, cos, NO_MATCH).max(axis=1) for k in range(n_labels)], 1)
    terms = []
    for k in range(n_labels):
        own, other = nearest[y == k, k], nearest[y != k, k]
        if len(own) > 1 or (len(own) == 1 and own[0] > NO_MATCH):
            terms.append((k, own[own > NO_MATCH], other))
    if not terms:
        return {}
    spread = float(np.std(np.concatenate([np.concatenate([own, other]) for _, own, other in terms]))) or 1.0
    terms = [(k, own / spread, other / spread) for k, own, other in terms]  # the penalty sees unit-free scores

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        slope, offsets = theta[0], theta[1:]
        value, grad = FAMILIAR_PENALTY * float(theta @ theta), 2 * FAMILIAR_PENALTY * theta
        for k, own, other in terms:
            for scores, sign, share in ((own, -1.0, FAMILIAR_PRIOR), (other, 1.0, 1 - FAMILIAR_PRIOR)):
                z = sign * (slope * scores + offsets[k])
                value += share * float(np.mean(np.logaddexp(0.0, z))) / len(terms)
                g = share * sign / (1 + np.exp(-z)) / (len(terms) * len(scores))
                grad[0] += float(np.sum(g * scores))
                grad[1 + k] += float(np.sum(g))
        return value, grad

    theta = minimize(loss, np.zeros(1 + n_labels), jac=True, method="L-BFGS-B").x
    fitted = {k for k, _, _ in terms}
    offsets = theta[1:].copy()
    for k, own, _ in terms:  # scores are in spread units here, so theta[0] is the slope that applies to them
        offsets[k] = coverage_offset(float(theta[0]), float(offsets[k]), own)
    if len(fitted) < n_labels:  # a label with one image: the typical offset of the others
        offsets[[k for k in range(n_labels) if k not in fitted]] = float(np.mean(offsets[sorted(fitted)]))
    rows = int(np.bincount(bank_y, minlength=n_labels).max())
    padded = np.stack([bank[bank_y == k][np.arange(rows) % max(1, int(np.sum(bank_y == k)))] for k in range(n_labels)])
    return {"bank": padded.astype(np.float32), "familiar_slope": float(theta[0]) / spread, "familiar_offset": offsets}


def coverage_offset(slope: float, offset: float, own: np.ndarray, quantile: float = COVERAGE_QUANTILE,
                    floor: float = COVERAGE_FAMILIARITY) -> float:
    """The label's offset, raised where needed so that familiarity at the `quantile` of its own leave-one-out
    similarities `own` is at least `floor` (a Neyman–Pearson style constraint: about 1 − quantile of the images
    like the label's own keep their softmax confidence; within it, the contrast fit rejects what it can).

    Without it, labels whose neighbours are as close as their own images (fine-grained, closed-set data:
    digits, two similar photo classes) get familiarity near ½ everywhere, which caps every confidence near 50.
    """
    if len(own) == 0 or slope <= 0:
        return offset
    at = float(np.quantile(own, quantile))
    return max(offset, math.log(floor / (1 - floor)) - slope * at)


SUSPECT_CONFIDENCE = 0.7  # the default Minimum-Label-Detection-Confidence: "the model is sure"


def suspect_labels(design: _Design, oof: np.ndarray | None, labels: list[str], examples: Sequence[LabeledImage],
                   digests: dict[str, str], at: float = SUSPECT_CONFIDENCE) -> list[dict[str, Any]]:
    """Training images whose folder label the model confidently disagrees with: a mislabeled or odd image.

    `oof` holds each image's calibrated out-of-fold probabilities (from a model that did not train on it, the
    cross-validation that chose C and T, so they cost nothing extra); an image is a suspect when another label
    gets at least `at`. One entry per object key (every key of a duplicated image), the surest first:
    key, label (its folder), predicted, confidence (0-100). Measured on real photos (bench/real_images,
    5 % of the labels flipped): README "Suspect labels".
    """
    if oof is None:
        return []
    keys: dict[tuple[str, str], list[str]] = defaultdict(list)
    for example in examples:
        keys[(digests[example.key], example.label)].append(example.key)
    found = []
    for (digest, label), proba in zip(design.images, oof, strict=True):
        guess = int(proba.argmax())
        if labels[guess] != label and proba[guess] >= at:
            found += [{"key": key, "label": label, "predicted": labels[guess],
                       "confidence": round(float(proba[guess]) * 100, 2)} for key in sorted(keys[(digest, label)])]
    return sorted(found, key=lambda s: (-s["confidence"], s["key"]))


def _resolve_digests(examples: Sequence[LabeledImage]) -> dict[str, str]:
    keys = Counter(e.key for e in examples)
    duplicated = [key for key, n in keys.items() if n > 1]
    if duplicated:
        raise TrainingDataError(f"object keys must be unique; repeated: {duplicated[:5]}")
    return {e.key: e.digest() for e in examples}


# progress(phase, done, total): where a training stands, e.g. ("embedding", 40, 120); see train_head.
Progress = Callable[[str, int, int], None]


def _embed(examples: Sequence[LabeledImage], digests: dict[str, str], embedder: Embedder,
           cache: EmbeddingCache, views: Sequence[str], progress: Progress | None = None) -> CachedEmbeddings:
    sources = {digests[e.key]: e.content for e in examples}
    told = None if progress is None else lambda done, total: progress("embedding", done, total)
    return embed_cached(embedder, cache, sources, views, progress=told)


def train_head(examples: Sequence[LabeledImage], embedder: Embedder, cache: EmbeddingCache, *, seed: int = 0,
               test_split: Collection[str] | None = None, augment: Sequence[str] = (),
               c_grid: Sequence[float] = DEFAULT_C_GRID, folds: int = DEFAULT_FOLDS, balance_labels: bool = False,
               final_on_all: bool = False, view: str = "orig", progress: Progress | None = None) -> TrainingResult:
    """Train and evaluate a head on labeled images (see the module docstring for each step).

    `test_split`: object keys of an explicit test set (default: the automatic 80/20 split).
    `augment`: extra views of training images from `images.VIEWS` (e.g. ("flip",)); none by default.
    `view`: the primary view (an `images.VIEWS` key: 'orig' the centre crop, 'letterbox' the whole image), the
    one the version serves on: the evaluation, the suspect labels and the hidden class use it.
    `balance_labels`: weigh every label the same in the fit, whatever its number of images.
    `final_on_all`: after the evaluation, train the returned head again on every image (training and test
    split); the evaluation stays that of the head trained on the training split.
    `progress(phase, done, total)`: told as it goes ("embedding" with images done of total, then "fitting",
    "evaluating" and, with `final_on_all`, "training on all images").
    Raises TrainingDataError when the data cannot train a model; images that fail to decode are left
    out and listed in `result.rejected`.
    """
    started = time.perf_counter()
    views = (view, *[v for v in augment if v != view])
    unknown = [v for v in views if v not in VIEWS]
    if unknown:
        raise ValueError(f"unknown augmented views {unknown}; choose from {sorted(VIEWS)}")
    if not c_grid or min(c_grid) <= 0:
        raise ValueError(f"c_grid needs at least one positive C, got {list(c_grid)}")
    digests = _resolve_digests(examples)
    examples, negatives = split_negatives(examples, digests)
    validate_examples(examples, digests)
    vectors = _embed([*examples, *negatives], digests, embedder, cache, (view,), progress)
    rejected = {e.key: vectors.rejected[digests[e.key]] for e in [*examples, *negatives]
                if digests[e.key] in vectors.rejected}
    usable = [e for e in examples if e.key not in rejected]
    negatives = split_negatives([e for e in negatives if e.key not in rejected], digests)[1]
    validate_examples(usable, digests, f" after leaving out {len(rejected)} unreadable image(s)" if rejected else "")
    split = split_examples(usable, digests, seed=seed, test_keys=test_split)
    split.train += negatives  # the hidden class trains, never tests: the evaluation is about the real labels
    if len(views) > 1:
        vectors.update(_embed(split.train + (split.test if final_on_all else []), digests, embedder, cache, views))
    embedded_at = time.perf_counter()
    if progress is not None:
        progress("fitting", 0, 0)
    labels = sorted({e.label for e in usable})
    index = {label: i for i, label in enumerate(labels)}
    design = _design(labeled_only(split.train), digests, vectors, index, views, balance_labels)
    meta = {"views": list(views), "seed": seed, "backbone_fingerprint": embedder.fingerprint,
            "balance_labels": balance_labels, "trained_on": "training split"}
    head, oof = _fit_head(design, labels, c_grid=c_grid, folds=folds, seed=seed, meta=meta)
    head = add_hidden_class(head, design, [vectors.get(digests[e.key], view) for e in negatives])
    suspects_of = (design, oof)
    fitted_at = time.perf_counter()
    if progress is not None:
        progress("evaluating", 0, 0)
    evaluation, decisions = _evaluate(head, split.test, digests, vectors, index, started, len(split.train), view)
    evaluated_at = time.perf_counter()
    timings = {"embed_s": embedded_at - started, "fit_s": fitted_at - embedded_at,
               "evaluate_s": evaluated_at - fitted_at}
    if final_on_all:
        if progress is not None:
            progress("training on all images", 0, 0)
        every = _design(labeled_only([*split.train, *split.test]), digests, vectors, index, views, balance_labels)
        head, oof = _fit_head(every, labels, c_grid=c_grid, folds=folds, seed=seed,
                              meta={**meta, "trained_on": "training and test split",
                                    "evaluated_head": {"C": head.meta["C"], "temperature": head.temperature}})
        head = add_hidden_class(head, every, [vectors.get(digests[e.key], view) for e in negatives])
        suspects_of = (every, oof)
        timings["final_fit_s"] = time.perf_counter() - evaluated_at
    timings["total_s"] = time.perf_counter() - started
    evaluation.training_time_s = timings["total_s"]
    return TrainingResult(head, split, evaluation, digests, vectors.embedded, vectors.from_cache, rejected, timings,
                          decisions, suspect_labels(*suspects_of, labels, usable, digests))


def _evaluate(head: Head, test: Sequence[LabeledImage], digests: dict[str, str], vectors: CachedEmbeddings,
              index: dict[str, int], started: float, n_train: int, view: str = "orig"
              ) -> tuple[Evaluation, dict[str, tuple[str, float]]]:
    """The head on the test split (its ``view``), and its decision for each test image; calibration from the
    head's metadata."""
    x = np.stack([vectors.get(digests[e.key], view) for e in test])
    y = np.array([index[e.label] for e in test])
    calibration = {"temperature": head.temperature, "method": head.meta.get("calibration", ""),
                   "C": head.meta.get("C")}
    proba = head.predict_proba(x)
    decisions = {e.key: (head.labels[int(p.argmax())], round(float(p.max()) * 100, 2))
                 for e, p in zip(test, proba, strict=True)}
    return evaluate(head.labels, y, proba, train_images=n_train, training_time_s=time.perf_counter() - started,
                    calibration=calibration), decisions


# ── the hidden "none of the above" class ────────────────────────────────────────────────────────────

# Images reviewers answered None of the Above train as this class. '<' and '>' are characters no label may have
# (labels.FORBIDDEN_CHARACTERS), so no folder can take the name.
NEGATIVE_LABEL = "<none of the above>"
MIN_NEGATIVES = 2  # as a label: fewer distinct images and the hidden class is left out


def split_negatives(examples: Sequence[LabeledImage], digests: dict[str, str]
                    ) -> tuple[list[LabeledImage], list[LabeledImage]]:
    """The examples of real labels, and those of the hidden class (none when it has fewer than MIN_NEGATIVES
    distinct images)."""
    negatives = [e for e in examples if e.label == NEGATIVE_LABEL]
    if len({digests[e.key] for e in negatives}) < MIN_NEGATIVES:
        negatives = []
    return [e for e in examples if e.label != NEGATIVE_LABEL], negatives


def labeled_only(examples: Sequence[LabeledImage]) -> list[LabeledImage]:
    """The examples of real labels (not of the hidden class)."""
    return [e for e in examples if e.label != NEGATIVE_LABEL]


def add_hidden_class(head: Head, design: _Design, negatives: Sequence[np.ndarray], *,
                     known_logits: np.ndarray | None = None, share: float | None = None, penalty: float = 1.0
                     ) -> Head:
    """The head with a hidden "none of the above" row added to W and b (`Head.hidden`), fitted with the real
    labels' rows fixed, so the answer and the macro-F1 are exactly those of the head without it; only confidence
    changes. softmax over [real logits, hidden logit] gives the hidden class p = sigmoid(z_h − logsumexp(real
    logits)): a logistic regression of the negatives (target 1) against the labels' training images (target 0)
    with that offset, the negatives weighing as one label does (1 / (labels + 1) of the total), L2 penalty
    1 / (C·n) as the head's. (Fitting it jointly with the labels, as one more label, cost macro-F1 on real photos:
    logos 0.44 → 0.35 on the same images, bench/loop_simulation/negatives.py.) Unchanged without negatives.

    Options (bench/real_images/openset_sweep.py compares them): `known_logits`, the calibrated logits of the
    design's rows to use in the offset instead of the head's own (e.g. `out_of_fold_logits`: how the labels'
    unseen images score, not their training images); `share`, the negatives' weight (default 1 / (labels + 1));
    `penalty`, a factor on the L2 penalty."""
    if not len(negatives):
        return head
    from scipy.optimize import minimize
    from scipy.special import expit, logsumexp

    unseen = l2_normalize(np.stack(negatives))
    x = np.vstack([design.x, unseen])
    known = head.logits(design.x) if known_logits is None else np.asarray(known_logits, dtype=np.float64)
    offset = logsumexp(np.vstack([known, head.logits(unseen)]), axis=1)
    target = np.r_[np.zeros(len(design.x)), np.ones(len(negatives))]
    share = 1.0 / (len(head.labels) + 1) if share is None else share
    weight = np.r_[design.weight / design.weight.sum() * (1 - share), np.full(len(negatives), share / len(negatives))]
    lam = penalty / (float(head.meta.get("C", max(DEFAULT_C_GRID))) * len(x))

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        z = x @ theta[:-1] + theta[-1] - offset
        value = float(np.sum(weight * (np.logaddexp(0.0, z) - target * z))) + 0.5 * lam * float(theta[:-1] @ theta[:-1])
        g = weight * (expit(z) - target)
        return value, np.r_[x.T @ g + lam * theta[:-1], g.sum()]

    theta = minimize(loss, np.zeros(x.shape[1] + 1), jac=True, method="L-BFGS-B",
                     options={"maxiter": MAX_ITER, "gtol": GTOL}).x * head.temperature  # Head divides by T
    return Head(head.labels, np.vstack([head.W, theta[None, :-1]]), np.r_[head.b, theta[-1]], head.temperature,
                head.normalize, {**head.meta, "hidden_class": {"label": NEGATIVE_LABEL, "images": len(negatives)}},
                head.centroids, head.familiar_at, head.familiar_scale, head.bank, head.familiar_slope,
                head.familiar_offset, head.format, hidden=1)


def out_of_fold_logits(design: _Design, n_labels: int, c: float, temperature: float, *, folds: int = DEFAULT_FOLDS,
                       seed: int = 0) -> np.ndarray:
    """Calibrated logits of every row of the design from a head (at C = c) fitted without that row's image:
    the folds of `_cross_validate` (at most one per image of the smallest label; one fold: the head's own)."""
    per_label = np.bincount(design.y[np.unique(design.group, return_index=True)[1]], minlength=n_labels)
    k = int(min(folds, per_label.min()))
    fold = _folds(design, k, seed)[design.group] if k >= 2 else np.zeros(len(design.y), dtype=np.int64)
    out = np.zeros((len(design.y), n_labels))
    for f in range(max(k, 1)):
        train = fold != f if k >= 2 else np.ones(len(fold), dtype=bool)
        theta = fit_softmax(design.x[train], design.y[train], n_labels, c, weights=design.weight[train])
        out[fold == f] = _theta_logits(theta, design.x[fold == f], n_labels)
    return out / temperature
