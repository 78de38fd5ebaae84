"""Open-set confidence recipes compared by the benchmark.

Every recipe shares the product's classifier (labelloop.modeling.training: L2-normalised multinomial logistic
regression, C and temperature from out-of-fold logits) and differs in how "is this image like the training
images of the label it was given?" is scored and turned into a factor on the calibrated softmax:

    confidence = softmax_top × familiarity(score(image, predicted label))

Scores (higher = more like the label's training images):

* `softmax`: no factor (familiarity 1).
* `centroid`: the current rule: cosine to the label's unit centroid.
* `knn`: cosine to the nearest training image of the label.
* `mahalanobis`: −Mahalanobis distance to the label mean under one shared covariance, Ledoit-Wolf shrunk
  (scikit-learn), on L2-normalised embeddings.
* `patch`: each location of the last feature map (7×7 for Lite0) matched to its most similar training patch of
  the label (cosine); the score is the mean over locations.
* `imagenet`: the backbone's own ImageNet classifier (its 1000 logits are a linear map of the embedding,
  `imagenet_logits`): Bhattacharyya coefficient Σ√(p·q) of the image's ImageNet class distribution to the
  nearest training image of the label (a cosine of √p vectors). A hat and a mammal differ sharply there.
* `rel_knn`, `rel_imagenet`, `rel_logits` (relative): the nearest-neighbour score to the label *minus* the
  nearest-neighbour score to the best *other* label (embedding cosine; ImageNet Bhattacharyya; cosine of
  centred ImageNet logits). `rel_mid`: the same on the mid-level features (stages 4–6 pooled). Training images
  are scored leave-one-out.

Two ways to turn a score into familiarity, both fitted on the training images only:

* `spread` (the current rule, generalised): per label, each training image's leave-one-out score (against the
  label's *other* images) gives a typical value m and spread s; familiarity = sigmoid((score − (m − K·s)) / s)
  with K = 4 (the current FAMILIAR_SPREADS) unless a recipe says otherwise.
* `coverage`: `contrast`, then each label's offset raised so that familiarity at the 10th percentile of its own
  leave-one-out scores is ≥ 0.9 (the product's rule since the closed-set regression: on fine-grained labels,
  other labels come as close as a label's own images and the plain contrast fit caps every confidence near ½).
* `contrast` (my addition): per label, a one-dimensional logistic regression separating the label's own
  leave-one-out scores from the scores of every *other* label's training images against this label: the other
  labels' images are the only examples of "something else" the training data holds, and they tell how high a
  score an unrelated image reaches under this score and this label. Shared slope, per-label offset.
* `held-out` (my addition): a logistic regression P(right | logit softmax, scores) fitted on out-of-fold
  answers and on answers to whole labels held out (`held_out_calibration`); `Recipe.score` may join several
  scores with "+" (e.g. "rel_knn+rel_imagenet"): the combination of signals.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np

from labelloop.modeling import training

SPREADS = 4.0
MIN_SCALE = 0.03


@dataclass
class Data:
    """The features of some images under one backbone and view."""

    embedding: np.ndarray  # N×1280
    fmap: np.ndarray | None = None  # N×P×1280 (float16)
    mid: np.ndarray | None = None

    def take(self, rows: np.ndarray) -> Data:
        """A subset of rows."""
        return Data(self.embedding[rows], None if self.fmap is None else self.fmap[rows],
                    None if self.mid is None else self.mid[rows])


def fit_classifier(x: np.ndarray, y: np.ndarray, labels: list[str], seed: int = 0, **options) -> training.Head:
    """The product's head (C and T from out-of-fold logits; nearest-neighbour familiarity) on embeddings x;
    `options` as `fit_with_out_of_fold`'s."""
    return fit_with_out_of_fold(x, y, labels, seed, **options)[0]


