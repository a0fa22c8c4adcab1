"""What a listing's scores rest on: evidence channels kept apart, and combiners fitted on errors planted
into the catalogue being scored. The one scoring routine of score jobs and `ml_worker.evaluate`.

Why channels (issue 21's diagnosis): a family's members usually share one title, so "agrees with its
siblings" cannot see a listing that shows another product's image, and in a two-member family the
wrong listing and its innocent sibling agree with each other exactly as little. Evidence that belongs
to the listing itself breaks the tie: does its image look like what its own title, attributes and
category say?

Wrong-variant channels of listing i with counted siblings S (`WRONG_VARIANT_CHANNELS`):
- pair head: 1 - max / mean P(same family) with S (the version's fold model that never saw the family);
- image agreement: 1 - max / mean cosine of the backbone image descriptors with S (image only, so a
  shared title cannot mask it), and how much further it lies than its siblings lie from theirs;
- text agreement: 1 - max cosine of the text descriptors (title + variant attributes) with S;
- category agreement: the share of siblings listed under another category (a moved listing keeps its
  own);
- own consistency (`OwnEvidenceHeads`): heads fitted on the catalogue itself, cross-fitted by family,
  predict each attribute (colour, pattern...) and each category level from the image; a channel is how
  surprising the stated values are given the image, log(p(top guess) / p(stated)), also relative to the
  siblings' (the tie-breaker of two-member families); and the image against its own text: a linear
  image -> text alignment (contrastive, paper 4), 1 - cosine with the listing's own text.

`Combiner`: a logistic regression over the channels, fitted on errors planted into the catalogue
(listings moved into another family, images swapped for another listing's: `plant_wrong_variants`)
against the catalogue's listings as they are, weighted to a prior error rate, so its output reads as a
probability that the listing is wrong. Reviewer decisions in force join as rows at a higher weight.
Every model version, the zero-shot one included, is fitted this way at score time.

Duplicates (`DUPLICATE_CHANNELS`): the backbone image and text cosines, title words (TF-IDF), whether
the description is the same, how many normalised attribute values agree and disagree (the same product
has the same colour, size...), category and family, and the version's P(same product); combined by two
logistic regressions fitted on planted re-listings (a cropped, re-encoded image and a re-typed title of
a listing) against each listing's nearest neighbours: one reads every channel (a second page with the
same photo), one the words only (a second page with a photo of its own), joined by noisy-OR.
"""

from __future__ import annotations

import itertools
import math
import random
import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ml_worker.folds import FamilyFolds
from ml_worker.lexical import TitleIdf

WRONG_VARIANT_CHANNELS = (
    "pair_disagreement",  # 1 - max P(same family) with a counted sibling (pair head)
    "pair_disagreement_mean",
    "image_unlike_siblings",  # 1 - max image-descriptor cosine with a sibling
    "image_unlike_mean",
    "image_outlier",  # its mean image distance minus the siblings' median (0 in 2-member families)
    "text_unlike_siblings",  # 1 - max cosine of title + variant attributes
    "title_unlike_siblings",  # 1 - max word overlap (Jaccard) of the titles: most families share one
    "description_unlike_siblings",  # ... of the descriptions (0 where there are none)
    "category_unlike_siblings",  # share of siblings under another category
    "attribute_surprise",  # log(p(top guess) / p(stated)) of its attributes, from its image; mean
    "attribute_surprise_relative",  # ... minus the siblings' mean
    "category_surprise",  # the same for its category levels
    "category_surprise_relative",
    "image_text_misalignment",  # 1 - cos(image mapped into text space, its own text)
    "image_text_misalignment_relative",
    "log_family_size",
    "has_image",
)
DUPLICATE_CHANNELS = (
    "image_cosine",
    "image_closeness",  # -log(1 - image cosine): tells a re-encoded copy (0.97) from a look-alike (0.9)
    "text_cosine",
    "text_closeness",
    "title_words",  # TF-IDF cosine of the titles
    "same_description",
    "attributes_agree",  # normalised values equal, over the attributes both listings have
    "attributes_differ",
    "same_category",
    "same_family",
    "both_images",
    "p_same_product",  # the version's own P(same product) (descriptor formula for the zero-shot one)
    "twin_looks_closer",  # how much closer another family member worded as the first listing looks to the
    # second (image cosine): the words cannot say which of them a page copies, the photo can
)
WRONG_VARIANT_PRIOR = 0.03  # expected share of wrong listings among multi-member families' listings
DUPLICATE_PRIOR = 0.02  # expected share of listings whose best match is a duplicate
REVIEW_WEIGHT = 5.0  # a reviewer decision counts as this many planted rows
MIN_CLASS_EXAMPLES = 3  # an attribute value seen fewer times in a fold is "other"


def normalise_value(value) -> str:
    """An attribute value as compared: lower case, letters and digits only ("1 L" == "1l")."""
    return re.sub(r"[^0-9a-z]+", "", str(value).lower())


@dataclass
class CatalogueView:
    """What scoring reads of a catalogue (row-aligned arrays; a row = a listing)."""

    skus: list[str]
    families: list[str]
    categories: list[tuple[str, ...]]
    attributes: list[dict]
    titles: list[str]
    descriptions: list[str]
    image: np.ndarray  # (n, d) L2-normalised backbone image descriptors; zeros: no image
    text: np.ndarray  # (n, t) L2-normalised text descriptors of title + variant attributes

    def __post_init__(self):
        self.has_image = np.linalg.norm(self.image, axis=1) > 0
        self.members = defaultdict(list)
        for i, f in enumerate(self.families):
            self.members[f].append(i)

    def __len__(self) -> int:
        return len(self.skus)

    def word_sets(self, i: int, field_name: str) -> frozenset[str]:
        """The lower-cased words of listing i's title or description (cached)."""
        cache = self.__dict__.setdefault(f"_words_{field_name}", {})
        if i not in cache:
            cache[i] = frozenset(_WORDS.findall(getattr(self, field_name)[i].lower()))
        return cache[i]

    def wording(self, i: int) -> tuple:
        """What listing i's page says: its title words, description and normalised attribute values."""
        cache = self.__dict__.setdefault("_wording", {})
        if i not in cache:
            attributes = tuple(sorted((k, normalise_value(v)) for k, v in self.attributes[i].items()))
            cache[i] = (self.word_sets(i, "titles"), self.descriptions[i].strip().lower(), attributes)
        return cache[i]

    def twins(self, i: int) -> frozenset[int]:
        """The other members of listing i's family worded as it is."""
        cache = self.__dict__.setdefault("_twins", {})
        if i not in cache:
            mine = self.wording(i)
            cache[i] = frozenset(
                m for m in self.members[self.families[i]] if m != i and self.wording(m) == mine
            )
        return cache[i]


