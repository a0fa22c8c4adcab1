"""What leaving confirmed wrong variants out of their siblings' scores changes, offline.

The top N flags of a round-0 scores file (`ml_worker.evaluate CATALOGUE --train --out S`) are decided
by the truth as in `label_value.py`; 2-fold cross-fitted models are trained with those decisions
(reviewer pairs, confirmed wrong variants out of their families) and score the same catalogue twice:
with the families as linked, and with the confirmed wrong variants left out of their siblings' means
(what the app's score jobs do). Prints, for each: the siblings of confirmed wrong variants flagged
(score >= 0.7), those left with no score, and metrics.py's figures on the listings no reviewer saw.

usage: .venv/bin/python benchmarks/sibling_flags.py CATALOGUE_DIR ROUND0_SCORES [--decisions 300]
           [--seed 0] [--cache-dir var/feature-cache]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.label_value import DUPLICATE_THRESHOLD, WRONG_VARIANT_THRESHOLD, decide  # noqa: E402
from benchmarks.review_simulator import metrics_on_unreviewed  # noqa: E402
from ml_worker.catalogue import load_catalogue  # noqa: E402
from ml_worker.config import MapsConfig, TrainConfig  # noqa: E402
from ml_worker.evaluate import family_folds  # noqa: E402
from ml_worker.features import extract_features  # noqa: E402
from ml_worker.scoring import encode_all, score_listings  # noqa: E402
from ml_worker.train import Labels, train_model  # noqa: E402


def reviewed_listings(scores: list[dict], n: int) -> set[str]:
    """The listings the top `n` flags show a reviewer (the flagged one and its duplicate candidate)."""
    flags = [
        (s["wrong_variant_score"], s["sku"], None)
        for s in scores
        if s.get("wrong_variant_score") is not None and s["wrong_variant_score"] >= WRONG_VARIANT_THRESHOLD
    ] + [
        (s["duplicate_score"], s["sku"], s["duplicate_of"])
        for s in scores
        if s.get("duplicate_score") is not None and s["duplicate_score"] >= DUPLICATE_THRESHOLD
    ]
    flags.sort(key=lambda f: -f[0])
    return {f[1] for f in flags[:n]} | {f[2] for f in flags[:n] if f[2]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("catalogue", type=Path)
    ap.add_argument("round0_scores", type=Path)
    ap.add_argument("--decisions", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-dir", type=Path, default=ROOT / "var" / "feature-cache")
    args = ap.parse_args(argv)
    if not (args.catalogue / "truth.json").is_file():
        ap.error(f"{args.catalogue} is not an evaluation directory (catalogue.jsonl + truth.json)")
    listings = load_catalogue(args.catalogue)
    truth = json.loads((args.catalogue / "truth.json").read_text())
    scores = [json.loads(line) for line in args.round0_scores.read_text().splitlines() if line.strip()]
    pairs, moved, decisions = decide(listings, truth, scores, args.decisions)
    reviewed = reviewed_listings(scores, args.decisions)
    config = MapsConfig()
    features = extract_features(listings, config, cache_dir=args.cache_dir, progress=False)
    linked = [x.family for x in listings]
    without = [f"reviewed-out:{x.sku}" if i in moved else x.family for i, x in enumerate(listings)]
    labels = Labels.build(without, [x.category for x in listings])
    fold = family_folds(linked, 2, args.seed)
    out = {"linked": {}, "confirmed_left_out": {}}
    for k in range(2):
        train_rows, scored = np.nonzero(fold != k)[0], np.nonzero(fold == k)[0]
        model, _ = train_model(
            features,
            labels,
            train_rows,
            config,
            TrainConfig(seed=args.seed),
            progress=False,
            review_pairs=pairs,
        )
        outputs = encode_all(model, features)
        for name, families in (("linked", linked), ("confirmed_left_out", without)):
            for i, s in score_listings(model, outputs, families, scored).items():
                out[name][listings[i].sku] = {
                    "wrong_variant_score": s.wrong_variant_score,
                    "duplicate_score": s.duplicate_score,
                    "duplicate_of": listings[s.duplicate_of].sku if s.duplicate_of is not None else None,
                }
    moved_families = {listings[i].family for i in moved}
    siblings = [x.sku for i, x in enumerate(listings) if x.family in moved_families and i not in moved]
    print(
        json.dumps(
            {"decisions": decisions, "confirmed_wrong_variants": len(moved), "siblings": len(siblings)}
        )
    )
    for name, export in out.items():
        sib = [export[s]["wrong_variant_score"] for s in siblings]
        m = metrics_on_unreviewed(args.catalogue, export, reviewed)
        line = {
            "families": name,
            "sibling_flags": sum(v is not None and v >= WRONG_VARIANT_THRESHOLD for v in sib),
            "siblings_without_score": sum(v is None for v in sib),
            "unreviewed": {k: round(m[k], 4) for k in ("wrong_variant_ap", "duplicate_ap")},
        }
        print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
