"""Reads: querysets for pages and commands (writes live in services/)."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from datetime import timedelta

from django.conf import settings
from django.db import connection, models
from django.db.models import QuerySet
from django.db.models.functions import TruncDate
from django.utils import timezone
from pgvector.django import CosineDistance

from catalog_review.models import (
    Category,
    Flag,
    ModelVersion,
    Product,
    ProductEmbedding,
    ReviewDecision,
    VariationFamily,
    flag_uncertainty,
)
from catalog_review.pagination import Count, planner_rows
from catalog_review.services.model_versions import load_model
from ml_worker.query import title_query_vector

logger = logging.getLogger(__name__)


def product_list(
    *, q: str = "", category: Category | None = None, family: str = "", image_status: str = ""
) -> QuerySet[Product]:
    products = Product.objects.select_related("family", "category")
    if q:
        products = products.search(q)
    if category is not None:
        products = products.in_category(category)
    if family:
        products = products.filter(family__code=family)
    if image_status:
        products = products.filter(image_status=image_status)
    return products.order_by("family__code", "sku")


def family_members(*, family: VariationFamily) -> QuerySet[Product]:
    return family.products.select_related("category").order_by("sku")


QUEUE_ROW_FIELDS = (
    "kind",
    "score",
    "status",
    "evidence",
    "claim_expires_at",
    "product__sku",
    "product__title",
    "product__image",
    "product__image_status",
    "product__family__code",
    "counterpart__sku",
    "claimed_by__username",
)


def flag_queue(
    *,
    kind: str = "",
    category: Category | None = None,
    family: str = "",
    min_score: float | None = None,
    max_score: float | None = None,
    model_version: ModelVersion | None = None,
    order: str = "score",
) -> QuerySet[Flag]:
    """Open flags, highest score first (or nearest the 0.5 decision boundary first)."""
    flags = (
        Flag.objects.filter(status=Flag.Status.OPEN)
        .select_related("product", "product__family", "counterpart", "claimed_by")
        # only what a queue row shows (a page of 50 rows builds 200 model instances: every column
        # not loaded is a value not parsed, the listings' JSON attributes above all)
        .only(*QUEUE_ROW_FIELDS)
    )
    if kind:
        flags = flags.filter(kind=kind)
    if category is not None:
        flags = flags.filter(category_id__in=category.tree_ids())  # Flag.category: kept by the database
    if family:
        flags = flags.filter(product__family__code=family)
    if min_score is not None:
        flags = flags.filter(score__gte=min_score)
    if max_score is not None:
        flags = flags.filter(score__lte=max_score)
    if model_version is not None:
        flags = flags.filter(model_version=model_version)
    if order == "uncertain":
        # the expression of the index flag_open_uncertainty, so that the page reads it in order
        return flags.annotate(uncertainty=flag_uncertainty()).order_by("uncertainty", "id")
    return flags.order_by("-score", "id")


def flag_family(flag: Flag) -> list[Product]:
    """The flagged listing's family, the flagged listing first."""
    members = list(flag.product.family.products.select_related("category", "family").order_by("sku"))
    members.sort(key=lambda p: p.pk != flag.product_id)
    return members


def similar_products(*, product: Product, by: str = "image", limit: int = 12) -> list[Product]:
    """Nearest listings to `product` by its image (or fused, or title) vector of the active model
    version: pgvector HNSW kNN. Empty when the listing has no embedding yet."""

    column = {"image": "image_vector", "title": "title_vector", "listing": "vector"}[by]
    mine = (
        ProductEmbedding.objects.filter(product=product, model_version__is_active=True)
        .values_list("model_version_id", column)
        .first()
    )
    if mine is None or mine[1] is None:
        return []
    version_id, vector = mine
    others = ProductEmbedding.objects.filter(model_version_id=version_id).exclude(product=product)
    return nearest_products(others, column, vector, limit, related=("family",))


def nearest_products(embeddings, column: str, vector, limit: int, *, related=()) -> list[Product]:
    """The listings of the `limit` rows of `embeddings` nearest `vector` by `column` (cosine: pgvector
    HNSW), nearest first, each with its `similarity`. Only ids and distances come back from the kNN
    (an embedding row carries thousands of floats); the listings are read by id."""
    rows = list(
        embeddings.exclude(**{f"{column}__isnull": True})
        .annotate(distance=CosineDistance(column, vector))
        .order_by("distance")
        .values_list("product_id", "distance")[:limit]
    )
    products = Product.objects.select_related(*related).in_bulk([pid for pid, _ in rows])
    out = []
    for pid, distance in rows:
        listing = products[pid]
        listing.similarity = 1.0 - float(distance)
        out.append(listing)
    return out


def open_flag_counts() -> dict[str, Count]:
    """Open flags of each kind: exact while there are fewer than ESTIMATE_COUNTS_ABOVE in all, else the
    planner's estimates (the queue page does not count 100k flags on every load)."""
    open_flags = Flag.objects.filter(status=Flag.Status.OPEN)
    if planner_rows(open_flags) >= settings.ESTIMATE_COUNTS_ABOVE:
        return {
            kind: Count(planner_rows(open_flags.filter(kind=kind)), exact=False) for kind in Flag.Kind.values
        }
    exact = dict(open_flags.values_list("kind").annotate(n=models.Count("id")).order_by())
    return {kind: Count(exact.get(kind, 0)) for kind in Flag.Kind.values}


