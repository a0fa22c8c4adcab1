"""End-to-end fine-tuning inputs (the GPU path): pixels and token ids instead of cached backbone maps.

With `MapsConfig.end_to_end` the model owns both backbones and every training step runs them with
gradients. The catalogue is decoded once (uint8, preprocessed as for feature extraction) and
tokenised once (titles and their adversarial rewrites); the re-listing view of the same-product loss
is drawn afresh every step on the device (a random crop, a brightness/contrast change, noise) instead
of the single cached re-listing of the frozen path.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ml_worker.adversarial import AdversarialTitleGenerator
from ml_worker.catalogue import Listing
from ml_worker.config import MapsConfig
from ml_worker.images import open_image, to_tensor
from ml_worker.modeling_maps import MapsInputs, MapsModel


@dataclass
class RawInputs:
    pixels: torch.Tensor  # (N, 3, S, S) uint8, square-padded and resized (zeros without an image)
    has_image: torch.Tensor  # (N,) bool
    input_ids: torch.Tensor  # (N, L) title token ids, padded to max_tokens
    token_mask: torch.Tensor  # (N, L) bool
    adv_input_ids: torch.Tensor  # the adversarial rewrite of each title (paper 3)
    adv_mask: torch.Tensor

    def __len__(self) -> int:
        return self.pixels.shape[0]


def load_raw_inputs(
    listings: list[Listing], config: MapsConfig, *, seed: int = 0, progress: bool = True
) -> RawInputs:
    """Decode and tokenise the catalogue once. The adversarial titles come from the same seeded
    generator as the frozen path's feature cache."""
    from transformers import AutoTokenizer

    from ml_worker.backbones import default_text_model_dir

    n, size = len(listings), config.image_size
    pixels = torch.zeros(n, 3, size, size, dtype=torch.uint8)
    has_image = torch.zeros(n, dtype=torch.bool)

    def decode(listing: Listing):
        image = open_image(listing.image) if listing.image else None
        return None if image is None else to_tensor(image, size)

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        decoded = pool.map(decode, listings)
        for i, tensor in enumerate(tqdm(decoded, total=n, desc="decoding images", disable=not progress)):
            if tensor is not None:  # back from [-1, 1] to the 0..255 it was decoded from
                pixels[i] = ((tensor * 0.5 + 0.5) * 255).round().clamp(0, 255).to(torch.uint8)
                has_image[i] = True
    tokenizer = AutoTokenizer.from_pretrained(config.text_model_dir or default_text_model_dir())

    def tokenize(titles: list[str]):
        batch = tokenizer(
            titles, padding="max_length", truncation=True, max_length=config.max_tokens, return_tensors="pt"
        )
        return batch["input_ids"], batch["attention_mask"].bool()

    generator = AdversarialTitleGenerator.for_listings(listings, [x.title for x in listings], seed=seed)
    input_ids, token_mask = tokenize([x.title for x in listings])
    adv_input_ids, adv_mask = tokenize([generator(i) for i in range(n)])
    return RawInputs(pixels, has_image, input_ids, token_mask, adv_input_ids, adv_mask)


def augment_pixels(pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A re-listing of the same image, drawn on the device: crop 0-12 %, shift, brightness and
    contrast +-10 %, a little noise. `pixels` are normalised (mean = std = 0.5); the random draws come
    from the CPU `generator` (seeded runs stay reproducible)."""
    b = pixels.shape[0]
    scale = 1 - torch.rand(b, generator=generator) * 0.12
    shift = (torch.rand(b, 2, generator=generator) - 0.5) * 0.08
    brightness = (torch.rand(b, generator=generator) - 0.5) * 0.2
    contrast = 1 + (torch.rand(b, generator=generator) - 0.5) * 0.2
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = scale, scale
    theta[:, :, 2] = shift
    device, dtype = pixels.device, pixels.dtype
    grid = F.affine_grid(theta.to(device, dtype), list(pixels.shape), align_corners=False)
    out = F.grid_sample(pixels, grid, mode="bilinear", padding_mode="border", align_corners=False)
    contrast, brightness = (v.to(device, dtype)[:, None, None, None] for v in (contrast, brightness))
    out = out * contrast + brightness
    noise = torch.randn(pixels.shape, generator=generator).to(device, dtype)
    return (out + 0.02 * noise).clamp(-1, 1)


PAD_TO = 32


class LiveInputs:
    """The end-to-end counterpart of `FeatureCache.inputs`: the model's backbones run on the rows'
    pixels and token ids (with gradients) on `device`."""

    def __init__(self, model: MapsModel, raw: RawInputs, device: str, generator: torch.Generator):
        if model.backbones() is None:
            raise ValueError("LiveInputs needs a model built with MapsConfig(end_to_end=True)")
        self.model, self.raw, self.device, self.generator = model, raw, device, generator
        self.channels_last = device.startswith("cuda")

    def inputs(
        self,
        idx: torch.Tensor,
        *,
        adversarial: torch.Tensor | None = None,
        augmented: bool = False,
        image_idx: torch.Tensor | None = None,
    ) -> MapsInputs:
        raw, image_idx = self.raw, idx if image_idx is None else image_idx
        pixels = raw.pixels[image_idx].to(self.device, non_blocking=True).float() / 127.5 - 1.0
        if augmented:
            pixels = augment_pixels(pixels, self.generator)
        b = pixels.shape[0]
        if self.channels_last:
            # batches come in sizes of PAD_TO: CUDA picks conv kernels per new shape (seconds each), and
            # the sampler's batch size varies; BatchNorm is in eval mode, so padded rows change nothing
            pixels = F.pad(pixels, (0, 0, 0, 0, 0, 0, 0, -b % PAD_TO))
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        ids, mask = raw.input_ids[idx], raw.token_mask[idx]
        if adversarial is not None and adversarial.any():
            ids = torch.where(adversarial[:, None], raw.adv_input_ids[idx], ids)
            mask = torch.where(adversarial[:, None], raw.adv_mask[idx], mask)
        x = self.model.backbone_inputs(
            pixels, raw.has_image[image_idx].to(self.device), ids.to(self.device), mask.to(self.device)
        )
        x.top, x.mid = x.top[:b], x.mid[:b]
        return x
