"""Scoring a catalogue with a model version (pure: features in, scores out; exact kNN here, pgvector in
the app).

What ships (`score_catalogue`; the app's score job calls the same pieces stage by stage): a scorer is
fitted on the catalogue (`fit_catalogue_scorer`: own-evidence heads, and combiners fitted on errors
planted into it, ml_worker.evidence), then
- wrong_variant_score(i) = P(listing i does not belong in its family) from its evidence channels
  (`score_wrong_variants`; None for a one-listing family);
- duplicate_score(i) = max over i's candidates j (nearest by the fused embedding, the image and the text
  descriptors) of P(i and j are one product) from the pair's channels (`score_duplicates`), and
  duplicate_of = that j.

`score_listings` is the pair head alone (1 - max P(same family); the descriptor-formula P(same product)),
which the older benchmark scripts still measure.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch

from ml_worker.calibration import wrong_variant_evidence
from ml_worker.evidence import (
    DUPLICATE_CHANNELS,
    CatalogueView,
    Relisting,
    Scorer,
    duplicate_channels,
    fit_scorer,
    retyped_title,
    sibling_evidence,
    wrong_variant_channels,
)
from ml_worker.features import FeatureCache, _encode_titles, load_backbones, own_backbones
from ml_worker.folds import FamilyFolds
from ml_worker.images import augment, open_image, to_tensor
from ml_worker.lexical import TitleIdf, price_of
from ml_worker.modeling_maps import MapsInputs, MapsModel, MapsOutput
from ml_worker.zero_shot import duplicate_probability


@dataclass
class ListingScore:
    wrong_variant_score: float | None
    duplicate_score: float | None
    duplicate_of: int | None


def protocol_scores(listings, scores: dict[int, ListingScore]) -> dict[str, dict]:
    """`scores` (row -> ListingScore) as the evaluation protocol's metrics.py and the export format
    name them: sku -> wrong_variant_score, duplicate_score, duplicate_of (a sku)."""
    return {
        listings[i].sku: {
            "wrong_variant_score": s.wrong_variant_score,
            "duplicate_score": s.duplicate_score,
            "duplicate_of": listings[s.duplicate_of].sku if s.duplicate_of is not None else None,
        }
        for i, s in scores.items()
    }


@torch.no_grad()
def encode_inputs(model, inputs: MapsInputs, *, batch_size: int = 128) -> MapsOutput:
    """The model's outputs for `inputs`, in batches, as float32 on the CPU."""
    parts = [
        model(inputs.index(slice(start, start + batch_size)))
        for start in range(0, inputs.top.shape[0], batch_size)
    ]
    return MapsOutput(
        *(torch.cat([getattr(p, f).float().cpu() for p in parts]) for f in MapsOutput.__dataclass_fields__)
    )


@torch.no_grad()
def encode_all(
    model: MapsModel, features: FeatureCache, *, batch_size: int = 256, device: str = "cpu"
) -> MapsOutput:
    model.eval()
    parts = []
    for start in range(0, len(features), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(features)))
        parts.append(model(features.inputs(idx).to(device)))
    return MapsOutput(
        *(torch.cat([getattr(p, f) for p in parts]).cpu() for f in MapsOutput.__dataclass_fields__)
    )


