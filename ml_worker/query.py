"""Text queries in a model's title space: what a listing with this title would get as its title
vector, for searching the catalogue by meaning (pgvector kNN over the stored title vectors)."""

from __future__ import annotations

import functools

import numpy as np
import torch

from ml_worker.backbones import TextEncoder
from ml_worker.features import own_backbones
from ml_worker.modeling_maps import MapsInputs


@functools.lru_cache(maxsize=1)
def text_encoder(model_dir: str | None, max_tokens: int) -> TextEncoder:
    return TextEncoder(model_dir, max_tokens).eval()


@torch.no_grad()
def title_query_vector(model, text: str) -> np.ndarray:
    """The L2-normalised title embedding of `text` under `model` (MAPS or zero-shot)."""
    config = model.config
    backbones = own_backbones(model)  # a version trained end to end reads titles with its own MiniLM
    encoder = (
        backbones[1].eval()
        if backbones is not None
        else text_encoder(config.text_model_dir, config.max_tokens)
    )
    states, mask = encoder([text])
    h = config.image_size // 32
    x = MapsInputs(
        top=torch.zeros(1, config.top_channels, h, h),
        mid=torch.zeros(1, config.mid_channels, 2 * h, 2 * h),
        has_image=torch.zeros(1, dtype=torch.bool),
        tokens=states.float(),
        token_mask=mask,
    )
    return model.eval()(x).title_embedding[0].numpy()
