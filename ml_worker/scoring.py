"""Scores from a trained model (pure: features in, scores out; exact kNN here, pgvector in the app).

- wrong_variant_score(i) = 1 - max over the other members j of i's family of P(same family | i, j):
  how little a listing agrees even with the sibling closest to it (None for a one-listing family); with a
  `calibrator` (fitted on reviewer decisions, ml_worker.calibration) P(a reviewer confirms) from the
  listing's whole evidence instead;
- duplicate_score(i) = max over i's nearest neighbours j (any family; by the learned embedding plus
  the raw image and title descriptors) of P(same product | i, j) (ml_worker.zero_shot.
  duplicate_probability: learned head and descriptor formula averaged), and duplicate_of = that j.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch

from ml_worker.calibration import WrongVariantCalibrator, wrong_variant_evidence
from ml_worker.features import FeatureCache
from ml_worker.lexical import TitleIdf
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
    calibrator: WrongVariantCalibrator | None = None,
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
    if calibrator is not None and wrong_variant:
        scored = sorted(wrong_variant)
        p = calibrator.probability(np.stack([evidence[i].features for i in scored]))
        wrong_variant = dict(zip(scored, p.tolist(), strict=True))

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
