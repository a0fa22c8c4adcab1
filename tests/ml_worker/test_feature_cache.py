"""Scoring reuses the backbone features a training job cached, row by row, for unchanged listings."""

import os

import torch
from PIL import Image

from ml_worker.catalogue import Listing
from ml_worker.config import MapsConfig
from ml_worker.features import extract_features

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 60, 220), "grey": (128, 128, 128)}


def listing(directory, name: str, colour=None, title: str | None = None) -> Listing:
    image = directory / f"{name}.png"
    Image.new("RGB", (64, 48), colour or COLOURS[name]).save(image)
    return Listing(
        sku=name,
        title=title or f"Cotton shirt, {name}",
        family="F",
        category=("Men", "Shirts"),
        attributes={},
        image=image,
    )


def test_scoring_reads_unchanged_listings_from_the_training_cache(tmp_path):
    config = MapsConfig()
    cache = tmp_path / "cache"
    catalogue = [listing(tmp_path, name) for name in COLOURS]
    trained = extract_features(catalogue, config, cache_dir=cache, progress=False)
    assert len(list(cache.glob("features-*.index.json"))) == 1

    changed = catalogue[2]
    Image.new("RGB", (64, 48), (250, 250, 0)).save(changed.image)  # a new picture under the same sku
    os.utime(changed.image, ns=(1, 1))
    new = listing(tmp_path, "new", colour=(10, 10, 10))
    retitled = Listing(**{**catalogue[3].__dict__, "title": "Linen shirt, grey"})
    scored = [catalogue[1], new, changed, catalogue[0], retitled]
    computed = []
    features = extract_features(
        scored,
        config,
        cache_dir=cache,
        training=False,
        progress=False,
        on_progress=lambda d, n: computed.append(n),
    )
    assert computed and set(computed) == {3}, (
        "only the new, re-imaged and retitled listings ran the backbones"
    )
    # cached rows are the training job's own (bit for bit) ...
    for k, row in ((0, 1), (3, 0)):
        assert torch.equal(features.top[k], trained.top[row]) and torch.equal(
            features.tokens[k], trained.tokens[row]
        )
    # ... and every row equals what the backbones give for it now
    fresh = extract_features(scored, config, training=False, progress=False)
    for name in ("top", "mid", "tokens", "token_mask", "has_image"):
        assert torch.allclose(getattr(features, name).float(), getattr(fresh, name).float(), atol=2e-2), name
    assert not torch.allclose(features.top[2].float(), trained.top[2].float(), atol=2e-2), (
        "not the stale picture"
    )
    assert features.top_aug is features.top and features.adv_tokens is features.tokens

    # nothing cached (another directory): everything is computed, same answer
    computed.clear()
    again = extract_features(
        scored,
        config,
        cache_dir=tmp_path / "empty",
        training=False,
        progress=False,
        on_progress=lambda d, n: computed.append(n),
    )
    assert set(computed) == {5} and torch.allclose(again.top.float(), fresh.top.float(), atol=2e-2)
