"""The review loop without the app: rounds of simulated decisions, warm-started retraining and
re-scoring, measured on catalogues no reviewer saw. For a machine where the stack cannot run (the GPU
machine of the device tool has no Postgres); `review_simulator.py` runs the same loop through the
HTTP API and is the reference for what the app does.

Round 0 trains a cross-fitted version (2 fold models + the final model) on the catalogue's families
from scratch (`--steps`). Each round after it:
1. the catalogue is scored as a score job scores it: wrong variants by the fold model that never saw
   the family, confirmed wrong variants left out of their siblings' comparisons; duplicates by the
   final model (exact kNN, the pair head, title evidence for image-less listings);
2. the queue's top `--per-round` open flags (wrong variants >= `--wrong-variant-threshold`,
   duplicates >= `--duplicate-threshold`, highest score first; a listing decided once for a kind is
   not served again for it) are decided by truth.json as a perfect reviewer would;
3. every decision so far becomes reviewer pairs as the app makes them (DESIGN 7; a confirmed wrong
   variant leaves its family) and a new version is trained from the last one's weights
   (`--warm-steps`, each member from the same member: `ml_worker.ensemble.train_cross_fit`).
With `--no-labels` (the control) reviewers decide as before but training never sees the decisions:
what the added warm-start steps alone are worth. Every version's final model scores each held-out
catalogue (metrics.py's figures; the mean wrong_variant AP is the issue-6 target), and the
catalogue's own listings no reviewer had seen by the last round are measured with every version's
scores at the end (`final_unreviewed`).

There is no promotion gate here: every version becomes the next round's start (the app's gate
passed every round of the runs in BENCHMARKS.md "The loop with warm starts"); each version's own
validation (planted errors in the families its fold models never saw) is printed beside it.

usage: python benchmarks/loop_offline.py CATALOGUE_DIR HELD_OUT_DIR... [--rounds 3] [--per-round 100]
           [--steps 200 | --start VERSION_DIR] [--warm-steps 60] [--warm-lr LR] [--seed 0]
           [--end-to-end | --tune-backbone-top]
           [--no-labels] [--out results.jsonl]
           [--metrics ../shared/eval/metrics.py] [--cache-dir var/feature-cache] [--features-dir DIR]
Prints one JSON line per round (and writes them to --out).
"""

from __future__ import annotations

import argparse
import collections
import json
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.held_out import FIGURES, METRICS, Catalogue, load_metrics
from benchmarks.review_simulator import metrics_on_unreviewed
from ml_worker.config import MapsConfig, TrainConfig, add_backbone_arguments
from ml_worker.end_to_end import load_raw_inputs
from ml_worker.ensemble import load_cross_fit, train_cross_fit, warm_start_reason
from ml_worker.features import extract_features
from ml_worker.scoring import ListingScore, protocol_scores
from ml_worker.train import ReviewPairs, TrainingSet

ROOT = Path(__file__).resolve().parent.parent


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


