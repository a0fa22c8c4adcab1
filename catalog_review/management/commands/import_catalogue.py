"""python manage.py import_catalogue FILE [--images-root DIR] [--errors-report FILE]"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from catalog_review.services.catalogue_file import CatalogueFileError
from catalog_review.services.catalogue_import import catalogue_import

MAX_PROBLEMS_SHOWN = 50


class Command(BaseCommand):
    help = (
        "Import a catalogue (JSONL or CSV, DESIGN section 6): upsert by sku. Bad rows are reported with "
        "row number, field and reason and skipped; good rows are kept. Exit 0 when the file was read."
    )

    def add_arguments(self, parser):
        parser.add_argument("file", type=Path)
        parser.add_argument(
            "--images-root",
            type=Path,
            default=None,
            help="directory relative image paths are resolved against, and that no image path may leave "
            "(default: the catalogue file's directory)",
        )
        parser.add_argument(
            "--errors-report",
            type=Path,
            default=None,
            help="also write every problem as JSON lines {row, sku, field, reason, severity} to this file",
        )
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")
        parser.add_argument(
            "--strict",
            action="store_true",
            help="exit 3 when any row was skipped (the good rows are still imported); without it the exit "
            "status is 0 whenever the file was read (DESIGN 7)",
        )

    def handle(
        self,
        *args,
        file: Path,
        images_root: Path | None,
        errors_report: Path | None,
        no_progress: bool,
        strict: bool = False,
        **options,
    ):
        if images_root is not None and not images_root.is_dir():
            raise CommandError(f"--images-root {images_root}: not a directory")
        bar = tqdm(total=0, unit="row", desc="importing", disable=no_progress or None, file=sys.stderr)

        def progress(done: int, total: int) -> None:
            bar.total = max(total, done)
            bar.n = done
            bar.refresh()

        try:
            report = catalogue_import(path=file, images_root=images_root, progress=progress)
        except CatalogueFileError as exc:
            raise CommandError(str(exc)) from None
        finally:
            bar.close()

        problems = [(e, "error") for e in report.errors] + [(w, "warning") for w in report.warnings]
        problems.sort(key=lambda p: p[0].row)
        for problem, severity in problems[:MAX_PROBLEMS_SHOWN]:
            label = "skipped" if severity == "error" else "image"
            sku = f" sku {problem.sku}" if problem.sku else ""
            field = problem.field or "row"
            self.stderr.write(f"row {problem.row}{sku}: {field}: {problem.reason} [{label}]")
        if len(problems) > MAX_PROBLEMS_SHOWN:
            self.stderr.write(
                f"... and {len(problems) - MAX_PROBLEMS_SHOWN} more "
                "(use --errors-report FILE for the full list)"
            )
        if errors_report:
            with open(errors_report, "w", encoding="utf-8") as fh:
                for problem, severity in problems:
                    fh.write(
                        json.dumps(problem.as_dict() | {"severity": severity}, ensure_ascii=False) + "\n"
                    )

        c = report.counts()
        self.stdout.write(
            f"Read {c['rows']} rows: {c['created']} created, {c['updated']} updated, "
            f"{c['unchanged']} unchanged, "
            f"{c['skipped']} skipped (bad rows), {c['image_warnings']} with an unusable image (kept). "
            f"Images: {c['images_stored']} stored, {c['images_queued']} queued for download."
        )
        if report.fetch_job_id:
            self.stdout.write(f"Image downloads run as job #{report.fetch_job_id} on the default queue.")
        if report.score_job_id:
            self.stdout.write(
                f"The {len(report.changed_family_ids)} changed families are re-scored as job "
                f"#{report.score_job_id}."
            )
        if strict and c["skipped"]:
            raise CommandError(f"{c['skipped']} row(s) skipped (--strict)", returncode=3)
