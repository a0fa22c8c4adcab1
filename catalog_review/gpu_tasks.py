"""Celery tasks of the `gpu` queue: embedding and training. The model and the backbones are loaded
lazily, once per worker process (never in the parent before fork)."""

from __future__ import annotations

from celery import shared_task

from catalog_review.services.jobs import JobCancelled, job_fail
from catalog_review.services.scoring import embed_chunk_run, fit_chunk_run
from catalog_review.services.training import train_run
from catalog_review.tasks import _run_chunk


@shared_task(bind=True, acks_late=True)
def fit_scorer_chunk(self, *, chunk_id: int) -> str:
    """Stage 0 of a score job: fit the version's scorer (evidence heads and combiners) on the catalogue."""
    return _run_chunk(self, fit_chunk_run, chunk_id)


@shared_task(bind=True, acks_late=True)
def embed_chunk(self, *, chunk_id: int) -> str:
    """Stage 1 of a score job: vectors, attention maps and wrong_variant scores for one chunk."""
    return _run_chunk(self, embed_chunk_run, chunk_id)


@shared_task(bind=True, acks_late=True)
def train_version(self, *, job_id: int) -> str:

    try:
        return train_run(job_id, worker=self.request.hostname or "")
    except JobCancelled:
        return "cancelled"
    except Exception as exc:
        job_fail(job_id=job_id, error=f"{type(exc).__name__}: {exc}")
        raise