class Reviewer:
    """A perfect reviewer over one catalogue's queue: decisions by truth.json, kept across rounds."""

    def __init__(self, catalogue: Catalogue, wrong_variant_threshold: float, duplicate_threshold: float):
        self.catalogue = catalogue
        self.wrong, self.partners = truth_answers(json.loads((catalogue.dir / "truth.json").read_text()))
        self.thresholds = {"wrong_variant": wrong_variant_threshold, "duplicate": duplicate_threshold}
        self.decisions: list[tuple[str, int, int | None, bool]] = []  # kind, row, other row, confirmed
        self.decided: set[tuple[str, int]] = set()

    def queue(self, scores: dict[int, ListingScore]) -> list[tuple[float, str, int, int | None]]:
        flags = []
        for i, s in scores.items():
            if (
                s.wrong_variant_score is not None
                and s.wrong_variant_score >= self.thresholds["wrong_variant"]
            ):
                flags.append((s.wrong_variant_score, "wrong_variant", i, None))
            if s.duplicate_score is not None and s.duplicate_score >= self.thresholds["duplicate"]:
                flags.append((s.duplicate_score, "duplicate", i, s.duplicate_of))
        open_flags = [f for f in flags if (f[1], f[2]) not in self.decided]
        return sorted(open_flags, key=lambda f: -f[0])

    def review(self, scores: dict[int, ListingScore], n: int) -> collections.Counter:
        """Decide the top `n` open flags; the counts of this round's decisions."""
        listings = self.catalogue.listings
        counts = collections.Counter()
        for _score, kind, i, other in self.queue(scores):
            if sum(counts.values()) == n:
                break
            if (kind, i) in self.decided:  # the other side of a duplicate pair decided just now
                continue
            sku = listings[i].sku
            confirmed = (
                sku in self.wrong if kind == "wrong_variant" else listings[other].sku in self.partners[sku]
            )
            self.decisions.append((kind, i, other, confirmed))
            self.decided.add((kind, i))
            if other is not None:
                self.decided.add((kind, other))  # the pair is decided from either side
            counts[f"{kind} {'confirmed' if confirmed else 'rejected'}"] += 1
        return counts

    @property
    def moved_out(self) -> set[int]:
        return {i for kind, i, _, confirmed in self.decisions if kind == "wrong_variant" and confirmed}

    @property
    def reviewed_skus(self) -> set[str]:
        rows = {i for _, i, _, _ in self.decisions} | {o for _, _, o, _ in self.decisions if o is not None}
        return {self.catalogue.listings[i].sku for i in rows}

    def pairs(self) -> ReviewPairs:
        """Every decision so far as reviewer pairs, as the app writes them."""
        return reviewer_pairs(self.catalogue.families, self.decisions)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("catalogue", type=Path)
    ap.add_argument("held_out", type=Path, nargs="+")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--per-round", type=int, default=100)
    ap.add_argument("--steps", type=int, default=TrainConfig.steps, help="round 0, from scratch")
    ap.add_argument("--warm-steps", type=int, default=60, help="each later round, from the last version")
    ap.add_argument("--warm-lr", type=float, help="the warm rounds' learning rate (default: TrainConfig's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--wrong-variant-threshold", type=float, default=0.7)
    ap.add_argument("--duplicate-threshold", type=float, default=0.9)
    add_backbone_arguments(ap)
    ap.add_argument(
        "--no-labels",
        action="store_true",
        help="the control: the same rounds and decisions, but training never sees them (more steps only)",
    )
    ap.add_argument("--metrics", type=Path, default=METRICS, help="the protocol's metrics.py")
    ap.add_argument(
        "--cache-dir", type=Path, default=ROOT / "var" / "feature-cache", help="training features"
    )
    ap.add_argument(
        "--features-dir", type=Path, default=ROOT / "var" / "feature-cache", help="scoring features (frozen)"
    )
    ap.add_argument(
        "--start",
        type=Path,
        help="a saved version (e.g. the app's under var/models) as round 0 instead of training one",
    )
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    if args.rounds < 0 or args.per_round < 1 or args.steps < 1 or args.warm_steps < 1:
        ap.error("--rounds >= 0, --per-round, --steps and --warm-steps >= 1")
    if args.warm_lr is not None and not args.warm_lr > 0:
        ap.error("--warm-lr must be > 0")
    if args.end_to_end and args.tune_backbone_top:
        ap.error("--end-to-end already fine-tunes the whole image backbone; drop --tune-backbone-top")
    for d in [args.catalogue, *args.held_out]:
        if not (d / "catalogue.jsonl").is_file() or not (d / "truth.json").is_file():
            ap.error(f"{d} is not an evaluation directory (catalogue.jsonl + truth.json)")
    if not args.metrics.is_file():
        ap.error(f"{args.metrics} not found (../shared/eval beside the project, or --metrics)")
    metrics = load_metrics(args.metrics)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(args.seed)
    config = MapsConfig(end_to_end=args.end_to_end, tune_backbone_top=args.tune_backbone_top)
    out = args.out.open("w") if args.out else None

    def emit(line: dict) -> None:
        print(json.dumps(line), flush=True)
        if out:
            out.write(json.dumps(line) + "\n")
            out.flush()

    t0 = time.perf_counter()
    catalogue = Catalogue(args.catalogue, device, args.features_dir)
    listings = catalogue.listings
    features = extract_features(listings, config, cache_dir=args.cache_dir, device=device, progress=False)
    raw = load_raw_inputs(listings, config, progress=False) if args.end_to_end else None
    held_out = [Catalogue(d, device, args.features_dir) for d in args.held_out]
    reviewer = Reviewer(catalogue, args.wrong_variant_threshold, args.duplicate_threshold)
    emit(
        {
            "setup_s": round(time.perf_counter() - t0, 1),
            "device": torch.cuda.get_device_name() if device == "cuda" else device,
            "end_to_end": args.end_to_end,
            "tune_backbone_top": args.tune_backbone_top,
            "labels": not args.no_labels,
            "seed": args.seed,
            "warm_lr": args.warm_lr,
        }
    )

    version, history = (load_cross_fit(args.start) if args.start else None), []
    if version is not None and (reason := warm_start_reason(version, config, TrainConfig.folds)):
        ap.error(f"{args.start} cannot start these rounds: {reason}")
    for r in range(args.rounds + 1):
        moved = reviewer.moved_out
        taught = reviewer.decisions and not args.no_labels
        families = [
            f"reviewed-out:{x.sku}" if taught and i in moved else x.family for i, x in enumerate(listings)
        ]
        pairs = reviewer.pairs() if taught else None
        train_config = TrainConfig(
            seed=args.seed + r, steps=args.steps if version is None else args.warm_steps
        )
        if version is not None and args.warm_lr is not None:
            train_config.lr = args.warm_lr
        t = time.perf_counter()
        if r == 0 and args.start:
            info = {"warm_start": False, "validation": {}}
        else:
            data = TrainingSet.of_features(
                features, listings, device=device, families=families, review_pairs=pairs, raw=raw
            )
            version, info = train_cross_fit(
                data, config, train_config, device=device, progress=False, warm_start=version
            )
        train_s = time.perf_counter() - t
        t = time.perf_counter()
        scores = catalogue.scores(version, moved)
        score_s = time.perf_counter() - t
        line = {
            "round": r,
            "steps": 0 if r == 0 and args.start else train_config.steps,
            "warm_start": info["warm_start"],
            "decisions_in_force": len(reviewer.decisions),
            "pairs": pairs.counts() if pairs is not None else {},
            "train_s": round(train_s, 1),
            "score_s": round(score_s, 1),
            "validation_pr_auc": info["validation"].get("pr_auc"),
        }
        figures = {c.dir.name: c.figures(metrics, version) for c in held_out}
        line["held_out"] = figures
        line["mean_wrong_variant_ap"] = round(
            float(np.mean([f["wrong_variant_ap"] for f in figures.values()])), 4
        )
        line["mean_duplicate_ap"] = round(float(np.mean([f["duplicate_ap"] for f in figures.values()])), 4)
        history.append(protocol_scores(listings, scores))
        if r < args.rounds:
            line["decided"] = dict(reviewer.review(scores, args.per_round))
        emit(line)

    reviewed = reviewer.reviewed_skus
    emit(
        {
            "final_unreviewed": True,
            "reviewed_listings": len(reviewed),
            "rounds": [
                {k: m.get(k) for k in FIGURES}
                for m in (metrics_on_unreviewed(args.catalogue, s, reviewed, metrics) for s in history)
            ],
        }
    )
    if out:
        out.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