def fit_with_out_of_fold(x: np.ndarray, y: np.ndarray, labels: list[str], seed: int = 0, balance: bool = False, *,
                         c_grid: tuple[float, ...] = training.DEFAULT_C_GRID, extra_views: tuple[np.ndarray, ...] = ()
                         ) -> tuple[training.Head, np.ndarray | None]:
    """The product's head and its calibrated out-of-fold probabilities (rows in x's order), built as
    `training.train_head` builds it; `balance`: every label weighs the same (`Balance-Labels-In-Training`, the
    server's default; the tasks' labels are balanced anyway, except the none-of-the-above label of
    openset_sweep); `extra_views`: the same images under other views (train-time augmentation: each view one
    more row of the image, every row weighted 1/V)."""
    design = design_of(x, y, len(labels), balance, extra_views)
    return training._fit_head(design, labels, c_grid=c_grid, folds=training.DEFAULT_FOLDS, seed=seed, meta={})


def design_of(x: np.ndarray, y: np.ndarray, n_labels: int, balance: bool = False,
              extra_views: tuple[np.ndarray, ...] = ()) -> training._Design:
    """The training rows as `training._design` lays them out (one group per image, its views together)."""
    n, views = len(y), (x, *extra_views)
    counts = np.bincount(y, minlength=n_labels)
    weight = n / (np.count_nonzero(counts) * counts[y]) if balance else np.ones(n)
    raw = np.stack(views, axis=1).reshape(n * len(views), -1)  # an image's rows together, as _design puts them
    return training._Design(training.l2_normalize(raw), np.repeat(y, len(views)),
                            np.repeat(weight, len(views)) / len(views), np.repeat(np.arange(n), len(views)))


# ── scores: (train, own-label leave-one-out scores, score of test images against label k) ───────────────


def _unit(x: np.ndarray) -> np.ndarray:
    return training.l2_normalize(x)


class Scorer:
    """Scores images against labels; `loo` gives each training image's score against its own label without
    itself, `against(data, k)` the scores of some images against label k's training images."""

    def __init__(self, train: Data, y: np.ndarray, n_labels: int):
        self.train, self.y, self.n_labels = train, y, n_labels

    def loo(self) -> np.ndarray:
        raise NotImplementedError

    def against(self, data: Data, k: int) -> np.ndarray:
        raise NotImplementedError

    def others(self, k: int) -> np.ndarray:
        """Scores of the other labels' training images against label k (their "something else" examples)."""
        return self.against(self.train.take(np.flatnonzero(self.y != k)), k)


class CentroidScorer(Scorer):
    def __init__(self, train: Data, y: np.ndarray, n_labels: int):
        super().__init__(train, y, n_labels)
        self.x = _unit(train.embedding)
        self.sums = np.stack([self.x[y == k].sum(0) for k in range(n_labels)])

    def loo(self) -> np.ndarray:
        others = _unit(self.sums[self.y] - self.x)
        return np.einsum("ij,ij->i", self.x, others)

    def against(self, data: Data, k: int) -> np.ndarray:
        return _unit(data.embedding) @ _unit(self.sums[k:k + 1])[0]


class KnnScorer(Scorer):
    def __init__(self, train: Data, y: np.ndarray, n_labels: int):
        super().__init__(train, y, n_labels)
        self.x = _unit(train.embedding)

    def loo(self) -> np.ndarray:
        sim = self.x @ self.x.T
        np.fill_diagonal(sim, -np.inf)
        same = self.y[:, None] == self.y[None, :]
        return np.where(same, sim, -np.inf).max(axis=1)

    def against(self, data: Data, k: int) -> np.ndarray:
        return (_unit(data.embedding) @ self.x[self.y == k].T).max(axis=1)


class MahalanobisScorer(Scorer):
    """Shared covariance Σ = (1 − α)·S + α·μ·I with Ledoit-Wolf's α (scikit-learn), applied through the
    Woodbury identity in the n-dimensional span of the training images (n ≪ 1280 here)."""

    def __init__(self, train: Data, y: np.ndarray, n_labels: int):
        from sklearn.covariance import ledoit_wolf_shrinkage

        super().__init__(train, y, n_labels)
        self.x = _unit(train.embedding)
        self.means = np.stack([self.x[y == k].mean(0) for k in range(n_labels)])
        self.counts = np.bincount(y, minlength=n_labels)
        centred = self.x - self.means[y]
        alpha = float(ledoit_wolf_shrinkage(centred, assume_centered=True))
        n, d = centred.shape
        mu = float(np.sum(centred ** 2) / (n * d))
        self.c = alpha * mu
        self.u = centred.T * np.sqrt((1 - alpha) / n)  # Σ = c·I + U·Uᵀ
        self.inner = np.linalg.inv(self.c * np.eye(n) + self.u.T @ self.u)

    def _distance(self, d: np.ndarray) -> np.ndarray:
        proj = d @ self.u
        sq = (np.sum(d * d, axis=1) - np.einsum("ij,jk,ik->i", proj, self.inner, proj, optimize=True)) / self.c
        return np.sqrt(np.maximum(sq, 0.0))

    def loo(self) -> np.ndarray:
        n = self.counts[self.y][:, None]
        others = (n * self.means[self.y] - self.x) / np.maximum(n - 1, 1)
        return -self._distance(self.x - others)

    def against(self, data: Data, k: int) -> np.ndarray:
        return -self._distance(_unit(data.embedding) - self.means[k])


