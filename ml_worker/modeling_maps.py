"""MAPS: multimodal attention for product similarity (paper 1), on frozen or fine-tuned backbone maps.

    title tokens ──► self-attentive title embedding t ─┬─► spatial attention "where" over 7x7 ─┐
                                                       └─► channel attention "what" (gates)    │
    7x7 map ──► 1x1 proj + positions ──► self-attention ──► global branch (attended, gated) ───┤
    14x14 map ──► crop around the attended region (affine_grid + grid_sample) ──► local branch ─┤
                                                                                                ▼
                                  image vector u, title vector t ──► fused 256-d embedding (L2)
    pair head(a, b) ──► logits of P(same family), P(same product)

`forward` returns a `MapsOutput` that carries the spatial attention map for heatmaps; rendering
lives in `ml_worker.heatmap`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ml_worker.backbones import EfficientNetLite0, EfficientNetTop, TextEncoder
from ml_worker.config import MapsConfig


@dataclass
class MapsInputs:
    top: torch.Tensor  # (B, top_channels, h, w) backbone head map
    mid: torch.Tensor  # (B, mid_channels, 2h, 2w) one stage earlier
    has_image: torch.Tensor  # (B,) bool: False for title-only listings
    tokens: torch.Tensor  # (B, L, text_dim) token states
    token_mask: torch.Tensor  # (B, L) bool

    def to(self, device) -> MapsInputs:
        return MapsInputs(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))

    def index(self, idx) -> MapsInputs:
        return MapsInputs(*(getattr(self, f)[idx] for f in self.__dataclass_fields__))


@dataclass
class MapsOutput:
    embedding: torch.Tensor  # (B, embed_dim) fused, L2-normalised
    image_embedding: torch.Tensor  # (B, embed_dim) the image alone (no title gating), L2-normalised
    title_embedding: torch.Tensor  # (B, embed_dim) title alone, L2-normalised
    spatial_attention: torch.Tensor  # (B, h, w), sums to 1 ("where")
    channel_attention: torch.Tensor  # (B, d_model) in (0, 1) ("what")
    crop_box: torch.Tensor  # (B, 4) attended region (cx, cy, half-width, half-height) in [-1, 1]
    # parameter-free backbone descriptors (mean+max pooled map, mean-pooled tokens), L2-normalised:
    # instance-level detail the learned embeddings pool away; the pair head gets their cosines
    raw_image: torch.Tensor  # (B, 2 * top_channels)
    raw_title: torch.Tensor  # (B, text_dim)

    def to(self, device) -> MapsOutput:
        return MapsOutput(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))


def raw_descriptors(x: MapsInputs, modality: str = "multimodal") -> tuple[torch.Tensor, torch.Tensor]:
    """Parameter-free descriptors, L2-normalised: the mean+max pooled head map of the image and the
    mean-pooled title tokens (zero where a modality is absent or ablated)."""
    raw_image = F.normalize(torch.cat([x.top.mean((2, 3)), x.top.amax((2, 3))], dim=1), dim=1)
    raw_image = raw_image * x.has_image.unsqueeze(1)  # a title-only listing matches no image
    token_weights = x.token_mask.unsqueeze(-1).to(x.tokens.dtype)
    raw_title = F.normalize((x.tokens * token_weights).sum(1) / token_weights.sum(1).clamp(min=1), dim=1)
    if modality == "image":
        raw_title = torch.zeros_like(raw_title)
    if modality == "title":
        raw_image = torch.zeros_like(raw_image)
    return raw_image, raw_title


class AttentionPooling(nn.Module):
    """Self-attentive embedding: learned queries attend over the token states (one per head)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.score = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, heads))
        self.out = nn.Linear(dim * heads, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = self.score(x).masked_fill(~mask.unsqueeze(-1), float("-inf"))  # (B, L, heads)
        weights = torch.softmax(scores, dim=1).nan_to_num(0.0)  # an all-masked row pools to zero
        pooled = torch.einsum("blh,bld->bhd", weights, x).flatten(1)
        return self.out(pooled)


class MapsModel(nn.Module):
    def __init__(self, config: MapsConfig):
        super().__init__()
        self.config = config
        d = config.d_model
        if config.end_to_end and config.tune_backbone_top:
            raise ValueError("end_to_end already fine-tunes the whole image backbone; drop tune_backbone_top")
        # end to end: both backbones whole, from the packaged (or configured) pretrained weights
        self.image_backbone = self.text_encoder = None
        if config.end_to_end:
            self.image_backbone = EfficientNetLite0.pretrained(config.image_weights)
            # float32 master weights whatever the directory stores (AdamW's eps underflows in fp16)
            self.text_encoder = TextEncoder(config.text_model_dir, config.max_tokens).float()
        # the backbone's last stages, fine-tuned: the 7x7 map is recomputed from the cached 14x14 one
        self.backbone_top = (
            EfficientNetTop(config.mid_channels, config.backbone_top_widths, config.top_channels)
            if config.tune_backbone_top
            else None
        )
        self.title_in = nn.Sequential(nn.Linear(config.text_dim, d), nn.LayerNorm(d))
        self.title_pool = AttentionPooling(d, config.title_pool_heads)
        self.image_in = nn.Conv2d(config.top_channels, d, 1)
        self.positions = nn.Parameter(torch.zeros(1, 49, d))
        nn.init.normal_(self.positions, std=0.02)
        self.image_self_attention = nn.TransformerEncoderLayer(
            d, config.heads, dim_feedforward=2 * d, dropout=config.dropout, batch_first=True, norm_first=True
        )
        self.where_query = nn.Linear(d, d)
        self.where_key = nn.Linear(d, d)
        self.what = nn.Linear(d, d)
        self.local_in = nn.Sequential(nn.Conv2d(config.mid_channels, d, 1), nn.GELU(), nn.Conv2d(d, d, 1))
        self.box_margin = nn.Parameter(torch.tensor(0.25))
        self.image_out = nn.Sequential(nn.Linear(3 * d, d), nn.GELU(), nn.LayerNorm(d))
        # the image alone, never gated by the title: what the intra-modal and cross-modal terms see
        self.image_only = nn.Sequential(nn.Linear(2 * d, d), nn.GELU(), nn.LayerNorm(d))
        self.missing_image = nn.Parameter(torch.zeros(d))
        self.fuse = nn.Sequential(
            nn.Dropout(config.dropout), nn.Linear(2 * d, d), nn.GELU(), nn.Linear(d, config.embed_dim)
        )
        self.image_proj = nn.Linear(d, config.embed_dim)
        self.title_proj = nn.Linear(d, config.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(2.3))  # exp(2.3) ~ 10: temperature for alignment
        e = config.embed_dim
        self.pair_head = nn.Sequential(nn.Linear(6 * e + 3, 2 * e), nn.GELU(), nn.Linear(2 * e, 2))
        self.raw_scale = nn.Parameter(
            torch.tensor(5.0)
        )  # cosines of raw descriptors live near 1: spread them

    # --- the listing encoder ---------------------------------------------------------------------

    def train(self, mode: bool = True) -> MapsModel:
        super().train(mode)
        if self.image_backbone is not None:  # pretrained BatchNorm statistics stay (see EfficientNetTop)
            for m in self.image_backbone.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self

    def backbones(self) -> tuple[EfficientNetLite0, TextEncoder] | None:
        """The model's own (fine-tuned) backbones, or None when it reads frozen cached features."""
        return (self.image_backbone, self.text_encoder) if self.image_backbone is not None else None

    def backbone_inputs(
        self, pixels: torch.Tensor, has_image: torch.Tensor, input_ids: torch.Tensor, token_mask: torch.Tensor
    ) -> MapsInputs:
        """End to end: the backbone maps and token states of a batch, with gradients (bf16 autocast on
        CUDA, float32 out)."""
        cuda = pixels.is_cuda
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            maps = self.image_backbone(pixels)
            states = self.text_encoder.model(
                input_ids=input_ids, attention_mask=token_mask.long()
            ).last_hidden_state
        return MapsInputs(
            top=maps.top.float(),
            mid=maps.mid.float(),
            has_image=has_image,
            tokens=states.float(),
            token_mask=token_mask,
        )

    def encode_title(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.title_pool(self.title_in(tokens), mask)

    def forward(self, x: MapsInputs) -> MapsOutput:
        cfg = self.config
        batch = x.top.shape[0]
        d = cfg.d_model
        t = self.encode_title(x.tokens, x.token_mask)
        if cfg.modality == "image":
            t = torch.zeros_like(t)
        top = self.backbone_top(x.mid) if self.backbone_top is not None else x.top
        h, w = top.shape[-2:]
        v = self.image_in(top).flatten(2).transpose(1, 2)  # (B, hw, d)
        v = self.image_self_attention(v + self.positions[:, : h * w])
        guided = cfg.title_guidance and cfg.modality == "multimodal"
        if guided:
            scores = torch.einsum("bd,bnd->bn", self.where_query(t), self.where_key(v)) / d**0.5
            where = torch.softmax(scores, dim=1)
            what = torch.sigmoid(self.what(t))
        else:
            where = torch.full((batch, h * w), 1.0 / (h * w), device=v.device, dtype=v.dtype)
            what = torch.ones(batch, d, device=v.device, dtype=v.dtype)
        attended = torch.einsum("bn,bnd->bd", where, v) * what
        pooled = v.mean(1)
        box = self._attended_box(where.view(batch, h, w))
        local = self._local_branch(x.mid, box) * what
        u = self.image_out(torch.cat([attended, pooled, local], dim=1))
        visual = self.image_only(torch.cat([pooled, v.amax(1)], dim=1))
        missing = ~x.has_image.unsqueeze(1)
        u = torch.where(missing, self.missing_image.expand(batch, d), u)
        visual = torch.where(missing, self.missing_image.expand(batch, d), visual)
        if cfg.modality == "title":
            u, visual = torch.zeros_like(u), torch.zeros_like(visual)
        fused = self.fuse(torch.cat([u, t], dim=1))
        raw_image, raw_title = raw_descriptors(x, cfg.modality)
        return MapsOutput(
            embedding=F.normalize(fused, dim=1),
            image_embedding=F.normalize(self.image_proj(visual), dim=1),
            title_embedding=F.normalize(self.title_proj(t), dim=1),
            spatial_attention=where.view(batch, h, w),
            channel_attention=what,
            crop_box=box,
            raw_image=raw_image,
            raw_title=raw_title,
        )

    def _attended_box(self, where: torch.Tensor) -> torch.Tensor:
        """Centre and spread of the attention mass, as a box in normalised [-1, 1] coordinates."""
        _batch, h, w = where.shape
        ys = torch.linspace(-1 + 1 / h, 1 - 1 / h, h, device=where.device, dtype=where.dtype)
        xs = torch.linspace(-1 + 1 / w, 1 - 1 / w, w, device=where.device, dtype=where.dtype)
        py, px = where.sum(2), where.sum(1)
        cy, cx = (py * ys).sum(1), (px * xs).sum(1)
        sy = ((py * (ys - cy.unsqueeze(1)) ** 2).sum(1) + 1e-6).sqrt()
        sx = ((px * (xs - cx.unsqueeze(1)) ** 2).sum(1) + 1e-6).sqrt()
        margin = self.box_margin.abs()
        half_w = (2 * sx + margin).clamp(0.2, 1.0)
        half_h = (2 * sy + margin).clamp(0.2, 1.0)
        return torch.stack([cx, cy, half_w, half_h], dim=1)

    def _local_branch(self, mid: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
        """The cheap CPU path of the local branch: a bilinear crop of the 14x14 map (RoIAlign-like)."""
        cx, cy, hw, hh = box.unbind(1)
        zero = torch.zeros_like(cx)
        theta = torch.stack([torch.stack([hw, zero, cx], 1), torch.stack([zero, hh, cy], 1)], 1)
        g = self.config.local_grid
        grid = F.affine_grid(theta, [mid.shape[0], mid.shape[1], g, g], align_corners=False)
        crop = F.grid_sample(mid.to(grid.dtype), grid, mode="bilinear", align_corners=False)
        return self.local_in(crop).mean((2, 3))

    # --- pairs -----------------------------------------------------------------------------------

    def pair_logits(self, a: MapsOutput, b: MapsOutput, ia=None, ib=None) -> torch.Tensor:
        """Logits (..., 2) of [same family, same product] for listings a[ia] and b[ib] (all pairs when
        the indices are None and the batches are aligned)."""

        def pick(out, idx, name):
            value = getattr(out, name)
            return value if idx is None else value[idx]

        ea, eb = pick(a, ia, "embedding"), pick(b, ib, "embedding")
        iea, ieb = pick(a, ia, "image_embedding"), pick(b, ib, "image_embedding")
        tea, teb = pick(a, ia, "title_embedding"), pick(b, ib, "title_embedding")
        raw_image = (pick(a, ia, "raw_image") * pick(b, ib, "raw_image")).sum(-1, keepdim=True)
        raw_title = (pick(a, ia, "raw_title") * pick(b, ib, "raw_title")).sum(-1, keepdim=True)
        raw = self.raw_scale * (torch.cat([raw_image, raw_title, raw_image * raw_title], dim=-1) - 0.5)
        cross_ab, cross_ba = iea * teb, ieb * tea  # does a's image fit b's title, and vice versa
        features = torch.cat(
            [
                ea * eb,
                (ea - eb).abs(),
                iea * ieb,
                tea * teb,
                (cross_ab + cross_ba) / 2,
                (cross_ab - cross_ba).abs(),
                raw,
            ],
            dim=-1,
        )
        return self.pair_head(features)
