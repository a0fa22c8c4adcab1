"""Wrong-variant evidence, and a calibrator that learns from reviewer decisions how to weigh it.

The pair head answers "are these two listings of one family?"; a wrong-variant score has to turn a
listing's answers against all its siblings into one number. The default is `1 - max P(same family)`:
a listing is as wrong as its disagreement with the sibling it agrees with most, so a listing that
belongs with even one member is not flagged, and a stranger linked into the family does not drag its
rightful members' scores up (`1 - mean`, the earlier default, did both; the max is +0.03 wrong_variant
AP on catalogues the model never saw, BENCHMARKS.md "Pooling by the closest sibling"). Which summary
works best still depends on the catalogue's errors: a listing that shows another
product's image keeps its family's title, so image distances and "how much more does it differ than
its siblings differ from each other" say more than the pooled score; a small family with one
stranger is a different case from a large one. Reviewers' wrong-variant decisions (confirmed = 1,
rejected = 0) are exactly the labels to fit that weighing on: `WrongVariantCalibrator` is a
regularised logistic regression on the evidence vector below, fitted by the train job on the
decisions in force (each decided listing's evidence read by a fold model that never trained on its
family), stored with the version and applied by score jobs. Its output is P(a reviewer confirms).

Measured (BENCHMARKS.md, "A calibrator learns from the decisions"): the same 300 decisions raise
wrong_variant AP on catalogues no reviewer saw by more with the calibrator than through the pair
losses alone.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch

from ml_worker.modeling_maps import MapsOutput

EVIDENCE = (
    "disagreement_mean",  # 1 - mean P(same family)
    "disagreement_closest",  # 1 - P(same family) with the sibling it agrees with most: the plain score
    "disagreement_farthest",  # ... with the sibling it agrees with least
    "image_descriptor_distance",  # 1 - mean cosine of the raw backbone image descriptors
    "image_embedding_distance",  # ... of the learned image embeddings
    "title_embedding_distance",
    "title_descriptor_distance",
    "embedding_distance",  # ... of the fused embeddings
    "disagreement_outlier",  # its mean disagreement minus the siblings' median (0 in 2-listing families)
    "image_descriptor_outlier",
    "image_embedding_outlier",
    "embedding_outlier",
    "log_family_size",  # listings compared, itself included
    "has_image",
)
PLAIN_SCORE = EVIDENCE.index("disagreement_closest")  # the wrong-variant score without a calibrator
MIN_LABELS = 5  # of each class: fewer decisions give no calibrator (the plain score is used)
# undecided siblings of decided flags count as "not wrong" at this weight (ensemble.fit_calibrator);
# 0.3 and 1.0 measured alike, 0 (decisions only) 0.02 wrong_variant AP lower (BENCHMARKS.md)
SIBLING_WEIGHT = 0.3


@torch.no_grad()
def family_agreement(
    model, outputs: MapsOutput, groups: list[list[int]], rows=None, *, chunk: int = 4096
) -> dict[int, list[float]]:
    """P(same family) of each listing of `rows` (default: every grouped one) with each other member of
    its group, in the group's order. The pair head runs where `model` is; `outputs` may be anywhere."""
    device = next(itertools.chain(model.parameters(), model.buffers()), torch.empty(0)).device
    outputs = outputs.to(device)
    wanted = None if rows is None else {int(r) for r in rows}
    pairs_i, pairs_j = [], []
    for members in groups:
        for i in members:
            if wanted is None or i in wanted:
                pairs_i.extend([i] * (len(members) - 1))
                pairs_j.extend(j for j in members if j != i)
    agreement = defaultdict(list)
    for start in range(0, len(pairs_i), chunk):
        ii = torch.as_tensor(pairs_i[start : start + chunk], device=device)
        jj = torch.as_tensor(pairs_j[start : start + chunk], device=device)
        p = torch.sigmoid(model.pair_logits(outputs, outputs, ii, jj)[:, 0])
        for a, value in zip(ii.tolist(), p.tolist(), strict=True):
            agreement[a].append(value)
    return agreement


