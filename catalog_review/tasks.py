"""Celery tasks of the `default` queue. Thin: ids in, a service call, early return when done."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings

from catalog_review.services.image_fetch import product_image_fetch
from catalog_review.services.images import TransientFetchError


@shared_task(bind=True, acks_late=True, max_retries=None)
def fetch_product_image(self, *, product_id: int, url: str, job_id: int | None = None) -> str:
    final_attempt = self.request.retries >= settings.IMAGE_FETCH_MAX_RETRIES
    try:
        return product_image_fetch(product_id=product_id, url=url, job_id=job_id, final_attempt=final_attempt)
    except TransientFetchError as exc:
        # exponential backoff, capped at a minute
        raise self.retry(exc=exc, countdown=min(60, 2**self.request.retries)) from None


@shared_task(acks_late=True)
def flag_chunk(*, chunk_id: int) -> str:
    """Stage 2 of a score job: duplicates (pgvector kNN + pair head) and flags for one chunk."""
    from catalog_review.services.scoring import flag_chunk_run

    return _run_chunk(flag_chunk_run, chunk_id)


@shared_task(acks_late=True)
def rescore_family(*, family_id: int) -> str:
    """Re-score one family with the active version after a reviewer confirmed (or undid the
    confirmation of) a wrong variant in it."""
    from catalog_review.models import ModelVersion, VariationFamily
    from catalog_review.services.scoring import score_start

    version = ModelVersion.objects.filter(is_active=True).first()
    if version is None or not VariationFamily.objects.filter(pk=family_id).exists():
        return "nothing to do"
    job = score_start(scope={"family_ids": [family_id], "reason": "review"}, version=version)
    return f"score job {job.pk}"


def _run_chunk(run, chunk_id: int) -> str:
    from catalog_review.models import JobChunk
    from catalog_review.services.jobs import job_fail

    try:
        return run(chunk_id)
    except Exception as exc:
        job_id = JobChunk.objects.filter(pk=chunk_id).values_list("job_id", flat=True).first()
        if job_id:
            job_fail(job_id=job_id, error=f"{type(exc).__name__}: {exc}")
        raise
