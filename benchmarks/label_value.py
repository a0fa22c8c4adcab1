"""What reviewer decisions are worth, offline: train with and without them, measure on catalogues no
reviewer saw, over several training seeds (the review simulator runs one seed per round through the
app; this isolates the labels' effect from the seed-to-seed spread, about +-0.02 wrong_variant AP).

1. The top N flags of a round-0 scores file (`ml_worker.evaluate CATALOGUE --train --out S`) are
   decided as a perfect reviewer would (truth.json): wrong-variant flags (score >= 0.7) and duplicate
   flags (>= 0.9), highest score first, as the app's default queue serves them.
2. Decisions become reviewer pairs exactly as in the app (DESIGN 7): a confirmed wrong variant is
   "different family" from each member and leaves its family; a rejected one "same family"; a
   duplicate decision "same / different product" with its candidate.
3. For each configuration and seed, one model is trained on every family of CATALOGUE (as a
   version's final model) and scores each held-out catalogue; metrics.py's figures are printed as
   JSON lines.

Configurations: `none` (families only, the round-0 recipe), `wX` (reviewer pairs at loss weight X),
`wX-pY` (weight X, Y reviewer pairs per step).

With `--end-to-end` (the GPU path) both backbones are fine-tuned as well, and each model scores the
held-out catalogues through its own fine-tuned backbones.
With `--tune-backbone-top` only EfficientNet-Lite0's last two stages and head conv are, from the
cached 14x14 maps (about 3x a frozen step on a CPU).

The held-out catalogues are scored as a score job scores them (`ml_worker.scoring.score_catalogue`:
evidence channels and combiners fitted on errors planted into each catalogue), the trained model as
the version's final model.

With `--warm-start VERSION_DIR` (a saved version, e.g. the app's round 0 under var/models) every
model starts from that version's weights (each fold model from its fold model) instead of from
scratch, as a train job warm-starts from the active version; `--steps` then counts the steps added.
The version itself is measured first (config `start`), so each line reads as a change over it.

usage: .venv/bin/python benchmarks/label_value.py CATALOGUE_DIR ROUND0_SCORES HELD_OUT_DIR...
           [--decisions 300] [--configs none,w2] [--seeds 0,1,2] [--cache-dir var/feature-cache]
           [--kind all|wrong_variant|duplicate] [--wrong-variant-threshold 0.7]
           [--end-to-end | --tune-backbone-top]
           [--metrics ../shared/eval/metrics.py] [--warm-start VERSION_DIR --steps 50]
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.held_out import METRICS, held_out_figures, load_metrics  # noqa: E402
from ml_worker.catalogue import load_catalogue  # noqa: E402
from ml_worker.config import MapsConfig, TrainConfig  # noqa: E402
from ml_worker.end_to_end import load_raw_inputs  # noqa: E402
from ml_worker.ensemble import CrossFitModel, load_cross_fit  # noqa: E402
from ml_worker.features import extract_features, features_for  # noqa: E402
from ml_worker.scoring import score_catalogue  # noqa: E402
from ml_worker.train import Labels, ReviewPairs, train_model  # noqa: E402

WRONG_VARIANT_THRESHOLD, DUPLICATE_THRESHOLD = 0.7, 0.9
CONFIG = re.compile(r"^(none|w(\d+(?:\.\d+)?)(?:-p(\d+))?)$")


def truth_answers(truth: dict) -> tuple[set[str], dict[str, set[str]]]:
    """What a perfect reviewer knows: the planted wrong variants, and each listing's duplicates."""
    wrong = {t["sku"] for t in truth.get("wrong_variant", [])}
    partners = collections.defaultdict(set)
    for t in truth.get("duplicate", []):
        partners[t["sku"]].add(t["of"])
        partners[t["of"]].add(t["sku"])
    return wrong, partners


