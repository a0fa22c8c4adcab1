"""python manage.py score [--wait] [--family F] [--category PATH] [--sku S ...]"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from catalog_review.management.jobwait import require_worker, wait_for_job
from catalog_review.schemas import ScoreRequest, ValidationError, explain
from catalog_review.services.model_versions import version_named
from catalog_review.services.scoring import ScopeError, score_start


class Command(BaseCommand):
    help = (
        "Embed and flag listings with the active model version (gpu queue, then default queue). "
        "A listing is always scored with its whole family. Needs a running worker."
    )

    def add_arguments(self, parser):
        parser.add_argument("--wait", action="store_true", help="show a progress bar and return when done")
        parser.add_argument("--family", help="only this family (its code)")
        parser.add_argument("--category", help="only this category path, e.g. 'Food > Fruit' (and below)")
        parser.add_argument("--sku", action="append", default=[], help="only the families of these skus")
        parser.add_argument("--model-version", help="score with this model version instead of the active one")
        parser.add_argument("--no-progress", action="store_true")

    def handle(self, *args, wait, family, category, sku, model_version, no_progress, **options):
        try:
            scope = ScoreRequest(family=family, category=category, skus=sku or None).scope()
        except ValidationError as exc:
            raise CommandError(explain(exc.errors())) from None
        try:
            found = version_named(model_version)
        except LookupError as exc:
            raise CommandError(str(exc)) from None
        if wait:
            require_worker("gpu")
            require_worker("default")
        try:
            job = score_start(scope=scope | {"reason": "command"}, version=found)
        except ScopeError as exc:
            raise CommandError(str(exc)) from None
        listings = job.total // 2
        self.stdout.write(f"Score job #{job.pk}: {listings} listings with model version {found.name}.")
        if not wait:
            self.stdout.write("Queued; follow it on the job page or with --wait.")
            return
        job = wait_for_job(job, desc="scoring", no_progress=no_progress)
        c = job.counts

        def n(key):
            return c.get(key, 0)

        suppressed = n("wrong_variant_suppressed") + n("duplicate_suppressed")
        self.stdout.write(
            self.style.SUCCESS(
                f"Done: {c.get('listings', listings)} listings scored; {n('open_flags')} open flags "
                f"(wrong_variant: {n('wrong_variant_created')} new, {n('wrong_variant_updated')} updated; "
                f"duplicate: {n('duplicate_created')} new, {n('duplicate_updated')} updated); "
                f"{suppressed} already decided, {n('stale')} marked stale."
            )
        )
