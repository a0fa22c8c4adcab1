import numpy as np
import pytest
import torch

from ml_worker.config import MapsConfig
from ml_worker.features import FeatureCache
from ml_worker.modeling_maps import MapsInputs

CUDA = torch.cuda.is_available()
gpu = pytest.mark.skipif(not CUDA, reason="needs CUDA")


def random_inputs(config: MapsConfig, batch: int = 6, tokens: int = 5, seed: int = 0) -> MapsInputs:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, tokens, dtype=torch.bool)
    mask[0, 3:] = False
    has_image = torch.ones(batch, dtype=torch.bool)
    has_image[-1] = False
    return MapsInputs(
        top=torch.randn(batch, config.top_channels, 7, 7, generator=g),
        mid=torch.randn(batch, config.mid_channels, 14, 14, generator=g),
        has_image=has_image,
        tokens=torch.randn(batch, tokens, config.text_dim, generator=g),
        token_mask=mask,
    )


def random_features(config: MapsConfig, families: list[str], seed: int = 0) -> FeatureCache:
    """Generated features where members of a family share a pattern (so training has signal)."""
    g = torch.Generator().manual_seed(seed)
    codes = {f: i for i, f in enumerate(sorted(set(families)))}
    n = len(families)
    base_top = torch.randn(len(codes), config.top_channels, 7, 7, generator=g)
    base_mid = torch.randn(len(codes), config.mid_channels, 14, 14, generator=g)
    base_tok = torch.randn(len(codes), 4, config.text_dim, generator=g)
    fam = torch.tensor([codes[f] for f in families])
    top = base_top[fam] + 0.3 * torch.randn(n, config.top_channels, 7, 7, generator=g)
    mid = base_mid[fam] + 0.3 * torch.randn(n, config.mid_channels, 14, 14, generator=g)
    return FeatureCache(
        top=top.half(),
        mid=mid.half(),
        top_aug=(top + 0.05 * torch.randn(top.shape, generator=g)).half(),
        mid_aug=(mid + 0.05 * torch.randn(mid.shape, generator=g)).half(),
        has_image=torch.ones(n, dtype=torch.bool),
        tokens=base_tok[fam].half(),
        token_mask=torch.ones(n, 4, dtype=torch.bool),
        adv_tokens=torch.randn(n, 4, config.text_dim, generator=g).half(),
        adv_mask=torch.ones(n, 4, dtype=torch.bool),
    )


@pytest.fixture
def tiny():
    return MapsConfig.tiny()


def families_of(n_families: int, size: int) -> list[str]:
    return [f"F{i}" for i in range(n_families) for _ in range(size)]


__all__ = ["families_of", "gpu", "np", "random_features", "random_inputs"]
