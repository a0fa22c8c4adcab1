"""Training MAPS on a catalogue's own families (weak supervision): on cached frozen features (the CPU
path), or end to end with both backbones fine-tuned (`MapsConfig.end_to_end`, the GPU path).

A batch is P families x K listings. Per batch:
- the family pair loss on the pair head, hard negatives = other families of the same category;
- the same-product pair loss: each listing against a re-listing of itself (its image cropped and
  re-encoded before the backbone, then slightly resampled in feature space), with its siblings as
  hard negatives;
- the hierarchical proxy-anchor loss over family and category levels (k-means levels without a path);
- TCL-style image-title alignment with intra-modal terms;
- adversarial anchors: a share of listings get a rewritten title (paper 3) or a same-category image
  of another family; both are trained as "not this family", which teaches image-title consistency.
"""

from __future__ import annotations

import functools
import math
import random
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ml_worker.config import MapsConfig, TrainConfig
from ml_worker.end_to_end import LiveInputs, RawInputs, load_raw_inputs
from ml_worker.features import FeatureCache, extract_features, features_for
from ml_worker.losses import AlignmentLoss, HierarchicalProxyLoss, PairLoss
from ml_worker.modeling_maps import MapsInputs, MapsModel


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class Labels:
    """Integer labels of the listings: family, and one array per category level (coarse to fine)."""

    family: np.ndarray
    category_levels: list[np.ndarray]  # level i = the first i+1 parts of the path
    leaf_category: np.ndarray

    @classmethod
    def build(cls, families: list[str], categories: list[tuple[str, ...]]) -> Labels:
        def encode(values):
            index = {}
            return np.array([index.setdefault(v, len(index)) for v in values])

        depth = max((len(c) for c in categories), default=0)
        levels = [encode([c[: i + 1] if len(c) > i else c for c in categories]) for i in range(depth)]
        return cls(family=encode(families), category_levels=levels, leaf_category=encode(categories))


@dataclass
class ReviewPairs:
    """Pairs labelled by reviewers, as row indices into the features: `head` 0 = same family (the
    wrong-variant head), 1 = same product (the duplicate head); `target` True = same."""

    a: np.ndarray
    b: np.ndarray
    head: np.ndarray
    target: np.ndarray

    def __len__(self) -> int:
        return len(self.a)

    def within(self, rows: np.ndarray) -> ReviewPairs:
        """The pairs whose two listings are both among `rows` (a fold model never sees the labels of
        the families it will score)."""
        keep = np.isin(self.a, rows) & np.isin(self.b, rows)
        return ReviewPairs(self.a[keep], self.b[keep], self.head[keep], self.target[keep])

    def counts(self) -> dict:
        names = {(0, True): "same_family", (0, False): "different_family"}
        names |= {(1, True): "same_product", (1, False): "different_product"}
        out = {name: 0 for name in names.values()}
        for h, t in zip(self.head.tolist(), self.target.tolist(), strict=True):
            out[names[(h, bool(t))]] += 1
        return out


