"""The pair head's family agreement of each listing (`family_agreement`), and the plain pair-head evidence
of the older benchmarks' scoring (`ml_worker.scoring.score_listings`).

The pair head answers "are these two listings of one family?"; `1 - max P(same family)` turns a
listing's answers against all its siblings into one number: a listing is as wrong as its disagreement
with the sibling it agrees with most (better than the mean: BENCHMARKS.md, "Review loop"). The
evidence combiners (ml_worker.evidence) weigh it with the other channels.
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
PLAIN_SCORE = EVIDENCE.index("disagreement_closest")  # the pair head's wrong-variant score


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
