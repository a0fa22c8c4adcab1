"""How noisy is the promotion gate? Two saved versions validated as a train job validates a new
version beside the active one (each fold model on errors planted into the families it never saw, the
same plants for both), with the paired bootstrap over validation families that the gate now weighs
(`ml_worker.validation.gate_noise`), repeated over planting seeds.

usage: .venv/bin/python benchmarks/gate_noise.py NEW_VERSION_DIR OLD_VERSION_DIR CATALOGUE_DIR
           [--seeds 0,1,2] [--cache-dir var/feature-cache]
(version directories as saved under the app's var/models; CATALOGUE_DIR the catalogue they were
trained on, e.g. an inject.py output). Prints one JSON line per planting seed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ml_worker.catalogue import load_catalogue  # noqa: E402
from ml_worker.ensemble import family_fold, fold_model_for, load_cross_fit, mean_metrics, validate_member  # noqa: E402
from ml_worker.features import extract_features, features_for, own_backbones  # noqa: E402
from ml_worker.train import Labels  # noqa: E402
from ml_worker.validation import gate_noise  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("new", type=Path)
    ap.add_argument("old", type=Path)
    ap.add_argument("catalogue", type=Path)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--cache-dir", type=Path, default=ROOT / "var" / "feature-cache")
    args = ap.parse_args(argv)
    for d in (args.new, args.old):
        if not (d / "manifest.json").is_file():
            ap.error(f"{d} is not a saved version (no manifest.json)")
    if not (args.catalogue / "catalogue.jsonl").is_file():
        ap.error(f"{args.catalogue} has no catalogue.jsonl")
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        ap.error("--seeds takes integers separated by commas")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    new, old = load_cross_fit(args.new), load_cross_fit(args.old)
    if len(new.folds) != len(old.folds) or not new.folds:
        ap.error("the two versions need the same number of fold models (2 or more)")
    listings = load_catalogue(args.catalogue)
    frozen = extract_features(listings, new.config, cache_dir=args.cache_dir, device=device, progress=False)

    def read(model):
        return features_for(model, listings, device=device, training=True) if own_backbones(model) else frozen

    families = [x.family for x in listings]
    labels = Labels.build(families, [x.category for x in listings])
    k = len(new.folds)
    fold = np.array([family_fold(code, k) for code in families])
    for seed in seeds:
        t = time.perf_counter()
        runs = {"new": ([], []), "old": ([], [])}
        for run in range(k):
            held_out = np.nonzero(fold == run)[0]
            for name, version in (("new", new), ("old", old)):
                model = fold_model_for(version, run, k)
                metrics, items = runs[name]
                metrics.append(validate_member(model, read(model), labels, held_out, None, seed + run, items))
        a, b = (mean_metrics(runs[n][0]) for n in ("new", "old"))
        line = {
            "seed": seed,
            "new_pr_auc": a["pr_auc"],
            "old_pr_auc": b["pr_auc"],
            "difference": round(a["pr_auc"] - b["pr_auc"], 4),
            "noise": gate_noise(runs["new"][1], runs["old"][1], seed=seed)["pr_auc"],
            "seconds": round(time.perf_counter() - t, 1),
        }
        print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