@dataclass
class TrainingSet:
    """What a version is trained on: the catalogue's frozen `features`, each listing's family code
    and category path, the reviewer-labelled pairs, and, end to end (`MapsConfig.end_to_end`), `raw`
    (the pixels and token ids the backbones train on) with `features_of(model)`: what a model with its
    own backbones reads (every listing through them), to validate it. The frozen features then only
    mine look-alike negatives."""

    features: FeatureCache
    families: list[str]
    categories: list[tuple[str, ...]]
    review_pairs: ReviewPairs | None = None
    raw: RawInputs | None = None
    features_of: Callable[[nn.Module], FeatureCache] | None = None

    @functools.cached_property
    def labels(self) -> Labels:
        return Labels.build(self.families, self.categories)

    @classmethod
    def of_listings(
        cls, listings: list, config: MapsConfig, *, device: str = "cpu", **options
    ) -> TrainingSet:
        """A catalogue's listings (`ml_worker.catalogue.Listing`) read for training: frozen features
        (`options` cache_dir, progress, on_progress: those of `extract_features`), and end to end the
        raw inputs; `options` families and review_pairs: as `of_features`."""
        labels = {k: options.pop(k) for k in ("families", "review_pairs") if k in options}
        features = extract_features(listings, config, device=device, **options)
        raw = load_raw_inputs(listings, config, progress=False) if config.end_to_end else None
        return cls.of_features(features, listings, device=device, raw=raw, **labels)

    @classmethod
    def of_features(
        cls,
        features: FeatureCache,
        listings: list,
        *,
        device: str = "cpu",
        families: list[str] | None = None,
        review_pairs: ReviewPairs | None = None,
        raw: RawInputs | None = None,
    ) -> TrainingSet:
        """The listings' frozen `features` (already extracted) and their families (`families`
        overrides the listings' own: reviewer corrections, a confirmed wrong variant leaves its family)
        and categories; a model with its own backbones reads the listings through them (`features_for`)."""
        return cls(
            features=features,
            families=families if families is not None else [x.family for x in listings],
            categories=[tuple(x.category) for x in listings],
            review_pairs=review_pairs,
            raw=raw,
            features_of=lambda model: features_for(model, listings, device=device, training=True),
        )


def augment_view(x: MapsInputs, generator: torch.Generator) -> MapsInputs:
    """A feature-space stand-in for 'the same image, slightly cropped and re-encoded'."""
    b = x.top.shape[0]
    scale = 1 - torch.rand(b, generator=generator) * 0.12
    shift = (torch.rand(b, 2, generator=generator) - 0.5) * 0.12
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = scale, scale
    theta[:, :, 2] = shift

    def warp(m):
        grid = F.affine_grid(theta.to(m.dtype), list(m.shape), align_corners=False)
        out = F.grid_sample(m, grid, mode="bilinear", padding_mode="border", align_corners=False)
        return out + 0.05 * m.std() * torch.randn(m.shape, generator=generator)

    return MapsInputs(
        top=warp(x.top), mid=warp(x.mid), has_image=x.has_image, tokens=x.tokens, token_mask=x.token_mask
    )


class FamilyBatchSampler:
    """P families with 2+ training listings x K listings each (+ a few one-listing families), plus, for
    some anchors, their look-alike from another family (mined by raw image similarity): the hard
    negatives that teach the heads when a near-identical image is still another product."""

    def __init__(
        self,
        family: np.ndarray,
        rows: np.ndarray,
        p: int,
        k: int,
        seed: int,
        look_alikes: dict[int, np.ndarray] | None = None,
    ):
        self.rng = np.random.default_rng(seed)
        self.look_alikes = look_alikes or {}
        members = defaultdict(list)
        for r in rows:
            members[family[r]].append(r)
        self.multi = [np.array(v) for v in members.values() if len(v) >= 2]
        self.single = np.array([v[0] for v in members.values() if len(v) == 1])
        self.p, self.k = p, k

    def sample(self) -> np.ndarray:
        chosen = self.rng.choice(len(self.multi), size=min(self.p, len(self.multi)), replace=False)
        batch = [
            self.rng.choice(self.multi[c], size=self.k, replace=len(self.multi[c]) < self.k) for c in chosen
        ]
        if len(self.single):
            # a catalogue of one-listing families only (e.g. a matching benchmark) still fills a batch
            wanted = self.k * 2 if self.multi else self.p * self.k
            batch.append(self.rng.choice(self.single, size=min(wanted, len(self.single)), replace=False))
        anchors = np.concatenate(batch)
        mined = [
            self.rng.choice(self.look_alikes[a])
            for a in anchors[: self.p]
            if len(self.look_alikes.get(a, ()))
        ]
        return np.unique(np.concatenate([anchors, np.array(mined, dtype=anchors.dtype)]))