_WORDS = re.compile(r"\w+")


def _jaccard(a: frozenset, b: frozenset) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


# --- own evidence: the image against its own attributes, category and text ---------------------------


@dataclass
class Head:
    target: str  # "attr:colour", "category:2"
    classes: list[str]
    coef: np.ndarray  # (C, k)
    intercept: np.ndarray  # (C,)

    def probabilities(self, z: np.ndarray) -> np.ndarray:
        logits = z @ self.coef.T + self.intercept
        logits -= logits.max(1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(1, keepdims=True)


def _targets(view: CatalogueView, rows) -> dict[str, list[str | None]]:
    """The values a head predicts: each attribute most listings carry, each category level."""
    targets = {}
    counts = defaultdict(int)
    for i in rows:
        for k in view.attributes[i]:
            counts[k] += 1
    for k, c in counts.items():
        if c >= 0.5 * len(rows) and k.lower() != "price":
            targets[f"attr:{k}"] = [
                str(view.attributes[i][k]).strip() if k in view.attributes[i] else None
                for i in range(len(view))
            ]
    depth = max((len(c) for c in view.categories), default=0)
    for level in range(depth):
        targets[f"category:{level}"] = [
            " > ".join(c[: level + 1]) if len(c) > level else None for c in view.categories
        ]
    return targets


def _label(value: str | None, classes: list[str]) -> str | None:
    if value is None:
        return None
    return value if value in classes else ("other" if "other" in classes else None)


@dataclass
class OwnEvidenceHeads:
    """Per fold of `folds`: heads that predict attributes and category levels from the image, and an
    image -> text alignment, each fitted on the other folds' families."""

    pca_mean: np.ndarray
    pca_components: np.ndarray  # (k, d)
    folds: FamilyFolds
    heads: list[list[Head]] = field(default_factory=list)  # [fold][target]
    align: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # [fold] (Wi (k,e), Wt (t,e))

    def reduce(self, image: np.ndarray) -> np.ndarray:
        return (image - self.pca_mean) @ self.pca_components.T

    @classmethod
    def fit(
        cls,
        view: CatalogueView,
        folds: FamilyFolds,
        *,
        rows=None,
        dim: int = 64,
        alignment: str = "contrastive",
        seed: int = 0,
    ) -> OwnEvidenceHeads:
        from sklearn.decomposition import PCA
        from sklearn.linear_model import LogisticRegression

        rows = np.arange(len(view)) if rows is None else np.asarray(rows)
        rows = rows[view.has_image[rows]]
        if len(rows) < 3:  # (almost) no images: no own evidence to read; every channel of it is 0
            d, t = view.image.shape[1], view.text.shape[1]
            empty = cls(np.zeros(d), np.zeros((1, d)), folds)
            empty.heads = [[] for _ in range(max(folds.count, 1))]
            empty.align = [(np.zeros((1, 1)), np.zeros((t, 1))) for _ in range(max(folds.count, 1))]
            return empty
        dim = max(1, min(dim, len(rows) - 1, view.image.shape[1]))
        pca = PCA(n_components=dim, random_state=seed).fit(view.image[rows])
        heads = cls(pca.mean_, pca.components_, folds)
        z = heads.reduce(view.image[rows])
        z_scale = z.std(0).mean() or 1.0
        heads.pca_components = heads.pca_components / z_scale
        z = z / z_scale
        row_families = [view.families[i] for i in rows]
        targets = _targets(view, rows)
        for k in range(max(folds.count, 1)):
            fit_rows = folds.fitted_without(k, row_families)
            fold_heads = []
            for name, values in targets.items():
                seen = defaultdict(int)
                for r in fit_rows:
                    if values[rows[r]] is not None:
                        seen[values[rows[r]]] += 1
                classes = sorted(v for v, c in seen.items() if c >= MIN_CLASS_EXAMPLES)
                if any(c < MIN_CLASS_EXAMPLES for c in seen.values()):
                    classes.append("other")
                if len(classes) < 2:
                    continue
                labelled = [(r, _label(values[rows[r]], classes)) for r in fit_rows]
                labelled = [(r, y) for r, y in labelled if y is not None]
                lr = LogisticRegression(C=0.1, max_iter=100, tol=1e-3).fit(
                    z[[r for r, _ in labelled]], [y for _, y in labelled]
                )
                coef, intercept = lr.coef_, lr.intercept_
                if len(lr.classes_) == 2:  # binary: one row of weights; softmax([0, z]) = sigmoid(z)
                    coef = np.vstack([np.zeros_like(coef), coef])
                    intercept = np.r_[0.0, intercept]
                fold_heads.append(Head(name, [str(c) for c in lr.classes_], coef, intercept))
            heads.heads.append(fold_heads)
            heads.align.append(
                _fit_alignment(z[fit_rows], view.text[rows[fit_rows]], method=alignment, seed=seed + k)
            )
        return heads

    def evidence(
        self, view: CatalogueView, rows, image_rows=None, family_of=None
    ) -> dict[str, np.ndarray | list]:
        """Own-evidence values of `rows` (their text, attributes and category) read against the images of
        `image_rows` (default the same rows; a planted swap passes another listing's), each by the heads
        of the fold of `family_of` (default its own family)."""
        rows = np.asarray(rows)
        image_rows = rows if image_rows is None else np.asarray(image_rows)
        families = [view.families[i] for i in rows] if family_of is None else list(family_of)
        n = len(rows)
        attr = np.zeros(n)
        cat = np.zeros(n)
        misalign = np.zeros(n)
        worst: list[dict | None] = [None] * n
        has_image = view.has_image[image_rows]
        z = self.reduce(view.image[image_rows])
        targets = _targets(view, rows)
        for k, positions in self.folds.groups(families).items():
            at = positions[has_image[positions]]
            if not len(at):
                continue
            attr_parts, cat_parts = [], []
            for head in self.heads[k]:
                values = targets.get(head.target)
                if values is None:
                    continue
                p = head.probabilities(z[at])
                col = {c: j for j, c in enumerate(head.classes)}
                s = np.full(len(at), np.nan)
                for a, r in enumerate(at):
                    y = _label(values[rows[r]], head.classes)
                    if y is None:
                        continue
                    s[a] = math.log(p[a].max() / max(p[a, col[y]], 1e-6))
                    if s[a] > 0.7 and (worst[r] is None or s[a] > worst[r]["surprise"]):
                        worst[r] = {
                            "target": head.target,
                            "looks": head.classes[int(p[a].argmax())],
                            "listed": values[rows[r]],
                            "surprise": round(float(s[a]), 3),
                        }
                (cat_parts if head.target.startswith("category:") else attr_parts).append(s)
            for parts, out in ((attr_parts, attr), (cat_parts, cat)):
                if parts:
                    stacked = np.vstack(parts)
                    filled = np.where(np.isnan(stacked), 0.0, stacked)
                    count = np.maximum((~np.isnan(stacked)).sum(0), 1)
                    out[at] = filled.sum(0) / count
            wi, wt = self.align[k]
            mapped = _normalise(z[at] @ wi)
            own = _normalise(view.text[rows[at]] @ wt)
            misalign[at] = 1.0 - (mapped * own).sum(1)
        return {"attribute": attr, "category": cat, "misalignment": misalign, "worst": worst}

    def to_arrays(self) -> dict[str, np.ndarray]:
        out = {
            "pca_mean": self.pca_mean,
            "pca_components": self.pca_components,
            "folds": np.array([self.folds.count]),
        }
        for k, fold_heads in enumerate(self.heads):
            for h, head in enumerate(fold_heads):
                out[f"head/{k}/{h}/coef"] = head.coef
                out[f"head/{k}/{h}/intercept"] = head.intercept
            out[f"align/{k}/image"], out[f"align/{k}/text"] = self.align[k]
        # C order: safetensors writes an array's buffer as it lies (a Fortran-ordered one comes back wrong)
        return {name: np.ascontiguousarray(value) for name, value in out.items()}

    def to_meta(self) -> list[list[dict]]:
        return [[{"target": h.target, "classes": h.classes} for h in fold_heads] for fold_heads in self.heads]

    @classmethod
    def from_arrays(cls, arrays: dict, meta: list[list[dict]]) -> OwnEvidenceHeads:
        heads = cls(
            arrays["pca_mean"],
            arrays["pca_components"],
            FamilyFolds(int(np.asarray(arrays["folds"]).reshape(-1)[0])),
        )
        for k, fold_meta in enumerate(meta):
            heads.heads.append(
                [
                    Head(
                        m["target"],
                        m["classes"],
                        arrays[f"head/{k}/{h}/coef"],
                        arrays[f"head/{k}/{h}/intercept"],
                    )
                    for h, m in enumerate(fold_meta)
                ]
            )
            heads.align.append((arrays[f"align/{k}/image"], arrays[f"align/{k}/text"]))
        return heads


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _fit_alignment(
    z: np.ndarray,
    text: np.ndarray,
    *,
    method: str = "contrastive",
    dim: int = 64,
    steps: int = 200,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Linear maps of image codes and text descriptors into one space where a listing's image and its own
    text meet (paper 4). "contrastive": symmetric InfoNCE, each image against its own text and the batch's
    others; "codis": the two views assigned to shared cluster centres (a learned codebook), each view's
    assignment taught by the other's (swapped prediction) on top of the contrast; "ridge": least squares
    image -> text, no negatives."""
    import torch

    if method == "ridge" or len(z) < 8:
        reg = 1.0 * np.eye(z.shape[1])
        w = np.linalg.solve(z.T @ z + reg, z.T @ text)
        return w, np.eye(text.shape[1])
    torch.manual_seed(seed)
    zi = torch.as_tensor(z, dtype=torch.float32)
    zt = torch.as_tensor(text, dtype=torch.float32)
    wi = torch.nn.Parameter(torch.randn(zi.shape[1], dim) / zi.shape[1] ** 0.5)
    wt = torch.nn.Parameter(torch.randn(zt.shape[1], dim) / zt.shape[1] ** 0.5)
    params = [wi, wt]
    codebook = None
    if method == "codis":
        codebook = torch.nn.Parameter(torch.nn.functional.normalize(torch.randn(32, dim), dim=1))
        params.append(codebook)
    opt = torch.optim.Adam(params, lr=1e-2, weight_decay=1e-4)
    batch = min(256, len(zi))
    gen = torch.Generator().manual_seed(seed)
    targets = torch.arange(batch)
    for _ in range(steps):
        idx = torch.randperm(len(zi), generator=gen)[:batch]
        a = torch.nn.functional.normalize(zi[idx] @ wi, dim=1)
        b = torch.nn.functional.normalize(zt[idx] @ wt, dim=1)
        logits = a @ b.T / 0.07
        loss = (
            torch.nn.functional.cross_entropy(logits, targets[: len(idx)])
            + torch.nn.functional.cross_entropy(logits.T, targets[: len(idx)])
        ) / 2
        if codebook is not None:
            c = torch.nn.functional.normalize(codebook, dim=1)
            qa, qb = a @ c.T / 0.1, b @ c.T / 0.1
            with torch.no_grad():  # balanced soft assignments (a few Sinkhorn steps), one per view
                ta, tb = _sinkhorn(qa.detach()), _sinkhorn(qb.detach())
            swapped = (
                -(tb * torch.log_softmax(qa, 1)).sum(1).mean() - (ta * torch.log_softmax(qb, 1)).sum(1).mean()
            )
            loss = loss + 0.5 * swapped
        opt.zero_grad()
        loss.backward()
        opt.step()
    return wi.detach().numpy().astype(np.float64), wt.detach().numpy().astype(np.float64)


def _sinkhorn(scores, iterations: int = 3):
    import torch

    q = torch.exp(scores - scores.max()).T  # (K, B)
    q /= q.sum()
    k, b = q.shape
    for _ in range(iterations):
        q /= q.sum(1, keepdim=True) * k
        q /= q.sum(0, keepdim=True) * b
    return (q * b).T


# --- wrong-variant channels ----------------------------------------------------------------------------


def wrong_variant_channels(
    view: CatalogueView,
    listing_rows,
    sibling_rows: list[list[int]],
    agreement: list[list[float]],
    own: dict,
    *,
    image_rows=None,
    sibling_own: list[np.ndarray] | None = None,
) -> np.ndarray:
    """Channel matrix (len(listing_rows), len(WRONG_VARIANT_CHANNELS)) of listings each read against its
    counted siblings. `agreement[a]`: P(same family) with each of `sibling_rows[a]` (pair head); `own`:
    `OwnEvidenceHeads.evidence` of the listings (row-aligned); `sibling_own[a]`: the siblings' own
    evidence as (m, 3) [attribute, category, misalignment]; `image_rows`: whose image each listing shows."""
    listing_rows = np.asarray(listing_rows)
    image_rows = listing_rows if image_rows is None else np.asarray(image_rows)
    out = np.zeros((len(listing_rows), len(WRONG_VARIANT_CHANNELS)))
    for a, (i, img) in enumerate(zip(listing_rows, image_rows, strict=True)):
        sib = np.asarray(sibling_rows[a])
        p = np.asarray(agreement[a], dtype=np.float64)
        sib_has = view.has_image[sib]
        has = bool(view.has_image[img])
        if has and sib_has.any():
            cos = view.image[sib[sib_has]] @ view.image[img]
            image_max, image_mean = 1 - cos.max(), 1 - cos.mean()
            outlier = 0.0
            if sib_has.sum() >= 2:
                s = sib[sib_has]
                among = view.image[s] @ view.image[s].T
                m = len(s)
                own_mean_cos = cos.mean()
                theirs = (among.sum(1) - np.diag(among) + cos) / m  # each sibling's mean cosine with the rest
                outlier = float((1 - own_mean_cos) - np.median(1 - theirs))
        else:
            image_max = image_mean = outlier = 0.0
        text_cos = view.text[sib] @ view.text[i]
        title_overlap = max(_jaccard(view.word_sets(i, "titles"), view.word_sets(j, "titles")) for j in sib)
        mine_words = view.word_sets(i, "descriptions")
        description_overlap = (
            max(_jaccard(mine_words, view.word_sets(j, "descriptions")) for j in sib) if mine_words else 1.0
        )
        cat = view.categories[i]
        cat_differs = np.mean([view.categories[j] != cat for j in sib])
        mine = np.array([own["attribute"][a], own["category"][a], own["misalignment"][a]])
        theirs = sibling_own[a].mean(0) if sibling_own is not None and len(sibling_own[a]) else mine
        out[a] = [
            1 - p.max(),
            1 - p.mean(),
            image_max,
            image_mean,
            outlier,
            1 - text_cos.max(),
            1 - title_overlap,
            1 - description_overlap,
            cat_differs,
            mine[0],
            mine[0] - theirs[0],
            mine[1],
            mine[1] - theirs[1],
            mine[2],
            mine[2] - theirs[2],
            math.log(len(sib) + 1),
            float(has),
        ]
    return out


# --- the combiner --------------------------------------------------------------------------------------


@dataclass
class Combiner:
    """A logistic regression over evidence channels, fitted on planted errors (and reviewer decisions),
    with the rows weighted so that errors make up `prior` of the weight: its output reads as the
    probability that a listing (pair) is an error in a catalogue with that share of errors."""

    channels: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float
    prior: float
    summary: dict = field(default_factory=dict)

    @classmethod
    def fit(
        cls,
        x: np.ndarray,
        y: np.ndarray,
        channels: tuple[str, ...],
        *,
        prior: float,
        weight: np.ndarray | None = None,
        groups: list[str] | None = None,
        c: float = 0.03,
        unlabelled: np.ndarray | None = None,
        suspect_share: float | None = None,
    ) -> Combiner:
        """`unlabelled` marks the clean rows that are only presumed clean (the catalogue's listings as they
        are; default: every row with y = 0): the catalogue holds real errors among them, the very ones
        to find, and each clean row weighs far more than a plant. A first fit ranks them; the top
        `suspect_share` (default `prior`) of them are left out of the second, final fit."""
        y = np.asarray(y, dtype=bool)
        if y.all() or not y.any():
            raise ValueError("a combiner needs both planted errors and clean rows")
        weight = np.ones(len(y)) if weight is None else np.asarray(weight, dtype=np.float64)
        unlabelled = ~y if unlabelled is None else np.asarray(unlabelled, dtype=bool) & ~y
        first = cls._fit(x, y, weight, channels, prior, c)
        suspect = np.nonzero(unlabelled)[0]
        drop = round((prior if suspect_share is None else suspect_share) * len(suspect))
        keep = np.ones(len(y), dtype=bool)
        if drop:
            keep[suspect[np.argsort(-first.logit(x[suspect]))[:drop]]] = False
        if (~y[keep]).sum() == 0:
            keep[:] = True
        combiner = cls._fit(x[keep], y[keep], weight[keep], channels, prior, c)
        if groups:
            w = (
                np.where(y, prior / weight[y & keep].sum(), (1 - prior) / weight[~y & keep].sum())
                * weight
                * len(y)
            )
            combiner.summary = _cross_validated_summary(
                x[keep],
                y[keep],
                w[keep],
                [g for g, k in zip(groups, keep, strict=True) if k],
                channels,
                prior,
                c,
            )
        combiner.summary.update(
            planted=int(y.sum()), clean=int((~y & keep).sum()), left_out=int((~keep).sum())
        )
        return combiner

    @classmethod
    def _fit(cls, x, y, weight, channels, prior, c) -> Combiner:
        from sklearn.linear_model import LogisticRegression

        w = np.where(y, prior / weight[y].sum(), (1 - prior) / weight[~y].sum()) * weight * len(y)
        mean = np.average(x, axis=0, weights=w)
        scale = np.sqrt(np.average((x - mean) ** 2, axis=0, weights=w))
        scale[scale < 1e-9] = 1.0
        lr = LogisticRegression(C=c, max_iter=2000).fit((x - mean) / scale, y, sample_weight=w)
        # the strong regularisation ranks best (measured, BENCHMARKS.md) but shrinks the logits: rescale
        # them (Platt: a * logit + b, unregularised, same weights) so the output is calibrated again
        z = lr.decision_function((x - mean) / scale)
        platt = LogisticRegression(C=1e4, max_iter=2000).fit(z[:, None], y, sample_weight=w)
        a, b = float(platt.coef_[0][0]), float(platt.intercept_[0])
        return cls(channels, mean, scale, a * lr.coef_[0], a * float(lr.intercept_[0]) + b, prior)

    def logit(self, x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, dtype=np.float64) - self.mean) / self.scale) @ self.coef + self.intercept

    def probability(self, x: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.logit(x)))

    def contributions(self, x: np.ndarray) -> np.ndarray:
        """Each channel's share of the logit (standardised value x coefficient): what fired."""
        return (np.asarray(x, dtype=np.float64) - self.mean) / self.scale * self.coef

    def to_dict(self) -> dict:
        return {
            "channels": list(self.channels),
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "coef": self.coef.tolist(),
            "intercept": self.intercept,
            "prior": self.prior,
            "summary": self.summary,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Combiner:
        return cls(
            tuple(d["channels"]),
            np.array(d["mean"]),
            np.array(d["scale"]),
            np.array(d["coef"]),
            float(d["intercept"]),
            float(d["prior"]),
            dict(d.get("summary", {})),
        )

    def over(self, channels: tuple[str, ...]) -> Combiner:
        """This combiner reading `channels`, a later channel list that holds its own: a channel it was not
        fitted with weighs nothing (a scorer stored before the channel existed)."""
        if tuple(channels) == self.channels:
            return self
        missing = set(self.channels) - set(channels)
        if missing:
            raise ValueError(f"the combiner reads channels no longer computed: {sorted(missing)}")
        at = {c: k for k, c in enumerate(self.channels)}
        mean, scale, coef = np.zeros(len(channels)), np.ones(len(channels)), np.zeros(len(channels))
        for k, c in enumerate(channels):
            if c in at:
                mean[k], scale[k], coef[k] = self.mean[at[c]], self.scale[at[c]], self.coef[at[c]]
        return Combiner(tuple(channels), mean, scale, coef, self.intercept, self.prior, self.summary)


@dataclass
class KindCombiner:
    """One combiner per kind of planted error: a moved listing (its words and the pair head speak) and a
    swapped image (its image against its siblings' and against its own text, attributes and category
    speak). A linear model cannot say "either this or that"; P(wrong) = 1 - prod_k (1 - p_k) can, and
    the kind whose combiner fires tells the reviewer what the error looks like."""

    kinds: dict[str, Combiner]

    @property
    def channels(self) -> tuple[str, ...]:
        return next(iter(self.kinds.values())).channels

    def kind_probabilities(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return {k: c.probability(x) for k, c in self.kinds.items()}

    def probability(self, x: np.ndarray) -> np.ndarray:
        keep = np.ones(np.asarray(x).shape[:-1] if np.ndim(x) > 1 else ())
        for p in self.kind_probabilities(x).values():
            keep = keep * (1 - p)
        return 1 - keep

    def strongest(self, x: np.ndarray) -> tuple[str, Combiner]:
        """The kind whose combiner gives this one row the highest probability."""
        return max(self.kinds.items(), key=lambda kc: float(kc[1].probability(x)))

    @property
    def summary(self) -> dict:
        return {k: c.summary for k, c in self.kinds.items()}

    def to_dict(self) -> dict:
        return {"kinds": {k: c.to_dict() for k, c in self.kinds.items()}}

    @classmethod
    def from_dict(cls, d: dict, channels: tuple[str, ...] | None = None) -> KindCombiner:
        kinds = {k: Combiner.from_dict(c) for k, c in d["kinds"].items()}
        return cls({k: c.over(channels) if channels else c for k, c in kinds.items()})


def _cross_validated_summary(x, y, w, groups, channels, prior, c) -> dict:
    """Out-of-fold (by family) AP on the plants and a reliability table: predicted vs observed share of
    errors (weighted to the prior) in bins of the predicted probability."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import average_precision_score
    from sklearn.model_selection import GroupKFold

    if len(set(groups)) < 3:
        return {}
    oof = np.zeros(len(y))
    for fit, test in GroupKFold(n_splits=3).split(x, y, groups):
        if y[fit].all() or not y[fit].any():
            return {}
        mean = np.average(x[fit], axis=0, weights=w[fit])
        scale = np.sqrt(np.average((x[fit] - mean) ** 2, axis=0, weights=w[fit]))
        scale[scale < 1e-9] = 1.0
        lr = LogisticRegression(C=c, max_iter=2000).fit((x[fit] - mean) / scale, y[fit], sample_weight=w[fit])
        z = lr.decision_function((x[fit] - mean) / scale)
        platt = LogisticRegression(C=1e4, max_iter=2000).fit(z[:, None], y[fit], sample_weight=w[fit])
        oof[test] = platt.predict_proba(lr.decision_function((x[test] - mean) / scale)[:, None])[:, 1]
    edges = [0, 0.05, 0.1, 0.2, 0.35, 0.5, 0.65, 0.8, 0.9, 1.0001]
    bins = []
    for lo, hi in itertools.pairwise(edges):
        at = (oof >= lo) & (oof < hi)
        if at.any():
            bins.append(
                {
                    "predicted": round(float(np.average(oof[at], weights=w[at])), 4),
                    "observed": round(float(np.average(y[at], weights=w[at])), 4),
                    "weight": round(float(w[at].sum() / w.sum()), 4),
                    "rows": int(at.sum()),
                }
            )
    return {
        "planted_ap": round(float(average_precision_score(y, oof, sample_weight=w)), 4),
        "reliability": bins,
    }


# --- planted wrong variants ------------------------------------------------------------------------------


def plant_wrong_variants(
    view: CatalogueView,
    heads: OwnEvidenceHeads,
    family_agreement: Callable[[list[int], list[list[int]], list[int] | None], list[list[float]]],
    *,
    rows=None,
    plants: int = 2000,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Channel rows of errors planted into the catalogue (y = 1) and of its listings as they are (y = 0):
    half moved listings (a listing of another family read as a member of this one), half swapped images
    (a listing of this family read with the image of a listing of another family, from the same hash fold
    so the heads never saw it). Half of each is hard: the other listing comes from the same category.
    `family_agreement(listing_rows, sibling_rows, image_rows)` gives the pair head's P(same family).
    Returns x, each row's kind ("wrong_product", "wrong_image" or "" for a listing as it is) and its
    family (for grouped cross-validation)."""
    rng = random.Random(seed)
    rows = list(range(len(view))) if rows is None else [int(r) for r in rows]
    in_scope = set(rows)
    multi = [f for f, m in view.members.items() if len(m) >= 2 and all(i in in_scope for i in m)]
    if not multi:
        raise ValueError("no family with two or more listings to plant errors into")
    by_category = defaultdict(list)
    for i in rows:
        by_category[view.categories[i]].append(i)
    with_image = [i for i in rows if view.has_image[i]]
    listing, siblings, images, families, kinds = [], [], [], [], []
    for p in range(plants):
        target = rng.choice(multi)
        members = view.members[target]
        cat = view.categories[members[0]]
        hard = p % 4 < 2
        fold = heads.folds.of(target)

        def unseen(i, fold=fold):  # a listing the target's heads never trained on
            return heads.folds.of(view.families[i]) == fold

        if p % 2 == 0:  # moved listing
            pool = [
                i for i in (by_category[cat] if hard else rows) if view.families[i] != target and unseen(i)
            ]
            if not pool:
                pool = [i for i in rows if view.families[i] != target and unseen(i)]
            if not pool:
                continue
            x = rng.choice(pool)
            listing.append(x)
            siblings.append(list(members))
            images.append(x)
            kinds.append("wrong_product")
        else:  # swapped image
            victim = rng.choice(members)
            pool = [
                i
                for i in (by_category[cat] if hard else with_image)
                if view.families[i] != target and view.has_image[i] and unseen(i)
            ]
            if not pool:
                continue
            listing.append(victim)
            siblings.append([j for j in members if j != victim])
            images.append(rng.choice(pool))
            kinds.append("wrong_image")
        families.append(target)
    clean = [i for f in multi for i in view.members[f]]
    clean_siblings = [[j for j in view.members[view.families[i]] if j != i] for i in clean]
    x_plant = _channels_for(view, heads, family_agreement, listing, siblings, images, families)
    x_clean = _channels_for(view, heads, family_agreement, clean, clean_siblings, clean, None)
    x = np.vstack([x_plant, x_clean])
    kind = np.array(kinds + [""] * len(x_clean))
    return x, kind, families + [view.families[i] for i in clean]


def _channels_for(view, heads, family_agreement, listing, siblings, images, families) -> np.ndarray:
    if not listing:
        return np.zeros((0, len(WRONG_VARIANT_CHANNELS)))
    own = heads.evidence(view, listing, images, family_of=families)
    sibling_own = sibling_evidence(view, heads, siblings)
    agreement = family_agreement(listing, siblings, images)
    return wrong_variant_channels(
        view, listing, siblings, agreement, own, image_rows=images, sibling_own=sibling_own
    )


def sibling_evidence(
    view: CatalogueView, heads: OwnEvidenceHeads, siblings: list[list[int]]
) -> list[np.ndarray]:
    """The own evidence (attribute, category, misalignment) of each listing's siblings, read once."""
    unique = sorted({j for s in siblings for j in s})
    if not unique:
        return [np.zeros((0, 3)) for _ in siblings]
    e = heads.evidence(view, unique)
    table = np.stack([e["attribute"], e["category"], e["misalignment"]], axis=1)
    at = {j: k for k, j in enumerate(unique)}
    return [table[[at[j] for j in s]] for s in siblings]


# --- duplicates ------------------------------------------------------------------------------------------


def duplicate_channels(
    view: CatalogueView,
    ii,
    jj,
    p_same_product: np.ndarray,
    idf: TitleIdf,
    *,
    image_cosine: np.ndarray | None = None,
    text_cosine: np.ndarray | None = None,
    titles_j: list[str] | None = None,
    same_family: np.ndarray | None = None,
    twin_closer: np.ndarray | None = None,
) -> np.ndarray:
    """Channel matrix of listing pairs (rows ii[k], jj[k]). The keyword arrays override what the pair's
    second listing shows (a planted re-listing: its re-encoded image, re-typed title, new family, and how
    its image compares with the first listing's twins)."""
    ii, jj = np.asarray(ii), np.asarray(jj)
    if image_cosine is None:
        image_cosine = (view.image[ii] * view.image[jj]).sum(1)
    if text_cosine is None:
        text_cosine = (view.text[ii] * view.text[jj]).sum(1)
    titles_b = [view.titles[j] for j in jj] if titles_j is None else titles_j
    titles = [view.titles[i] for i in ii] + titles_b
    words = idf.pair_similarity(titles, list(range(len(ii))), list(range(len(ii), 2 * len(ii)))).numpy()
    # the text descriptors read title + variant attributes, and which attributes are variant depends on
    # the family: a re-listing in a family of its own reads differently from its original. Across
    # families, titles that agree word for word agree, whatever the descriptors say.
    families_a = [view.families[i] for i in ii]
    families_b = [view.families[j] for j in jj] if same_family is None else None
    apart = (
        np.array([a != b for a, b in zip(families_a, families_b, strict=True)])
        if same_family is None
        else ~np.asarray(same_family, dtype=bool)
    )
    text_cosine = np.where(apart, np.maximum(text_cosine, words), text_cosine)
    out = np.zeros((len(ii), len(DUPLICATE_CHANNELS)))
    for k, (i, j) in enumerate(zip(ii.tolist(), jj.tolist(), strict=True)):
        a, b = view.attributes[i], view.attributes[j]
        agree = differ = 0
        for key in set(a) & set(b):
            va, vb = normalise_value(a[key]), normalise_value(b[key])
            if va and vb:
                agree += va == vb
                differ += va != vb
        da, db = view.descriptions[i].strip().lower(), view.descriptions[j].strip().lower()
        out[k] = [
            image_cosine[k],
            -math.log(max(1.0 - image_cosine[k], 0.0) + 1e-3),
            text_cosine[k],
            -math.log(max(1.0 - text_cosine[k], 0.0) + 1e-3),
            words[k],
            float(bool(da) and da == db),
            agree,
            differ,
            float(view.categories[i] == view.categories[j]),
            float(view.families[i] == view.families[j]) if same_family is None else float(same_family[k]),
            float(view.has_image[i] and view.has_image[j]),
            p_same_product[k],
            _twin_closer(view, i, j, image_cosine[k]) if twin_closer is None else twin_closer[k],
        ]
    return out


def _twin_closer(view: CatalogueView, i: int, j: int, cosine: float) -> float:
    """max(0, the best image cosine of j with one of i's twins (j aside) - i's own): > 0 when j's photo is
    another twin's rather than i's."""
    twins = [m for m in view.twins(i) if m != j and view.has_image[m]]
    if not twins or not (view.has_image[i] and view.has_image[j]):
        return 0.0
    return max(0.0, float((view.image[twins] @ view.image[j]).max()) - float(cosine))


TITLE_EDITS = (
    str.upper,
    str.lower,
    str.title,
    lambda s: s + " new",
    lambda s: s.replace("&", "and"),
    lambda s: " ".join(reversed(s.split())),
    lambda s: s.replace(" ", "  ", 1),
)


def retyped_title(title: str, rng: random.Random) -> str:
    """A second detail page's title: the same words re-typed (case, order, a word added)."""
    return rng.choice(TITLE_EDITS)(title).strip() or title


# --- the fitted scorer -----------------------------------------------------------------------------------


@dataclass
class Relisting:
    """A planted re-listing of one listing: how its re-encoded, cropped image and its re-typed title compare
    with the original (computed where the backbones run)."""

    row: int
    title: str
    image_cosine: float
    text_cosine: float
    p_same_product: float
    # the copy against some of the original's siblings: (sibling row, image cosine, text cosine,
    # P(same product)). A second page copies one listing, not its family: these pairs are not duplicates.
    siblings: list[tuple[int, float, float, float]] = field(default_factory=list)


@dataclass
class Scorer:
    """Everything fitted for one scoring of a catalogue with one model version."""

    heads: OwnEvidenceHeads
    wrong_variant: KindCombiner | None  # None: the catalogue has no multi-listing family
    duplicate: KindCombiner
    summary: dict = field(default_factory=dict)  # what the Models page shows beside the combiners' own

    def to_payload(self) -> tuple[dict[str, np.ndarray], dict]:
        return self.heads.to_arrays(), {
            "heads": self.heads.to_meta(),
            "wrong_variant": self.wrong_variant.to_dict() if self.wrong_variant else None,
            "duplicate": self.duplicate.to_dict(),
            "summary": self.summary,
        }

    @classmethod
    def from_payload(cls, arrays: dict, meta: dict) -> Scorer:
        return cls(
            OwnEvidenceHeads.from_arrays(arrays, meta["heads"]),
            KindCombiner.from_dict(meta["wrong_variant"], WRONG_VARIANT_CHANNELS)
            if meta.get("wrong_variant")
            else None,
            KindCombiner.from_dict(meta["duplicate"], DUPLICATE_CHANNELS)
            if "kinds" in meta["duplicate"]
            else KindCombiner({"same_photo": Combiner.from_dict(meta["duplicate"]).over(DUPLICATE_CHANNELS)}),
            dict(meta.get("summary", {})),
        )


def fit_scorer(
    view: CatalogueView,
    *,
    folds: FamilyFolds,
    family_agreement,
    candidate_pairs: tuple[np.ndarray, np.ndarray, np.ndarray],
    relistings: list[Relisting],
    idf: TitleIdf,
    reviewed: list[tuple[int, bool]] | None = None,
    seed: int = 0,
    alignment: str = "contrastive",
    plants: int = 2000,
) -> Scorer:
    """Fit the own-evidence heads, the wrong-variant combiner (planted moved listings and swapped images)
    and the duplicate combiner (planted re-listings against `candidate_pairs` = (ii, jj, p_same_product),
    each listing's nearest neighbours). `reviewed`: (row, confirmed) of the reviewers' wrong-variant
    decisions in force; each decided listing's channels, read in its family as listed, join both kinds'
    fits at `REVIEW_WEIGHT`."""
    heads = OwnEvidenceHeads.fit(view, folds, seed=seed, alignment=alignment)
    duplicate = _fit_duplicates(view, candidate_pairs, relistings, idf, seed)
    if not any(len(m) > 1 for m in view.members.values()):  # every listing its own family
        return Scorer(heads, None, duplicate)
    x, kind, groups = plant_wrong_variants(view, heads, family_agreement, plants=plants, seed=seed)
    decided = [(r, c) for r, c in reviewed or [] if len(view.members[view.families[r]]) > 1]
    if decided:
        listing = [r for r, _ in decided]
        siblings = [[j for j in view.members[view.families[r]] if j != r] for r in listing]
        rows = _channels_for(view, heads, family_agreement, listing, siblings, listing, None)
        reviewed = [(rows[k], c) for k, (_, c) in enumerate(decided)]
    else:
        reviewed = []
    kinds = {}
    for name in ("wrong_product", "wrong_image"):
        if (kind == name).sum() < 5:  # (no images: no image to swap)
            continue
        keep = (kind == name) | (kind == "")
        xk, yk, gk = x[keep], kind[keep] == name, [g for g, k in zip(groups, keep, strict=True) if k]
        weight = np.ones(len(yk))
        unlabelled = ~yk
        if reviewed:  # a decision does not say which kind it was: it teaches both
            xk = np.vstack([xk, np.stack([r for r, _ in reviewed])])
            yk = np.r_[yk, [bool(c) for _, c in reviewed]]
            weight = np.r_[weight, np.full(len(reviewed), REVIEW_WEIGHT)]
            gk = gk + [f"review-{k}" for k in range(len(reviewed))]
            unlabelled = np.r_[unlabelled, np.zeros(len(reviewed), dtype=bool)]
        kinds[name] = Combiner.fit(
            xk,
            yk,
            WRONG_VARIANT_CHANNELS,
            prior=WRONG_VARIANT_PRIOR / 2,
            weight=weight,
            groups=gk,
            unlabelled=unlabelled,
        )
        if reviewed:
            kinds[name].summary["review_rows"] = len(reviewed)
    return Scorer(heads, KindCombiner(kinds) if kinds else None, duplicate)


IMAGE_DUPLICATE_CHANNELS = ("image_cosine", "image_closeness", "both_images", "p_same_product")


def _copy_twin_closer(view: CatalogueView, relisting: Relisting, i: int, cosine: float) -> float:
    """`_twin_closer` of listing i (the original or one of its siblings) and a planted copy, over the
    siblings the copy was compared with (the original among i's twins for a sibling)."""
    if not (view.has_image[i] and view.has_image[relisting.row]):
        return 0.0
    twins = view.twins(i)
    seen = [(m, c) for m, c, _, _ in relisting.siblings] + [(relisting.row, relisting.image_cosine)]
    closer = [c for m, c in seen if m != i and m in twins and view.has_image[m]]
    return max(0.0, max(closer) - cosine) if closer else 0.0


def _fit_duplicates(view, candidate_pairs, relistings, idf, seed) -> KindCombiner:
    """The duplicate combiners: planted re-listings (70% in the same family, as a second page usually is)
    against each listing's nearest candidates as they are, and against the original's siblings (a copy of
    one listing is no duplicate of the family's other members, though it shares their words). Two kinds:
    a second page with the same photo (every channel) and one with a photo of its own (a shop-floor shot,
    another angle: the words only, the image channels left out of the fit). One combiner cannot learn
    both: fitted on re-photographed plants as well, it leans on the words everywhere and ranks the
    identical-looking sibling pairs of a clothing catalogue above the copies (BENCHMARKS.md). Where words
    are shared by whole families (every colour of a garment has one description), the words-only combiner
    learns that they cannot say which member was copied and stays low; where they are not (a grocery
    catalogue), the same description and title are a copy."""
    rng = random.Random(seed)
    ii, jj, p = candidate_pairs
    planted_ii = np.array([r.row for r in relistings], dtype=int)
    same_family = np.array([rng.random() < 0.7 for _ in relistings])
    x_clean = duplicate_channels(view, ii, jj, p, idf)
    x_plant = duplicate_channels(
        view,
        planted_ii,
        planted_ii,
        np.array([r.p_same_product for r in relistings]),
        idf,
        image_cosine=np.array([r.image_cosine if view.has_image[r.row] else 0.0 for r in relistings]),
        text_cosine=np.array([r.text_cosine for r in relistings]),
        titles_j=[r.title for r in relistings],
        same_family=same_family,
        twin_closer=np.array([_copy_twin_closer(view, r, r.row, r.image_cosine) for r in relistings]),
    )
    copied = [(k, s) for k, r in enumerate(relistings) for s in r.siblings]
    x_sibling = duplicate_channels(
        view,
        np.array([s[0] for _, s in copied], dtype=int),
        np.array([relistings[k].row for k, _ in copied], dtype=int),
        np.array([s[3] for _, s in copied]),
        idf,
        image_cosine=np.array(
            [s[1] if view.has_image[s[0]] and view.has_image[relistings[k].row] else 0.0 for k, s in copied]
        ),
        text_cosine=np.array([s[2] for _, s in copied]),
        titles_j=[relistings[k].title for k, _ in copied],
        same_family=same_family[[k for k, _ in copied]] if copied else np.zeros(0, dtype=bool),
        twin_closer=np.array([_copy_twin_closer(view, relistings[k], s[0], s[1]) for k, s in copied]),
    ).reshape(-1, len(DUPLICATE_CHANNELS))
    xd = np.vstack([x_plant, x_sibling, x_clean])
    yd = np.r_[np.ones(len(x_plant)), np.zeros(len(x_sibling) + len(x_clean))]
    dup_groups = (
        [view.families[i] for i in planted_ii]
        + [view.families[relistings[k].row] for k, _ in copied]
        + [view.families[i] for i in ii]
    )
    # a listing's candidate pairs are many: the presumed-clean pairs that may be real duplicates are the
    # prior's share of the listings, not of the pairs
    share = DUPLICATE_PRIOR * len(set(np.asarray(ii).tolist())) / max(len(ii), 1)
    suspect = np.r_[np.zeros(len(x_plant) + len(x_sibling), dtype=bool), np.ones(len(x_clean), dtype=bool)]
    words = xd.copy()
    words[:, [DUPLICATE_CHANNELS.index(c) for c in IMAGE_DUPLICATE_CHANNELS]] = 0.0  # constant: weight 0
    kinds = {}
    for name, x in (("same_photo", xd), ("own_photo", words)):
        kinds[name] = Combiner.fit(
            x,
            yd,
            DUPLICATE_CHANNELS,
            prior=DUPLICATE_PRIOR / 2,
            groups=dup_groups,
            c=0.1,
            suspect_share=share,
            unlabelled=suspect,
        )
    return KindCombiner(kinds)


def describe_wrong_variant(
    channels: np.ndarray,
    combiner: KindCombiner,
    own_worst: dict | None,
    siblings: int,
    categories: tuple[str, str] | None = None,
) -> list[dict]:
    """The channels that pushed this listing's score up (by the combiner of the kind of error it looks
    most like), most decisive first, as reviewer-readable lines. `categories`: the listing's category and
    its siblings' most common one, named where they differ."""
    _kind, combiner = combiner.strongest(channels)
    contributions = combiner.contributions(channels)
    named = dict(zip(combiner.channels, channels.tolist(), strict=True))
    lines = []
    for name, c in sorted(zip(combiner.channels, contributions.tolist(), strict=True), key=lambda t: -t[1]):
        text = _WRONG_VARIANT_WORDS.get(name)
        if text is None or c < 0.25:
            continue
        value = named[name]
        text = text.format(n=siblings, v=value)  # catalogue values go in after formatting
        if name == "category_unlike_siblings" and categories and categories[0] != categories[1]:
            text = (
                f"listed under “{categories[0]}”, its siblings under “{categories[1]}” ({value:.0%} of them)"
            )
        if name in ("attribute_surprise", "category_surprise") and own_worst:
            what = own_worst["target"].split(":", 1)[1]
            what = f"category level {int(what) + 1}" if own_worst["target"].startswith("category:") else what
            text = f"looks like “{own_worst['looks']}”, listed as “{own_worst['listed']}” ({what})"
        lines.append({"channel": name, "strength": round(c, 2), "value": round(value, 3), "text": text})
    if not lines:
        lines.append({"channel": "none", "strength": 0.0, "value": 0.0, "text": "no channel stands out"})
    return lines


_WRONG_VARIANT_WORDS = {
    "pair_disagreement": "the model says it belongs with none of its {n} siblings ({v:.2f})",
    "pair_disagreement_mean": "the model says it belongs with few of its {n} siblings ({v:.2f})",
    "image_unlike_siblings": "image unlike its {n} siblings' ({v:.2f})",
    "image_unlike_mean": "image unlike most of its {n} siblings' ({v:.2f})",
    "image_outlier": "its image stands further apart than its siblings' do ({v:+.2f})",
    "text_unlike_siblings": "title and attributes unlike its siblings' ({v:.2f})",
    "title_unlike_siblings": "its title shares few words with its siblings' titles ({v:.2f} apart)",
    "description_unlike_siblings": "its description differs from its siblings' ({v:.2f} apart)",
    "category_unlike_siblings": "listed under another category than {v:.0%} of its siblings",
    "attribute_surprise": "its image does not match its attributes ({v:.2f})",
    "attribute_surprise_relative": (
        "its image matches its attributes less well than its siblings' do ({v:+.2f})"
    ),
    "category_surprise": "its image does not look like its category ({v:.2f})",
    "category_surprise_relative": "its image fits its category less well than its siblings' do ({v:+.2f})",
    "image_text_misalignment": "its image does not match its own title ({v:.2f})",
    "image_text_misalignment_relative": (
        "its image matches its title less well than its siblings' do ({v:+.2f})"
    ),
}


def _grade(value: float, steps: tuple[tuple[float, str], ...], otherwise: str) -> str:
    return next((word for bound, word in steps if value > bound), otherwise)


def describe_duplicate(channels: np.ndarray, combiner: KindCombiner) -> list[dict]:
    """What the pair shares and where it differs, as reviewer-readable lines, the channels that weighed most
    (either way) in the kind that fired first."""
    kind, combiner = combiner.strongest(channels)
    named = dict(zip(combiner.channels, channels.tolist(), strict=True))
    contributions = dict(zip(combiner.channels, combiner.contributions(channels).tolist(), strict=True))
    lines = []
    if named["both_images"]:
        looks = _grade(named["image_cosine"], ((0.9, "nearly identical"), (0.75, "similar")), "different")
        lines.append(("image_cosine", f"images {looks} ({named['image_cosine']:.2f})"))
    share = _grade(named["title_words"], ((0.9, "almost all"), (0.6, "most")), "few")
    lines.append(("title_words", f"titles share {share} words ({named['title_words']:.2f})"))
    if named["same_description"]:
        lines.append(("same_description", "the same description"))
    if named["attributes_differ"]:
        lines.append(("attributes_differ", f"{int(named['attributes_differ'])} attribute value(s) differ"))
    elif named["attributes_agree"]:
        lines.append(
            ("attributes_agree", f"all {int(named['attributes_agree'])} shared attribute value(s) agree")
        )
    if not named["same_category"]:
        lines.append(("same_category", "listed under different categories"))
    if named.get("twin_looks_closer", 0.0) > 0:
        lines.append(
            (
                "twin_looks_closer",
                f"a family member worded alike looks closer (+{named['twin_looks_closer']:.2f})",
            )
        )
    ordered = sorted(lines, key=lambda t: -abs(contributions.get(t[0], 0.0)))
    described = [
        {"channel": c, "strength": round(contributions.get(c, 0.0), 2), "text": t} for c, t in ordered
    ]
    if kind == "own_photo" and named["both_images"]:
        # the words' push as a whole (the logit less the prior's intercept): the lines below are its parts
        strength = round(float(combiner.logit(channels)) - combiner.intercept, 2)
        described.insert(
            0, {"channel": kind, "strength": strength, "text": "the words match, the photos differ"}
        )
    return described
