"""Celery tasks of the `default` queue. Thin: ids in, a service call, early return when done."""

from __future__ import annotations

from contextlib import suppress

from celery import shared_task
from django.conf import settings

from catalog_review.models import JobChunk, ModelVersion, VariationFamily
from catalog_review.services.dashboard import refresh_dashboard as refresh
from catalog_review.services.image_fetch import product_image_fetch
from catalog_review.services.images import TransientFetchError
from catalog_review.services.jobs import job_fail
from catalog_review.services.recovery import reap_stalled_work as reap
from catalog_review.services.scoring import flag_chunk_run, score_start


@shared_task(bind=True, acks_late=True, max_retries=None)
def fetch_product_image(self, *, product_id: int, url: str, job_id: int | None = None) -> str:
    final_attempt = self.request.retries >= settings.IMAGE_FETCH_MAX_RETRIES
    try:
        return product_image_fetch(product_id=product_id, url=url, job_id=job_id, final_attempt=final_attempt)
    except TransientFetchError as exc:
        # exponential backoff, capped at a minute
        raise self.retry(exc=exc, countdown=min(60, 2**self.request.retries)) from None


@shared_task(bind=True, acks_late=True)
def flag_chunk(self, *, chunk_id: int) -> str:
    """Stage 2 of a score job: duplicates (pgvector kNN + pair head) and flags for one chunk."""
    return _run_chunk(self, flag_chunk_run, chunk_id)


@shared_task(acks_late=True)
def rescore_family(*, family_id: int) -> str:
    """Re-score one family with the active version after a reviewer confirmed (or undid the
    confirmation of) a wrong variant in it."""

    version = ModelVersion.objects.filter(is_active=True).first()
    if version is None or not VariationFamily.objects.filter(pk=family_id).exists():
        return "nothing to do"
    job = score_start(scope={"family_ids": [family_id], "reason": "review"}, version=version)
    return f"score job {job.pk}"


@shared_task(acks_late=True)
def reap_stalled_work() -> str:
    """Every REAPER_INTERVAL_S (beat): re-publish the work of workers that no longer answer."""
    reaped = reap()
    return (
        f"{reaped['chunks']} chunk(s) of dead workers, {reaped['unclaimed_chunks']} unclaimed chunk(s) of "
        f"stalled jobs, {reaped['train_jobs']} train job(s) re-published"
    )


@shared_task
def refresh_dashboard() -> str:
    """Every DASHBOARD_REFRESH_S (beat): the admin dashboard's aggregates, computed and stored."""
    return f"dashboard computed in {refresh().took_ms} ms"


CHUNK_RETRIES = 5  # a chunk that meets a transient database or broker error is tried again (2-30 s apart)


def _run_chunk(task, run, chunk_id: int) -> str:
    """Run one chunk for this worker; a transient error (the database or the broker gone for a moment)
    releases the chunk and retries it, anything else fails the job with the reason."""
    from django.db import InterfaceError, OperationalError
    from kombu.exceptions import OperationalError as BrokerError

    worker = task.request.hostname or ""
    try:
        return run(chunk_id, worker=worker)
    except (OperationalError, InterfaceError, BrokerError) as exc:
        if task.request.retries < CHUNK_RETRIES:
            # (if the database is still away, the claim is the reaper's or CHUNK_LEASE_S's to release)
            with suppress(OperationalError, InterfaceError):
                JobChunk.objects.filter(pk=chunk_id, claimed_by=worker).update(claimed_by="", claimed_at=None)
            raise task.retry(exc=exc, countdown=min(30, 2 ** (task.request.retries + 1))) from None
        _fail_chunk_job(chunk_id, exc)
        raise
    except Exception as exc:
        _fail_chunk_job(chunk_id, exc)
        raise


def _fail_chunk_job(chunk_id: int, exc: Exception) -> None:

    job_id = JobChunk.objects.filter(pk=chunk_id).values_list("job_id", flat=True).first()
    if job_id:
        job_fail(job_id=job_id, error=f"{type(exc).__name__}: {exc}")