def reviewer_pairs(families: list[str], decisions) -> ReviewPairs:
    """Decisions (kind, row, other row or None, confirmed) as the reviewer pairs the app writes
    (DESIGN 7): a wrong-variant decision pairs the listing with each member of its family as listed
    ("different family" when confirmed, "same family" when rejected); a duplicate decision pairs it
    with its candidate ("same product" / "different product")."""
    members = collections.defaultdict(list)
    for i, f in enumerate(families):
        members[f].append(i)
    a, b, head, target = [], [], [], []
    for kind, i, other, confirmed in decisions:
        if kind == "wrong_variant":
            for j in members[families[i]]:
                if j != i:
                    a.append(i), b.append(j), head.append(0), target.append(not confirmed)
        else:
            a.append(i), b.append(other), head.append(1), target.append(confirmed)
    return ReviewPairs(
        np.array(a, dtype=np.int64), np.array(b, dtype=np.int64), np.array(head), np.array(target)
    )


def decide(
    listings,
    truth: dict,
    scores: list[dict],
    n: int,
    *,
    kinds=("wrong_variant", "duplicate"),
    wrong_variant_threshold: float = WRONG_VARIANT_THRESHOLD,
):
    """The reviewer pairs of the top `n` flags of `kinds` and the rows a confirmed wrong variant moves
    out."""
    wrong, partners = truth_answers(truth)
    row = {x.sku: i for i, x in enumerate(listings)}
    flags = [
        (s["wrong_variant_score"], "wrong_variant", s["sku"], None)
        for s in scores
        if s.get("wrong_variant_score") is not None and s["wrong_variant_score"] >= wrong_variant_threshold
    ]
    flags += [
        (s["duplicate_score"], "duplicate", s["sku"], s["duplicate_of"])
        for s in scores
        if s.get("duplicate_score") is not None and s["duplicate_score"] >= DUPLICATE_THRESHOLD
    ]
    flags = [f for f in flags if f[1] in kinds]
    flags.sort(key=lambda f: -f[0])
    made, moved = [], set()
    decisions = collections.Counter()
    for _score, kind, sku, other in flags[:n]:
        if sku not in row or (other is not None and other not in row):
            raise SystemExit(f"the scores file names a listing the catalogue lacks: {sku} / {other}")
        confirmed = sku in wrong if kind == "wrong_variant" else other in partners[sku]
        if kind == "wrong_variant" and confirmed:
            moved.add(row[sku])
        made.append((kind, row[sku], row[other] if other is not None else None, confirmed))
        decisions[f"{kind} {'confirmed' if confirmed else 'rejected'}"] += 1
    return reviewer_pairs([x.family for x in listings], made), moved, dict(decisions)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("catalogue", type=Path)
    ap.add_argument("round0_scores", type=Path)
    ap.add_argument("held_out", type=Path, nargs="+")
    ap.add_argument("--decisions", type=int, default=300)
    ap.add_argument("--configs", default="none,w2")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=TrainConfig.steps)
    ap.add_argument(
        "--kind", choices=["all", "wrong_variant", "duplicate"], default="all", help="the queue's kind filter"
    )
    ap.add_argument("--wrong-variant-threshold", type=float, default=WRONG_VARIANT_THRESHOLD)
    ap.add_argument("--cache-dir", type=Path, default=ROOT / "var" / "feature-cache")
    ap.add_argument(
        "--end-to-end", action="store_true", help="fine-tune both backbones too (the GPU path; slow on a CPU)"
    )
    ap.add_argument(
        "--tune-backbone-top",
        action="store_true",
        help="fine-tune EfficientNet-Lite0's last two stages and head conv from the cached 14x14 maps",
    )
    ap.add_argument("--metrics", type=Path, default=METRICS, help="the protocol's metrics.py")
    ap.add_argument(
        "--warm-start", type=Path, help="a saved version to start every model from (its fold models too)"
    )
    args = ap.parse_args(argv)
    configs = args.configs.split(",")
    for c in configs:
        if not CONFIG.match(c):
            ap.error(f"unknown configuration {c!r}: none, wX or wX-pY")
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        ap.error("--seeds takes integers separated by commas")
    for d in [args.catalogue, *args.held_out]:
        if not (d / "catalogue.jsonl").is_file() or not (d / "truth.json").is_file():
            ap.error(f"{d} is not an evaluation directory (catalogue.jsonl + truth.json)")
    if not args.metrics.is_file():
        ap.error(f"{args.metrics} not found (../shared/eval beside the project, or --metrics)")
    metrics = load_metrics(args.metrics)
    torch.manual_seed(0)

    if args.end_to_end and args.tune_backbone_top:
        ap.error("--end-to-end already fine-tunes the whole image backbone; drop --tune-backbone-top")
    config = MapsConfig(end_to_end=args.end_to_end, tune_backbone_top=args.tune_backbone_top)
    start = load_cross_fit(args.warm_start) if args.warm_start else None
    if start is not None and start.config.to_dict() != config.to_dict():
        ap.error(f"{args.warm_start}: a version of another model configuration")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    listings = load_catalogue(args.catalogue)
    truth = json.loads((args.catalogue / "truth.json").read_text())
    scores = [json.loads(line) for line in args.round0_scores.read_text().splitlines() if line.strip()]
    kinds = ("wrong_variant", "duplicate") if args.kind == "all" else (args.kind,)
    pairs, moved, decisions = decide(
        listings,
        truth,
        scores,
        args.decisions,
        kinds=kinds,
        wrong_variant_threshold=args.wrong_variant_threshold,
    )
    print(json.dumps({"decisions": decisions, "pairs": pairs.counts(), "moved_out": len(moved)}), flush=True)
    features = extract_features(listings, config, cache_dir=args.cache_dir, device=device, progress=False)
    raw = load_raw_inputs(listings, config, progress=False) if args.end_to_end else None
    held_out = {}
    for d in args.held_out:
        rows = load_catalogue(d)
        held_out[d] = (
            rows,
            None
            if args.end_to_end  # each model scores through its own backbones
            else extract_features(rows, config, device=device, progress=False, training=False),
        )

    def measure(line: dict, model) -> dict:
        """The held-out catalogues scored as a score job scores them (`ml_worker.scoring.score_catalogue`:
        evidence channels, combiners fitted on errors planted into each), `model` as the final model."""
        for d, (rows, feats) in held_out.items():
            version = CrossFitModel(final=model.eval())
            if feats is None:
                feats = features_for(model, rows, device=device)
            out, _ = score_catalogue(version, feats, rows, device=device)
            line[d.name] = held_out_figures(metrics, d, rows, out)
        line["mean_wrong_variant_ap"] = round(
            float(np.mean([line[d.name]["wrong_variant_ap"] for d in held_out])), 4
        )
        return line

    if start is not None:
        line = measure({"config": "start", "version": str(args.warm_start)}, start.final)
        print(json.dumps(line), flush=True)
    for c in configs:
        _, weight, per_step = CONFIG.match(c).groups()
        with_labels = c != "none"
        families = [
            f"reviewed-out:{x.sku}" if with_labels and i in moved else x.family
            for i, x in enumerate(listings)
        ]
        labels = Labels.build(families, [x.category for x in listings])
        for seed in seeds:
            train_config = TrainConfig(seed=seed, steps=args.steps)
            if weight:
                train_config.w_review = float(weight)
            if per_step:
                train_config.review_pairs_per_step = int(per_step)
            t0 = time.perf_counter()
            model, _ = train_model(
                features,
                labels,
                np.arange(len(listings)),
                config,
                train_config,
                device=device,
                progress=False,
                review_pairs=pairs if with_labels else None,
                raw=raw,
                init=start.final if start is not None else None,
            )
            line = {"config": c, "seed": seed, "device": device, "train_s": round(time.perf_counter() - t0)}
            print(json.dumps(measure(line, model)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
