"""Downloading a listing's http(s) image (run by a `default`-queue task)."""

from __future__ import annotations

from django.db import transaction

from catalog_review.models import ImageStatus, Product
from catalog_review.services import images as image_service
from catalog_review.services import jobs as job_service


def product_image_fetch(*, product_id: int, url: str, job_id: int | None, final_attempt: bool) -> str:
    """Download, verify and store the image of one listing; return what happened.

    Idempotent: a listing no longer waiting for this URL (already done, or re-imported with another
    image) is left alone. Raises TransientFetchError for retryable failures unless `final_attempt`,
    in which case the failure is recorded on the listing.
    """
    if job_id:
        job_service.job_mark_running(job_id=job_id)
    if not Product.objects.filter(pk=product_id, image_status=ImageStatus.PENDING, image_source=url).exists():
        return "skipped"
    try:
        verified = image_service.verify_image(image_service.fetch_image_bytes(url))
        stored = image_service.store_image(verified)
    except image_service.ImageRejected as rejected:
        _record(
            product_id,
            url,
            job_id,
            ok=False,
            fields={"image_status": rejected.status, "image_error": rejected.reason[:500]},
        )
        return rejected.status
    except image_service.TransientFetchError as exc:
        if not final_attempt:
            raise
        _record(
            product_id,
            url,
            job_id,
            ok=False,
            fields={
                "image_status": ImageStatus.FETCH_FAILED,
                "image_error": f"{exc} (gave up after retries)"[:500],
            },
        )
        return ImageStatus.FETCH_FAILED
    _record(
        product_id,
        url,
        job_id,
        ok=True,
        fields={
            "image": stored,
            "image_sha256": verified.sha256,
            "image_status": ImageStatus.OK,
            "image_error": "",
            "image_width": verified.width,
            "image_height": verified.height,
        },
    )
    return ImageStatus.OK


def _record(product_id: int, url: str, job_id: int | None, *, ok: bool, fields: dict) -> None:
    with transaction.atomic():
        # compare-and-set: only the delivery that finds the listing still pending records and counts
        changed = Product.objects.filter(
            pk=product_id, image_status=ImageStatus.PENDING, image_source=url
        ).update(**fields)
        if changed and job_id:
            job_service.job_count_item(job_id=job_id, succeeded=ok)