@dataclass
class ListingEvidence:
    agreement: list[float]  # P(same family) with each other member, in the group's order
    counted: list[bool]  # whether that member counts (False: a confirmed wrong variant, left out)
    features: np.ndarray | None  # EVIDENCE, over the counted members; None when none counts

    @property
    def score(self) -> float | None:
        """The uncalibrated wrong-variant score: 1 - max P(same family) over counted siblings."""
        return None if self.features is None else float(self.features[PLAIN_SCORE])


@torch.no_grad()
def wrong_variant_evidence(
    model, outputs: MapsOutput, groups: list[list[int]], excluded: set[int] | frozenset = frozenset()
) -> dict[int, ListingEvidence]:
    """Evidence of every listing of `groups` (lists of row indices into `outputs`, one per family).
    Rows in `excluded` (confirmed wrong variants) are scored themselves but do not count as anyone's
    sibling. The pair head runs where `model` is."""
    agreement = family_agreement(model, outputs, groups)
    out = outputs.to("cpu")
    has_image = (out.raw_image.norm(dim=1) > 0).numpy()
    result = {}
    for members in groups:
        n = len(members)
        idx = torch.as_tensor(members)
        p = np.eye(n)
        for a, i in enumerate(members):
            p[a, [b for b in range(n) if b != a]] = agreement[i]
        cosines = [
            (getattr(out, name)[idx] @ getattr(out, name)[idx].T).numpy()
            for name in ("raw_image", "image_embedding", "title_embedding", "raw_title", "embedding")
        ]
        kept = [a for a, i in enumerate(members) if i not in excluded]
        shared = _group_means(p, cosines, kept) if len(kept) >= 2 else None
        for a, i in enumerate(members):
            others = [b for b in kept if b != a]
            counted = [b in kept for b in range(n) if b != a]
            if not others:
                result[i] = ListingEvidence(agreement[i], counted, None)
                continue
            if a in kept:  # compared within the counted members (the same for all of them)
                group, (mean_p, means) = kept, shared
            else:  # a left-out listing is compared with the counted ones
                group = [*kept, a]
                mean_p, means = _group_means(p, cosines, group)
            at = group.index(a)
            agree = p[a, others]
            features = [
                1 - mean_p[at],
                1 - agree.max(),
                1 - agree.min(),
                *(1 - m[at] for m in means),
                *(_outlier(1 - x, at) for x in (mean_p, means[0], means[1], means[4])),
                math.log(len(group)),
                float(has_image[i]),
            ]
            result[i] = ListingEvidence(agreement[i], counted, np.array(features, dtype=np.float64))
    return result


def _group_means(p: np.ndarray, cosines: list[np.ndarray], group: list[int]):
    """Each member's mean P(same family) and mean cosines with the other members of `group`."""
    sub = np.ix_(group, group)
    return _off_diagonal_means(p[sub]), [_off_diagonal_means(c[sub]) for c in cosines]


def _off_diagonal_means(matrix: np.ndarray) -> np.ndarray:
    n = matrix.shape[0]
    return (matrix.sum(1) - np.diag(matrix)) / (n - 1)


def _outlier(distance: np.ndarray, at: int) -> float:
    """How much further member `at` lies from its group than the others do (their median)."""
    if len(distance) <= 2:
        return 0.0
    return float(distance[at] - np.median(np.delete(distance, at)))


