"""The HTTP API (DESIGN 7) on django-ninja: bearer tokens, typed request and response bodies, keyset
cursors, and an OpenAPI schema generated from this module (/api/schema, rendered at /api/docs).

Each operation validates its input through the request models of `catalog_review.schemas` (the same the
admin pages and the management commands use), calls the same services as the pages, and answers JSON.
Every error is JSON too, {"error": "..."}, with 400 (bad input: the error names the field), 401, 403,
404, 405 or 409.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from typing import Annotated, Any, Literal

from django.contrib.auth.decorators import login_not_required
from django.db import connection
from django.db.models import Q
from django.http import HttpResponseNotAllowed, JsonResponse
from django.shortcuts import redirect
from django.urls import URLPattern, reverse
from django.utils import timezone
from ninja import NinjaAPI, Schema, Status
from ninja.errors import AuthenticationError, AuthorizationError, HttpError
from ninja.errors import ValidationError as RequestValidationError
from ninja.security import HttpBearer
from pydantic import BeforeValidator, Field

from catalog_review.models import ApiToken, Flag, Job, LabelledPair, flag_uncertainty
from catalog_review.pagination import FLAG_ORDER_KEYS, decode_cursor, encode_cursor, flag_cursor, flags_after
from catalog_review.schemas import DecisionRequest, ScoreRequest, TrainRequest, explain
from catalog_review.services import review
from catalog_review.services.scoring import ScopeError, score_start
from catalog_review.services.training import TrainingError, train_start

MAX_LIMIT = 500


# --- tokens -----------------------------------------------------------------------------------------


def create_token(user, *, name: str = "", expires_at=None) -> str:
    """A new token for `user`; returned once, stored only as its sha256."""
    key = "cr_" + secrets.token_urlsafe(32)
    ApiToken.objects.create(
        user=user,
        key_sha256=hashlib.sha256(key.encode()).hexdigest(),
        prefix=key[:8],
        name=name,
        expires_at=expires_at,
    )
    return key


def revoke_tokens(tokens) -> int:
    """Revoke the tokens of a queryset that are not revoked yet; the rows stay (audit)."""
    return tokens.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())


class Unauthenticated(AuthenticationError):
    def __init__(self, message: str):
        super().__init__(401, message)


def token_owner(key: str):
    """The active user a token key belongs to (its last use recorded), or Unauthenticated saying why not."""
    token = ApiToken.objects.select_related("user").filter(
        key_sha256=hashlib.sha256(key.encode()).hexdigest()
    )
    token = token.first()
    if token is None or not token.user.is_active:
        raise Unauthenticated("invalid token")
    if token.state() != "active":
        raise Unauthenticated(f"this token was {token.state()}: ask an admin for a new one")
    ApiToken.objects.filter(pk=token.pk).update(last_used_at=timezone.now())
    return token.user


class Bearer(HttpBearer):
    """Authorization: Bearer <token>. The user it names acts as request.user, as on the pages;
    `admins=True`: only for staff users (403 for the others)."""

    def __init__(self, *, admins: bool = False):
        super().__init__()
        self.admins = admins

    def authenticate(self, request, token: str):
        request.user = token_owner(token.strip())
        if self.admins and not request.user.is_staff:
            raise AuthorizationError(403, "admins only")
        return request.user


def _docs_auth(view):
    """The schema and its docs page, like every call, for a bearer token or a logged-in session (a
    browser reading them from the app); the docs page sends a browser to log in."""

    @login_not_required
    def wrapper(request, *args, **kwargs):
        if not request.user.is_authenticated:
            if request.path.endswith("/docs"):
                return redirect(f"{reverse('login')}?next={request.path}")
            header = request.headers.get("Authorization", "")
            if not header.startswith("Bearer "):
                return JsonResponse(
                    {"error": "authentication required: send 'Authorization: Bearer <token>' (or log in)"},
                    status=401,
                )
            try:
                token_owner(header.removeprefix("Bearer ").strip())
            except Unauthenticated as exc:
                return JsonResponse({"error": f"{exc.message} (or log in)"}, status=401)
        return view(request, *args, **kwargs)

    return wrapper


api = NinjaAPI(
    title="Catalog Review API",
    version="1",
    description="Flags, decisions, labelled pairs, corrections and jobs. Every call needs "
    "`Authorization: Bearer <token>` (an admin creates tokens: Manage > API tokens, or "
    '`manage.py create_api_token`). Errors are `{"error": "..."}`.',
    auth=Bearer(),
    openapi_url="/schema",
    docs_url="/docs",
    docs_decorator=_docs_auth,
    urls_namespace="api",
)


def _error(request, status: int, message: str, **extra):
    return api.create_response(request, {"error": message, **extra}, status=status)


@api.exception_handler(RequestValidationError)
def _invalid(request, exc: RequestValidationError):
    return _error(request, 400, explain(exc.errors))


@api.exception_handler(HttpError)
def _http_error(request, exc: HttpError):
    cause = exc.__cause__
    if isinstance(cause, json.JSONDecodeError | UnicodeDecodeError):
        return _error(request, 400, f"body is not valid JSON: {cause}")
    if isinstance(exc, AuthenticationError) and not isinstance(exc, Unauthenticated):
        return _error(request, 401, "authentication required: send 'Authorization: Bearer <token>'")
    return _error(request, exc.status_code, exc.message)


@api.exception_handler(ValueError)
def _bad_value(request, exc: ValueError):
    return _error(request, 400, str(exc))


class Error(Schema):
    error: str


class Conflict(Error):
    flag_status: str | None = Field(None, description="the flag's status now (who decided it: see error)")


Limit = Annotated[int, Field(ge=1, le=MAX_LIMIT, description=f"rows per page, 1-{MAX_LIMIT}")]

# --- flags ----------------------------------------------------------------------------------------


class FlagOut(Schema):
    id: int
    kind: Literal["wrong_variant", "duplicate"]
    status: Literal["open", "confirmed", "rejected", "skipped", "stale"]
    sku: str
    counterpart_sku: str | None = Field(description="duplicate: the page it duplicates")
    family: str
    score: float
    model_version: str
    heatmap_url: str | None
    url: str = Field(description="the flag's page in the app")
    evidence: dict[str, Any] = Field(description="what the model saw: the reasons shown on the flag page")


class FlagPage(Schema):
    results: list[FlagOut]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null on the last")


def flag_json(flag: Flag, request) -> dict:
    return {
        "id": flag.pk,
        "kind": flag.kind,
        "status": flag.status,
        "sku": flag.product.sku,
        "counterpart_sku": flag.counterpart.sku if flag.counterpart_id else None,
        "family": flag.product.family.code,
        "score": flag.score,
        "model_version": flag.model_version.name,
        "heatmap_url": request.build_absolute_uri(reverse("media", args=[flag.heatmap]))
        if flag.heatmap
        else None,
        "url": request.build_absolute_uri(reverse("flag", args=[flag.pk])),
        "evidence": flag.evidence,
    }


@api.get("/flags", response={200: FlagPage, frozenset({400, 401}): Error}, summary="Flags, cursor-paginated")
def flags(
    request,
    status: Literal["open", "confirmed", "rejected", "skipped", "stale"] = "open",
    kind: Annotated[
        Literal["wrong_variant", "duplicate"] | None, BeforeValidator(lambda v: v or None)
    ] = None,
    ordering: Literal["-score", "score", "uncertain", "id"] = "-score",
    limit: Limit = 100,
    cursor: str | None = None,
):
    fields = FLAG_ORDER_KEYS[ordering]  # "uncertain": nearest the 0.5 boundary first (labels teach most)
    after = decode_cursor(cursor, len(fields))
    rows = Flag.objects.filter(status=status).select_related(
        "product", "product__family", "counterpart", "model_version"
    )
    if kind:
        rows = rows.filter(kind=kind)
    rows = rows.annotate(uncertainty=flag_uncertainty())
    if after is not None:  # keyset: strictly after the last row of the previous page
        rows = flags_after(rows, ordering, after)
    page = list(rows.order_by(*fields)[: limit + 1])
    more = len(page) > limit
    page = page[:limit]
    next_cursor = flag_cursor(page[-1], ordering) if more else None
    return {"results": [flag_json(f, request) for f in page], "next_cursor": next_cursor}


class DecisionOut(Schema):
    id: int
    flag: int
    decision: Literal["confirm", "reject", "skip"]
    note: str
    reviewer: str
    created_at: str = Field(description="ISO 8601")
    client_request_id: str | None
    suggested_family: str | None
    belongs_to_no_family: bool
    labelled_pairs: int = Field(description="training pairs this decision wrote")


@api.post(
    "/flags/{id}/decision",
    response={201: DecisionOut, 200: DecisionOut, 404: Error, 409: Conflict, frozenset({400, 401}): Error},
    summary="Decide a flag; idempotent per client_request_id (or Idempotency-Key header)",
    description="201: decided. 200: a retry of an earlier request (same client_request_id): its "
    "decision. 409: already decided (the error says by whom), or the client_request_id was used for "
    "another flag. A fix (suggested_family / belongs_to_no_family) goes with confirming a wrong variant.",
)
def flag_decision(request, id: int, payload: DecisionRequest):
    if not Flag.objects.filter(pk=id).exists():
        return Status(404, {"error": f"no flag {id}"})
    try:
        result = review.decide(
            flag_id=id,
            user=request.user,
            decision=payload.decision,
            note=payload.note,
            client_request_id=payload.client_request_id or request.headers.get("Idempotency-Key") or None,
            suggested_family=payload.suggested_family,
            no_family=payload.belongs_to_no_family,
        )
    except review.ReviewConflict as exc:
        return Status(409, {"error": str(exc), "flag_status": exc.flag.status})
    except review.BadFix as exc:
        return Status(400, {"error": str(exc)})
    row = result.decision
    if row.flag_id != id:
        return Status(409, {"error": "client_request_id was already used for another flag"})
    body = {
        "id": row.pk,
        "flag": row.flag_id,
        "decision": row.decision,
        "note": row.note,
        "reviewer": row.reviewer.get_username(),
        "created_at": row.created_at.isoformat(),
        "client_request_id": row.client_request_id,
        "suggested_family": row.suggested_family.code if row.suggested_family_id else None,
        "belongs_to_no_family": row.belongs_to_no_family,
        "labelled_pairs": row.labelled_pairs.count(),
    }
    return Status(201 if result.created else 200, body)


# --- labels ---------------------------------------------------------------------------------------


class LabelOut(Schema):
    id: int
    a: str = Field(description="sku")
    b: str = Field(description="sku")
    relation: str = Field(description="same_product, same_family, different_product, different_family...")
    source: str
    retracts: int | None = Field(description="the label this one takes back (an undone decision)")
    decision: int | None
    reviewer: str | None
    created_at: str = Field(description="ISO 8601")


class LabelPage(Schema):
    results: list[LabelOut]
    next_cursor: str | None = Field(description="pass as `since` to resume (also after a short page)")
    more: bool


def label_json(pair: LabelledPair) -> dict:
    return {
        "id": pair.pk,
        "a": pair.a.sku,
        "b": pair.b.sku,
        "relation": pair.relation,
        "source": pair.source,
        "retracts": pair.retracts_id,
        "decision": pair.decision_id,
        "reviewer": pair.decision.reviewer.get_username() if pair.decision_id else None,
        "created_at": pair.created_at.isoformat(),
    }


@api.get(
    "/labels",
    response={200: LabelPage, frozenset({400, 401}): Error},
    summary="Labelled pairs, each exactly once, in a stable order",
)
def labels(request, since: str | None = None, limit: Limit = 500):
    """Only rows of transactions that finished before this snapshot (txid below the snapshot's xmin),
    ordered by (txid, id): a label committed later sorts after the cursor, never behind it."""
    after = decode_cursor(since, 2)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
        horizon = cursor.fetchone()[0]
    rows = LabelledPair.objects.filter(txid__lt=horizon).select_related("a", "b", "decision__reviewer")
    if after is not None:
        rows = rows.filter(Q(txid__gt=after[0]) | Q(txid=after[0], id__gt=after[1]))
    page = list(rows.order_by("txid", "id")[: limit + 1])
    more = len(page) > limit
    page = page[:limit]
    last = page[-1] if page else None
    return {
        "results": [label_json(p) for p in page],
        # resume from here (also when this page was not full: new labels arrive after it)
        "next_cursor": encode_cursor([last.txid, last.pk]) if last else since,
        "more": more,
    }


class CorrectionOut(Schema):
    sku: str
    kind: str
    duplicate_of: str | None = None
    suggested_family: str | None = None
    reviewer: str | None = None
    decided_at: str | None = None
    note: str | None = None

    model_config = {"extra": "allow"}


class CorrectionPage(Schema):
    results: list[CorrectionOut]
    next_cursor: str | None
    more: bool


@api.get(
    "/corrections",
    response={200: CorrectionPage, frozenset({400, 401}): Error},
    summary="Confirmed errors in force with their fixes, in decision order (the lines of export_corrections)",
)
def corrections(request, cursor: str | None = None, limit: Limit = 500):
    after = decode_cursor(cursor, 1)
    page = list(review.corrections_in_force(after_id=after[0] if after else None)[: limit + 1])
    more = len(page) > limit
    page = page[:limit]
    return {
        "results": [review.correction_line(row) for row in page],
        "next_cursor": encode_cursor([page[-1].pk]) if page else cursor,
        "more": more,
    }


# --- jobs -----------------------------------------------------------------------------------------


class JobOut(Schema):
    id: int
    kind: str
    status: str
    scope: dict[str, Any]
    progress: float = Field(description="0-1")
    done: int
    failed: int
    total: int
    counts: dict[str, Any] = Field(description="what the job found or trained (a train job: validation)")
    phase: str = Field(description="what a running job is doing now (a train job: features, training)")
    error: str | None
    created_at: str = Field(description="ISO 8601")
    finished_at: str | None
    url: str


def job_json(job: Job, request) -> dict:
    return {
        "id": job.pk,
        "kind": job.kind,
        "status": job.status,
        "scope": job.scope,
        "progress": round(job.progress, 4),
        "done": job.done,
        "failed": job.failed,
        "total": job.total,
        "counts": job.counts,
        "phase": job.phase,
        "error": job.error or None,
        "created_at": job.created_at.isoformat(),
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        "url": request.build_absolute_uri(reverse("api:api_job", args=[job.pk])),
    }


_ADMIN = {202: JobOut, frozenset({400, 401, 403}): Error}


@api.post("/jobs/score", auth=Bearer(admins=True), response=_ADMIN, summary="Start a score job (admins only)")
def jobs_score(request, payload: ScoreRequest | None = None):
    """The whole catalogue, or `family`, `category` (a path) or `skus`."""
    scope = payload.scope() if payload else {}
    try:
        job = score_start(scope=scope | {"reason": "api"}, requested_by=request.user)
    except ScopeError as exc:
        return Status(400, {"error": str(exc)})
    return Status(202, job_json(job, request))


@api.post("/jobs/train", auth=Bearer(admins=True), response=_ADMIN, summary="Start a train job (admins only)")
def jobs_train(request, payload: TrainRequest | None = None):
    try:
        job = train_start(payload or TrainRequest(), requested_by=request.user, reason="api")
    except TrainingError as exc:
        return Status(400, {"error": str(exc)})
    return Status(202, job_json(job, request))


@api.get(
    "/jobs/{id}",
    response={200: JobOut, 404: Error, 401: Error},
    url_name="api_job",
    summary="A job's status and progress",
)
def job_detail(request, id: int):
    job = Job.objects.filter(pk=id).first()
    if job is None:
        return Status(404, {"error": f"no job {id}"})
    return job_json(job, request)


# --- URLs -----------------------------------------------------------------------------------------


def _json_405(view):
    """Login-free (token auth), and a wrong method answered in JSON like every other error."""

    @login_not_required
    def wrapper(request, *args, **kwargs):
        response = view(request, *args, **kwargs)
        if isinstance(response, HttpResponseNotAllowed):
            allowed = response["Allow"]
            return JsonResponse(
                {"error": f"method {request.method} not allowed; use {allowed}"},
                status=405,
                headers={"Allow": allowed},
            )
        return response

    wrapper.csrf_exempt = True  # token auth, no cookies: CSRF does not apply
    return wrapper


def urls():
    patterns, app_name, namespace = api.urls
    for pattern in patterns:
        if isinstance(pattern, URLPattern):
            pattern.callback = _json_405(pattern.callback)
    return patterns, app_name, namespace


__all__ = ["api", "create_token", "explain", "label_json", "revoke_tokens", "urls"]