def dashboard_stats(*, days: int = 14) -> dict:
    """What the admin dashboard draws: flags by kind/status and top-level category, precision of
    decided flags by score band, reviewer throughput and agreement."""
    by_kind = defaultdict(dict)
    for row in Flag.objects.values("kind", "status").annotate(n=models.Count("id")).order_by():
        by_kind[row["kind"]][row["status"]] = row["n"]
    by_category = defaultdict(lambda: defaultdict(int))
    for row in Flag.objects.values("category__path", "status").annotate(n=models.Count("id")).order_by():
        top = (row["category__path"] or "(no category)").split(" > ")[0]
        by_category[top][row["status"]] += row["n"]
    bands = []
    decided = Flag.objects.filter(status__in=[Flag.Status.CONFIRMED, Flag.Status.REJECTED])
    for kind, label in Flag.Kind.choices:
        for low in (0.5, 0.6, 0.7, 0.8, 0.9):
            band = decided.filter(kind=kind, score__gte=low, score__lt=low + 0.1 if low < 0.9 else 1.01)
            counts = dict(band.values_list("status").annotate(n=models.Count("id")).order_by())
            total = sum(counts.values())
            bands.append(
                {
                    "kind": label,
                    "band": f"{low:.1f}-{low + 0.1:.1f}",
                    "decided": total,
                    "precision": counts.get(Flag.Status.CONFIRMED, 0) / total if total else None,
                }
            )
    since = timezone.now() - timedelta(days=days)
    decisions = ReviewDecision.objects.exclude(decision=ReviewDecision.Decision.UNDO)
    per_day = defaultdict(lambda: defaultdict(int))
    for row in (
        decisions.filter(created_at__gte=since)
        .annotate(day=TruncDate("created_at"))
        .values("day", "reviewer__username")
        .annotate(n=models.Count("id"))
        .order_by()
    ):
        per_day[row["reviewer__username"]][row["day"]] = row["n"]
    reviewers = []
    for row in (
        decisions.values("reviewer__username", "decision")
        .annotate(n=models.Count("id"))
        .order_by("reviewer__username")
    ):
        if not reviewers or reviewers[-1]["name"] != row["reviewer__username"]:
            reviewers.append({"name": row["reviewer__username"], "confirm": 0, "reject": 0, "skip": 0})
        reviewers[-1][row["decision"]] = row["n"]
    for r in reviewers:
        r["total"] = r["confirm"] + r["reject"] + r["skip"]
        r["last_days"] = sum(per_day[r["name"]].values())
    # agreement: flags that two or more reviewers decided (a decision later undone still counts)
    votes = defaultdict(dict)
    for flag_id, name, decision in decisions.filter(
        decision__in=[ReviewDecision.Decision.CONFIRM, ReviewDecision.Decision.REJECT]
    ).values_list("flag_id", "reviewer__username", "decision"):
        votes[flag_id][name] = decision
    shared = [v for v in votes.values() if len(v) > 1]
    agreeing = sum(1 for v in shared if len(set(v.values())) == 1)
    # per reviewer: of the flags someone else also decided, how many got the same answer from all
    # the others (who disagrees most, and with how much evidence)
    for r in reviewers:
        mine = [v for v in shared if r["name"] in v]
        r["shared"] = len(mine)
        r["agreeing"] = sum(
            1 for v in mine if all(d == v[r["name"]] for name, d in v.items() if name != r["name"])
        )
    return {
        "by_kind": {label: dict(by_kind.get(kind, {})) for kind, label in Flag.Kind.choices},
        "by_category": {k: dict(v) for k, v in sorted(by_category.items())},
        "bands": bands,
        "reviewers": reviewers,
        "agreement": {"flags": len(shared), "agreeing": agreeing},
        "days": days,
    }


def warm_meaning_search() -> float | None:
    """Load what a search by meaning needs (the active version and its title encoder) and encode one
    query, so that the first reviewer to search in this process does not wait for them. Returns the
    seconds it took (None: nothing scored yet, nothing to load). Runs in a web process's background
    thread (catalog_review.wsgi): a failure is logged, never raised."""
    started = time.perf_counter()
    try:
        version = ModelVersion.objects.filter(is_active=True).first()
        if version is None:
            return None
        title_query_vector(load_model(version).final, "warm up")
        seconds = time.perf_counter() - started
        logger.info("search by meaning ready in %.1f s (model version %s)", seconds, version.name)
        return seconds
    except Exception:
        logger.exception("could not load the search by meaning ahead of the first search")
        return None
    finally:
        connection.close()  # this thread's own connection


def search_by_meaning(*, text: str, limit: int = 48) -> list[Product]:
    """Listings whose title means what `text` says: the text in the active version's title space,
    then pgvector kNN over the stored title vectors, most similar first, each with its `similarity`
    (cosine); none below MEANING_MIN_SIMILARITY (a query that means nothing here finds nothing).
    Empty before anything was scored."""
    version = ModelVersion.objects.filter(is_active=True).first()
    text = text.strip()
    if version is None or not text or not ProductEmbedding.objects.filter(model_version=version).exists():
        return []
    vector = title_query_vector(load_model(version).final, text)
    embeddings = ProductEmbedding.objects.filter(model_version=version)
    nearest = nearest_products(embeddings, "title_vector", vector, limit, related=("family", "category"))
    return [p for p in nearest if p.similarity >= settings.MEANING_MIN_SIMILARITY]