class PatchScorer(Scorer):
    """Mean over the image's locations of the cosine to the most similar training patch of the label."""

    def __init__(self, train: Data, y: np.ndarray, n_labels: int):
        super().__init__(train, y, n_labels)
        assert train.fmap is not None
        self.patches = self._unit_patches(train.fmap)

    @staticmethod
    def _unit_patches(fmap: np.ndarray) -> np.ndarray:
        f = fmap.astype(np.float32)
        return f / np.maximum(np.linalg.norm(f, axis=2, keepdims=True), 1e-6)

    def _score(self, patches: np.ndarray, bank: np.ndarray) -> np.ndarray:
        n, p, d = patches.shape
        if len(bank) == 0:
            return np.full(n, -1.0)
        best = np.full((n, p), -1.0, dtype=np.float32)
        flat = patches.reshape(-1, d)
        bank = bank.reshape(-1, d)
        for start in range(0, len(bank), 8192):
            best = np.maximum(best, (flat @ bank[start:start + 8192].T).max(axis=1).reshape(n, p))
        return best.mean(axis=1)

    def loo(self) -> np.ndarray:
        out = np.zeros(len(self.y))
        for i in range(len(self.y)):
            others = (self.y == self.y[i]) & (np.arange(len(self.y)) != i)
            out[i] = self._score(self.patches[i:i + 1], self.patches[others])[0]
        return out

    def against(self, data: Data, k: int) -> np.ndarray:
        assert data.fmap is not None
        return self._score(self._unit_patches(data.fmap), self.patches[self.y == k])


@cache
def _imagenet_classifier() -> tuple[np.ndarray, np.ndarray]:
    """The Lite0 backbone's own ImageNet classifier (`_fc`: 1000×1280 weights, 1000 biases), float64."""
    import torch

    from labelloop.modeling.backbone import weights_path

    state = torch.load(str(weights_path()), map_location="cpu", weights_only=True)
    return state["_fc.weight"].numpy().astype(np.float64), state["_fc.bias"].numpy().astype(np.float64)


def imagenet_logits(embedding: np.ndarray) -> np.ndarray:
    """N×1000 ImageNet logits of Lite0 embeddings (the backbone's `logits` output: a linear map of them)."""
    w, b = _imagenet_classifier()
    return np.asarray(embedding, dtype=np.float64) @ w.T + b


class NearestScorer(Scorer):
    """Similarity to the nearest training image of a label in a feature space (`features`: rows scored by dot
    product); `relative`: minus the similarity to the nearest image of the best other label."""

    relative = False

    def __init__(self, train: Data, y: np.ndarray, n_labels: int):
        super().__init__(train, y, n_labels)
        self.x = self.features(train)
        sim = self.x @ self.x.T
        np.fill_diagonal(sim, -np.inf)  # an image is not its own neighbour
        self.train_nearest = self._per_label(sim)

    def features(self, data: Data) -> np.ndarray:
        return _unit(data.embedding)

    def _per_label(self, sim: np.ndarray) -> np.ndarray:
        """N×labels: the best similarity to each label's training images (−1 where a label has none left)."""
        out = np.full((len(sim), self.n_labels), -1.0)
        for k in range(self.n_labels):
            if np.any(self.y == k):
                out[:, k] = np.maximum(sim[:, self.y == k].max(axis=1), -1.0)
        return out

    def _score(self, nearest: np.ndarray, k: int) -> np.ndarray:
        if not self.relative or self.n_labels < 2:
            return nearest[:, k]
        return nearest[:, k] - np.delete(nearest, k, axis=1).max(axis=1)

    def loo(self) -> np.ndarray:
        return np.array([self._score(self.train_nearest[i:i + 1], int(self.y[i]))[0] for i in range(len(self.y))])

    def others(self, k: int) -> np.ndarray:
        return self._score(self.train_nearest[self.y != k], k)

    def against(self, data: Data, k: int) -> np.ndarray:
        return self._score(self._per_label(self.features(data) @ self.x.T), k)


