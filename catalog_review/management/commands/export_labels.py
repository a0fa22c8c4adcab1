"""python manage.py export_labels --output FILE.jsonl"""

import json
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from catalog_review.api import label_json
from catalog_review.models import LabelledPair


class Command(BaseCommand):
    help = (
        "Write every labelled pair as a JSON line (a retraction is its own line with `retracts` set), "
        "in the order the labels API serves them."
    )

    def add_arguments(self, parser):
        parser.add_argument("--output", type=Path, required=True)

    def handle(self, *args, output: Path, **options):
        if not output.parent.exists():
            raise CommandError(f"{output.parent}: directory does not exist")
        rows = LabelledPair.objects.select_related("a", "b", "decision__reviewer").order_by("txid", "id")
        tmp = output.with_name(output.name + ".tmp")
        n = 0
        with open(tmp, "w", encoding="utf-8") as fh:
            for pair in rows.iterator(chunk_size=2000):
                fh.write(json.dumps(label_json(pair), ensure_ascii=False) + "\n")
                n += 1
        tmp.replace(output)
        self.stdout.write(f"Wrote {n} labelled pairs to {output}")
