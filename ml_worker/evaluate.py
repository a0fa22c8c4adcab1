"""python -m ml_worker.evaluate CATALOGUE_DIR --out scores.jsonl [--train | --model DIR] [options]

Loads a catalogue JSONL from disk, optionally trains MAPS on it (its own families, errors included:
weak supervision, as a user would run it), scores every listing and writes the export_scores format
(DESIGN section 4). With --train the families are split into k folds (cross-fitting): each family is
scored by a model that never saw it. Measure with ../shared/eval/metrics.py CATALOGUE_DIR scores.jsonl.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from ml_worker.catalogue import load_catalogue
from ml_worker.checkpoint import load_checkpoint
from ml_worker.config import MapsConfig, TrainConfig, add_backbone_arguments
from ml_worker.end_to_end import load_raw_inputs
from ml_worker.ensemble import MANIFEST, CrossFitModel, load_cross_fit, save_cross_fit, train_cross_fit
from ml_worker.features import FeatureCache, extract_features, features_for, own_backbones
from ml_worker.scoring import protocol_scores, score_catalogue
from ml_worker.train import TrainingSet


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("catalogue", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument(
        "--train", action="store_true", help="train on the catalogue itself (k-fold cross-fitting)"
    )
    ap.add_argument("--model", type=Path, help="score with this checkpoint instead of training")
    ap.add_argument("--zero-shot", action="store_true", help="score with the untrained zero-shot model")
    ap.add_argument("--save-model", type=Path, help="also train one model on all families and save it here")
    ap.add_argument(
        "--folds", type=int, default=2, help="cross-fitting folds; 1 = train on all families, score all"
    )
    ap.add_argument("--steps", type=int, default=TrainConfig.steps)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--modality", choices=["multimodal", "image", "title"], default="multimodal")
    ap.add_argument("--no-title-guidance", action="store_true", help="ablation: pooled concat, no attention")
    add_backbone_arguments(ap)
    ap.add_argument(
        "--backbone-lr-scale",
        type=float,
        default=TrainConfig.backbone_lr_scale,
        help="learning rate of fine-tuned backbone layers, as a share of the heads' (default %(default)s)",
    )
    ap.add_argument(
        "--alignment",
        choices=["contrastive", "codis", "ridge"],
        default="contrastive",
        help="the image -> own text alignment of the own-evidence channel (paper 4)",
    )
    ap.add_argument(
        "--scorer-summary", type=Path, help="write the fitted combiners' plant AP and reliability here"
    )
    ap.add_argument("--cache-dir", type=Path, default=Path("var/feature-cache"))
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    args = ap.parse_args(argv)
    if not args.train and not args.model and not args.zero_shot:
        ap.error("pass --train (train on the catalogue), --model DIR (a checkpoint) or --zero-shot")
    if args.end_to_end and args.tune_backbone_top:
        ap.error("--end-to-end already fine-tunes the whole image backbone; drop --tune-backbone-top")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    timings = {}
    t0 = time.perf_counter()
    listings = load_catalogue(args.catalogue)
    config = MapsConfig(
        modality=args.modality,
        title_guidance=not args.no_title_guidance,
        tune_backbone_top=args.tune_backbone_top,
        end_to_end=args.end_to_end,
    )
    if args.model:  # a version directory (manifest + members) or one checkpoint
        if (args.model / MANIFEST).exists():
            loaded = load_cross_fit(args.model)
        else:
            loaded = CrossFitModel(final=load_checkpoint(args.model)[0].eval())
        config = loaded.config
    # frozen features: the inputs of the cached path; end to end only for mining look-alikes
    features = extract_features(
        listings,
        config,
        cache_dir=args.cache_dir,
        device=device,
        seed=args.seed,
        backbones=own_backbones(loaded.final) if args.model else None,
    )
    raw = load_raw_inputs(listings, config, seed=args.seed) if config.end_to_end and args.train else None
    timings["features_s"] = round(time.perf_counter() - t0, 1)
    train_config = TrainConfig(
        seed=args.seed, steps=args.steps, folds=args.folds, backbone_lr_scale=args.backbone_lr_scale
    )

    def own_features(model) -> FeatureCache:
        """What a model scores: the frozen features, or its own fine-tuned backbones' (end to end)."""
        if own_backbones(model) is None:
            return features
        return features_for(model, listings, device=device, progress=True)

    t1 = time.perf_counter()
    train_s = 0.0
    if args.zero_shot:
        model = CrossFitModel.zero_shot(config)
        version = "zero-shot"
    elif args.model:
        model = loaded
        version = args.model.name
    else:
        # the app's train job: fold models by a hash of the family code (cross-fitting) + a final model
        data = TrainingSet.of_features(features, listings, device=device, raw=raw)
        model, _info = train_cross_fit(data, config, train_config, device=device)
        train_s = time.perf_counter() - t1
        version = (
            f"maps-{args.modality}{'-noattn' if args.no_title_guidance else ''}"
            f"{'-tuned' if args.tune_backbone_top else ''}{'-e2e' if args.end_to_end else ''}"
            f"-cf{args.folds}-s{args.seed}"
        )
        if args.save_model:
            save_cross_fit(model, args.save_model, metadata={"train": train_config.to_dict()})
    # the score job's routine: fit the scorer on errors planted into the catalogue, then score it
    scores, scorer = score_catalogue(
        model,
        features,
        listings,
        device=device,
        seed=args.seed,
        alignment=args.alignment,
        features_of=own_features,
    )
    if args.scorer_summary:
        args.scorer_summary.write_text(
            json.dumps(
                {"wrong_variant": scorer.wrong_variant.summary, "duplicate": scorer.duplicate.summary},
                indent=1,
            )
        )
    timings["train_s"] = round(train_s, 1)
    timings["score_s"] = round(time.perf_counter() - t1 - train_s, 1)
    exported = protocol_scores(listings, scores)
    with open(args.out, "w") as fh:
        for listing in listings:
            line = {
                "sku": listing.sku,
                "family": listing.family,
                **exported[listing.sku],
                "model_version": version,
            }
            fh.write(json.dumps(line) + "\n")
    timings["total_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps({"listings": len(listings), "device": device, **timings}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
