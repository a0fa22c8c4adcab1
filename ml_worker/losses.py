"""Training losses, small composable modules (pytorch-metric-learning style).

- `PairLoss`: BCE on pair-head logits, negatives weighted toward hard ones (same category; paper 1).
- `ProxyAnchorLoss` and `HierarchicalProxyLoss` (paper 2): proxies per family and per upper level,
  upper levels from the category path or, without one, from k-means over the fine proxies.
- `SupConLoss`: multi-positive InfoNCE between two sets of embeddings; composed into the image-text
  alignment of paper 4 (TCL) as a cross-modal term (image vs title) and intra-modal terms.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PairLoss(nn.Module):
    """Binary cross-entropy over pairs: mean over positives + mean over hard negatives
    + `easy_weight` x mean over the other negatives. Groups without members contribute zero."""

    def __init__(self, easy_weight: float = 0.5):
        super().__init__()
        self.easy_weight = easy_weight

    def forward(self, logits: torch.Tensor, positive: torch.Tensor, hard: torch.Tensor) -> torch.Tensor:
        losses = F.binary_cross_entropy_with_logits(logits, positive.float(), reduction="none")
        easy = ~positive & ~hard
        total = logits.new_zeros(())
        for mask, weight in ((positive, 1.0), (hard & ~positive, 1.0), (easy, self.easy_weight)):
            if mask.any():
                total = total + weight * losses[mask].mean()
        return total


class ProxyAnchorLoss(nn.Module):
    """Proxy-Anchor (Kim et al. 2020). `proxies` may be passed in (for k-means-built levels)."""

    def __init__(self, num_classes: int, dim: int, margin: float = 0.1, alpha: float = 32.0):
        super().__init__()
        self.proxies = nn.Parameter(torch.randn(num_classes, dim) / dim**0.5)
        self.margin, self.alpha = margin, alpha

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, proxies: torch.Tensor | None = None):
        proxies = self.proxies if proxies is None else proxies
        cos = F.normalize(embeddings, dim=1) @ F.normalize(proxies, dim=1).T  # (B, C)
        one_hot = F.one_hot(labels, proxies.shape[0]).bool()
        pos_exp = torch.exp(-self.alpha * (cos - self.margin)).masked_fill(~one_hot, 0.0)
        neg_exp = torch.exp(self.alpha * (cos + self.margin)).masked_fill(one_hot, 0.0)
        with_positives = one_hot.any(0)
        pos_term = torch.log1p(pos_exp.sum(0))[with_positives].sum() / with_positives.sum().clamp(min=1)
        neg_term = torch.log1p(neg_exp.sum(0)).sum() / proxies.shape[0]
        return pos_term + neg_term


class HierarchicalProxyLoss(nn.Module):
    """Weighted sum of proxy-anchor losses over levels (level 0 = family, then coarser).

    `level_sizes[i]` classes at level i. A level listed in `kmeans_levels` has no labels of its own:
    its classes are k-means clusters of the level-0 proxies, its proxies the mean of their members,
    refreshed by `refresh_kmeans` every T steps (paper 2)."""

    def __init__(
        self,
        level_sizes: list[int],
        dim: int,
        weights: list[float],
        kmeans_levels: dict[int, int] | None = None,
        margin: float = 0.1,
        alpha: float = 32.0,
    ):
        super().__init__()
        if len(weights) < len(level_sizes):
            weights = list(weights) + [weights[-1]] * (len(level_sizes) - len(weights))
        self.weights = weights[: len(level_sizes)]
        self.levels = nn.ModuleList(ProxyAnchorLoss(n, dim, margin, alpha) for n in level_sizes)
        self.kmeans_levels = kmeans_levels or {}
        for level, _k in self.kmeans_levels.items():
            self.register_buffer(f"assign_{level}", torch.zeros(level_sizes[0], dtype=torch.long))
            self.levels[level].proxies.requires_grad_(False)

    @torch.no_grad()
    def refresh_kmeans(self, seed: int = 0, iterations: int = 10) -> None:
        fine = F.normalize(self.levels[0].proxies.detach(), dim=1)
        for level, k in self.kmeans_levels.items():
            assign = kmeans(fine, k, seed=seed, iterations=iterations)
            getattr(self, f"assign_{level}").copy_(assign)

    def forward(self, embeddings: torch.Tensor, labels: list[torch.Tensor]) -> torch.Tensor:
        total = embeddings.new_zeros(())
        for level, (loss, weight) in enumerate(zip(self.levels, self.weights, strict=True)):
            if level in self.kmeans_levels:
                assign = getattr(self, f"assign_{level}")
                k = self.kmeans_levels[level]
                fine = self.levels[0].proxies
                members = F.one_hot(assign, k).float()  # (C0, k)
                proxies = (members.T @ fine) / members.sum(0).clamp(min=1).unsqueeze(1)
                total = total + weight * loss(embeddings, assign[labels[0]], proxies)
            else:
                total = total + weight * loss(embeddings, labels[level])
        return total


def kmeans(x: torch.Tensor, k: int, *, seed: int = 0, iterations: int = 10) -> torch.Tensor:
    """Cosine k-means on rows of x; returns the cluster of each row."""
    k = min(k, x.shape[0])
    generator = torch.Generator().manual_seed(seed)
    # farthest-first initialisation (k-means++ without the sampling): spread-out starting centres
    chosen = [int(torch.randint(x.shape[0], (1,), generator=generator))]
    for _ in range(k - 1):
        closest = (x @ x[chosen].T).max(1).values
        closest[chosen] = float("inf")
        chosen.append(int(closest.argmin()))
    centres = x[chosen].clone()
    assign = torch.zeros(x.shape[0], dtype=torch.long)
    for _ in range(iterations):
        assign = (x @ centres.T).argmax(1)
        for c in range(k):
            members = x[assign == c]
            if len(members):
                centres[c] = F.normalize(members.mean(0), dim=0)
    return assign


class SupConLoss(nn.Module):
    """Multi-positive InfoNCE from each row of `a` to the rows of `b`: -mean log of the softmax mass
    on b's positives for a. Rows without a positive are ignored."""

    def __init__(self, temperature: float = 0.1):
        super().__init__()
        self.temperature = temperature

    def forward(
        self,
        a: torch.Tensor,
        b: torch.Tensor,
        positive: torch.Tensor,
        scale: torch.Tensor | None = None,
        exclude: torch.Tensor | None = None,
    ):
        logits = (a @ b.T) * (scale if scale is not None else 1.0 / self.temperature)
        if exclude is not None:  # e.g. each row's own entry when a and b are the same set
            logits = logits.masked_fill(exclude, float("-inf"))
            positive = positive & ~exclude
        log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
        has_positive = positive.any(1)
        if not has_positive.any():
            return logits.new_zeros(())
        pos_log_prob = log_prob.masked_fill(~positive, 0.0).sum(1) / positive.sum(1).clamp(min=1)
        return -pos_log_prob[has_positive].mean()


class AlignmentLoss(nn.Module):
    """Image-text alignment after TCL (paper 4): cross-modal (image<->title, both directions) plus
    intra-modal terms (image<->image of the same family, and listing<->its augmented view), so that
    aligning modalities does not collapse each modality's own structure."""

    def __init__(self, temperature: float = 0.1, intra_weight: float = 1.0):
        super().__init__()
        self.contrast = SupConLoss(temperature)
        self.intra_weight = intra_weight

    def forward(
        self,
        image: torch.Tensor,
        title: torch.Tensor,
        same_family: torch.Tensor,
        image_view: torch.Tensor | None = None,
        scale: torch.Tensor | None = None,
    ) -> torch.Tensor:
        cross = (
            self.contrast(image, title, same_family, scale)
            + self.contrast(title, image, same_family.T, scale)
        ) / 2
        eye = torch.eye(len(image), dtype=torch.bool, device=image.device)
        intra = self.contrast(image, image, same_family, scale, exclude=eye)
        if image_view is not None:
            intra = intra + self.contrast(image, image_view, eye, scale)
        return cross + self.intra_weight * intra
