"""Model throughput on one device (CUDA or CPU), stage by stage, measured in one run.

1. backbones alone: EfficientNet-Lite0 on preloaded 224x224 batches and MiniLM on title batches
   (bf16 autocast and channels_last on CUDA, float32 on CPU), images or titles per second;
2. feature extraction as the product runs it (ml_worker.features.extract_features, one view: image
   decode + preprocessing on the host, backbones on the device), listings per second;
3. MAPS training steps on the cached features (ml_worker.train.train_model, P x K batches), steps/s,
   with frozen backbones and with the image backbone's last stages fine-tuned (tune_backbone_top);
4. scoring (ml_worker.scoring.encode_all + score_listings), listings per second;
5. with --version-steps N: a model version as an app train job builds it end to end
   (ml_worker.ensemble.train_cross_fit: decoding the catalogue, 2 fold models + the final model
   fine-tuning their own backbones for N steps each, each fold model validated on its own features),
   then a score job's stage 1 (one feature pass through each member's backbones), seconds each.

usage: python benchmarks/gpu_bench.py CATALOGUE_DIR [--device cuda|cpu] [--steps N] [--max-listings N]
       [--skip-backbones] [--version-steps N] [--out FILE]
Prints one JSON object (and writes it to --out). Compare devices only through figures of this script.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from ml_worker.catalogue import load_catalogue
from ml_worker.config import MapsConfig, TrainConfig
from ml_worker.features import extract_features, load_backbones
from ml_worker.scoring import encode_all, score_listings
from ml_worker.train import TrainingSet, train_model


def timed(fn, device: str, repeats: int = 3) -> float:
    """Best of `repeats` wall times of fn() (after one warm-up call), synchronised on CUDA."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("catalogue", type=Path)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch-sizes", default="32,128,256")
    ap.add_argument("--max-listings", type=int, default=0, help="the first N listings only (0 = all)")
    ap.add_argument("--skip-backbones", action="store_true", help="skip stage 1 (the backbones alone)")
    ap.add_argument("--version-steps", type=int, default=0, help="stage 5: steps per member (0 = skip)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    device = args.device
    cuda = device == "cuda"
    config = MapsConfig()
    result: dict = {
        "device": torch.cuda.get_device_name() if cuda else platform.processor() or platform.machine(),
        "host_cpus": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    image_model, text_model = load_backbones(None, None, config.max_tokens, device)
    listings = load_catalogue(args.catalogue)
    if args.max_listings:
        listings = listings[: args.max_listings]
    titles = [x.title for x in listings]

    # 1. backbones alone
    for b in [] if args.skip_backbones else [int(s) for s in args.batch_sizes.split(",")]:
        x = torch.randn(b, 3, config.image_size, config.image_size, device=device)
        if cuda:
            x = x.contiguous(memory_format=torch.channels_last)

        def images(x=x):
            with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                image_model(x)

        def texts(b=b):
            with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                text_model(titles[:b])

        result[f"image_backbone_per_s_b{b}"] = round(b / timed(images, device), 1)
        result[f"text_backbone_per_s_b{b}"] = round(b / timed(texts, device), 1)

    # 2. feature extraction as the product runs it (decode + preprocessing on the host)
    t = time.perf_counter()
    features = extract_features(
        listings, config, device=device, progress=False, training=False, batch_size=64
    )
    if cuda:
        torch.cuda.synchronize()
    result["listings"] = len(listings)
    result["extract_s"] = round(time.perf_counter() - t, 2)
    result["extract_listings_per_s"] = round(len(listings) / result["extract_s"], 1)

    # 3. training steps on the cached features
    families = [x.family for x in listings]
    data = TrainingSet(features, families, [x.category for x in listings])
    rows = np.arange(len(listings))
    t = time.perf_counter()
    model, _ = train_model(data, rows, config, TrainConfig(steps=args.steps), device=device, progress=False)
    if cuda:
        torch.cuda.synchronize()
    result["train_steps"] = args.steps
    result["train_s"] = round(time.perf_counter() - t, 2)
    result["train_steps_per_s"] = round(args.steps / result["train_s"], 2)
    tuned_config = MapsConfig(tune_backbone_top=True)
    t = time.perf_counter()
    train_model(data, rows, tuned_config, TrainConfig(steps=args.steps), device=device, progress=False)
    if cuda:
        torch.cuda.synchronize()
    result["train_tuned_backbone_top_s"] = round(time.perf_counter() - t, 2)
    result["train_tuned_backbone_top_steps_per_s"] = round(
        args.steps / result["train_tuned_backbone_top_s"], 2
    )

    # 4. scoring: model forward over every listing + pair scores
    t = time.perf_counter()
    score_listings(model, encode_all(model, features, device=device), families)
    result["score_s"] = round(time.perf_counter() - t, 2)
    result["score_listings_per_s"] = round(len(listings) / result["score_s"], 1)
    if args.version_steps:
        result.update(version_end_to_end(listings, features, args.version_steps, device))
    if cuda:
        result["peak_gpu_memory_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
    print(json.dumps(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


def version_end_to_end(listings, frozen, steps: int, device: str) -> dict:
    """Stage 5: an app version trained end to end, then embedded as a score job's stage 1 does."""
    from ml_worker.end_to_end import load_raw_inputs
    from ml_worker.ensemble import train_cross_fit
    from ml_worker.features import features_for

    config = MapsConfig(end_to_end=True)
    out = {"version_steps": steps}
    t = time.perf_counter()
    raw = load_raw_inputs(listings, config, progress=False)
    out["version_decode_s"] = round(time.perf_counter() - t, 1)

    t = time.perf_counter()
    data = TrainingSet.of_features(frozen, listings, device=device, raw=raw)
    version, info = train_cross_fit(
        data, config, TrainConfig(steps=steps, folds=2), device=device, progress=False
    )
    out["version_train_and_validate_s"] = round(time.perf_counter() - t, 1)
    out["version_validation"] = {k: v for k, v in info["validation"].items() if isinstance(v, float)}
    t = time.perf_counter()
    for member in (version.final, *version.folds):
        encode_all(member.eval(), features_for(member, listings, device=device), device=device)
    out["version_embed_s"] = round(time.perf_counter() - t, 1)
    return out


if __name__ == "__main__":
    main()
