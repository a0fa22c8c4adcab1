"""Frozen-backbone features, computed once per listing and cached (the CPU training path).

For every listing: the EfficientNet-Lite0 maps (1280x7x7 and 112x14x14, float16) of its image and
of one re-listing of it (a slight crop and a JPEG re-encode: the positive of the same-product loss),
MiniLM token states of its title and of one adversarial rewrite of it (float16), masks. Cached as safetensors,
keyed by the catalogue content and the backbone settings, with an index of which row holds which
listing version: scoring reads unchanged listings' rows from there instead of running the backbones.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from ml_worker.adversarial import AdversarialTitleGenerator
from ml_worker.backbones import EfficientNetLite0, TextEncoder
from ml_worker.catalogue import Listing
from ml_worker.config import MapsConfig
from ml_worker.images import augment, open_image, to_tensor
from ml_worker.modeling_maps import MapsInputs

FEATURE_VERSION = 3  # 3: the text read is title + variant attributes


@dataclass
class FeatureCache:
    top: torch.Tensor
    mid: torch.Tensor
    top_aug: torch.Tensor
    mid_aug: torch.Tensor
    has_image: torch.Tensor
    tokens: torch.Tensor
    token_mask: torch.Tensor
    adv_tokens: torch.Tensor
    adv_mask: torch.Tensor

    def inputs(
        self,
        idx,
        *,
        adversarial: torch.Tensor | None = None,
        augmented: bool = False,
        image_idx: torch.Tensor | None = None,
    ) -> MapsInputs:
        """Model inputs for rows `idx`; rows where `adversarial` is True get their rewritten title;
        `augmented` gives the re-listed (cropped, re-encoded) image; `image_idx` (default `idx`) the
        rows whose images to show (a swapped image: another listing's picture under this title)."""
        tokens, mask = self.tokens[idx].float(), self.token_mask[idx]
        if adversarial is not None and adversarial.any():
            tokens = torch.where(adversarial[:, None, None], self.adv_tokens[idx].float(), tokens)
            mask = torch.where(adversarial[:, None], self.adv_mask[idx], mask)
        top, mid = (self.top_aug, self.mid_aug) if augmented else (self.top, self.mid)
        image_idx = idx if image_idx is None else image_idx
        return MapsInputs(
            top=top[image_idx].float(),
            mid=mid[image_idx].float(),
            has_image=self.has_image[image_idx],
            tokens=tokens,
            token_mask=mask,
        )

    def __len__(self) -> int:
        return self.top.shape[0]


@functools.lru_cache(maxsize=2)
def load_backbones(
    image_weights: str | None, text_model_dir: str | None, max_tokens: int, device: str
) -> tuple[EfficientNetLite0, TextEncoder]:
    """The frozen backbones, loaded once per process (a worker keeps them between tasks)."""
    image_model = EfficientNetLite0.pretrained(image_weights).to(device).eval()
    if device.startswith("cuda"):
        image_model = image_model.to(memory_format=torch.channels_last)
    return image_model, TextEncoder(text_model_dir, max_tokens).to(device).eval()


def _settings(config: MapsConfig) -> str:
    return json.dumps(
        [FEATURE_VERSION, config.image_weights, config.text_model_dir, config.image_size, config.max_tokens]
    )


def listing_fingerprint(x: Listing) -> str:
    """What a listing's features depend on: its text (title + variant attributes) and its image file
    (path, size, mtime)."""
    stat = x.image.stat() if x.image and x.image.exists() else None
    return (
        f"{x.sku}\x00{x.text}\x00{x.image}\x00{stat.st_size if stat else ''}\x00"
        f"{stat.st_mtime_ns if stat else ''}"
    )


def cache_key(listings: list[Listing], config: MapsConfig) -> str:
    h = hashlib.sha256(_settings(config).encode())
    for x in listings:
        h.update(f"{listing_fingerprint(x)}\n".encode())
    return h.hexdigest()[:24]


def _row_key(fingerprint: str, settings: str) -> str:
    return hashlib.sha256(f"{settings}\x00{fingerprint}".encode()).hexdigest()[:32]


def _write_index(cache_file: Path, listings: list[Listing], config: MapsConfig) -> None:
    """Beside a training cache: which row holds which listing, so scoring can reuse the rows of
    listings unchanged since (`cached_rows`)."""
    settings = _settings(config)
    rows = {_row_key(listing_fingerprint(x), settings): i for i, x in enumerate(listings)}
    index = cache_file.with_suffix(".index.json")
    tmp = index.with_suffix(".tmp")
    tmp.write_text(json.dumps({"features": cache_file.name, "rows": rows}))
    tmp.replace(index)


@functools.lru_cache(maxsize=4)
def _read_index(path: Path, mtime_ns: int) -> tuple[str, dict[str, int]]:
    index = json.loads(path.read_text())
    return index["features"], index["rows"]


def cached_rows(
    listings: list[Listing], config: MapsConfig, cache_dir: Path, *, indexes: int = 3
) -> dict[int, dict[str, torch.Tensor]]:
    """The scoring fields of those `listings` whose title and image are unchanged since a training
    job cached them (the newest `indexes` caches of `cache_dir` are searched), read row by row from
    the memory-mapped files: {position in listings: {field: tensor}}; missing listings are absent."""
    from safetensors import safe_open

    settings = _settings(config)
    wanted = {_row_key(listing_fingerprint(x), settings): k for k, x in enumerate(listings)}
    found: dict[int, dict[str, torch.Tensor]] = {}
    candidates = sorted(Path(cache_dir).glob("features-*.index.json"), key=lambda f: -f.stat().st_mtime_ns)
    for index in candidates[:indexes]:
        if len(found) == len(listings):
            break
        try:
            name, rows = _read_index(index, index.stat().st_mtime_ns)
            hits = {k: rows[key] for key, k in wanted.items() if key in rows and k not in found}
            if not hits:
                continue
            with safe_open(str(index.with_name(name)), framework="pt") as f:
                slices = {field: f.get_slice(field) for field in SCORING_FIELDS}
                for k, row in hits.items():
                    found[k] = {field: sl[row : row + 1][0] for field, sl in slices.items()}
        except (OSError, ValueError, KeyError):  # a cache being replaced or removed: compute instead
            continue
    return found


SCORING_FIELDS = ("top", "mid", "has_image", "tokens", "token_mask")  # what scoring reads


def own_backbones(model) -> tuple[EfficientNetLite0, TextEncoder] | None:
    """A model's own fine-tuned backbones (trained end to end), or None: it reads the packaged ones."""
    backbones = getattr(model, "backbones", None)
    return backbones() if backbones is not None else None


def features_for(
    model,
    listings: list[Listing],
    *,
    device: str = "cpu",
    training: bool = False,
    progress: bool = False,
    cache_dir: Path | None = None,
) -> FeatureCache:
    """The listings as `model` reads them: through its own fine-tuned backbones (moved to `device`)
    when it was trained end to end (never cached), else through the packaged frozen ones (scoring:
    reusing a training cache's rows in `cache_dir` where the listing is unchanged)."""
    backbones = own_backbones(model)
    if backbones is not None:
        model.to(device)
    return extract_features(
        listings,
        model.config,
        device=device,
        progress=progress,
        training=training,
        backbones=backbones,
        cache_dir=cache_dir if not training else None,
    )


def extract_features(
    listings: list[Listing],
    config: MapsConfig,
    *,
    cache_dir: Path | None = None,
    batch_size: int = 32,
    device: str = "cpu",
    seed: int = 0,
    progress: bool = True,
    training: bool = True,
    on_progress=None,
    backbones: tuple[EfficientNetLite0, TextEncoder] | None = None,
) -> FeatureCache:
    """Backbone features of `listings`. `training=False` (scoring) skips the re-listing views and the
    adversarial titles: one backbone pass per image; their fields then alias the plain ones. Training
    caches the whole catalogue's features in `cache_dir` (with an index of its rows); scoring with a
    `cache_dir` reuses the rows of listings unchanged since a training cached them and computes only
    the rest (the app re-scores the catalogue after each activation: the backbones need not run
    again). `backbones` (an end-to-end model's own, on `device`, in eval mode) replace the packaged
    frozen ones; never cached."""
    if cache_dir and not training and backbones is None:
        return _scoring_features(listings, config, Path(cache_dir), batch_size, device, progress, on_progress)
    cache_file = (
        Path(cache_dir) / f"features-{cache_key(listings, config)}.safetensors"
        if cache_dir and training and backbones is None
        else None
    )
    if cache_file and cache_file.exists():
        if not cache_file.with_suffix(".index.json").exists():
            _write_index(cache_file, listings, config)
        return FeatureCache(**load_file(str(cache_file)))
    image_model, text_model = backbones or load_backbones(
        config.image_weights, config.text_model_dir, config.max_tokens, device
    )
    n = len(listings)
    size = config.image_size
    views = ("", "_aug") if training else ("",)
    maps = {
        name + suffix: torch.zeros(n, channels, size // stride, size // stride, dtype=torch.float16)
        for name, channels, stride in (("top", 1280, 32), ("mid", 112, 16))
        for suffix in views
    }
    has_image = torch.zeros(n, dtype=torch.bool)
    rng = random.Random(seed)
    bar = tqdm(total=n, desc="image features", unit="img", disable=not progress)

    def decode(listing: Listing):
        image = open_image(listing.image) if listing.image else None
        return image, to_tensor(image, size) if image is not None else None

    # image decoding + preprocessing in threads (Pillow releases the GIL): on a GPU the backbone
    # waits on the host otherwise; the augmented view stays in this thread (one seeded rng, in order)
    pool = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1))
    with torch.inference_mode(), pool:
        for start in range(0, n, batch_size):
            chunk = listings[start : start + batch_size]
            decoded = list(pool.map(decode, chunk))
            present = [i for i, (im, _) in enumerate(decoded) if im is not None]
            if present:
                rows = torch.tensor(present) + start
                for suffix in views:
                    if suffix == "":
                        batch = torch.stack([decoded[i][1] for i in present])
                    else:
                        batch = torch.stack([to_tensor(augment(decoded[i][0], rng), size) for i in present])
                    cuda = device.startswith("cuda")
                    if cuda:
                        # one batch shape per process: CUDA picks kernels per new shape (~2 s each on
                        # an H100, measured), and a chunk's last batch would be a new shape every time
                        batch = F.pad(batch, (0, 0, 0, 0, 0, 0, 0, batch_size - len(present)))
                    batch = batch.to(device)
                    if cuda:  # the backbone is channels_last there
                        batch = batch.contiguous(memory_format=torch.channels_last)
                    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                        out = image_model(batch)
                    maps["top" + suffix][rows] = out.top[: len(present)].float().cpu().half()
                    maps["mid" + suffix][rows] = out.mid[: len(present)].float().cpu().half()
                has_image[rows] = True
            bar.update(len(chunk))
            if on_progress:
                on_progress(start + len(chunk), n)
    bar.close()
    tokens, token_mask = _encode_titles(
        text_model, [x.text for x in listings], config, progress, "title features"
    )
    if not training:
        return FeatureCache(
            **maps,
            top_aug=maps["top"],
            mid_aug=maps["mid"],
            has_image=has_image,
            tokens=tokens,
            token_mask=token_mask,
            adv_tokens=tokens,
            adv_mask=token_mask,
        )
    generator = AdversarialTitleGenerator.for_listings(listings, [x.text for x in listings], seed=seed)
    adv_tokens, adv_mask = _encode_titles(
        text_model, [generator(i) for i in range(n)], config, progress, "adversarial titles"
    )
    cache = FeatureCache(
        **maps,
        has_image=has_image,
        tokens=tokens,
        token_mask=token_mask,
        adv_tokens=adv_tokens,
        adv_mask=adv_mask,
    )
    if cache_file:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in cache.__dict__.items()}, str(cache_file))
        _write_index(cache_file, listings, config)
    return cache