def mine_look_alikes(features: FeatureCache, family: np.ndarray, rows: np.ndarray, per_row: int = 3) -> dict:
    """For each training listing, its nearest training listings of other families by the raw
    (mean+max pooled) image descriptor."""
    top = features.top[torch.as_tensor(rows)].float()
    raw = F.normalize(torch.cat([top.mean((2, 3)), top.amax((2, 3))], dim=1), dim=1)
    result = {}
    for start in range(0, len(rows), 1024):
        sims = raw[start : start + 1024] @ raw.T
        fam = torch.as_tensor(family[rows])
        sims[fam[start : start + 1024, None] == fam[None, :]] = -2.0
        nearest = sims.topk(min(per_row, len(rows) - 1), dim=1).indices
        for offset, neighbours in enumerate(nearest.tolist()):
            result[int(rows[start + offset])] = rows[neighbours]
    return result


def train_model(
    data: TrainingSet,
    train_rows: np.ndarray,
    config: MapsConfig,
    train_config: TrainConfig,
    *,
    device: str = "cpu",
    progress: bool = True,
    desc: str = "training",
    on_step=None,
    init: nn.Module | None = None,
) -> tuple[MapsModel, dict]:
    """Train a MAPS model on the rows `train_rows` of `data`; `on_step(step, total)` is called every 10
    steps (job progress). The reviewer pairs of `data` within `train_rows` add a weighted pair-head loss.
    With `config.end_to_end`, `data.raw` (the catalogue's pixels and token ids) feeds the backbones,
    which train too; the frozen features then only serve to mine look-alike negatives.

    `init` (a trained model of the same configuration: the active version's member) warm-starts the
    model from its weights, and each class proxy from the mean embedding of its listings under them,
    so a few steps refine what it knew with the new labels instead of relearning it from scratch."""
    features, labels, review_pairs, raw = data.features, data.labels, data.review_pairs, data.raw
    if config.end_to_end and raw is None:
        raise ValueError("end_to_end training needs the raw inputs (ml_worker.end_to_end.load_raw_inputs)")
    if init is not None and init.config.to_dict() != config.to_dict():
        raise ValueError("a warm start needs a model of the same configuration")
    seed_everything(train_config.seed)
    generator = torch.Generator().manual_seed(train_config.seed)
    model = MapsModel(config)
    if init is not None:
        model.load_state_dict(init.state_dict())
    elif model.backbone_top is not None and model.backbone_top.is_lite0:
        model.backbone_top.load_pretrained(config.image_weights)
    model = model.to(device)
    if config.end_to_end and device.startswith("cuda"):
        model.image_backbone.to(memory_format=torch.channels_last)
    live = LiveInputs(model, raw, device, generator) if config.end_to_end else None
    source = live if live is not None else features
    num_levels = len(labels.category_levels)
    level_sizes = [int(labels.family.max()) + 1] + [
        int(level.max()) + 1 for level in labels.category_levels[::-1]
    ]
    kmeans_levels = {}
    if num_levels == 0 and train_config.kmeans_levels:
        for i in range(train_config.kmeans_levels):
            k = max(2, int(math.sqrt(level_sizes[0])) // (i + 1))
            level_sizes.append(k)
            kmeans_levels[len(level_sizes) - 1] = k
    proxy_loss = HierarchicalProxyLoss(
        level_sizes, config.embed_dim, train_config.proxy_levels_weight, kmeans_levels=kmeans_levels
    ).to(device)
    pair_loss, align_loss = PairLoss(), AlignmentLoss()
    backbone = [
        p
        for part in (model.backbone_top, model.image_backbone, model.text_encoder)
        if part is not None
        for p in part.parameters()
    ]
    in_backbone = {id(p) for p in backbone}
    head = [p for p in model.parameters() if id(p) not in in_backbone]
    head += [p for p in proxy_loss.parameters() if p.requires_grad]
    groups = [{"params": head, "lr": train_config.lr}]
    if backbone:
        groups.append({"params": backbone, "lr": train_config.lr * train_config.backbone_lr_scale})
    params = [p for g in groups for p in g["params"]]
    optimizer = torch.optim.AdamW(groups, weight_decay=train_config.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[g["lr"] for g in groups], total_steps=train_config.steps, pct_start=0.1
    )
    sampler = FamilyBatchSampler(
        labels.family,
        train_rows,
        train_config.families_per_batch,
        train_config.listings_per_family,
        train_config.seed,
        look_alikes=mine_look_alikes(features, labels.family, train_rows),
    )
    category_rows = defaultdict(list)
    for r in train_rows:
        category_rows[labels.leaf_category[r]].append(r)
    level_labels = [torch.as_tensor(labels.family)] + [
        torch.as_tensor(level) for level in labels.category_levels[::-1]
    ]
    if init is not None:
        _proxies_from_class_means(proxy_loss, model, source, train_rows, level_labels, device)
    review = review_pairs.within(train_rows) if review_pairs is not None else None
    if review is not None and not len(review):
        review = None
    history = []
    model.train()
    bar = tqdm(range(train_config.steps), desc=desc, disable=not progress)
    for step in bar:
        if kmeans_levels and step % train_config.kmeans_refresh_steps == 0:
            proxy_loss.refresh_kmeans(seed=train_config.seed + step)
        rows = sampler.sample()
        b = len(rows)
        idx = torch.as_tensor(rows)
        adversarial = torch.rand(b, generator=generator) < train_config.p_adversarial_title
        swapped = (torch.rand(b, generator=generator) < train_config.p_swapped_image) & ~adversarial
        if live is not None:  # a fresh re-listing of each image, drawn on the device
            view = live.inputs(idx, augmented=True)
        else:
            view = augment_view(features.inputs(idx, augmented=True), generator)
        image_idx = idx.clone()
        for i in torch.nonzero(swapped).flatten().tolist():
            pool = [
                r
                for r in category_rows[labels.leaf_category[rows[i]]]
                if labels.family[r] != labels.family[rows[i]]
            ]
            if not pool:
                swapped[i] = False
                continue
            image_idx[i] = pool[int(torch.randint(len(pool), (1,), generator=generator))]
        x = source.inputs(idx, adversarial=adversarial, image_idx=image_idx)
        x, view = x.to(device), view.to(device)
        out, out_view = model(x), model(view)

        modified = (adversarial | swapped).to(device)
        family = torch.as_tensor(labels.family[rows], device=device)
        pseudo_family = torch.where(modified, -1 - torch.arange(b, device=device), family)
        same_family = pseudo_family[:, None] == pseudo_family[None, :]
        leaf = torch.as_tensor(labels.leaf_category[rows], device=device)
        same_category = leaf[:, None] == leaf[None, :]
        i, j = torch.triu_indices(b, b, offset=1, device=device)
        family_logits = model.pair_logits(out, out, i, j)[:, 0]
        loss_pair = pair_loss(family_logits, same_family[i, j], same_category[i, j])

        # same product: a listing vs the augmented views of the batch; siblings are the hard negatives
        ii, jj = torch.meshgrid(torch.arange(b, device=device), torch.arange(b, device=device), indexing="ij")
        ii, jj = ii.flatten(), jj.flatten()
        product_logits = model.pair_logits(out, out_view, ii, jj)[:, 1]
        same_listing = (ii == jj) & ~modified[ii]
        loss_product = pair_loss(product_logits, same_listing, (family[ii] == family[jj]) & ~same_listing)

        clean = ~modified
        loss_proxy = (
            proxy_loss(out.embedding[clean], [lv[idx].to(device)[clean] for lv in level_labels])
            if clean.any()
            else out.embedding.new_zeros(())
        )
        loss_align = align_loss(
            out.image_embedding,
            out.title_embedding,
            same_family & ~modified[None, :],
            image_view=out_view.image_embedding,
            scale=model.logit_scale.exp().clamp(max=100),
        )
        loss_review = _review_loss(model, source, review, train_config, generator, device)
        loss = (
            train_config.w_pair * loss_pair
            + train_config.w_product * loss_product
            + train_config.w_proxy * loss_proxy
            + train_config.w_align * loss_align
            + train_config.w_review * loss_review
        )
        if not torch.isfinite(loss):
            parts = {"pair": loss_pair, "product": loss_product, "proxy": loss_proxy}
            parts |= {"align": loss_align, "review": loss_review}
            raise FloatingPointError(
                f"training diverged at step {step}: loss {loss.item()} "
                f"({', '.join(f'{k} {float(v.detach()):.4g}' for k, v in parts.items())}); "
                "lower the learning rate"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        optimizer.step()
        schedule.step()
        record = {
            "loss": loss.item(),
            "pair": loss_pair.item(),
            "product": loss_product.item(),
            "proxy": float(loss_proxy.detach()),
            "align": loss_align.item(),
            "review": loss_review.item(),
        }
        history.append(record)
        if step % 20 == 0:
            bar.set_postfix({k: f"{v:.3f}" for k, v in record.items()})
        if on_step and (step + 1) % 10 == 0:
            on_step(step + 1, train_config.steps)
    model.eval()
    last = history[-min(50, len(history)) :]
    summary = {k: float(np.mean([h[k] for h in last])) for k in last[0]} if last else {}
    return model, {
        "final_losses": summary,
        # the loss of the first and the last 5 steps: did training move it
        "loss_start_end": [
            float(np.mean([h["loss"] for h in history[:5]])),
            float(np.mean([h["loss"] for h in history[-5:]])),
        ]
        if history
        else [],
        "steps": train_config.steps,
        "train_listings": len(train_rows),
        "review_pairs_used": review.counts() if review is not None else {},
    }


@torch.no_grad()
def _proxies_from_class_means(proxy_loss, model, source, rows: np.ndarray, level_labels, device) -> None:
    """Each labelled level's proxy of a class with training listings := their mean (unit) embedding
    under `model` (k-means levels follow the family proxies at their next refresh)."""
    model.eval()
    embeddings = torch.cat(
        [
            F.normalize(model(source.inputs(torch.as_tensor(chunk)).to(device)).embedding.float(), dim=1)
            for chunk in np.array_split(rows, max(1, math.ceil(len(rows) / 256)))
        ]
    )
    model.train()
    for level, loss in enumerate(proxy_loss.levels):
        if level in proxy_loss.kmeans_levels:
            continue
        classes = level_labels[level][torch.as_tensor(rows)].to(device)
        sums = torch.zeros_like(loss.proxies).index_add_(0, classes, embeddings.to(loss.proxies.dtype))
        present = torch.bincount(classes, minlength=len(sums)) > 0
        loss.proxies.data[present] = F.normalize(sums[present], dim=1)


def _review_loss(model, source, review: ReviewPairs | None, train_config, generator, device):
    """Binary cross-entropy of the pair head on a sample of reviewer-labelled pairs (0 without any)."""
    if review is None:
        return torch.zeros((), device=device)
    m = min(train_config.review_pairs_per_step, len(review))
    pick = torch.randint(len(review), (m,), generator=generator).numpy()
    rows, where = np.unique(np.concatenate([review.a[pick], review.b[pick]]), return_inverse=True)
    out = model(source.inputs(torch.as_tensor(rows)).to(device))
    where = torch.as_tensor(where, device=device)
    logits = model.pair_logits(out, out, where[:m], where[m:])
    head = torch.as_tensor(review.head[pick], device=device)
    chosen = logits.gather(1, head[:, None]).squeeze(1)
    target = torch.as_tensor(review.target[pick], device=device, dtype=chosen.dtype)
    return F.binary_cross_entropy_with_logits(chosen, target)
