"""python manage.py export_corrections --output FILE.jsonl|.csv"""

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from catalog_review.services.corrections import write_corrections


class Command(BaseCommand):
    help = (
        "Write one line per confirmed error in force (undone decisions drop out): sku, kind, duplicate_of, "
        "suggested_family, reviewer, decided_at, note. JSON lines, or CSV when FILE ends in .csv."
    )

    def add_arguments(self, parser):
        parser.add_argument("--output", type=Path, required=True)

    def handle(self, *args, output: Path, **options):
        if not output.parent.exists():
            raise CommandError(f"{output.parent}: directory does not exist")
        if output.suffix.lower() not in (".jsonl", ".json", ".ndjson", ".csv"):
            raise CommandError(f"{output}: write .jsonl or .csv")
        tmp = output.with_name(output.name + ".tmp")
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            n = write_corrections(fh, csv_format=output.suffix.lower() == ".csv")
        tmp.replace(output)
        self.stdout.write(f"Wrote {n} corrections to {output}")