@torch.no_grad()
def score_listings(
    model: MapsModel,
    outputs: MapsOutput,
    families: list[str],
    rows: np.ndarray | None = None,
    *,
    neighbours: int = 20,
    chunk: int = 4096,
    titles: list[str] | None = None,
    prices: list[float | None] | None = None,
) -> dict[int, ListingScore]:
    """Scores for `rows` (default all), using `outputs` of every listing of the catalogue. With
    `titles` (every listing's), image-less duplicate candidates are also compared word by word
    (`ml_worker.lexical`, IDF from these titles; their numbers and, with `prices`, their prices)."""
    model = model.cpu().eval()
    n = outputs.embedding.shape[0]
    rows = np.arange(n) if rows is None else rows
    members = defaultdict(list)
    for i, f in enumerate(families):
        members[f].append(i)

    # wrong variant: agreement with the rest of the family (the families of `rows`)
    wanted = {int(r) for r in rows}
    groups = [m for m in members.values() if len(m) > 1 and wanted.intersection(m)]
    evidence = wrong_variant_evidence(model, outputs, groups)
    wrong_variant = {i: e.score for i, e in evidence.items() if e.features is not None}

    # duplicates: nearest neighbours by the fused embedding, then the pair head's P(same product)
    k = min(neighbours, n - 1)
    idf = TitleIdf(titles) if titles is not None else None
    dup_score, dup_of = {}, {}
    if k > 0:
        row_t = torch.as_tensor(rows)
        for start in range(0, len(rows), 512):
            r = row_t[start : start + 512]
            # candidates: the learned embedding plus the raw instance-level descriptors
            sims = (
                outputs.embedding[r] @ outputs.embedding.T
                + outputs.raw_image[r] @ outputs.raw_image.T
                + outputs.raw_title[r] @ outputs.raw_title.T
            )
            sims[torch.arange(len(r)), r] = -2.0
            cand = sims.topk(k, dim=1).indices  # (R, k)
            ii = r[:, None].expand_as(cand).flatten()
            jj = cand.flatten()
            lexical = None
            if idf is not None:
                has_image = outputs.raw_image.norm(dim=1) > 0
                if not (has_image[ii] & has_image[jj]).all():
                    lexical = idf.pair_evidence(titles, ii.tolist(), jj.tolist(), prices)
            p = duplicate_probability(model, outputs, outputs, ii, jj, lexical).view(len(r), k)
            best = p.argmax(1)
            for a, b_i, score in zip(
                r.tolist(),
                cand[torch.arange(len(r)), best].tolist(),
                p[torch.arange(len(r)), best].tolist(),
                strict=True,
            ):
                dup_score[a], dup_of[a] = score, b_i
    return {
        int(i): ListingScore(
            wrong_variant_score=wrong_variant.get(int(i)),
            duplicate_score=dup_score.get(int(i)),
            duplicate_of=dup_of.get(int(i)),
        )
        for i in rows
    }


# --- the evidence-channel scoring (ml_worker.evidence): one routine for score jobs and evaluate ---------


class FamilyPairs:
    """The pair head's P(same family) of listings read against sibling rows, each by the version's member
    that never trained on the siblings' family (`CrossFitModel.fold_model` of their fold); a listing
    shown with another listing's image (a planted swap) is re-encoded with that image."""

    def __init__(
        self,
        model,
        features: FeatureCache,
        families: list[str],
        *,
        device: str = "cpu",
        outputs: dict | None = None,
        features_of=None,
    ):
        self.model, self.features, self.families, self.device = model, features, families, device
        self._outputs = dict(outputs or {})  # id(member) -> its MapsOutput of every row
        # what a member reads: the shared frozen features, or (end to end) its own backbones' features
        self.features_of = features_of or (lambda member: features)

    def outputs(self, member) -> MapsOutput:
        key = id(member)
        if key not in self._outputs:
            self._outputs[key] = encode_all(
                member.to(self.device), self.features_of(member), device=self.device
            )
            member.cpu()
        return self._outputs[key]

    @torch.no_grad()
    def __call__(self, listing_rows, sibling_rows, image_rows=None) -> list[list[float]]:
        image_rows = listing_rows if image_rows is None else image_rows
        result: list[list[float]] = [[] for _ in listing_rows]
        compared = [a for a, sib in enumerate(sibling_rows) if sib]
        sibling_families = [self.families[sibling_rows[a][0]] for a in compared]
        for fold, positions in self.model.family_folds.groups(sibling_families).items():
            at = [compared[p] for p in positions]
            member = self.model.fold_model(fold).cpu().eval()
            out = self.outputs(member)
            swapped = [a for a in at if image_rows[a] != listing_rows[a]]
            swapped_out = None
            if swapped:
                inputs = self.features_of(member).inputs(
                    torch.as_tensor([int(listing_rows[a]) for a in swapped]),
                    image_idx=torch.as_tensor([int(image_rows[a]) for a in swapped]),
                )
                swapped_out = encode_inputs(member, inputs)
            position = {a: k for k, a in enumerate(swapped)}
            ia, ib, owner, src = [], [], [], []
            for a in at:
                for j in sibling_rows[a]:
                    owner.append(a)
                    ib.append(int(j))
                    if a in position:
                        src.append(1)
                        ia.append(position[a])
                    else:
                        src.append(0)
                        ia.append(int(listing_rows[a]))
            ia_t, ib_t, src_t = (
                torch.as_tensor(ia),
                torch.as_tensor(ib),
                torch.as_tensor(src, dtype=torch.bool),
            )
            p = torch.zeros(len(ia))
            plain = ~src_t
            if plain.any():
                p[plain] = torch.sigmoid(member.pair_logits(out, out, ia_t[plain], ib_t[plain])[:, 0])
            if src_t.any():
                p[src_t] = torch.sigmoid(member.pair_logits(swapped_out, out, ia_t[src_t], ib_t[src_t])[:, 0])
            for a, v in zip(owner, p.tolist(), strict=True):
                result[a].append(v)
        return result


