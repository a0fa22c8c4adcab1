"""Validation without ground truth: errors planted into held-out families.

A new model version is activated only if its validation PR-AUC is not worse than the active one's
(DESIGN 8), but a live catalogue has no truth labels. So, like ../shared/eval/inject.py but in feature
space, errors are planted into families the new model never trained on:
- moved (wrong product): a listing scored against the members of another family of its category;
- swapped image (wrong image): a listing shown with the image of another family's listing;
- re-listed (duplicate): a listing next to its re-listing (cropped, re-encoded image; about a third
  of the title's tokens dropped).
Clean members are the negatives. Metrics are average precision (PR-AUC) per kind, and their mean
is the number the promotion gate compares. Every model (trained or zero-shot) is measured on exactly
the same planted set, so the comparison is like for like.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.metrics import average_precision_score, precision_recall_curve

from ml_worker.features import FeatureCache
from ml_worker.modeling_maps import MapsInputs, MapsOutput
from ml_worker.scoring import encode_inputs
from ml_worker.zero_shot import duplicate_probability


def _p(model, a: MapsOutput, b: MapsOutput, ia, ib, head: int) -> np.ndarray:
    with torch.no_grad():
        logits = model.pair_logits(a, b, torch.as_tensor(ia), torch.as_tensor(ib))[:, head]
    return torch.sigmoid(logits).numpy()


def planted_validation(
    model,
    features: FeatureCache,
    family: np.ndarray,
    leaf_category: np.ndarray,
    rows: np.ndarray,
    *,
    seed: int = 0,
    max_families: int = 400,
    neighbours: int = 10,
    items: list | None = None,
) -> dict:
    """PR-AUC of `model` on errors planted among `rows` (listings of held-out families). With `items`
    (a list), the scored items are appended to it as `Scored` (for `gate_noise`)."""
    model = model.cpu().eval()
    rng = np.random.default_rng(seed)
    members = defaultdict(list)
    for r in rows:
        members[int(family[r])].append(int(r))
    fams = [f for f, m in members.items() if len(m) >= 2]
    if len(fams) < 2:
        return {"validation_families": len(fams), "note": "too few held-out families with 2+ listings"}
    fams = [fams[i] for i in rng.permutation(len(fams))[:max_families]]
    local_rows = np.array(sorted({r for f in fams for r in members[f]}))
    position = {int(r): i for i, r in enumerate(local_rows)}
    out = encode_inputs(model, features.inputs(torch.as_tensor(local_rows)))
    by_category = defaultdict(list)
    for f in fams:
        by_category[int(leaf_category[members[f][0]])].append(f)

    def other_family(f: int) -> int:
        same = [g for g in by_category[int(leaf_category[members[f][0]])] if g != f]
        pool = same or [g for g in fams if g != f]
        return pool[rng.integers(len(pool))]

    def disagreement(a_out, a_index: int, others: list[int]) -> float:
        ib = [position[j] for j in others]
        return 1.0 - float(_p(model, a_out, out, [a_index] * len(ib), ib, head=0).mean())

    negatives, moved, swapped = [], [], []
    negative_families, moved_families = [], []
    for f in fams:
        for i in members[f]:
            negatives.append(disagreement(out, position[i], [j for j in members[f] if j != i]))
            negative_families.append(f)
    swap_rows, swap_donors, swap_families = [], [], []
    for k, f in enumerate(fams):
        i = members[f][rng.integers(len(members[f]))]
        g = other_family(f)
        if k % 2 == 0:  # moved: i scored as if it were listed in family g
            moved.append(disagreement(out, position[i], members[g]))
            moved_families.append(f)
        else:  # swapped image: i's title with the image of a listing of family g
            swap_rows.append(i)
            swap_donors.append(members[g][rng.integers(len(members[g]))])
            swap_families.append(f)
    if swap_rows:
        x = features.inputs(torch.as_tensor(swap_rows))
        donor = features.inputs(torch.as_tensor(swap_donors))
        x = MapsInputs(
            top=donor.top, mid=donor.mid, has_image=donor.has_image, tokens=x.tokens, token_mask=x.token_mask
        )
        swapped_out = encode_inputs(model, x)
        for k, (i, f) in enumerate(zip(swap_rows, swap_families, strict=True)):
            swapped.append(disagreement(swapped_out, k, [j for j in members[f] if j != i]))

    def ap(positives: list[float]) -> float:
        y = np.r_[np.zeros(len(negatives)), np.ones(len(positives))]
        return float(average_precision_score(y, np.r_[negatives, positives]))

    # duplicates: half the sampled listings get a re-listing among the candidates
    twins = rng.permutation(len(local_rows))[: len(local_rows) // 4]
    aug = features.inputs(torch.as_tensor(local_rows[twins]), augmented=True)
    # a re-listing rarely copies the title verbatim: drop about a third of its words (tokens)
    drop = torch.as_tensor(rng.random(tuple(aug.token_mask.shape)) < 0.35)
    drop[:, 0] = False  # keep the first token, so no title is empty
    aug = MapsInputs(aug.top, aug.mid, aug.has_image, aug.tokens, aug.token_mask & ~drop)
    twin_out = encode_inputs(model, aug)
    all_out = MapsOutput(
        *(torch.cat([getattr(out, f), getattr(twin_out, f)]) for f in MapsOutput.__dataclass_fields__)
    )
    n = len(local_rows)
    sims = (
        out.embedding @ all_out.embedding.T
        + out.raw_image @ all_out.raw_image.T
        + out.raw_title @ all_out.raw_title.T
    )
    sims[torch.arange(n), torch.arange(n)] = -9.0
    k = min(neighbours, all_out.embedding.shape[0] - 1)
    cand = sims.topk(k, dim=1).indices
    probs = duplicate_probability(
        model, out, all_out, torch.as_tensor(np.repeat(np.arange(n), k)), cand.flatten()
    ).numpy()
    duplicate_score = probs.reshape(n, k).max(1)
    is_twin = np.zeros(n, dtype=bool)
    is_twin[twins] = True
    metrics = {
        "wrong_variant_ap": ap(moved + swapped),
        "wrong_product_ap": ap(moved),
        "wrong_image_ap": ap(swapped),
        "duplicate_ap": float(average_precision_score(is_twin, duplicate_score)),
        "validation_families": len(fams),
        "validation_listings": n,
    }
    metrics["pr_auc"] = (metrics["wrong_variant_ap"] + metrics["duplicate_ap"]) / 2
    wrong = np.r_[np.zeros(len(negatives)), np.ones(len(moved) + len(swapped))]
    metrics["pr_curve_wrong_variant"] = pr_curve(wrong, np.r_[negatives, moved, swapped])
    metrics["pr_curve_duplicate"] = pr_curve(is_twin, duplicate_score)
    if items is not None:
        items.append(
            Scored(
                wrong_variant=(
                    np.r_[negatives, moved, swapped],
                    wrong,
                    np.r_[negative_families, moved_families, swap_families].astype(np.int64),
                ),
                duplicate=(duplicate_score, is_twin.astype(float), family[local_rows].astype(np.int64)),
            )
        )
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}


@dataclass
class Scored:
    """One model's validation items of one fold, for the paired bootstrap: per kind (scores, labels,
    the family each item was planted in or belongs to)."""

    wrong_variant: tuple | None = None
    duplicate: tuple | None = None
    review: dict = field(default_factory=dict)  # gate key -> (scores, labels, families)


class RankedItems:
    """One kind's validation items sorted once by score, for many weighted average precisions (the
    bootstrap's draws reweigh the same items 300 times; sorting once makes each AP a few cumulative
    sums instead of a full `average_precision_score`, with the same value: ties share a threshold,
    zero-weight items are left out)."""

    def __init__(self, scores: np.ndarray, labels: np.ndarray):
        scores = np.asarray(scores, dtype=float)
        self.order = np.argsort(-scores, kind="mergesort")
        self.scores = scores[self.order]
        self.labels = np.asarray(labels, dtype=float)[self.order]

    def average_precision(self, weight: np.ndarray) -> float:
        """`average_precision_score(labels, scores, sample_weight=weight)`; `weight` in item order."""
        w = np.asarray(weight, dtype=float)[self.order]
        keep = w != 0
        scores, labels, w = self.scores[keep], self.labels[keep], w[keep]
        tps = np.cumsum(labels * w)
        fps = np.cumsum((1 - labels) * w)
        last = np.r_[np.nonzero(np.diff(scores))[0], len(scores) - 1]  # the end of each tie group
        tps, fps = tps[last], fps[last]
        if tps[-1] <= 0:
            return 0.0
        recall = tps / tps[-1]
        precision = np.divide(tps, tps + fps, out=np.zeros_like(tps), where=(tps + fps) > 0)
        return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def gate_noise(new: list[Scored], old: list[Scored], *, resamples: int = 300, seed: int = 0) -> dict:
    """How much the gate's difference (new minus old, both versions scored on the same planted
    errors and reviewer pairs) moves when the validation families are drawn again: a paired
    bootstrap over families within each fold (`new[k]`, `old[k]`: fold k's items of each version,
    the planted ones first; review items, if any, follow). Returns per gate number (`pr_auc`, each
    review AP measured in every fold, and `gate_with_review`: the planted PR-AUC averaged with those
    review APs, with their `keys`) the standard deviation of the difference over the resamples and
    its 5th and 95th percentiles."""
    rng = np.random.default_rng(seed)
    planted_new = [s for s in new if s.wrong_variant is not None]
    planted_old = [s for s in old if s.wrong_variant is not None]
    review_new = [s for s in new if s.review]
    review_old = [s for s in old if s.review]
    keys = set.intersection(*(set(s.review) for s in review_new + review_old)) if review_new else set()
    diffs = defaultdict(list)

    def draw(families: np.ndarray, *item_families: np.ndarray) -> list[np.ndarray]:
        """Families drawn again with replacement; each item weighs as often as its family was drawn."""
        unique = np.unique(families)
        counts = np.bincount(rng.integers(len(unique), size=len(unique)), minlength=len(unique))
        return [counts[np.searchsorted(unique, f)].astype(float) for f in item_families]

    def both_classes(item: tuple, weight: np.ndarray) -> bool:
        return len(np.unique(item[1][weight > 0])) == 2

    ranked: dict[int, RankedItems] = {}  # by id(item): every item is sorted once, for all draws

    def ap(item: tuple, weight: np.ndarray) -> float:
        if id(item) not in ranked:
            ranked[id(item)] = RankedItems(item[0], item[1])
        return ranked[id(item)].average_precision(weight)

    for _ in range(resamples):
        per_key = defaultdict(list)
        for a, b in zip(planted_new, planted_old, strict=True):
            w_wv, w_dup = draw(a.duplicate[2], a.wrong_variant[2], a.duplicate[2])
            if not (both_classes(a.wrong_variant, w_wv) and both_classes(a.duplicate, w_dup)):
                continue
            new_auc = (ap(a.wrong_variant, w_wv) + ap(a.duplicate, w_dup)) / 2
            old_auc = (ap(b.wrong_variant, w_wv) + ap(b.duplicate, w_dup)) / 2
            per_key["pr_auc"].append(new_auc - old_auc)
        for a, b in zip(review_new, review_old, strict=True):
            for key in sorted(keys):
                (w,) = draw(a.review[key][2], a.review[key][2])
                if both_classes(a.review[key], w):
                    per_key[key].append(ap(a.review[key], w) - ap(b.review[key], w))
        means = {key: float(np.mean(values)) for key, values in per_key.items()}
        for key, value in means.items():
            diffs[key].append(value)
        if keys and all(k in means for k in ("pr_auc", *keys)):  # the gate score with reviewer labels
            diffs["gate_with_review"].append((means["pr_auc"] + np.mean([means[k] for k in keys])) / 2)
    noise = {
        key: {
            "sd": round(float(np.std(v)), 4),
            "p05": round(float(np.percentile(v, 5)), 4),
            "p95": round(float(np.percentile(v, 95)), 4),
            "resamples": len(v),
        }
        for key, v in diffs.items()
        if len(v) >= resamples // 2
    }
    if "gate_with_review" in noise:
        noise["gate_with_review"]["keys"] = sorted(keys)
    return noise


RECALL_GRID = np.linspace(0.0, 1.0, 21)


def pr_curve(y: np.ndarray, scores: np.ndarray) -> list[float]:
    """Interpolated precision (the best precision at recall >= r) at recall 0, 0.05, ..., 1: a
    fixed grid, so curves of folds and versions average and compare point by point."""
    precision, recall, _ = precision_recall_curve(y, scores)
    return [round(float(precision[recall >= r].max()), 4) for r in RECALL_GRID]


def review_pair_validation(
    model, features: FeatureCache, pairs, family=None, items: list | None = None
) -> dict:
    """The pair heads on reviewer-labelled pairs the model never trained on (`pairs`: a
    ml_worker.train.ReviewPairs of held-out families): average precision of P(same) per head where
    both answers occur, and accuracy at 0.5 over all of them. With `items` (and `family`, each row's
    family id) the scored pairs of each head are appended to it as `Scored` (for `gate_noise`)."""
    if not len(pairs):
        return {"validation_review_pairs": 0}
    model = model.cpu().eval()
    rows, where = np.unique(np.concatenate([pairs.a, pairs.b]), return_inverse=True)
    out = encode_inputs(model, features.inputs(torch.as_tensor(rows)))
    n = len(pairs)
    family_p = _p(model, out, out, where[:n], where[n:], 0)
    product_p = duplicate_probability(model, out, out, torch.as_tensor(where[:n]), torch.as_tensor(where[n:]))
    p = np.where(pairs.head == 0, family_p, product_p.numpy())
    metrics = {"validation_review_pairs": n, "review_accuracy": float(np.mean((p >= 0.5) == pairs.target))}
    heads = {}
    for head, name in ((0, "review_same_family_ap"), (1, "review_same_product_ap")):
        mask = pairs.head == head
        if mask.any() and 0 < pairs.target[mask].sum() < mask.sum():
            metrics[name] = float(average_precision_score(pairs.target[mask], p[mask]))
            heads[name] = (p[mask], pairs.target[mask].astype(float), np.asarray(family)[pairs.a[mask]])
    if items is not None and family is not None:
        items.append(Scored(review=heads))
    return metrics
