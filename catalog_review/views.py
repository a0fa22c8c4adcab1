"""Thin views: parse input with a form, call a selector or service, render."""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import SuspiciousFileOperation
from django.core.paginator import Paginator
from django.http import Http404
from django.shortcuts import get_object_or_404, render
from django.views.decorators.http import require_GET
from django.views.static import serve

from catalog_review import selectors
from catalog_review.forms import CatalogueFilterForm
from catalog_review.models import Job, Product, VariationFamily


@require_GET
def catalogue(request):
    form = CatalogueFilterForm(request.GET)
    filters = form.cleaned_data if form.is_valid() else {}
    products = selectors.product_list(
        q=filters.get("q") or "",
        category=filters.get("category"),
        family=filters.get("family") or "",
        image_status=filters.get("image_status") or "",
    )
    page = Paginator(products, settings.CATALOGUE_PAGE_SIZE).get_page(filters.get("page") or 1)
    query = request.GET.copy()
    query.pop("page", None)
    context = {"form": form, "page": page, "query": query.urlencode()}
    template = "catalog_review/catalogue.html#results" if request.htmx else "catalog_review/catalogue.html"
    return render(request, template, context)


@require_GET
def family_detail(request, code: str):
    family = get_object_or_404(VariationFamily, code=code)
    members = list(selectors.family_members(family=family))
    return render(request, "catalog_review/family.html", {"family": family, "members": members})


@require_GET
def product_detail(request, sku: str):
    product = get_object_or_404(Product.objects.select_related("family", "category"), sku=sku)
    siblings = selectors.family_members(family=product.family).exclude(pk=product.pk)
    return render(request, "catalog_review/product.html", {"product": product, "siblings": siblings})


@require_GET
def job_detail(request, job_id: int):
    job = get_object_or_404(Job, pk=job_id)
    template = "catalog_review/job.html#progress" if request.htmx else "catalog_review/job.html"
    return render(request, template, {"job": job})


@require_GET
def media_file(request, path: str):
    """Stored images, behind login like every page (django's serve refuses path traversal)."""
    try:
        response = serve(request, path, document_root=settings.MEDIA_ROOT)
    except SuspiciousFileOperation:
        raise Http404("no such file") from None
    response["Cache-Control"] = "private, max-age=86400, immutable"  # content-addressed names
    return response
