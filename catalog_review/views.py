"""Thin views: parse input with a form, call a selector or service, render."""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import timedelta
from functools import wraps

from django.conf import settings
from django.contrib import messages
from django.core.exceptions import PermissionDenied, SuspiciousFileOperation
from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.html import escape
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django.views.static import serve

from catalog_review import selectors
from catalog_review.api import create_token, revoke_tokens
from catalog_review.forms import (
    ApiTokenForm,
    CatalogueFilterForm,
    DecisionForm,
    QueueFilterForm,
    ScoreJobForm,
    TrainJobForm,
)
from catalog_review.models import ApiToken, Flag, Job, ModelVersion, Product, VariationFamily, VersionScorer
from catalog_review.pagination import (
    FLAG_ORDER_KEYS,
    EstimatingPaginator,
    count_of,
    decode_cursor,
    flag_cursor,
    flags_after,
)
from catalog_review.pagination import Count as Counted
from catalog_review.services import review
from catalog_review.services.corrections import write_corrections
from catalog_review.services.dashboard import current_dashboard, refresh_dashboard
from catalog_review.services.jobs import job_cancel
from catalog_review.services.model_versions import NOISE_Z
from catalog_review.services.promotion import promote
from catalog_review.services.scoring import ScopeError, score_start
from catalog_review.services.training import train_start


@require_GET
def catalogue(request):
    form = CatalogueFilterForm(request.GET)
    filters = form.cleaned_data if form.is_valid() else {}
    if filters.get("match") == "meaning" and filters.get("q"):
        products = selectors.search_by_meaning(text=filters["q"])  # nearest first, one page
    else:
        products = selectors.product_list(
            q=filters.get("q") or "",
            category=filters.get("category"),
            family=filters.get("family") or "",
            image_status=filters.get("image_status") or "",
        )
    searching = settings.SEARCH_ESTIMATE_COUNTS_ABOVE if filters.get("q") else None
    paginator = EstimatingPaginator(products, settings.CATALOGUE_PAGE_SIZE, estimate_above=searching)
    page = paginator.get_page(filters.get("page") or 1)
    query = request.GET.copy()
    query.pop("page", None)
    meaning = request.GET.copy()
    meaning["match"] = "meaning"
    meaning.pop("page", None)
    context = {
        "form": form,
        "page": page,
        "query": query.urlencode(),
        "by_meaning": filters.get("match") == "meaning" and bool(filters.get("q")),
        "meaning_query": meaning.urlencode(),
        "catalogue_empty": not page.object_list and not Product.objects.exists(),
    }
    template = "catalog_review/catalogue.html#results" if request.htmx else "catalog_review/catalogue.html"
    return render(request, template, context)


@require_GET
def family_detail(request, code: str):
    family = get_object_or_404(VariationFamily, code=code)
    members = list(selectors.family_members(family=family))
    confirmed = review.confirmed_wrong_variants([m.pk for m in members])
    for member in members:
        member.confirmed_wrong = member.pk in confirmed
    return render(request, "catalog_review/family.html", {"family": family, "members": members})


@require_POST
def mark_duplicate(request, sku: str):
    """From a product page's "More like this": this listing is a second page of that one."""
    product = get_object_or_404(Product, sku=sku)
    other = Product.objects.filter(sku=(request.POST.get("of") or "").strip()).first()
    if other is None:
        messages.error(request, "No such listing to mark this one a duplicate of.")
        return redirect("product", sku=product.sku)
    try:
        result = review.mark_duplicate(product=product, of=other, user=request.user)
    except (review.BadFix, review.ReviewConflict) as exc:
        messages.error(request, str(exc))
        return redirect("product", sku=product.sku)
    messages.success(
        request,
        f"{product.sku} marked as a duplicate of {other.sku} (flag #{result.decision.flag_id}, confirmed).",
    )
    return redirect("product", sku=product.sku)


@require_GET
def product_detail(request, sku: str):
    product = get_object_or_404(Product.objects.select_related("family", "category"), sku=sku)
    siblings = selectors.family_members(family=product.family).exclude(pk=product.pk)
    by = request.GET.get("like", "image")
    if by not in ("image", "title", "listing"):
        by = "image"
    context = {
        "product": product,
        "siblings": siblings,
        "similar": selectors.similar_products(product=product, by=by),
        "like": by,
        "like_choices": [("image", "image"), ("title", "title"), ("listing", "image + title")],
        "flags": product.flags.select_related("model_version").order_by("-created_at")[:10],
        "scores": product.embeddings.filter(model_version__is_active=True).first(),
    }
    return render(request, "catalog_review/product.html", context)