class RelativeKnnScorer(NearestScorer):
    relative = True


class ImagenetScorer(NearestScorer):
    """Bhattacharyya coefficient of ImageNet class distributions: the cosine of their square roots."""

    def features(self, data: Data) -> np.ndarray:
        return np.sqrt(training.softmax(imagenet_logits(data.embedding)))


class RelativeImagenetScorer(ImagenetScorer):
    relative = True


class RelativeLogitScorer(NearestScorer):
    """Cosine of centred ImageNet logits, relative to the best other label."""

    relative = True

    def features(self, data: Data) -> np.ndarray:
        z = imagenet_logits(data.embedding)
        return _unit(z - z.mean(axis=1, keepdims=True))


class RelativeMidScorer(NearestScorer):
    """Cosine of mid-level features (stages 4–6 pooled, `Data.mid`), relative to the best other label."""

    relative = True

    def features(self, data: Data) -> np.ndarray:
        assert data.mid is not None
        return _unit(data.mid)


SCORERS = {"centroid": CentroidScorer, "knn": KnnScorer, "mahalanobis": MahalanobisScorer, "patch": PatchScorer,
           "imagenet": ImagenetScorer, "rel_knn": RelativeKnnScorer, "rel_imagenet": RelativeImagenetScorer,
           "rel_logits": RelativeLogitScorer, "rel_mid": RelativeMidScorer}


# ── from score to familiarity ─────────────────────────────────────────────────────────────────────────


def spread_familiarity(scorer: Scorer, spreads: float = SPREADS) -> callable:
    """Per label: sigmoid((score − (m − spreads·s)) / s) from the leave-one-out scores (see module docstring)."""
    loo = scorer.loo()
    at, scale = np.zeros(scorer.n_labels), np.zeros(scorer.n_labels)
    for k in range(scorer.n_labels):
        own = loo[scorer.y == k]
        m, s = (float(own.mean()), float(own.std())) if len(own) > 1 else (1.0, 0.0)
        scale[k] = max(s, MIN_SCALE * max(abs(m), 1.0) if m < 0 else MIN_SCALE)
        at[k] = m - spreads * scale[k]
    return lambda score, k: 1.0 / (1.0 + np.exp(-(score - at[k]) / scale[k]))


def contrast_familiarity(scorer: Scorer, coverage: tuple[float, float] | None = None) -> callable:
    """Per label: P(own | score) from a logistic fit of own leave-one-out scores against other labels' images;
    `coverage` = (quantile, floor): then each offset raised as the product does (`training.coverage_offset`:
    familiarity ≥ floor at that quantile of the label's own leave-one-out scores; the product's: (0.1, 0.9))."""
    from scipy.optimize import minimize

    loo = scorer.loo()
    own_scores, other_scores = [], []
    for k in range(scorer.n_labels):
        own_scores.append(loo[scorer.y == k])
        other_scores.append(scorer.others(k))
    spread = np.std(np.concatenate(own_scores + other_scores)) or 1.0
    n_labels = scorer.n_labels

    def loss(theta: np.ndarray) -> float:
        slope, offsets = theta[0], theta[1:]
        total = 0.0
        for k in range(n_labels):
            for scores, target in ((own_scores[k], 1.0), (other_scores[k], 0.0)):
                if len(scores) == 0:
                    continue
                z = slope * scores / spread + offsets[k]
                total += np.mean(np.logaddexp(0.0, -z if target else z)) / 2
        return total / n_labels + 1e-3 * float(np.sum(theta ** 2))

    theta = minimize(loss, np.concatenate([[1.0], np.zeros(n_labels)]), method="L-BFGS-B").x
    if coverage:
        for k in range(n_labels):
            theta[1 + k] = training.coverage_offset(theta[0], theta[1 + k], own_scores[k] / spread, *coverage)
    return lambda score, k: 1.0 / (1.0 + np.exp(-(theta[0] * score / spread + theta[1 + k])))


