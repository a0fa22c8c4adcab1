"""The HTTP API (DESIGN 7): JSON, bearer-token auth, cursor pagination, OpenAPI schema at /api/schema.

Plain Django views (no framework): each parses its input, calls the same services as the pages, and
answers JSON. Errors are JSON too: {"error": "..."} with 400 / 401 / 403 / 404 / 405 / 409.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from functools import wraps

from django.contrib.auth.decorators import login_not_required
from django.db import connection
from django.db.models import F, Q, Value
from django.db.models.functions import Abs
from django.http import JsonResponse
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from catalog_review.models import ApiToken, Flag, Job, LabelledPair
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


def _error(status: int, message: str, **extra) -> JsonResponse:
    return JsonResponse({"error": message, **extra}, status=status)


def _bearer_token(request) -> tuple[ApiToken | None, str]:
    """The request's active bearer token, or why there is none."""
    header = request.headers.get("Authorization", "")
    if not header.startswith("Bearer "):
        return None, "authentication required: send 'Authorization: Bearer <token>'"
    digest = hashlib.sha256(header.removeprefix("Bearer ").strip().encode()).hexdigest()
    token = ApiToken.objects.select_related("user").filter(key_sha256=digest).first()
    if token is None or not token.user.is_active:
        return None, "invalid token"
    if token.state() != "active":
        return None, f"this token was {token.state()}: ask an admin for a new one"
    return token, ""


def api_view(methods: tuple[str, ...], *, staff: bool = False):
    """Token auth (Authorization: Bearer <token>), allowed methods, JSON errors."""

    def decorate(view):
        @login_not_required
        @csrf_exempt  # token auth, no cookies: CSRF does not apply
        @wraps(view)
        def wrapper(request, *args, **kwargs):
            token, refusal = _bearer_token(request)
            if refusal:
                return _error(401, refusal)
            if request.method not in methods:
                return _error(405, f"method {request.method} not allowed; use {', '.join(methods)}")
            if staff and not token.user.is_staff:
                return _error(403, "admins only")
            ApiToken.objects.filter(pk=token.pk).update(last_used_at=timezone.now())
            request.user = token.user
            return view(request, *args, **kwargs)

        return wrapper

    return decorate


