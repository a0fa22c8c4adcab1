"""python manage.py export_scores --output FILE.jsonl [--version NAME] [--partial]"""

from __future__ import annotations

import json
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from catalog_review.models import Product, ProductEmbedding
from catalog_review.services.model_versions import version_named


class Command(BaseCommand):
    help = (
        "Write one JSON line per listing: sku, family, wrong_variant_score, duplicate_score, duplicate_of, "
        "model_version (DESIGN 4), for the active model version. Higher score = more likely an error."
    )

    def add_arguments(self, parser):
        parser.add_argument("--output", type=Path, required=True)
        parser.add_argument("--model-version", help="export this model version instead of the active one")
        parser.add_argument(
            "--partial",
            action="store_true",
            help="write listings not scored yet (null scores) instead of failing",
        )

    def handle(self, *args, output: Path, model_version: str | None, partial: bool, **options):
        try:
            found = version_named(model_version)
        except LookupError as exc:
            raise CommandError(str(exc)) from None
        if output.parent and not output.parent.exists():
            raise CommandError(f"{output.parent}: directory does not exist")
        scores = {
            e["product_id"]: e
            for e in ProductEmbedding.objects.filter(model_version=found, scored_at__isnull=False).values(
                "product_id", "wrong_variant_score", "duplicate_score", "duplicate_of__sku"
            )
        }
        products = Product.objects.order_by("sku").values_list("id", "sku", "family__code")
        unscored = [sku for pid, sku, _ in products if pid not in scores]
        if unscored and not partial:
            raise CommandError(
                f"{len(unscored)} listings are not scored by model version {found.name} yet "
                f"(e.g. {', '.join(unscored[:5])}): run `python manage.py score --wait` first, "
                "or pass --partial to write them with null scores"
            )
        tmp = output.with_name(output.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            for pid, sku, family in products.iterator(chunk_size=5000):
                s = scores.get(pid, {})
                fh.write(
                    json.dumps(
                        {
                            "sku": sku,
                            "family": family,
                            "wrong_variant_score": s.get("wrong_variant_score"),
                            "duplicate_score": s.get("duplicate_score"),
                            "duplicate_of": s.get("duplicate_of__sku"),
                            "model_version": found.name,
                        },
                        ensure_ascii=False,
                    )
                    + "\n"
                )
        tmp.replace(output)
        self.stdout.write(f"Wrote {len(products)} listings scored by {found.name} to {output}")
        if unscored:
            self.stderr.write(f"{len(unscored)} listings not scored yet (null scores)")