# ── a recipe = classifier + scorer + conversion ───────────────────────────────────────────────────────────


@dataclass(frozen=True)
class Recipe:
    """How confidence is made: score name (None = softmax alone) and conversion ('spread' or 'contrast')."""

    name: str
    score: str | None
    conversion: str = "spread"
    spreads: float = SPREADS
    coverage: tuple[float, float] = (training.COVERAGE_QUANTILE, training.COVERAGE_FAMILIARITY)


def predict(recipe: Recipe, head: training.Head, train: Data, y: np.ndarray, test: Data
            ) -> tuple[np.ndarray, np.ndarray]:
    """(predicted label index, confidence 0–1) for the test images."""
    if recipe.conversion == "held-out":
        return predict_calibrated(head, train, y, test, recipe.score)
    proba = training.softmax(head.logits(test.embedding))
    pred = proba.argmax(axis=1)
    top = proba.max(axis=1)
    if recipe.score is None:
        return pred, top
    if recipe.score == "current":  # the product itself: its label and confidence, best column of predict_proba
        product = head.predict_proba(test.embedding)
        return product.argmax(axis=1), product.max(axis=1)
    if recipe.conversion == "raw":  # the score itself: a ranking, not a confidence (oracle figures only)
        return pred, raw_scores(SCORERS[recipe.score](train, y, len(head.labels)), test, pred)
    scorer = SCORERS[recipe.score](train, y, len(head.labels))
    familiarity = (contrast_familiarity(scorer, recipe.coverage if recipe.conversion == "coverage" else None)
                   if recipe.conversion in ("contrast", "coverage") else spread_familiarity(scorer, recipe.spreads))
    factor = np.ones(len(pred))
    for k in np.unique(pred):
        rows = np.flatnonzero(pred == k)
        factor[rows] = familiarity(scorer.against(test.take(rows), int(k)), int(k))
    return pred, top * factor


def raw_scores(scorer: Scorer, test: Data, pred: np.ndarray) -> np.ndarray:
    """Each test image's score against the label it was given."""
    out = np.zeros(len(pred))
    for k in np.unique(pred):
        rows = np.flatnonzero(pred == k)
        out[rows] = scorer.against(test.take(rows), int(k))
    return out


# ── held-out-label calibration (my addition) ─────────────────────────────────────────────────────────


LOGIT_CLIP = 8.0


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.clip(np.log(p / (1 - p)), -LOGIT_CLIP, LOGIT_CLIP)


def _fit_fixed(x: np.ndarray, y: np.ndarray, n_labels: int, c: float, temperature: float
               ) -> callable:
    """A head at a fixed C and temperature (no cross-validation): returns proba(x)."""
    used = np.unique(y)
    remap = np.searchsorted(used, y)
    if len(used) == 1:
        return lambda z: np.tile(np.eye(n_labels)[used[0]], (len(z), 1))
    theta = training.fit_softmax(_unit(x), remap, len(used), c)
    d = x.shape[1]
    w = theta[:d * len(used)].reshape(d, len(used))
    b = theta[d * len(used):]

    def proba(z: np.ndarray) -> np.ndarray:
        out = np.zeros((len(z), n_labels))
        out[:, used] = training.softmax((_unit(z) @ w + b) / temperature)
        return out
    return proba


class _Signals:
    """The scores named in `score` ("knn", or several joined by "+") fitted on some training images, with each
    label's typical leave-one-out score (mean, spread) to put a score in the label's own units."""

    def __init__(self, score: str, train: Data, y: np.ndarray, n_labels: int):
        self.scorers = [SCORERS[name](train, y, n_labels) for name in score.split("+")]
        self.stats = [_label_stats(scorer) for scorer in self.scorers]

    def features(self, p: np.ndarray, data: Data, k: int) -> np.ndarray:
        """Per image answered k with softmax p: [logit p, then per score: score, score in the label's spreads]."""
        columns = [_logit(p)]
        for scorer, (m, sd) in zip(self.scorers, self.stats, strict=True):
            s = scorer.against(data, k)
            columns += [s, (s - m[k]) / sd[k]]
        return np.stack(columns, axis=1)