def _json_body(request) -> dict:
    if not request.body:
        return {}
    try:
        body = json.loads(request.body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ValueError("body must be a JSON object")
    return body


def _limit(request, default: int = 100) -> int:
    raw = request.GET.get("limit", str(default))
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise ValueError(f"limit must be a whole number from 1 to {MAX_LIMIT}")
    return int(raw)


def _encode_cursor(values: list) -> str:
    return base64.urlsafe_b64encode(json.dumps(values).encode()).decode()


def _decode_cursor(raw: str | None, length: int) -> list | None:
    if not raw:
        return None
    try:
        values = json.loads(base64.urlsafe_b64decode(raw.encode()))
    except ValueError:
        raise ValueError("cursor is not one this API returned") from None
    if not isinstance(values, list) or len(values) != length:
        raise ValueError("cursor is not one this API returned")
    return values


# --- flags ----------------------------------------------------------------------------------------

# "uncertain": nearest the 0.5 decision boundary first, the flags whose labels teach the model most
FLAG_ORDERINGS = {
    "-score": ("-score", "id"),
    "score": ("score", "id"),
    "uncertain": ("uncertainty", "id"),
    "id": ("id",),
}


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


@api_view(("GET",))
def flags(request):
    try:
        limit = _limit(request)
        ordering = request.GET.get("ordering", "-score")
        if ordering not in FLAG_ORDERINGS:
            raise ValueError(f"ordering must be one of {', '.join(FLAG_ORDERINGS)}")
        fields = FLAG_ORDERINGS[ordering]
        cursor = _decode_cursor(request.GET.get("cursor"), len(fields))
        status = request.GET.get("status", "open")
        if status not in Flag.Status.values:
            raise ValueError(f"status must be one of {', '.join(Flag.Status.values)}")
        kind = request.GET.get("kind", "")
        if kind and kind not in Flag.Kind.values:
            raise ValueError(f"kind must be one of {', '.join(Flag.Kind.values)}")
    except ValueError as exc:
        return _error(400, str(exc))
    rows = Flag.objects.filter(status=status).select_related(
        "product", "product__family", "counterpart", "model_version"
    )
    if kind:
        rows = rows.filter(kind=kind)
    rows = rows.annotate(uncertainty=Abs(F("score") - Value(0.5)))
    if cursor is not None:  # keyset: strictly after the last row of the previous page
        if ordering == "-score":
            rows = rows.filter(Q(score__lt=cursor[0]) | Q(score=cursor[0], id__gt=cursor[1]))
        elif ordering == "score":
            rows = rows.filter(Q(score__gt=cursor[0]) | Q(score=cursor[0], id__gt=cursor[1]))
        elif ordering == "uncertain":
            rows = rows.filter(Q(uncertainty__gt=cursor[0]) | Q(uncertainty=cursor[0], id__gt=cursor[1]))
        else:
            rows = rows.filter(id__gt=cursor[0])
    page = list(rows.order_by(*fields)[: limit + 1])
    more = len(page) > limit
    page = page[:limit]
    next_cursor = None
    if more:
        last = page[-1]
        key = {"-score": [last.score, last.pk], "score": [last.score, last.pk], "id": [last.pk]}
        next_cursor = _encode_cursor(key.get(ordering, [last.uncertainty, last.pk]))
    return JsonResponse({"results": [flag_json(f, request) for f in page], "next_cursor": next_cursor})


@api_view(("POST",))
def flag_decision(request, flag_id: int):
    try:
        body = _json_body(request)
    except ValueError as exc:
        return _error(400, str(exc))
    decision = body.get("decision")
    if decision not in ("confirm", "reject", "skip"):
        return _error(400, "decision must be 'confirm', 'reject' or 'skip'")
    note = body.get("note", "")
    if not isinstance(note, str) or len(note) > 2000:
        return _error(400, "note must be text of at most 2000 characters")
    request_id = body.get("client_request_id") or request.headers.get("Idempotency-Key") or None
    if request_id is not None and (not isinstance(request_id, str) or len(request_id) > 100):
        return _error(400, "client_request_id must be text of at most 100 characters")
    suggested_family = body.get("suggested_family")
    if suggested_family is not None and (
        not isinstance(suggested_family, str) or len(suggested_family) > 200
    ):
        return _error(400, "suggested_family must be a family code (text of at most 200 characters)")
    no_family = body.get("belongs_to_no_family", False)
    if not isinstance(no_family, bool):
        return _error(400, "belongs_to_no_family must be true or false")
    if not Flag.objects.filter(pk=flag_id).exists():
        return _error(404, f"no flag {flag_id}")
    try:
        result = review.decide(
            flag_id=flag_id,
            user=request.user,
            decision=decision,
            note=note,
            client_request_id=request_id,
            suggested_family=suggested_family,
            no_family=no_family,
        )
    except review.ReviewConflict as exc:
        return _error(409, str(exc), flag_status=exc.flag.status)
    except review.BadFix as exc:
        return _error(400, str(exc))
    row = result.decision
    if row.flag_id != flag_id:
        return _error(409, "client_request_id was already used for another flag")
    payload = {
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
    return JsonResponse(payload, status=201 if result.created else 200)


# --- labels ---------------------------------------------------------------------------------------


@api_view(("GET",))
def labels(request):
    """Labelled pairs in a stable order, each exactly once: only rows of transactions that finished
    before this snapshot (txid below the snapshot's xmin), ordered by (txid, id)."""
    try:
        limit = _limit(request, default=500)
        since = _decode_cursor(request.GET.get("since"), 2)
    except ValueError as exc:
        return _error(400, str(exc))
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
        horizon = cursor.fetchone()[0]
    rows = LabelledPair.objects.filter(txid__lt=horizon).select_related("a", "b", "decision__reviewer")
    if since is not None:
        rows = rows.filter(Q(txid__gt=since[0]) | Q(txid=since[0], id__gt=since[1]))
    page = list(rows.order_by("txid", "id")[: limit + 1])
    more = len(page) > limit
    page = page[:limit]
    last = page[-1] if page else None
    return JsonResponse(
        {
            "results": [label_json(p) for p in page],
            # resume from here (also when this page was not full: new labels arrive after it)
            "next_cursor": _encode_cursor([last.txid, last.pk]) if last else request.GET.get("since"),
            "more": more,
        }
    )


@api_view(("GET",))
def corrections(request):
    """The confirmed errors in force with their fixes, in decision order (the lines of
    `export_corrections`); `cursor` resumes after the last one served."""
    try:
        limit = _limit(request, default=500)
        cursor = _decode_cursor(request.GET.get("cursor"), 1)
    except ValueError as exc:
        return _error(400, str(exc))
    page = list(review.corrections_in_force(after_id=cursor[0] if cursor else None)[: limit + 1])
    more = len(page) > limit
    page = page[:limit]
    return JsonResponse(
        {
            "results": [review.correction_line(row) for row in page],
            "next_cursor": _encode_cursor([page[-1].pk]) if page else request.GET.get("cursor"),
            "more": more,
        }
    )


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


# --- jobs -----------------------------------------------------------------------------------------


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
        "error": job.error or None,
        "created_at": job.created_at.isoformat(),
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        "url": request.build_absolute_uri(reverse("api_job", args=[job.pk])),
    }


@api_view(("POST",), staff=True)
def jobs_score(request):
    try:
        body = _json_body(request)
        scope = {k: body[k] for k in ("family", "category", "skus") if body.get(k)}
        if "skus" in scope and not (
            isinstance(scope["skus"], list) and all(isinstance(s, str) for s in scope["skus"])
        ):
            raise ValueError("skus must be a list of strings")
        job = score_start(scope=scope | {"reason": "api"}, requested_by=request.user)
    except (ValueError, ScopeError) as exc:
        return _error(400, str(exc))
    return JsonResponse(job_json(job, request), status=202)


@api_view(("POST",), staff=True)
def jobs_train(request):
    try:
        body = _json_body(request)
        steps = body.get("steps")
        if steps is not None and (not isinstance(steps, int) or isinstance(steps, bool) or steps < 1):
            raise ValueError("steps must be a positive whole number")
        activate, force = body.get("activate", False), body.get("force", False)
        if not isinstance(activate, bool) or not isinstance(force, bool):
            raise ValueError("activate and force must be true or false")
        end_to_end = body.get("end_to_end")
        if end_to_end is not None and not isinstance(end_to_end, bool):
            raise ValueError("end_to_end must be true, false or null (TRAIN_END_TO_END decides)")
        warm_start = body.get("warm_start")
        if warm_start is not None and not isinstance(warm_start, bool):
            raise ValueError("warm_start must be true, false or null (TRAIN_WARM_START decides)")
        job = train_start(
            requested_by=request.user,
            activate=activate,
            force=force,
            steps=steps,
            end_to_end=end_to_end,
            warm_start=warm_start,
            reason="api",
        )
    except (ValueError, TrainingError) as exc:
        return _error(400, str(exc))
    return JsonResponse(job_json(job, request), status=202)


@api_view(("GET",))
def job_detail(request, job_id: int):
    job = Job.objects.filter(pk=job_id).first()
    if job is None:
        return _error(404, f"no job {job_id}")
    return JsonResponse(job_json(job, request))


# --- schema ---------------------------------------------------------------------------------------


@login_not_required
def schema(request):
    """The OpenAPI schema, like every other call for a bearer token or a logged-in session (a browser
    reading it from the app)."""
    if not request.user.is_authenticated:
        _token, refusal = _bearer_token(request)
        if refusal:
            return _error(401, f"{refusal} (or log in)")
    return JsonResponse(OPENAPI)


def _op(summary: str, *, params=(), body=None, responses: dict, admin: bool = False) -> dict:
    op = {
        "summary": summary + (" (admins only)" if admin else ""),
        "security": [{"bearer": []}],
        "parameters": [
            {"name": n, "in": where, "required": where == "path", "schema": {"type": t}}
            for n, where, t in params
        ],
        "responses": {str(code): {"description": text} for code, text in responses.items()},
    }
    if body:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return op


_COMMON = {401: "no or invalid token", 400: "bad input (the error says which)"}
OPENAPI = {
    "openapi": "3.1.0",
    "info": {"title": "Catalog Review API", "version": "1"},
    "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    "paths": {
        "/api/flags": {
            "get": _op(
                "Flags, cursor-paginated",
                params=[
                    ("status", "query", "string"),
                    ("kind", "query", "string"),
                    ("ordering", "query", "string"),
                    ("limit", "query", "integer"),
                    ("cursor", "query", "string"),
                ],
                responses={200: "{results, next_cursor}", **_COMMON},
            )
        },
        "/api/flags/{id}/decision": {
            "post": _op(
                "Decide a flag; idempotent per client_request_id (or Idempotency-Key header)",
                params=[("id", "path", "integer")],
                body={
                    "type": "object",
                    "required": ["decision"],
                    "properties": {
                        "decision": {"enum": ["confirm", "reject", "skip"]},
                        "note": {"type": "string"},
                        "client_request_id": {"type": "string"},
                        "suggested_family": {
                            "type": "string",
                            "description": "confirmed wrong variant: its family",
                        },
                        "belongs_to_no_family": {"type": "boolean"},
                    },
                },
                responses={
                    201: "decided",
                    200: "a retry of an earlier request: its decision",
                    404: "no such flag",
                    409: "already decided (the error says by whom)",
                    **_COMMON,
                },
            )
        },
        "/api/labels": {
            "get": _op(
                "Labelled pairs, each exactly once, in a stable order",
                params=[("since", "query", "string"), ("limit", "query", "integer")],
                responses={200: "{results, next_cursor, more}", **_COMMON},
            )
        },
        "/api/corrections": {
            "get": _op(
                "Confirmed errors in force with their fixes (sku, kind, duplicate_of, suggested_family, "
                "reviewer, decided_at, note), in decision order",
                params=[("cursor", "query", "string"), ("limit", "query", "integer")],
                responses={200: "{results, next_cursor, more}", **_COMMON},
            )
        },
        "/api/jobs/score": {
            "post": _op(
                "Start a score job (whole catalogue, or family / category / skus)",
                body={
                    "type": "object",
                    "properties": {
                        "family": {"type": "string"},
                        "category": {"type": "string"},
                        "skus": {"type": "array", "items": {"type": "string"}},
                    },
                },
                responses={202: "the job", 403: "not an admin", **_COMMON},
                admin=True,
            )
        },
        "/api/jobs/train": {
            "post": _op(
                "Start a train job",
                body={
                    "type": "object",
                    "properties": {
                        "steps": {
                            "type": "integer",
                            "description": "per model (default TRAIN_WARM_STEPS warm, TRAIN_STEPS cold)",
                            "minimum": 1,
                        },
                        "activate": {"type": "boolean"},
                        "force": {"type": "boolean"},
                        "end_to_end": {
                            "type": ["boolean", "null"],
                            "description": "fine-tune both backbones (GPU); null: TRAIN_END_TO_END decides",
                        },
                        "warm_start": {
                            "type": ["boolean", "null"],
                            "description": "start from the active version's weights (true: fail if it "
                            "cannot be one), false: from scratch; null: TRAIN_WARM_START decides",
                        },
                    },
                },
                responses={202: "the job", 403: "not an admin", **_COMMON},
                admin=True,
            )
        },
        "/api/jobs/{id}": {
            "get": _op(
                "A job's status and progress",
                params=[("id", "path", "integer")],
                responses={200: "the job", 404: "no such job", **_COMMON},
            )
        },
    },
}
