"""What a warm-started round learns from the reviewer labels in force, over training seeds.

A train job warm-starts from the active version (TRAIN_WARM_START) for a few steps. This trains a
version's final model that way from VERSION (e.g. round 0 of a review loop) once per configuration
and seed, on the app's catalogue with the reviewer labels in force (confirmed wrong variants out of
their families, every label a pair loss, as `services/training` gives them) or without them (the
same steps on the families alone), and scores the held-out catalogues (other inject.py seeds, never
imported) with each model's plain scores. VERSION itself is measured first, so the lines read as
changes over it and their spread over seeds is the training noise a single round carries.

usage (the app's settings, e.g. CATALOG_REVIEW_VAR_DIR, point at the database):
  .venv/bin/python benchmarks/warm_start_value.py VERSION HELD_OUT_DIR... [--configs labels,none]
      [--seeds 0,1,2] [--steps 60] [--lr 1e-3] [--features-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CONFIGS = ("labels", "none")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("version", help="a trained model version's name (the start)")
    ap.add_argument("held_out", type=Path, nargs="+")
    ap.add_argument("--configs", default="labels,none", help="labels (those in force), none (families only)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=None, help="default: TRAIN_WARM_STEPS")
    ap.add_argument("--lr", type=float, default=None, help="peak learning rate (default: TrainConfig's)")
    ap.add_argument("--features-dir", type=Path, default=ROOT / "var" / "feature-cache")
    args = ap.parse_args(argv)
    configs = args.configs.split(",")
    if unknown := set(configs) - set(CONFIGS):
        ap.error(f"unknown configurations {sorted(unknown)}: {', '.join(CONFIGS)}")
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        ap.error("--seeds takes integers separated by commas")
    for d in args.held_out:
        if not (d / "catalogue.jsonl").is_file() or not (d / "truth.json").is_file():
            ap.error(f"{d} is not an evaluation directory (catalogue.jsonl + truth.json)")

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "catalog_review.settings")
    import django

    django.setup()
    from django.conf import settings

    from benchmarks.held_out import held_out_features, held_out_figures, load_metrics
    from catalog_review.models import ModelVersion, Product
    from catalog_review.services.model_versions import load_model
    from catalog_review.services.scoring import product_listing
    from catalog_review.services.training import review_pairs_for, training_families
    from ml_worker.catalogue import load_catalogue
    from ml_worker.config import TrainConfig
    from ml_worker.ensemble import CrossFitModel, warm_start_reason
    from ml_worker.features import extract_features
    from ml_worker.scoring import score_catalogue
    from ml_worker.train import Labels, train_model

    try:
        start = load_model(ModelVersion.objects.get(name=args.version))
    except ModelVersion.DoesNotExist:
        ap.error(f"no model version {args.version!r} in this database")
    if reason := warm_start_reason(start, start.config, len(start.folds)):
        ap.error(f"{args.version} cannot be a warm start: {reason}")
    if start.config.end_to_end:
        ap.error("an end-to-end version reads every catalogue through its own backbones: not supported here")
    metrics = load_metrics()
    products = list(Product.objects.select_related("family", "category").order_by("id"))
    listings = [product_listing(p) for p in products]
    families, counts = training_families(products)
    pairs = review_pairs_for(products)
    print(json.dumps({"version": args.version, **counts}), flush=True)
    features = extract_features(listings, start.config, cache_dir=settings.FEATURE_CACHE_DIR, progress=False)
    catalogues = {}
    for d in args.held_out:
        rows = load_catalogue(d)
        catalogues[d] = (rows, held_out_features(start.final, d, rows, args.features_dir))
    categories = [tuple(p.category_path) for p in products]
    with_labels = Labels.build(families, categories)
    as_listed = Labels.build([p.family.code for p in products], categories)

    def measure(line: dict, model) -> None:
        model.eval()
        for d, (rows, held) in catalogues.items():
            # as a score job scores it (evidence channels, combiners fitted on plants), `model` as final
            scores, _ = score_catalogue(CrossFitModel(final=model), held, rows)
            line[d.name] = held_out_figures(metrics, d, rows, scores)
        for key in ("wrong_variant_ap", "duplicate_ap"):
            line[f"mean_{key}"] = round(float(np.mean([line[d.name][key] for d in catalogues])), 4)
        print(json.dumps(line), flush=True)

    measure({"config": "start"}, start.final)
    for config in configs:
        for seed in seeds:
            train_config = TrainConfig(seed=seed, steps=args.steps or settings.TRAIN_WARM_STEPS)
            if args.lr is not None:
                train_config.lr = args.lr
            started = time.perf_counter()
            model, _ = train_model(
                features,
                with_labels if config == "labels" else as_listed,
                np.arange(len(listings)),
                start.config,
                train_config,
                progress=False,
                review_pairs=pairs if config == "labels" else None,
                init=start.final,
            )
            took = round(time.perf_counter() - started)
            measure({"config": config, "seed": seed, "steps": train_config.steps, "train_s": took}, model)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