def _scoring_features(listings, config, cache_dir, batch_size, device, progress, on_progress) -> FeatureCache:
    """Scoring features: cached rows where a training job left them, the backbones for the rest."""
    found = cached_rows(listings, config, cache_dir)
    missing = [k for k in range(len(listings)) if k not in found]
    computed = None
    if missing:
        computed = extract_features(
            [listings[k] for k in missing],
            config,
            batch_size=batch_size,
            device=device,
            progress=progress,
            training=False,
            on_progress=on_progress,
        )
    fields = {}
    for name in SCORING_FIELDS:
        like = getattr(computed, name) if computed is not None else next(iter(found.values()))[name][None]
        out = torch.zeros((len(listings), *like.shape[1:]), dtype=like.dtype)
        if found:
            rows = sorted(found)
            out[rows] = torch.stack([found[k][name] for k in rows])
        if computed is not None:
            out[missing] = getattr(computed, name)
        fields[name] = out
    return FeatureCache(
        **fields,
        top_aug=fields["top"],
        mid_aug=fields["mid"],
        adv_tokens=fields["tokens"],
        adv_mask=fields["token_mask"],
    )


def _encode_titles(model: TextEncoder, titles: list[str], config: MapsConfig, progress: bool, desc: str):
    n, length = len(titles), config.max_tokens
    tokens = torch.zeros(n, length, model.dim, dtype=torch.float16)
    mask = torch.zeros(n, length, dtype=torch.bool)
    with torch.inference_mode():
        for start in tqdm(range(0, n, 128), desc=desc, disable=not progress):
            states, m = model(titles[start : start + 128])
            tokens[start : start + len(states), : states.shape[1]] = states.float().cpu().half()
            mask[start : start + len(states), : m.shape[1]] = m.cpu()
    return tokens, mask