def scorer_folds(model) -> FamilyFolds:
    """How a version's scorer heads are cross-fitted: by the version's own folds, two for a version
    without fold models."""
    return FamilyFolds(max(len(model.folds), 2))


def catalogue_view(listings, outputs: MapsOutput) -> CatalogueView:
    """The listings as scoring reads them. The image descriptors pass through float16, as the app stores
    them (pgvector halfvec): a duplicate's image closeness is read near cosine 1, where the rounding
    shows, and evaluate and a score job must read the same numbers."""
    return CatalogueView(
        skus=[x.sku for x in listings],
        families=[x.family for x in listings],
        categories=[tuple(x.category) for x in listings],
        attributes=[x.attributes for x in listings],
        titles=[x.title for x in listings],
        descriptions=[getattr(x, "description", "") or "" for x in listings],
        image=outputs.raw_image.half().double().numpy(),
        text=outputs.raw_title.double().numpy(),
    )


def candidate_pairs(outputs: MapsOutput, rows, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Exact duplicate candidates of `rows`: each one's `k` nearest listings by the fused embedding, by
    the image descriptor and by the text descriptor (a re-photographed or re-titled listing is still
    found by the other), pairs deduplicated. The app finds them with pgvector instead."""
    n = outputs.embedding.shape[0]
    k = min(k, n - 1)
    pairs = set()
    if k <= 0:
        return np.zeros(0, dtype=int), np.zeros(0, dtype=int)
    row_t = torch.as_tensor(np.asarray(rows))
    for start in range(0, len(row_t), 1024):
        r = row_t[start : start + 1024]
        for name in ("embedding", "raw_image", "raw_title"):
            values = getattr(outputs, name)
            sims = values[r] @ values.T
            sims[torch.arange(len(r)), r] = -3.0
            if name == "raw_image":
                sims[:, values.norm(dim=1) == 0] = -3.0
            top = sims.topk(k, dim=1)
            for a, cs, ss in zip(r.tolist(), top.indices.tolist(), top.values.tolist(), strict=True):
                pairs.update((a, c) for c, s in zip(cs, ss, strict=True) if s > -3.0)
    ordered = sorted(pairs)
    return np.array([a for a, _ in ordered], dtype=int), np.array([b for _, b in ordered], dtype=int)


def pair_same_product(model, outputs: MapsOutput, ii, jj, titles=None, prices=None, idf=None) -> np.ndarray:
    """The version's P(same product) of candidate pairs (the descriptor formula mixed with the learned
    head; image-less pairs compare title words)."""
    if not len(ii):
        return np.zeros(0)
    ii_t, jj_t = torch.as_tensor(np.asarray(ii)), torch.as_tensor(np.asarray(jj))
    lexical = None
    has_image = outputs.raw_image.norm(dim=1) > 0
    if idf is not None and titles is not None and not (has_image[ii_t] & has_image[jj_t]).all():
        lexical = idf.pair_evidence(titles, ii_t.tolist(), jj_t.tolist(), prices)
    return duplicate_probability(model, outputs, outputs, ii_t, jj_t, lexical).double().numpy()


@torch.no_grad()
def plant_relistings(
    final, outputs: MapsOutput, listings, rows, *, device: str = "cpu", seed: int = 0, siblings: int = 6
) -> list[Relisting]:
    """Second detail pages of `rows` as `ml_worker.evidence` plants them, read by the version's final model
    and compared with the original's `outputs`: a re-typed title (`retyped_title`) and a re-listing view of
    the image (a slight crop and a JPEG re-encode, `ml_worker.images.augment`). Re-photographed plants
    (reframed, mirrored, relit) cost duplicate AP on hm-dev (BENCHMARKS.md)."""
    if not len(rows):
        return []
    rng = random.Random(seed)
    chosen = [listings[i] for i in rows]
    image_model, text_encoder = own_backbones(final) or load_backbones(
        final.config.image_weights, final.config.text_model_dir, final.config.max_tokens, device
    )
    size = final.config.image_size
    top = torch.zeros(len(rows), 1280, size // 32, size // 32)
    mid = torch.zeros(len(rows), 112, size // 16, size // 16)
    has_image = torch.zeros(len(rows), dtype=torch.bool)
    pictures = []
    for k, x in enumerate(chosen):
        image = open_image(x.image) if x.image else None
        if image is not None:
            view = augment(image, rng)
            pictures.append((k, to_tensor(view, size)))
    for start in range(0, len(pictures), 32):
        batch = pictures[start : start + 32]
        out = image_model.to(device)(torch.stack([t for _, t in batch]).to(device))
        at = torch.as_tensor([k for k, _ in batch])
        top[at], mid[at], has_image[at] = out.top.float().cpu(), out.mid.float().cpu(), True
    titles = [retyped_title(x.title, rng) for x in chosen]
    texts = [t + x.text[len(x.title) :] for t, x in zip(titles, chosen, strict=True)]
    tokens, mask = _encode_titles(text_encoder, texts, final.config, False, "")
    inputs = MapsInputs(top, mid, has_image, tokens.float(), mask)
    relisted = encode_inputs(final.to(device).eval(), inputs.to(device))
    final.cpu()
    idx = torch.as_tensor(np.asarray(rows))
    image_cos = (outputs.raw_image[idx] * relisted.raw_image).sum(1)
    text_cos = (outputs.raw_title[idx] * relisted.raw_title).sum(1)
    p = duplicate_probability(final, outputs, relisted, idx, torch.arange(len(rows)))
    # the copy against the original's siblings (at most `siblings` of them): pairs that share the words but
    # are not the page that was copied
    members = defaultdict(list)
    for i, x in enumerate(listings):
        members[x.family].append(i)
    sib_k, sib_row = [], []
    for k, r in enumerate(rows):
        others = [j for j in members[listings[r].family] if j != r]
        for j in rng.sample(others, min(siblings, len(others))):
            sib_k.append(k)
            sib_row.append(j)
    compared = defaultdict(list)
    if sib_k:
        at_k, at_row = torch.as_tensor(sib_k), torch.as_tensor(sib_row)
        sib_image = (outputs.raw_image[at_row] * relisted.raw_image[at_k]).sum(1)
        sib_text = (outputs.raw_title[at_row] * relisted.raw_title[at_k]).sum(1)
        sib_p = duplicate_probability(final, outputs, relisted, at_row, at_k)
        for k, j, ic, tc, pp in zip(
            sib_k, sib_row, sib_image.tolist(), sib_text.tolist(), sib_p.tolist(), strict=True
        ):
            compared[k].append((j, float(ic), float(tc), float(pp)))
    return [
        Relisting(int(r), t, float(ic), float(tc), float(pp), compared[k])
        for k, (r, t, ic, tc, pp) in enumerate(
            zip(rows, titles, image_cos.tolist(), text_cos.tolist(), p.tolist(), strict=True)
        )
    ]


def score_wrong_variants(
    view: CatalogueView, scorer: Scorer, pairs: FamilyPairs, groups: list[list[int]], excluded=frozenset()
) -> dict[int, dict]:
    """P(wrong) of every listing of `groups` (row lists, one per family) from its evidence channels.
    Rows in `excluded` (confirmed wrong variants) are scored but are nobody's sibling. Returns row ->
    {"score", "channels", "own", "agreement", "siblings", "counted"}; a listing with no counted sibling
    is absent."""
    if scorer.wrong_variant is None:  # fitted on a catalogue without multi-listing families
        return {}
    listing, siblings, all_siblings = [], [], []
    for members in groups:
        kept = [j for j in members if j not in excluded]
        for i in members:
            sib = [j for j in kept if j != i]
            if sib:
                listing.append(i)
                siblings.append(sib)
                all_siblings.append([j for j in members if j != i])
    if not listing:
        return {}
    own = scorer.heads.evidence(view, listing)
    sibling_own = sibling_evidence(view, scorer.heads, siblings)
    agreement = pairs(listing, siblings)
    x = wrong_variant_channels(view, listing, siblings, agreement, own, sibling_own=sibling_own)
    p = scorer.wrong_variant.probability(x)
    full_agreement = pairs(listing, all_siblings)
    return {
        i: {
            "score": float(p[a]),
            "channels": x[a],
            "own": own["worst"][a],
            "agreement": full_agreement[a],
            "siblings": all_siblings[a],
            "counted": [j not in excluded for j in all_siblings[a]],
        }
        for a, i in enumerate(listing)
    }


def score_duplicates(
    view: CatalogueView, scorer: Scorer, ii, jj, p_same_product, idf
) -> dict[int, tuple[int, float, np.ndarray]]:
    """Each listing ii[k]'s best duplicate candidate among its pairs (ii, jj): row -> (match row,
    P(duplicate), channels)."""
    if not len(ii):
        return {}
    x = duplicate_channels(view, ii, jj, p_same_product, idf)
    p = scorer.duplicate.probability(x)
    # a pair without two images keeps the version's own P(same product) (title words, numbers and prices,
    # ml_worker.lexical): the planted re-listings are re-typed titles, not the re-worded listings of
    # another site, and a combiner fitted on them ranks those worse (amazon-google best match 0.44
    # against 0.60, BENCHMARKS.md)
    both = x[:, DUPLICATE_CHANNELS.index("both_images")] > 0
    p = np.where(both, p, np.asarray(p_same_product, dtype=np.float64))
    best: dict[int, tuple[int, float, np.ndarray]] = {}
    for k, (a, b) in enumerate(zip(np.asarray(ii).tolist(), np.asarray(jj).tolist(), strict=True)):
        if a not in best or p[k] > best[a][1]:
            best[a] = (b, float(p[k]), x[k])
    return best


def fit_catalogue_scorer(
    model,
    features: FeatureCache,
    listings,
    *,
    device: str = "cpu",
    seed: int = 0,
    relistings: int = 300,
    pairs: FamilyPairs | None = None,
    reviewed: list[tuple[int, bool]] | None = None,
    alignment: str = "contrastive",
) -> tuple[Scorer, CatalogueView, FamilyPairs, MapsOutput]:
    """Fit a version's scorer on `listings` (whole families; `features` with real re-listing views):
    own-evidence heads, and the two combiners on errors planted into them. The app's fit stage and
    `score_catalogue` call this with the same sample and seed, so they fit the same scorer."""
    families = [x.family for x in listings]
    pairs = pairs or FamilyPairs(model, features, families, device=device)
    outputs = pairs.outputs(model.final)
    view = catalogue_view(listings, outputs)
    idf = TitleIdf(view.titles)
    ii, jj = candidate_pairs(outputs, np.arange(len(listings)))
    prices = [price_of(x.attributes) for x in listings]
    p = pair_same_product(model.final, outputs, ii, jj, view.titles, prices, idf)
    rng = np.random.default_rng(seed)
    # a small catalogue plants several re-listings of a listing (each its own crop and re-typing)
    sample = np.sort(rng.choice(len(listings), size=relistings, replace=len(listings) < relistings))
    planted = plant_relistings(model.final, outputs, listings, sample.tolist(), device=device, seed=seed)
    scorer = fit_scorer(
        view,
        folds=scorer_folds(model),
        family_agreement=pairs,
        candidate_pairs=(ii, jj, p),
        relistings=planted,
        idf=idf,
        reviewed=reviewed,
        seed=seed,
        alignment=alignment,
    )
    scorer.summary["family_recall"] = family_recall(outputs.embedding, families)
    scorer.summary["listings"] = len(listings)
    return scorer, view, pairs, outputs


def family_recall(embedding: torch.Tensor, families: list[str], ks=(1, 5, 10)) -> dict[str, float]:
    """Seed 2's retrieval measure: the share of listings in a multi-member family whose K nearest listings
    (fused embedding, itself left out) hold a sibling."""
    members = defaultdict(int)
    for f in families:
        members[f] += 1
    rows = [i for i, f in enumerate(families) if members[f] > 1]
    if not rows or len(families) < 2:
        return {}
    codes = {f: k for k, f in enumerate(sorted(set(families)))}
    label = torch.as_tensor([codes[f] for f in families])
    k_max = min(max(ks), len(families) - 1)
    hits = {k: 0 for k in ks}
    for start in range(0, len(rows), 1024):
        r = torch.as_tensor(rows[start : start + 1024])
        sims = embedding[r] @ embedding.T
        sims[torch.arange(len(r)), r] = -3.0
        top = sims.topk(k_max, dim=1).indices
        same = label[top] == label[r][:, None]
        for k in ks:
            hits[k] += int(same[:, :k].any(1).sum())
    return {f"recall_at_{k}": round(hits[k] / len(rows), 4) for k in ks}


def score_catalogue(
    model,
    features: FeatureCache,
    listings,
    *,
    device: str = "cpu",
    seed: int = 0,
    alignment: str = "contrastive",
    features_of=None,
    excluded=frozenset(),
) -> tuple[dict[int, ListingScore], Scorer]:
    """Fit the scorer on the catalogue and score every listing: what a score job does, in memory
    (`ml_worker.evaluate`). `features_of(member)`: what a member with its own backbones reads;
    `excluded` rows (confirmed wrong variants) are scored but are nobody's sibling."""
    pairs = FamilyPairs(model, features, [x.family for x in listings], device=device, features_of=features_of)
    scorer, view, pairs, outputs = fit_catalogue_scorer(
        model, features, listings, device=device, seed=seed, alignment=alignment, pairs=pairs
    )
    groups = [m for m in view.members.values() if len(m) > 1]
    wrong = score_wrong_variants(view, scorer, pairs, groups, excluded)
    idf = TitleIdf(view.titles)
    ii, jj = candidate_pairs(outputs, np.arange(len(listings)))
    prices = [price_of(x.attributes) for x in listings]
    p = pair_same_product(model.final, outputs, ii, jj, view.titles, prices, idf)
    dup = score_duplicates(view, scorer, ii, jj, p, idf)
    scores = {
        i: ListingScore(
            wrong_variant_score=wrong[i]["score"] if i in wrong else None,
            duplicate_score=dup[i][1] if i in dup else None,
            duplicate_of=dup[i][0] if i in dup else None,
        )
        for i in range(len(listings))
    }
    return scores, scorer