@require_GET
def job_detail(request, job_id: int):
    job = get_object_or_404(Job.objects.select_related("requested_by"), pk=job_id)
    template = "catalog_review/job.html#progress" if request.htmx else "catalog_review/job.html"
    return render(request, template, {"job": job, "timing": job.timing()})


@require_GET
def media_file(request, path: str):
    """Stored images, behind login like every page (django's serve refuses path traversal)."""
    try:
        response = serve(request, path, document_root=settings.MEDIA_ROOT)
    except SuspiciousFileOperation:
        raise Http404("no such file") from None
    response["Cache-Control"] = "private, max-age=86400, immutable"  # content-addressed names
    return response


# --- review -------------------------------------------------------------------------------------


def _queue_filters(request) -> tuple[QueueFilterForm, dict]:
    form = QueueFilterForm(request.GET)
    filters = form.cleaned_data if form.is_valid() else {}
    return form, {k: v for k, v in filters.items() if k != "page" and v not in (None, "")}


def _queue_query(request) -> str:
    """The queue's filters as a query string (without its page)."""
    query = request.GET.copy()
    query.pop("page", None)
    query.pop("after", None)
    return query.urlencode()


@dataclass
class QueuePage:
    """One page of the queue. Pages after the first are read by keyset (`after`: the cursor of the
    previous page's last row), so page 2,000 costs what page 2 does; `number` is for display."""

    object_list: list
    number: int
    total: Counted
    next_cursor: str | None

    @property
    def pages(self) -> Counted:
        n = max(1, -(-self.total.n // settings.REVIEW_PAGE_SIZE))
        return Counted(n, self.total.exact)


@require_GET
def review_queue(request):
    form, filters = _queue_filters(request)
    flags = selectors.flag_queue(**filters)
    counts = selectors.open_flag_counts()
    if set(filters) <= {"order", "kind"}:
        # the kind counts already hold the total: no second count of the open flags
        kinds = [counts[filters["kind"]]] if filters.get("kind") else list(counts.values())
        total = Counted(sum(c.n for c in kinds), all(c.exact for c in kinds))
    else:
        total = count_of(flags)
    ordering = "uncertain" if filters.get("order") == "uncertain" else "-score"
    size = settings.REVIEW_PAGE_SIZE
    number = (form.cleaned_data.get("page") if form.is_valid() else None) or 1
    try:
        after = decode_cursor(request.GET.get("after"), len(FLAG_ORDER_KEYS[ordering]))
    except ValueError:
        after, number = None, 1  # a cursor of another ordering, or edited: from the top
    if after is not None:
        rows = list(flags_after(flags, ordering, after)[: size + 1])
    else:  # the first page, or a page number without a cursor (an old bookmark): an offset
        start = (number - 1) * size
        rows = list(flags[start : start + size + 1])
    page = QueuePage(
        object_list=rows[:size],
        number=number,
        total=total,
        next_cursor=flag_cursor(rows[size - 1], ordering) if len(rows) > size else None,
    )
    query = _queue_query(request)
    context = {
        "form": form,
        "filter_selects": _filter_selects(form),
        "page": page,
        "query": query,
        "query_suffix": f"?{query}" if query else "",
        "counts": {label: counts[kind] for kind, label in Flag.Kind.choices},
        "decided_today": review.decisions_today(user=request.user),
        "now": timezone.now(),
        # URL prefixes reversed once, not once per row
        "flag_url_prefix": reverse("flag", args=[0])[: -len("0/")],
        "media_url_prefix": reverse("media", args=["x"])[:-1],
    }
    template = "catalog_review/queue.html#results" if request.htmx else "catalog_review/queue.html"
    return render(request, template, context)


def _filter_selects(form: QueueFilterForm) -> list[tuple[str, str, list]]:
    """The filter selects' options with the selected one marked: rendered as plain loops (Django's
    select widget renders a sub-template per option, a third of the queue page's time)."""
    data = form.data

    def options(field: str, values: list[tuple[str, str]]) -> list[tuple[str, str, bool]]:
        chosen = str(data.get(field, "") or "")
        return [(str(value), label, str(value) == chosen) for value, label in values]

    fields = form.fields
    categories = [(c.pk, "\u2003" * (c.depth - 1) + c.name) for c in fields["category"].queryset]
    versions = [(v.name, v.name) for v in fields["model_version"].queryset]
    return [
        ("kind", "Kind", options("kind", fields["kind"].choices)),
        ("category", "Category", options("category", [("", fields["category"].empty_label), *categories])),
        (
            "model_version",
            "Model version",
            options("model_version", [("", fields["model_version"].empty_label), *versions]),
        ),
        ("order", "Order", options("order", fields["order"].choices)),
    ]


@require_GET
def review_next(request):
    """Claim the next flag of the (filtered) queue and open it."""
    _form, filters = _queue_filters(request)
    flag = review.next_flag(user=request.user, queue=selectors.flag_queue(**filters))
    if flag is None:
        return render(
            request,
            "catalog_review/queue_done.html",
            {"query": _queue_query(request), "progress": _review_progress(request)},
        )
    return redirect(f"{reverse('flag', args=[flag.pk])}?{_queue_query(request)}")


def _review_progress(request) -> dict:
    """What the reviewer sees of their progress: open flags left in the current filter, and the
    confirm / reject decisions they made today."""
    _form, filters = _queue_filters(request)
    return {
        "open_left": count_of(selectors.flag_queue(**filters)),
        "decided_today": review.decisions_today(user=request.user),
    }


def _decision_message(row) -> str:
    """The feedback line after a decision ("Flag #4 confirmed as wrong variant. Undo (u)")."""
    what = {
        "confirm": f"confirmed as {row.flag.get_kind_display()}",
        "reject": "marked not an error",
        "skip": "skipped",
    }[row.decision]
    return f"Flag #{row.flag_id} {what}. Undo (u)"


def _nearest_families(flag: Flag, limit: int = 6) -> list[tuple[str, str]]:
    """Where a wrong variant may belong: the families of its nearest listings (pgvector kNN over the
    active version's fused vectors), its own left out, nearest first: (code, a member's title)."""
    seen, out = {flag.product.family.code}, []
    for product in selectors.similar_products(product=flag.product, by="listing", limit=24):
        code = product.family.code
        if code not in seen:
            seen.add(code)
            out.append((code, product.title))
        if len(out) == limit:
            break
    return out


def _compare_rows(a, b) -> list[dict]:
    """A duplicate flag's two listings field by field (title, sku, family, category, description, every
    attribute of either), each row marked where they differ (text compared as a reviewer reads it:
    case and spacing aside)."""

    def norm(value) -> str:
        return " ".join(str(value).split()).lower()

    def category(p) -> str:
        return p.category.path if p.category_id else ""

    rows = [
        ("title", a.title, b.title),
        ("sku", a.sku, b.sku),
        ("family", a.family.code, b.family.code),
        ("category", category(a), category(b)),
        ("description", a.description, b.description),
    ]
    keys = sorted(set(a.attributes or {}) | set(b.attributes or {}))
    rows += [(key, (a.attributes or {}).get(key, ""), (b.attributes or {}).get(key, "")) for key in keys]
    return [
        {
            "label": label,
            "a": "" if x is None else x,
            "b": "" if y is None else y,
            "differs": label != "sku" and norm(x or "") != norm(y or ""),
            "attribute": i >= 5,
        }
        for i, (label, x, y) in enumerate(rows)
    ]


def _flag_context(request, flag: Flag, *, message: str = "") -> dict:
    """The flag page. Looking at a flag does not claim it: the review flow (Start reviewing, the next flag
    after a decision) claims the flags it serves, and the page renews only a claim that is the reader's."""
    members = selectors.flag_family(flag)
    evidence = flag.evidence or {}
    agreement = {a["sku"]: a for a in evidence.get("family_agreement", [])}
    heatmaps = evidence.get("member_heatmaps", {})
    for member in members:
        member.p_same_family = agreement.get(member.sku, {}).get("p_same_family")
        member.image_similarity = agreement.get(member.sku, {}).get("image_similarity")
        member.excluded = agreement.get(member.sku, {}).get("excluded", False)
        member.heatmap = heatmaps.get(member.sku, "")
    history = flag.decisions.select_related("reviewer", "undoes").order_by("created_at", "id")
    return {
        "flag": flag,
        "members": members,
        "evidence": evidence,
        # the zero-shot version's pair head is a fixed formula, not a probability worth showing per sibling
        "show_pair_head": (flag.model_version.config or {}).get("kind") != "zero-shot",
        "history": history,
        "held_by_other": flag.claimed_by_id not in (None, request.user.pk)
        and flag.claim_expires_at
        and flag.claim_expires_at > timezone.now(),
        "mine": flag.status == Flag.Status.OPEN and flag.claimed_by_id == request.user.pk,
        "progress": _review_progress(request),
        "query": _queue_query(request),
        "message": message,
        "claim_seconds": settings.REVIEW_CLAIM_SECONDS,
        "nearest_families": _nearest_families(flag) if flag.kind == Flag.Kind.WRONG_VARIANT else [],
        "compare": _compare_rows(flag.product, flag.counterpart)
        if flag.kind == Flag.Kind.DUPLICATE and flag.counterpart_id
        else [],
        "compare_pair": [
            (flag.product, flag.heatmap),
            (flag.counterpart, evidence.get("counterpart_heatmap", "")),
        ]
        if flag.kind == Flag.Kind.DUPLICATE and flag.counterpart_id
        else [],
        "related_duplicates": review.related_open_duplicates(flag).count()
        if flag.kind == Flag.Kind.DUPLICATE and flag.status == Flag.Status.OPEN
        else 0,
    }


def _flag_or_404(flag_id: int) -> Flag:
    return get_object_or_404(
        Flag.objects.select_related(
            "product",
            "product__family",
            "product__category",
            "counterpart",
            "counterpart__family",
            "counterpart__category",
            "model_version",
            "claimed_by",
        ).defer(*(f"model_version__{f}" for f in ("config", "metrics", "training_data"))),
        pk=flag_id,
    )


@require_GET
def flag_detail(request, flag_id: int):
    flag = _flag_or_404(flag_id)
    return render(request, "catalog_review/flag.html", _flag_context(request, flag))


@require_POST
def flag_decide(request, flag_id: int):
    form = DecisionForm(request.POST)
    if not form.is_valid():
        context = _flag_context(request, _flag_or_404(flag_id), message="Choose confirm, reject or skip.")
        return render(request, _flag_template(request), context, status=400)
    try:
        # the decision locks and loads the flag itself: no page-level load on the way (hot path)
        result = review.decide(
            flag_id=flag_id,
            user=request.user,
            decision=form.cleaned_data["decision"],
            note=form.cleaned_data["note"],
            client_request_id=form.cleaned_data["client_request_id"] or None,
            suggested_family=form.cleaned_data["suggested_family"],
            no_family=form.cleaned_data["no_family"],
        )
    except Flag.DoesNotExist:
        raise Http404("no such flag") from None
    except review.BadFix as exc:
        context = _flag_context(request, _flag_or_404(flag_id), message=str(exc))
        return render(request, _flag_template(request), context, status=400)
    except review.ReviewConflict as exc:
        flag = _flag_or_404(flag_id)
        return render(
            request, _flag_template(request), _flag_context(request, flag, message=str(exc)), status=409
        )
    return _to_next_flag(request, after=result.decision.flag, message=_decision_message(result.decision))


@require_POST
def flag_decide_all(request, flag_id: int):
    """Bulk: the same decision on this duplicate flag and every open duplicate flag of its listings."""
    form = DecisionForm(request.POST)
    flag = _flag_or_404(flag_id)
    if not form.is_valid() or form.cleaned_data["decision"] == "skip" or flag.kind != Flag.Kind.DUPLICATE:
        return render(
            request,
            _flag_template(request),
            _flag_context(request, flag, message="Nothing to do."),
            status=400,
        )
    group = [flag, *review.related_open_duplicates(flag)]
    done, conflicts = review.decide_many(
        flags=group, user=request.user, decision=form.cleaned_data["decision"], note=form.cleaned_data["note"]
    )
    messages.success(
        request,
        f"{done} duplicate flags decided" + (f", {conflicts} already decided by others" if conflicts else ""),
    )
    return _to_next_flag(request, after=flag)


@require_POST
def flag_undo(request, flag_id: int):
    flag = _flag_or_404(flag_id)
    try:
        review.undo(flag_id=flag.pk, user=request.user)
    except review.NothingToUndo as exc:
        status = 403 if isinstance(exc, review.NotYourDecision) else 409
        return render(
            request, _flag_template(request), _flag_context(request, flag, message=str(exc)), status=status
        )
    flag = _flag_or_404(flag_id)
    response = render(
        request, _flag_template(request), _flag_context(request, flag, message="Decision undone.")
    )
    if request.htmx:
        response["HX-Push-Url"] = f"{reverse('flag', args=[flag.pk])}?{_queue_query(request)}"
    return response


@require_POST
def review_undo(request):
    """Undo my last decision (the `u` key) and show that flag again."""
    try:
        row = review.undo_last(user=request.user)
    except review.NothingToUndo as exc:
        if request.htmx:
            return HttpResponse(f'<p class="notice" role="status">{escape(str(exc))}</p>', status=409)
        return redirect(f"{reverse('review_queue')}")
    flag = _flag_or_404(row.flag_id)
    url = f"{reverse('flag', args=[flag.pk])}?{_queue_query(request)}"
    if not request.htmx:
        return redirect(url)
    response = render(
        request, "catalog_review/flag.html#panel", _flag_context(request, flag, message="Decision undone.")
    )
    response["HX-Push-Url"] = url
    response["HX-Retarget"] = "#flag-panel"
    response["HX-Reswap"] = "outerHTML"
    return response


@require_POST
def flag_claim(request, flag_id: int):
    """Renew the claim while the page is open (htmx, every minute)."""
    flag = _flag_or_404(flag_id)
    if flag.status == Flag.Status.OPEN and review.claim(flag=flag, user=request.user):
        return HttpResponse(status=204)
    return HttpResponse("claimed by another reviewer or decided", status=409)


def _flag_template(request) -> str:
    return "catalog_review/flag.html#panel" if request.htmx else "catalog_review/flag.html"


def _to_next_flag(request, *, after: Flag, message: str = ""):
    """After a decision: the next flag of the same queue, in place (htmx) or by redirect, with the
    decision's feedback line."""
    _form, filters = _queue_filters(request)
    query = _queue_query(request)
    flag = review.next_flag(user=request.user, queue=selectors.flag_queue(**filters), after=after)
    if flag is None:
        if request.htmx:
            response = render(
                request,
                "catalog_review/queue_done.html#done",
                {"query": query, "message": message, "progress": _review_progress(request)},
            )
            response["HX-Push-Url"] = f"{reverse('review_next')}?{query}"
            return response
        if message:
            messages.success(request, message)
        return redirect(f"{reverse('review_next')}?{query}")
    url = f"{reverse('flag', args=[flag.pk])}?{query}"
    if not request.htmx:
        if message:
            messages.success(request, message)
        return redirect(url)
    flag = _flag_or_404(flag.pk)
    response = render(
        request, "catalog_review/flag.html#panel", _flag_context(request, flag, message=message)
    )
    response["HX-Push-Url"] = url
    return response


# --- admin (staff) --------------------------------------------------------------------------------


def staff_required(view):
    """Admins only: a reviewer gets a 403, not a login loop."""

    @wraps(view)
    def wrapper(request, *args, **kwargs):
        if not request.user.is_staff:
            raise PermissionDenied("admins only")
        return view(request, *args, **kwargs)

    return wrapper


@require_GET
@staff_required
def manage_jobs(request):
    jobs = Job.objects.select_related("requested_by").order_by("-created_at")[:50]
    context = {
        "jobs": jobs,
        "score_form": ScoreJobForm(),
        "train_form": TrainJobForm(),
        "running": any(not j.is_finished for j in jobs),
    }
    template = (
        "catalog_review/manage_jobs.html#job-table" if request.htmx else "catalog_review/manage_jobs.html"
    )
    return render(request, template, context)


@require_POST
@staff_required
def manage_start_score(request):
    form = ScoreJobForm(request.POST)
    if form.is_valid():
        try:
            job = score_start(scope=form.scope() | {"reason": "admin"}, requested_by=request.user)
        except ScopeError as exc:
            form.add_error(None, str(exc))
        else:
            return redirect("job", job_id=job.pk)
    jobs = Job.objects.select_related("requested_by").order_by("-created_at")[:50]
    context = {"jobs": jobs, "score_form": form, "train_form": TrainJobForm()}
    return render(request, "catalog_review/manage_jobs.html", context, status=400)


@require_POST
@staff_required
def manage_start_train(request):
    form = TrainJobForm(request.POST)
    if not form.is_valid():
        jobs = Job.objects.select_related("requested_by").order_by("-created_at")[:50]
        context = {"jobs": jobs, "score_form": ScoreJobForm(), "train_form": form}
        return render(request, "catalog_review/manage_jobs.html", context, status=400)
    job = train_start(form.train_request, requested_by=request.user, reason="admin")
    return redirect("job", job_id=job.pk)


@require_POST
@staff_required
def manage_cancel_job(request, job_id: int):
    job = get_object_or_404(Job, pk=job_id)
    job_cancel(job_id=job.pk)
    return redirect("job", job_id=job.pk)


@staff_required
def manage_tokens(request):
    """API tokens: create one for a user (the token is shown once, on this response only), list them with
    their state and last use, revoke."""
    if request.method not in ("GET", "POST"):
        return HttpResponse(status=405)
    form = ApiTokenForm(request.POST or None)
    created, status = None, 200
    if request.method == "POST":
        if form.is_valid():
            days = form.cleaned_data["expires_days"]
            user = form.cleaned_data["user"]
            created = {
                "token": create_token(
                    user,
                    name=form.cleaned_data["name"],
                    expires_at=timezone.now() + timedelta(days=days) if days else None,
                ),
                "user": user.get_username(),
            }
            form = ApiTokenForm()
        else:
            status = 400
    tokens = ApiToken.objects.select_related("user").order_by("-created_at")[:200]
    response = render(
        request,
        "catalog_review/manage_tokens.html",
        {"form": form, "tokens": tokens, "created": created, "now": timezone.now()},
        status=status,
    )
    response["Cache-Control"] = "no-store"  # the one response that shows a token
    return response


@require_GET
@staff_required
def manage_corrections(request):
    """The corrections file for download (the lines of `export_corrections`): CSV or JSON lines."""
    fmt = request.GET.get("format", "csv")
    if fmt not in ("csv", "jsonl"):
        return HttpResponse("format must be csv or jsonl", status=400, content_type="text/plain")
    buffer = io.StringIO()
    write_corrections(buffer, csv_format=fmt == "csv")
    response = HttpResponse(
        buffer.getvalue(), content_type="text/csv; charset=utf-8" if fmt == "csv" else "application/x-ndjson"
    )
    stamp = timezone.now().strftime("%Y%m%d-%H%M")
    response["Content-Disposition"] = f'attachment; filename="corrections-{stamp}.{fmt}"'
    return response


@require_POST
@staff_required
def manage_revoke_token(request, token_id: int):

    tokens = ApiToken.objects.filter(pk=token_id)
    if not tokens.exists():
        raise Http404("no such token")
    revoked = revoke_tokens(tokens)
    messages.success(request, "Token revoked." if revoked else "That token was already revoked.")
    return redirect("manage_tokens")


@require_GET
@staff_required
def manage_models(request):
    versions = list(ModelVersion.objects.select_related("parent", "created_by").order_by("-created_at"))
    latest = {}
    for scorer in VersionScorer.objects.filter(model_version__in=versions).defer("arrays").order_by("-id"):
        latest.setdefault(scorer.model_version_id, scorer)
    for v in versions:
        v.scorer = latest.get(v.pk)
        noise = ((v.metrics or {}).get("gate_noise") or {}).get("pr_auc")
        v.noise_margin = NOISE_Z * noise["sd"] if noise else None  # the gate's, on planted errors
    return render(request, "catalog_review/manage_models.html", {"versions": versions})


@require_POST
@staff_required
def manage_activate_model(request, version_id: int):
    version = get_object_or_404(ModelVersion, pk=version_id)
    force = request.POST.get("force") == "1"
    promotion = promote(version, force=force, requested_by=request.user, reason="activation")
    if promotion.activated:
        job = promotion.rescore_job
        note = f" Re-scoring the catalogue as job #{job.pk}." if job else ""
        messages.success(request, f"{version.name} is now the active model version.{note}")
    else:
        messages.error(request, f"Not activated: {promotion.gate}. Use “activate anyway” to override.")
    return redirect("manage_models")


def _age(delta) -> str:
    """How long ago, in words a glance reads: "12 s", "4 min", "3 h"."""
    seconds = max(0, int(delta.total_seconds()))
    if seconds < 120:
        return f"{seconds} s"
    return f"{seconds // 60} min" if seconds < 7200 else f"{seconds // 3600} h"


@require_http_methods(["GET", "POST"])
@staff_required
def manage_dashboard(request):
    """The aggregates as last computed (services.dashboard), their age shown; POST recomputes them."""
    if request.method == "POST":
        refresh_dashboard()
        return redirect("manage_dashboard")
    snapshot = current_dashboard()
    stats = snapshot.stats
    context = {
        "stats": stats,
        "snapshot": snapshot,
        "age": _age(timezone.now() - snapshot.computed_at),
        "refresh_s": settings.DASHBOARD_REFRESH_S,
        "statuses": Flag.Status.values,
    }
    return render(request, "catalog_review/manage_dashboard.html", context)
