"""`catalogue_import`: idempotent upsert of a catalogue file by sku.

Good rows are kept, bad rows are reported (row, field, reason) and skipped. A listing whose image is
unusable is kept with an image status and a warning; an image that fails on re-import never
replaces a good image already stored. http(s) images are downloaded by `default`-queue tasks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from catalog_review import dispatch
from catalog_review.models import Category, ImageStatus, Job, ModelVersion, Product, VariationFamily
from catalog_review.services import images as image_service
from catalog_review.services import jobs as job_service
from catalog_review.services.catalogue_file import (
    CATEGORY_SEPARATOR,
    ListingInput,
    RowError,
    count_rows,
    read_raw_rows,
    validate_row,
)
from catalog_review.services.scoring import score_start

CHUNK_SIZE = 500
ProgressCallback = Callable[[int, int], None]

# The product fields an import writes; a re-import that would change none of them writes nothing.
_IMPORTED_FIELDS = (
    "title",
    "description",
    "attributes",
    "category_id",
    "family_id",
    "image",
    "image_sha256",
    "image_source",
    "image_status",
    "image_error",
    "image_width",
    "image_height",
)


@dataclass
class ImportReport:
    rows: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    images_stored: int = 0
    images_queued: int = 0
    errors: list[RowError] = field(default_factory=list)  # row skipped
    warnings: list[RowError] = field(default_factory=list)  # row kept, image problem
    job_id: int | None = None
    fetch_job_id: int | None = None
    score_job_id: int | None = None
    changed_family_ids: set[int] = field(
        default_factory=set
    )  # families gaining, losing or changing a listing

    @property
    def skipped(self) -> int:
        return len({e.row for e in self.errors})

    def counts(self) -> dict:
        return {
            "rows": self.rows,
            "created": self.created,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "skipped": self.skipped,
            "image_warnings": len(self.warnings),
            "images_stored": self.images_stored,
            "images_queued": self.images_queued,
        }


@dataclass
class _ImageOutcome:
    fields: dict
    warning: str | None = None
    queued_url: str | None = None


def catalogue_import(
    *,
    path: Path,
    images_root: Path | None = None,
    requested_by=None,
    progress: ProgressCallback | None = None,
) -> ImportReport:
    """Import (create or update by sku) every good row of a JSONL or CSV catalogue file.

    Raises CatalogueFileError when the file cannot be read at all; row problems go in the report.
    """
    path = Path(path)
    rows = read_raw_rows(path)  # raises CatalogueFileError before any row when the file is unreadable
    total = count_rows(path)
    root = Path(images_root) if images_root else path.resolve().parent
    report = ImportReport()
    job = job_service.job_create(
        kind=Job.Kind.IMPORT,
        scope={"file": str(path), "images_root": str(root)},
        total=total,
        requested_by=requested_by,
        status=Job.Status.RUNNING,
    )
    report.job_id = job.pk
    importer = _Importer(root=root, report=report)
    seen_skus: dict[str, int] = {}
    chunk: list[ListingInput] = []
    try:
        for number, raw in rows:
            report.rows += 1
            listing = (
                raw
                if isinstance(raw, RowError)
                else validate_row(number, raw, title_max_chars=settings.TITLE_MAX_CHARS)
            )
            if isinstance(listing, RowError):
                report.errors.append(listing)
            elif isinstance(listing, list):
                report.errors.extend(listing)
            elif listing.sku in seen_skus:
                report.errors.append(
                    RowError(
                        number,
                        "sku",
                        f"duplicate sku {listing.sku!r}: first seen on row "
                        f"{seen_skus[listing.sku]}; this row was skipped",
                        sku=listing.sku,
                    )
                )
            else:
                seen_skus[listing.sku] = number
                chunk.append(listing)
            if len(chunk) >= CHUNK_SIZE:
                importer.apply(chunk)
                chunk = []
                job_service.job_set_progress(job=job, done=report.rows, counts=report.counts())
                if progress:
                    progress(report.rows, total)
        if chunk:
            importer.apply(chunk)
        report.fetch_job_id = importer.enqueue_downloads(requested_by=requested_by)
        report.score_job_id = _enqueue_scoring(report, requested_by)
    except Exception as exc:
        job_service.job_fail(job_id=job.pk, error=f"{type(exc).__name__}: {exc}")
        raise
    job_service.job_set_progress(job=job, done=report.rows, total=report.rows, counts=report.counts())
    job_service.refresh_planner_statistics(Category, VariationFamily, Product)
    job_service.job_finish(
        job=job,
        counts=report.counts() | {"fetch_job": report.fetch_job_id, "score_job": report.score_job_id},
    )
    if progress:
        progress(report.rows, report.rows)
    return report


def _enqueue_scoring(report: ImportReport, requested_by) -> int | None:
    """Incremental scoring: the families that changed, with the active model version (only once a
    version is active: a catalogue that was never scored waits for its first `score`)."""

    if not settings.SCORE_ON_IMPORT or not report.changed_family_ids:
        return None
    version = ModelVersion.objects.filter(is_active=True).first()
    if version is None:
        return None
    job = score_start(
        scope={"family_ids": sorted(report.changed_family_ids), "reason": "import"},
        requested_by=requested_by,
        version=version,
    )
    return job.pk


class _Importer:
    def __init__(self, *, root: Path, report: ImportReport):
        self.root = root
        self.report = report
        self.categories: dict[str, Category] = {}
        self.families: dict[str, VariationFamily] = {}
        self.downloads: list[tuple[int, str]] = []

    def apply(self, listings: list[ListingInput]) -> None:
        existing = {p.sku: p for p in Product.objects.filter(sku__in=[x.sku for x in listings])}
        outcomes = [self._image(listing, existing.get(listing.sku)) for listing in listings]
        with transaction.atomic():
            self._ensure_categories(listing.category for listing in listings)
            self._ensure_families(listing.family for listing in listings)
            to_create, to_update, queued = [], [], []
            for listing, outcome in zip(listings, outcomes, strict=True):
                wanted = {
                    "title": listing.title,
                    "description": listing.description,
                    "attributes": listing.attributes,
                    "category_id": self.categories[CATEGORY_SEPARATOR.join(listing.category)].pk
                    if listing.category
                    else None,
                    "family_id": self.families[listing.family].pk,
                    **outcome.fields,
                }
                product = existing.get(listing.sku)
                if product is None:
                    product = Product(sku=listing.sku, **wanted)
                    to_create.append(product)
                elif any(getattr(product, name) != value for name, value in wanted.items()):
                    self.report.changed_family_ids.add(product.family_id)  # the family it may leave
                    for name, value in wanted.items():
                        setattr(product, name, value)
                    to_update.append(product)
                else:
                    self.report.unchanged += 1
                if outcome.warning:
                    self.report.warnings.append(
                        RowError(listing.row, "image", outcome.warning, sku=listing.sku)
                    )
                if outcome.queued_url:
                    queued.append((product, outcome.queued_url))
            Product.objects.bulk_create(to_create, batch_size=CHUNK_SIZE)
            if to_update:
                now = timezone.now()  # bulk_update does not apply auto_now
                for product in to_update:
                    product.updated_at = now
                Product.objects.bulk_update(
                    to_update, [*_IMPORTED_FIELDS, "updated_at"], batch_size=CHUNK_SIZE
                )
            self.report.created += len(to_create)
            self.report.updated += len(to_update)
            self.report.changed_family_ids.update(p.family_id for p in [*to_create, *to_update])
            self.downloads.extend((product.pk, url) for product, url in queued)

    def _image(self, listing: ListingInput, current: Product | None) -> _ImageOutcome:
        """What the listing's image fields should become; never loses a good stored image."""
        reference = listing.image
        if reference is None:
            return _ImageOutcome(fields=_image_fields(status=ImageStatus.NONE))
        if image_service.is_url(reference):
            if (
                current
                and current.image_source == reference
                and current.image_status in (ImageStatus.OK, ImageStatus.PENDING)
            ):
                return _ImageOutcome(fields=_image_fields_of(current))  # already downloaded or on its way
            self.report.images_queued += 1
            fields = _image_fields(status=ImageStatus.PENDING, source=reference)
            if current and current.image_status == ImageStatus.OK:
                fields = _image_fields_of(current) | {"image_source": reference}
            return _ImageOutcome(fields=fields, queued_url=reference)
        try:
            file_path = image_service.resolve_local_image(reference, self.root)
            data = image_service.read_local_image(file_path)
            if (
                current
                and current.image_status == ImageStatus.OK
                and current.image_sha256 == hashlib.sha256(data).hexdigest()
            ):
                return _ImageOutcome(fields=_image_fields_of(current) | {"image_source": reference})
            verified = image_service.verify_image(data)
            stored = image_service.store_image(verified)
        except image_service.ImageRejected as rejected:
            if current and current.image_status == ImageStatus.OK:
                return _ImageOutcome(
                    fields=_image_fields_of(current),
                    warning=f"{rejected.reason}; kept the image already stored for this listing",
                )
            return _ImageOutcome(
                fields=_image_fields(status=rejected.status, source=reference, error=rejected.reason),
                warning=rejected.reason,
            )
        self.report.images_stored += 1
        return _ImageOutcome(
            fields=_image_fields(
                status=ImageStatus.OK,
                source=reference,
                path=stored,
                sha256=verified.sha256,
                width=verified.width,
                height=verified.height,
            )
        )

    def _ensure_categories(self, paths: Iterable[list[str]]) -> None:
        for parts in paths:
            parent = None
            for depth in range(1, len(parts) + 1):
                key = CATEGORY_SEPARATOR.join(parts[:depth])
                node = self.categories.get(key)
                if node is None:
                    node, _ = Category.objects.get_or_create(
                        path=key, defaults={"name": parts[depth - 1], "parent": parent, "depth": depth}
                    )
                    self.categories[key] = node
                parent = node

    def _ensure_families(self, codes: Iterable[str]) -> None:
        missing = {c for c in codes if c not in self.families}
        if not missing:
            return
        VariationFamily.objects.bulk_create(
            [VariationFamily(code=c) for c in missing], ignore_conflicts=True, batch_size=CHUNK_SIZE
        )
        for family in VariationFamily.objects.filter(code__in=missing):
            self.families[family.code] = family

    def enqueue_downloads(self, *, requested_by) -> int | None:
        if not self.downloads:
            return None
        job = job_service.job_create(
            kind=Job.Kind.FETCH_IMAGES,
            total=len(self.downloads),
            requested_by=requested_by,
            scope={"products": len(self.downloads)},
        )
        downloads = list(self.downloads)

        def send() -> None:
            for product_id, url in downloads:
                dispatch.enqueue(dispatch.FETCH_PRODUCT_IMAGE, product_id=product_id, url=url, job_id=job.pk)

        transaction.on_commit(send)
        return job.pk


def _image_fields(
    *,
    status: str,
    source: str = "",
    path: str = "",
    sha256: str = "",
    error: str = "",
    width: int | None = None,
    height: int | None = None,
) -> dict:
    return {
        "image": path,
        "image_sha256": sha256,
        "image_source": source,
        "image_status": status,
        "image_error": error[:500],
        "image_width": width,
        "image_height": height,
    }


def _image_fields_of(product: Product) -> dict:
    return {
        "image": product.image,
        "image_sha256": product.image_sha256,
        "image_source": product.image_source,
        "image_status": product.image_status,
        "image_error": product.image_error,
        "image_width": product.image_width,
        "image_height": product.image_height,
    }
