"""What a version's wrong-variant scoring is worth on catalogues no reviewer saw, with its plain score
pooled several ways and its calibrator refitted several ways, without retraining anything.

The version (a trained, cross-fitted one in the app's database) keeps its models; only the last step
changes: how a listing's evidence becomes its wrong-variant score. Each line scores the held-out
catalogues (other inject.py seeds, never imported) with the version's final model, as
review_simulator.py's `--held-out` does, and prints metrics.py's figures:

- `plain`: the shipped plain score (1 - max P(same family), `ml_worker.calibration.PLAIN_SCORE`);
- `stored`: the version's own calibrator (fitted by its train job), when it has one;
- `pool:NAME`: another evidence column as the score (`pool:disagreement_mean`, the earlier default);
- `siblings:W`: a calibrator fitted on the decisions as a train job fits it, with the decided flags'
  undecided siblings counted as "not wrong" at weight W (0: the decisions alone).

Decisions: those in force in the database (default), or with `--top N --truth truth.json` the top N
open flags of the queue (highest score first) decided by the truth file, as the simulator would.

usage (the app's settings, e.g. CATALOG_REVIEW_VAR_DIR, point at the database):
  .venv/bin/python benchmarks/calibrator_sweep.py VERSION HELD_OUT_DIR... [--top N --truth FILE]
      [--siblings 0,0.3,1] [--pool disagreement_mean] [--features-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("version", help="a model version's name")
    ap.add_argument("held_out", type=Path, nargs="+")
    ap.add_argument("--top", type=int, help="decide the top N open flags by the truth file instead")
    ap.add_argument("--truth", type=Path, help="the imported catalogue's truth.json (with --top)")
    ap.add_argument("--siblings", default="0,0.3,1", help="sibling weights to fit calibrators with")
    ap.add_argument("--pool", action="append", default=["disagreement_mean"], help="evidence columns")
    ap.add_argument("--features-dir", type=Path, default=ROOT / "var" / "feature-cache")
    args = ap.parse_args(argv)
    if args.top is not None and (args.truth is None or not args.truth.is_file()):
        ap.error("--top needs --truth, the imported catalogue's truth.json")
    for d in args.held_out:
        if not (d / "catalogue.jsonl").is_file() or not (d / "truth.json").is_file():
            ap.error(f"{d} is not an evaluation directory (catalogue.jsonl + truth.json)")
    try:
        weights = [float(w) for w in args.siblings.split(",")]
    except ValueError:
        ap.error("--siblings takes numbers separated by commas")

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "catalog_review.settings")
    import django

    django.setup()
    from django.conf import settings

    from benchmarks.held_out import held_out_features, held_out_figures, load_metrics
    from catalog_review.models import Flag, ModelVersion, Product
    from catalog_review.services.model_versions import load_model
    from catalog_review.services.review import wrong_variant_labels
    from catalog_review.services.scoring import product_listing
    from ml_worker.calibration import EVIDENCE, WrongVariantCalibrator
    from ml_worker.catalogue import load_catalogue
    from ml_worker.ensemble import fit_calibrator
    from ml_worker.features import extract_features
    from ml_worker.lexical import price_of
    from ml_worker.scoring import encode_all, score_listings

    for name in args.pool:
        if name not in EVIDENCE:
            ap.error(f"--pool {name}: not an evidence column ({', '.join(EVIDENCE)})")
    try:
        version = load_model(ModelVersion.objects.get(name=args.version))
    except ModelVersion.DoesNotExist:
        ap.error(f"no model version {args.version!r} in this database")
    metrics = load_metrics()
    products = list(Product.objects.select_related("family", "category").order_by("id"))
    listings = [product_listing(p) for p in products]
    row = {p.pk: i for i, p in enumerate(products)}
    if args.top is not None:
        wrong = {t["sku"] for t in json.loads(args.truth.read_text()).get("wrong_variant", [])}
        flags = (
            Flag.objects.filter(status=Flag.Status.OPEN).order_by("-score", "id").select_related("product")
        )
        decided = {
            row[f.product_id]: f.product.sku in wrong
            for f in flags[: args.top]
            if f.kind == Flag.Kind.WRONG_VARIANT
        }
    else:
        decided = {row[pk]: confirmed for pk, confirmed in wrong_variant_labels().items() if pk in row}
    print(
        json.dumps(
            {
                "version": args.version,
                "wrong_variant_decisions": {
                    "confirmed": sum(decided.values()),
                    "rejected": sum(not v for v in decided.values()),
                },
            }
        ),
        flush=True,
    )
    if version.config.end_to_end:
        ap.error("an end-to-end version reads every catalogue through its own backbones: not supported here")
    features = extract_features(
        listings, version.config, cache_dir=settings.FEATURE_CACHE_DIR, progress=False
    )
    final = version.final.eval()
    catalogues = {}
    for d in args.held_out:
        rows = load_catalogue(d)
        outputs = encode_all(final, held_out_features(final, d, rows, args.features_dir))
        catalogues[d] = (rows, outputs)

    n = len(EVIDENCE)

    def column(name: str) -> WrongVariantCalibrator:  # a monotone map of one column: ranks by it
        k = EVIDENCE.index(name)
        return WrongVariantCalibrator([0.0] * n, [1.0] * n, [float(i == k) for i in range(n)], 0.0, 0, 0)

    ways = {"plain": (None, {})} | {f"pool:{name}": (column(name), {}) for name in args.pool}
    if version.calibrator is not None:  # the one the version was trained with, on its round's decisions
        ways["stored"] = (version.calibrator, {"confirmed": version.calibrator.confirmed})
    families = [p.family.code for p in products]
    for w in weights:
        ways[f"siblings:{w:g}"] = fit_calibrator(
            version, lambda _m: features, families, decided, sibling_weight=w
        )
    for way, (calibrator, summary) in ways.items():
        if way.startswith("siblings") and calibrator is None:  # too few decisions: nothing to score
            print(json.dumps({"way": way, **summary}), flush=True)
            continue
        line = {"way": way, **summary}
        for d, (rows, outputs) in catalogues.items():
            scores = score_listings(
                final,
                outputs,
                [x.family for x in rows],
                titles=[x.title for x in rows],
                prices=[price_of(x.attributes) for x in rows],
                calibrator=calibrator,
            )
            line[d.name] = held_out_figures(metrics, d, rows, scores)
        line["mean_wrong_variant_ap"] = round(
            float(np.mean([line[d.name]["wrong_variant_ap"] for d in catalogues])), 4
        )
        print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
