"""Reads: querysets for pages and commands (writes live in services/)."""

from __future__ import annotations

from django.db.models import F, Func, QuerySet, Value

from catalog_review.models import Category, Flag, ModelVersion, Product, VariationFamily


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
    flags = Flag.objects.filter(status=Flag.Status.OPEN).select_related(
        "product", "product__family", "counterpart", "model_version", "claimed_by"
    )
    if kind:
        flags = flags.filter(kind=kind)
    if category is not None:
        flags = flags.filter(product__in=Product.objects.in_category(category))
    if family:
        flags = flags.filter(product__family__code=family)
    if min_score is not None:
        flags = flags.filter(score__gte=min_score)
    if max_score is not None:
        flags = flags.filter(score__lte=max_score)
    if model_version is not None:
        flags = flags.filter(model_version=model_version)
    if order == "uncertain":
        distance = Func(F("score") - Value(0.5), function="ABS")
        return flags.annotate(uncertainty=distance).order_by("uncertainty", "id")
    return flags.order_by("-score", "id")


def flag_family(flag: Flag) -> list[Product]:
    """The flagged listing's family, the flagged listing first."""
    members = list(flag.product.family.products.select_related("category", "family").order_by("sku"))
    members.sort(key=lambda p: p.pk != flag.product_id)
    return members


def similar_products(*, product: Product, by: str = "image", limit: int = 12) -> list[Product]:
    """Nearest listings to `product` by its image (or fused, or title) vector of the active model
    version: pgvector HNSW kNN. Empty when the listing has no embedding yet."""
    from pgvector.django import CosineDistance

    from catalog_review.models import ProductEmbedding

    column = {"image": "image_vector", "title": "title_vector", "listing": "vector"}[by]
    mine = (
        ProductEmbedding.objects.filter(product=product, model_version__is_active=True)
        .values_list("model_version_id", column)
        .first()
    )
    if mine is None or mine[1] is None:
        return []
    version_id, vector = mine
    nearest = (
        ProductEmbedding.objects.filter(model_version_id=version_id)
        .exclude(product=product)
        .exclude(**{f"{column}__isnull": True})
        .annotate(distance=CosineDistance(column, vector))
        .order_by("distance")
        .select_related("product", "product__family")[:limit]
    )
    out = []
    for e in nearest:
        e.product.similarity = 1 - e.distance
        out.append(e.product)
    return out