def cross_validated_gain(
    x: np.ndarray, y: np.ndarray, weight: np.ndarray, groups: list[str], *, folds: int = 5
) -> tuple[float, float] | None:
    """Weighted AP of out-of-fold calibrator probabilities and of the plain score on the same rows
    (folds by family: a family's rows are never both fitted and scored), or None when a fold cannot
    be fitted. The calibrator is worth using only where it ranks unseen families' rows better than
    the plain score it replaces."""
    from sklearn.metrics import average_precision_score
    from sklearn.model_selection import GroupKFold

    codes = sorted(set(groups))
    k = min(folds, len(codes))
    if k < 2 or y.all() or not y.any():
        return None
    oof = np.zeros(len(y))
    for fit_rows, test_rows in GroupKFold(n_splits=k).split(x, y, groups):
        calibrator = WrongVariantCalibrator.fit(
            x[fit_rows], y[fit_rows], weight=weight[fit_rows], min_labels=1
        )
        if calibrator is None:
            return None
        oof[test_rows] = calibrator.probability(x[test_rows])
    calibrated = average_precision_score(y, oof, sample_weight=weight)
    plain = average_precision_score(y, x[:, PLAIN_SCORE], sample_weight=weight)
    return float(calibrated), float(plain)


@dataclass
class WrongVariantCalibrator:
    mean: list[float]
    scale: list[float]
    coef: list[float]
    intercept: float
    confirmed: int  # the decisions it was fitted on
    rejected: int
    features: tuple[str, ...] = EVIDENCE

    @classmethod
    def fit(
        cls,
        x: np.ndarray,
        confirmed: np.ndarray,
        *,
        weight: np.ndarray | None = None,
        decided: np.ndarray | None = None,
        c: float = 0.3,
        min_labels: int = MIN_LABELS,
    ) -> WrongVariantCalibrator | None:
        """Fit on evidence rows `x` and their labels (optionally weighted per row); None with fewer
        than `min_labels` rows of either label. `decided` marks the rows that are reviewers' own
        decisions (default: all), which the stored `confirmed` / `rejected` counts count."""
        from sklearn.linear_model import LogisticRegression

        confirmed = np.asarray(confirmed, dtype=bool)
        weight = np.ones(len(confirmed)) if weight is None else np.asarray(weight, dtype=np.float64)
        if int(confirmed.sum()) < min_labels or int((~confirmed).sum()) < min_labels:
            return None
        x = np.asarray(x, dtype=np.float64)
        mean = np.average(x, axis=0, weights=weight)  # standardised as the weighted rows say
        scale = np.sqrt(np.average((x - mean) ** 2, axis=0, weights=weight))
        scale[scale < 1e-9] = 1.0
        lr = LogisticRegression(C=c, max_iter=2000).fit((x - mean) / scale, confirmed, sample_weight=weight)
        decided = np.ones(len(confirmed), dtype=bool) if decided is None else np.asarray(decided, dtype=bool)
        return cls(
            mean=mean.tolist(),
            scale=scale.tolist(),
            coef=lr.coef_[0].tolist(),
            intercept=float(lr.intercept_[0]),
            confirmed=int((confirmed & decided).sum()),
            rejected=int((~confirmed & decided).sum()),
        )

    def probability(self, x: np.ndarray) -> np.ndarray:
        """P(a reviewer confirms) of evidence rows `x` (n, len(EVIDENCE)) or one row."""
        x = np.asarray(x, dtype=np.float64)
        logit = ((x - np.array(self.mean)) / np.array(self.scale)) @ np.array(self.coef) + self.intercept
        return 1.0 / (1.0 + np.exp(-logit))

    def to_dict(self) -> dict:
        return {
            "features": list(self.features),
            "mean": self.mean,
            "scale": self.scale,
            "coef": self.coef,
            "intercept": self.intercept,
            "confirmed": self.confirmed,
            "rejected": self.rejected,
        }

    @classmethod
    def from_dict(cls, d: dict) -> WrongVariantCalibrator:
        features = tuple(d["features"])
        if features != EVIDENCE:
            raise ValueError(
                f"the calibrator was fitted on evidence {features}, this code computes {EVIDENCE}"
            )
        return cls(
            mean=list(d["mean"]),
            scale=list(d["scale"]),
            coef=list(d["coef"]),
            intercept=float(d["intercept"]),
            confirmed=int(d["confirmed"]),
            rejected=int(d["rejected"]),
        )