def _label_stats(scorer: Scorer) -> tuple[np.ndarray, np.ndarray]:
    loo = scorer.loo()
    m, sd = np.ones(scorer.n_labels), np.full(scorer.n_labels, MIN_SCALE)
    for k in range(scorer.n_labels):
        own = loo[scorer.y == k]
        if len(own) > 1:
            m[k], sd[k] = own.mean(), max(own.std(), MIN_SCALE)
    return m, sd


def held_out_calibration(head: training.Head, train: Data, y: np.ndarray, score: str, open_share: float = 0.5,
                         folds: int = 3, label_groups: int = 5, seed: int = 0) -> callable:
    """P(the answer is right | softmax, similarity) fitted on the training images alone.

    Right and wrong answers among known labels come from k-fold out-of-fold predictions; answers to images of
    a kind never trained on come from holding whole labels out (label groups): a head trained without them
    still gives them a label, and those answers are wrong by construction. A logistic regression on
    [logit(softmax), similarity to the label, similarity in the label's own spreads] separates right from
    wrong, the held-out-label answers weighing `open_share` of the total (the share of never-seen kinds assumed
    in the stream)."""
    from sklearn.linear_model import LogisticRegression

    n_labels = len(head.labels)
    c, t = float(head.meta.get("C", 1000.0)), head.temperature
    rng = np.random.default_rng(seed)
    feats, right, is_open = [], [], []
    fold = np.zeros(len(y), dtype=int)
    for k in range(n_labels):
        members = np.flatnonzero(y == k)
        fold[members] = (rng.permutation(len(members)) % folds)
    for f in range(folds):
        held, kept = np.flatnonzero(fold == f), np.flatnonzero(fold != f)
        if len(held) == 0 or len(np.unique(y[kept])) < 2:
            continue
        proba = _fit_fixed(train.embedding[kept], y[kept], n_labels, c, t)(train.embedding[held])
        signals = _Signals(score, train.take(kept), y[kept], n_labels)
        pred = proba.argmax(1)
        for k in np.unique(pred):
            rows = np.flatnonzero(pred == k)
            feats.append(signals.features(proba[rows, k], train.take(held[rows]), int(k)))
            right.append(y[held[rows]] == k)
            is_open.append(np.zeros(len(rows), dtype=bool))
    groups = rng.permutation(n_labels) % min(label_groups, n_labels)
    for g in np.unique(groups):
        out_labels = np.flatnonzero(groups == g)
        held = np.flatnonzero(np.isin(y, out_labels))
        kept = np.flatnonzero(~np.isin(y, out_labels))
        proba = _fit_fixed(train.embedding[kept], y[kept], n_labels, c, t)(train.embedding[held])
        signals = _Signals(score, train.take(kept), y[kept], n_labels)
        pred = proba.argmax(1)
        for k in np.unique(pred):
            rows = np.flatnonzero(pred == k)
            feats.append(signals.features(proba[rows, k], train.take(held[rows]), int(k)))
            right.append(np.zeros(len(rows), dtype=bool))
            is_open.append(np.ones(len(rows), dtype=bool))
    x, target, opened = np.concatenate(feats), np.concatenate(right), np.concatenate(is_open)
    weight = np.ones(len(x))
    if opened.any() and (~opened).any():
        weight[opened] = open_share / (1 - open_share) * (~opened).sum() / opened.sum()
    if target.all() or not target.any():
        return lambda f: np.full(len(f), float(target.mean()))
    model = LogisticRegression(C=1.0, max_iter=1000).fit(x, target, sample_weight=weight)
    return lambda f: model.predict_proba(f)[:, 1]


def predict_calibrated(head: training.Head, train: Data, y: np.ndarray, test: Data, score: str,
                       open_share: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """(label, confidence) with the held-out-label calibration on the head's calibrated softmax."""
    calibrate = held_out_calibration(head, train, y, score, open_share)
    proba = training.softmax(head.logits(test.embedding))
    pred = proba.argmax(1)
    signals = _Signals(score, train, y, len(head.labels))
    conf = np.zeros(len(pred))
    for k in np.unique(pred):
        rows = np.flatnonzero(pred == k)
        conf[rows] = calibrate(signals.features(proba[rows, k], test.take(rows), int(k)))
    return pred, conf
