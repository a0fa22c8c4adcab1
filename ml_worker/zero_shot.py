"""The zero-shot model: what a new installation scores with before any training.

Backbone descriptors only (mean+max pooled image map, mean-pooled title tokens), no learned weights.
It speaks the same interface as `MapsModel` (`forward` -> `MapsOutput`, `pair_logits`), so the app
treats both alike:
- embeddings: fixed, seeded Gaussian projections of the descriptors to `embed_dim` (Johnson-
  Lindenstrauss: cosines approximately preserved), so they fit the pgvector column;
- "where" map: the activation energy of the image map (the backbone's own saliency), not title-guided;
- pair logits: affine maps of the mean of the image and title cosines (fixed calibration; only the
  ranking matters for review queues and average precision).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ml_worker.config import MapsConfig
from ml_worker.lexical import TITLE_WEIGHT
from ml_worker.modeling_maps import MapsInputs, MapsOutput, raw_descriptors

# logit = scale * (similarity - centre); similarity = mean of the image and title cosines. Centres set
# so that, on hm-dev, about 5% of listings reach the default flag thresholds (wrong_variant_score 0.7,
# duplicate_score 0.9).
FAMILY_CALIBRATION = (15.0, 0.83)
PRODUCT_CALIBRATION = (25.0, 0.87)


class ZeroShotModel(nn.Module):
    kind = "zero-shot"

    def __init__(self, config: MapsConfig, seed: int = 0):
        super().__init__()
        self.config = config
        generator = torch.Generator().manual_seed(seed)
        e = config.embed_dim
        self.register_buffer(
            "image_projection", torch.randn(2 * config.top_channels, e, generator=generator) / e**0.5
        )
        self.register_buffer(
            "title_projection", torch.randn(config.text_dim, e, generator=generator) / e**0.5
        )

    def forward(self, x: MapsInputs) -> MapsOutput:
        raw_image, raw_title = raw_descriptors(x, self.config.modality)
        image_embedding = F.normalize(raw_image @ self.image_projection, dim=1)
        title_embedding = F.normalize(raw_title @ self.title_projection, dim=1)
        energy = x.top.float().pow(2).sum(1).sqrt()  # (B, h, w)
        batch = energy.shape[0]
        where = energy / energy.flatten(1).sum(1).clamp(min=1e-12).view(batch, 1, 1)
        uniform = torch.full_like(where, 1.0 / where[0].numel()) if batch else where
        where = torch.where(x.has_image.view(batch, 1, 1), where, uniform)
        return MapsOutput(
            embedding=F.normalize(image_embedding + title_embedding, dim=1),
            image_embedding=image_embedding,
            title_embedding=title_embedding,
            spatial_attention=where,
            channel_attention=torch.ones(batch, self.config.d_model, device=where.device),
            crop_box=torch.zeros(batch, 4, device=where.device),
            raw_image=raw_image,
            raw_title=raw_title,
        )

    def pair_logits(self, a: MapsOutput, b: MapsOutput, ia=None, ib=None) -> torch.Tensor:
        return formula_logits(a, b, ia, ib)


def formula_logits(a: MapsOutput, b: MapsOutput, ia=None, ib=None, lexical=None) -> torch.Tensor:
    """Logits (..., 2) of [same family, same product] from the descriptor cosines alone. `lexical`
    (the pairs' TF-IDF title cosines, `ml_worker.lexical`) joins the title cosine of pairs that lack
    an image on either side."""

    def pick(out, idx, name):
        value = getattr(out, name)
        return value if idx is None else value[idx]

    image_a, image_b = pick(a, ia, "raw_image"), pick(b, ib, "raw_image")
    cos_image = (image_a * image_b).sum(-1)
    cos_title = (pick(a, ia, "raw_title") * pick(b, ib, "raw_title")).sum(-1)
    both_images = (image_a.norm(dim=-1) > 0) & (image_b.norm(dim=-1) > 0)
    title_only = cos_title
    if lexical is not None:
        lexical = lexical.to(cos_title.device, cos_title.dtype)
        title_only = TITLE_WEIGHT * cos_title + (1 - TITLE_WEIGHT) * lexical
    similarity = torch.where(both_images, (cos_image + cos_title) / 2, title_only)
    return torch.stack(
        [
            FAMILY_CALIBRATION[0] * (similarity - FAMILY_CALIBRATION[1]),
            PRODUCT_CALIBRATION[0] * (similarity - PRODUCT_CALIBRATION[1]),
        ],
        dim=-1,
    )


def duplicate_probability(
    model, a: MapsOutput, b: MapsOutput, ia=None, ib=None, lexical=None
) -> torch.Tensor:
    """P(same product) of listing pairs: the mean of the model's product head and the descriptor
    formula. Measured on hm-dev seed 7 (2-fold cross-fit, 200 steps, BENCHMARKS.md): duplicate AP
    learned head 0.875, formula 0.918, this mean 0.909; the mean keeps a learned part, which
    reviewer labels can improve. `lexical`: see `formula_logits`; pairs without two images then take
    the formula alone: the product head learnt "same product" from re-listed images and identical
    titles, so it rates a re-worded title of the same product low (amazon-google best match, trained:
    mean 0.517, formula alone 0.603)."""
    with torch.no_grad():
        formula = torch.sigmoid(formula_logits(a, b, ia, ib, lexical)[..., 1])
        if isinstance(model, ZeroShotModel):
            return formula
        mean = (torch.sigmoid(model.pair_logits(a, b, ia, ib)[..., 1]) + formula) / 2
        if lexical is None:
            return mean
        return torch.where(_both_images(a, b, ia, ib), mean, formula)


def _both_images(a: MapsOutput, b: MapsOutput, ia=None, ib=None) -> torch.Tensor:
    image_a = a.raw_image if ia is None else a.raw_image[ia]
    image_b = b.raw_image if ib is None else b.raw_image[ib]
    return (image_a.norm(dim=-1) > 0) & (image_b.norm(dim=-1) > 0)
