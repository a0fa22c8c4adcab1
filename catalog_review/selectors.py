"""Reads: querysets for pages and commands (writes live in services/)."""

from __future__ import annotations

from django.db.models import QuerySet

from catalog_review.models import Category, Product, VariationFamily


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
