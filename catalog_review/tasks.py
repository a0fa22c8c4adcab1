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
