"""The HTTP API: token auth, roles, flags + decisions (409, idempotency), the labels feed (cursor,
exactly once while labels arrive), jobs, the OpenAPI schema, create_api_token / export_labels."""

import json
import threading

import pytest
from django.core.management import CommandError, call_command
from django.db import connection, transaction
from django.test import Client

from catalog_review.api import create_token
from catalog_review.models import ApiToken, Flag, Job, LabelledPair, ModelVersion, Product, ProductEmbedding
from catalog_review.services import review
from catalog_review.services.catalogue_import import catalogue_import
from catalog_review.services.scoring import score_start
from tests.catalog_review.test_scoring import finished, write_catalogue
from tests.factories import FamilyFactory, ProductFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def world():
    version = ModelVersion.objects.create(name="v1", is_active=True)
    family = FamilyFactory(code="FAM")
    products = [ProductFactory(sku=f"P{i}", family=family) for i in range(4)]
    flags = [
        Flag.objects.create(
            kind=Flag.Kind.WRONG_VARIANT,
            product=p,
            score=score,
            model_version=version,
            heatmap="heatmaps/x.png",
        )
        for p, score in zip(products, (0.9, 0.8, 0.8, 0.7), strict=True)
    ]
    return {"version": version, "products": products, "flags": flags}


def api(user=None, *, token=None):
    token = token or create_token(user)
    client = Client(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


def post_json(client, url, body, **headers):
    return client.post(url, json.dumps(body), content_type="application/json", **headers)


def test_auth_is_required_and_tokens_are_stored_hashed(client, reviewer, world):
    for url in ("/api/flags", "/api/labels", "/api/jobs/1"):
        response = client.get(url)
        assert response.status_code == 401 and "Bearer" in response.json()["error"]
    assert Client(HTTP_AUTHORIZATION="Bearer nope").get("/api/flags").status_code == 401
    token = create_token(reviewer)
    stored = ApiToken.objects.get(user=reviewer)
    assert token not in stored.key_sha256 and stored.prefix == token[:8]
    assert api(token=token).get("/api/flags").status_code == 200
    reviewer.is_active = False
    reviewer.save()
    assert api(token=token).get("/api/flags").status_code == 401


def test_reviewers_get_403_on_admin_endpoints(reviewer, admin_user, world):
    as_reviewer = api(reviewer)
    assert post_json(as_reviewer, "/api/jobs/score", {}).status_code == 403
    assert post_json(as_reviewer, "/api/jobs/train", {}).status_code == 403
    assert not Job.objects.exists()
    as_admin = api(admin_user)
    response = post_json(as_admin, "/api/jobs/score", {"family": "FAM"})
    assert response.status_code == 202
    job = response.json()
    assert job["kind"] == "score" and job["scope"]["family"] == "FAM" and job["total"] == 8
    got = as_reviewer.get(f"/api/jobs/{job['id']}")
    assert got.status_code == 200 and got.json()["status"] == "queued"
    assert as_reviewer.get("/api/jobs/999999").status_code == 404
    assert post_json(as_admin, "/api/jobs/score", {"family": "nope"}).status_code == 400
    assert post_json(as_admin, "/api/jobs/train", {"steps": 0}).status_code == 400
    assert post_json(as_admin, "/api/jobs/train", {"end_to_end": "yes"}).status_code == 400
    assert post_json(as_admin, "/api/jobs/train", {"steps": 3, "activate": True}).status_code == 202
    response = post_json(as_admin, "/api/jobs/train", {"end_to_end": False})
    assert response.status_code == 202 and response.json()["scope"]["end_to_end"] is False
    assert as_admin.get("/api/jobs/score").status_code == 405


def test_flags_are_cursor_paginated_in_a_stable_order(reviewer, world):
    client = api(reviewer)
    seen, cursor = [], None
    while True:
        response = client.get("/api/flags", {"limit": 1, **({"cursor": cursor} if cursor else {})})
        assert response.status_code == 200
        body = response.json()
        seen += [(f["id"], f["score"]) for f in body["results"]]
        cursor = body["next_cursor"]
        if not cursor:
            break
    assert [s for _, s in seen] == [0.9, 0.8, 0.8, 0.7]
    assert len({i for i, _ in seen}) == 4, "ties on score are not repeated or skipped"
    uncertain, cursor = [], None
    while True:
        params = {"limit": 1, "ordering": "uncertain", **({"cursor": cursor} if cursor else {})}
        body = client.get("/api/flags", params).json()
        uncertain += [f["score"] for f in body["results"]]
        if not (cursor := body["next_cursor"]):
            break
    assert uncertain == [0.7, 0.8, 0.8, 0.9], "nearest the decision boundary first"
    first = client.get("/api/flags").json()["results"][0]
    assert first["sku"] == "P0" and first["family"] == "FAM" and first["model_version"] == "v1"
    assert first["heatmap_url"].endswith("/media/heatmaps/x.png")
    assert client.get("/api/flags", {"limit": "0"}).status_code == 400
    assert client.get("/api/flags", {"cursor": "garbage"}).status_code == 400
    assert client.get("/api/flags", {"kind": "other"}).status_code == 400


def test_decision_201_then_409_and_idempotent_retries(reviewer, world):
    client = api(reviewer)
    flag = world["flags"][0]
    url = f"/api/flags/{flag.pk}/decision"
    response = post_json(client, url, {"decision": "confirm", "note": "wrong", "client_request_id": "r1"})
    assert response.status_code == 201
    body = response.json()
    assert body["decision"] == "confirm" and body["labelled_pairs"] == 3
    retry = post_json(client, url, {"decision": "confirm", "client_request_id": "r1"})
    assert retry.status_code == 200 and retry.json()["id"] == body["id"]
    other = api(UserFactory(username="alice"))
    conflict = post_json(other, url, {"decision": "reject"})
    assert conflict.status_code == 409 and "already confirmed by reviewer" in conflict.json()["error"]
    assert flag.decisions.count() == 1
    header = post_json(
        client,
        f"/api/flags/{world['flags'][1].pk}/decision",
        {"decision": "reject"},
        HTTP_IDEMPOTENCY_KEY="k9",
    )
    assert header.status_code == 201 and header.json()["client_request_id"] == "k9"
    assert post_json(client, url.replace(str(flag.pk), "999999"), {"decision": "confirm"}).status_code == 404
    assert (
        post_json(client, f"/api/flags/{world['flags'][2].pk}/decision", {"decision": "maybe"}).status_code
        == 400
    )
    bad = client.post(
        f"/api/flags/{world['flags'][2].pk}/decision", "{not json", content_type="application/json"
    )
    assert bad.status_code == 400 and "not valid JSON" in bad.json()["error"]
    assert client.get(url).status_code == 405


def test_schema_is_served_and_lists_every_endpoint(client, reviewer):
    assert client.get("/api/schema").status_code == 401, "like every other call"
    schema = api(reviewer).get("/api/schema").json()
    assert schema["openapi"].startswith("3.")
    assert set(schema["paths"]) == {
        "/api/flags",
        "/api/flags/{id}/decision",
        "/api/labels",
        "/api/corrections",
        "/api/jobs/score",
        "/api/jobs/train",
        "/api/jobs/{id}",
    }


def test_schema_describes_every_request_and_response_body_and_docs_render_it(client, reviewer, admin_user):
    schema = api(reviewer).get("/api/schema").json()
    bodies = schema["components"]["schemas"]
    for path, operations in schema["paths"].items():
        for method, op in operations.items():
            assert op["security"] == [{"Bearer": []}], (method, path)
            for code, response in op["responses"].items():
                ref = response["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
                assert bodies[ref]["properties"], (method, path, code)
                assert code != "400" or ref == "Error"
            if method == "post":
                assert "requestBody" in op, path
    assert set(bodies["DecisionRequest"]["properties"]) == {
        "decision", "note", "client_request_id", "suggested_family", "belongs_to_no_family"
    }  # fmt: skip
    assert set(bodies["TrainRequest"]["properties"]) == {
        "steps",
        "activate",
        "force",
        "end_to_end",
        "warm_start",
    }
    assert set(bodies["FlagOut"]["properties"]) >= {"id", "kind", "sku", "score", "evidence", "heatmap_url"}
    assert set(schema["components"]["securitySchemes"]) == {"Bearer"}

    assert client.get("/api/docs").status_code == 302, "a browser is sent to log in"
    client.force_login(admin_user)
    page = client.get("/api/docs")
    assert page.status_code == 200 and b"swagger-ui" in page.content and b"/api/schema" in page.content
    assert b"cdn" not in page.content.lower(), "served from the app's static files (no internet needed)"
    assert client.get("/api/schema").json()["paths"] == schema["paths"], "a logged-in browser reads it too"


def test_bad_input_is_a_json_400_naming_the_field_and_types_are_strict(reviewer, admin_user, world):
    as_admin, as_reviewer = api(admin_user), api(reviewer)
    for body, field in [
        ({"steps": "3"}, "steps"),  # a string is not a step count
        ({"steps": 100_001}, "steps"),
        ({"activate": "yes"}, "activate"),
        ({"force": True}, "force only makes sense with activate"),
    ]:
        response = post_json(as_admin, "/api/jobs/train", body)
        assert response.status_code == 400 and field in response.json()["error"], body
    response = post_json(as_admin, "/api/jobs/score", {"skus": "P1"})
    assert response.status_code == 400 and "skus" in response.json()["error"]
    url = f"/api/flags/{world['flags'][0].pk}/decision"
    response = post_json(as_reviewer, url, {"decision": "maybe", "note": 3})
    error = response.json()["error"]
    assert response.status_code == 400 and "decision" in error and "note" in error
    assert not review.ReviewDecision.objects.exists(), "nothing was decided"
    response = as_reviewer.get("/api/flags", {"limit": "many"})
    assert response.status_code == 400 and "limit" in response.json()["error"]
    response = as_reviewer.delete(url)
    assert response.status_code == 405 and response.json()["error"] == "method DELETE not allowed; use POST"
    assert as_reviewer.get("/api/flags", {"kind": ""}).status_code == 200, "an empty kind is every kind"


def test_create_api_token_command(reviewer, capsys):
    call_command("create_api_token", "reviewer")
    token = capsys.readouterr().out.strip()
    assert api(token=token).get("/api/flags").status_code == 200
    with pytest.raises(CommandError, match="no user named 'ghost'"):
        call_command("create_api_token", "ghost")


def test_tokens_expire_are_listed_and_revoked_without_a_shell(reviewer, capsys, admin_client):
    from datetime import timedelta

    from django.utils import timezone

    call_command("create_api_token", "reviewer", "--name", "nightly export", "--expires", "7")
    token = capsys.readouterr().out.strip()
    stored = ApiToken.objects.get(prefix=token[:8])
    assert stored.name == "nightly export" and stored.expires_at > timezone.now() + timedelta(days=6)
    assert api(token=token).get("/api/flags").status_code == 200
    ApiToken.objects.filter(pk=stored.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    response = api(token=token).get("/api/flags")
    assert response.status_code == 401 and "expired" in response.json()["error"]

    second = create_token(reviewer, name="dashboard")
    call_command("list_api_tokens")
    listed = capsys.readouterr().out
    assert f"{token[:8]}  reviewer  expired  nightly export" in listed
    assert f"{second[:8]}  reviewer  active  dashboard" in listed and second not in listed
    call_command("revoke_api_token", second[:8])
    assert "1 token(s) revoked" in capsys.readouterr().out
    response = api(token=second).get("/api/flags")
    assert response.status_code == 401 and "revoked" in response.json()["error"]
    with pytest.raises(CommandError, match="no token with prefix"):
        call_command("revoke_api_token", "cr_zzzzz")
    with pytest.raises(CommandError, match="at least 1"):
        call_command("create_api_token", "reviewer", "--expires", "0")

    # and in the Django admin: listed, revoked by an action, never created there (shown once)
    third = create_token(reviewer)
    page = admin_client.get("/admin/catalog_review/apitoken/")
    assert page.status_code == 200 and third[:8] in page.content.decode()
    assert admin_client.get("/admin/catalog_review/apitoken/add/").status_code == 403
    admin_client.post(
        "/admin/catalog_review/apitoken/",
        {"action": "revoke", "_selected_action": [ApiToken.objects.get(prefix=third[:8]).pk]},
    )
    assert api(token=third).get("/api/flags").status_code == 401


def test_export_labels_writes_every_pair_and_retraction(reviewer, world, tmp_path):
    review.decide(flag_id=world["flags"][0].pk, user=reviewer, decision="confirm")
    review.undo(flag_id=world["flags"][0].pk, user=reviewer)
    call_command("export_labels", output=tmp_path / "labels.jsonl")
    lines = [json.loads(x) for x in (tmp_path / "labels.jsonl").read_text().splitlines()]
    assert len(lines) == 6 and sum(1 for x in lines if x["retracts"]) == 3
    assert {x["relation"] for x in lines} == {"different"}
    with pytest.raises(CommandError, match="does not exist"):
        call_command("export_labels", output=tmp_path / "nope" / "x.jsonl")


@pytest.mark.django_db(transaction=True)
def test_labels_feed_returns_every_label_exactly_once_while_new_labels_arrive(world_tx, reviewer_tx):
    """Labels written concurrently, one of them by a transaction that commits after a later one: a
    reader following the cursor sees every label once."""
    client = api(reviewer_tx)
    flags = world_tx["flags"]
    seen, cursor = [], None

    def read_all():
        nonlocal cursor
        while True:
            response = client.get("/api/labels", {"limit": 2, **({"since": cursor} if cursor else {})})
            assert response.status_code == 200
            body = response.json()
            seen.extend(x["id"] for x in body["results"])
            cursor = body["next_cursor"]
            if not body["more"]:
                return

    review.decide(flag_id=flags[0].pk, user=reviewer_tx, decision="confirm")  # 3 pairs
    read_all()
    # a slow transaction takes its txid first but commits last
    started, release = threading.Event(), threading.Event()

    def slow():  # writes its labels (lower ids, lower txid) first, commits last
        with transaction.atomic():
            review.decide(flag_id=flags[1].pk, user=reviewer_tx, decision="reject")
            started.set()
            release.wait(10)
        connection.close()

    thread = threading.Thread(target=slow)
    thread.start()
    started.wait(10)
    review.decide(flag_id=flags[2].pk, user=reviewer_tx, decision="confirm")  # higher ids, commits first
    assert not LabelledPair.objects.filter(decision__flag=flags[1]).exists()  # not visible yet
    read_all()  # must not jump past the slow transaction's labels
    release.set()
    thread.join(10)
    read_all()
    total = LabelledPair.objects.count()
    assert total == 9
    assert sorted(seen) == sorted(LabelledPair.objects.values_list("id", flat=True)), (
        "each label exactly once"
    )


@pytest.fixture
def reviewer_tx(transactional_db):
    return UserFactory(username="reviewer")


@pytest.fixture
def world_tx(transactional_db):
    version = ModelVersion.objects.create(name="v1", is_active=True)
    family = FamilyFactory(code="FAM")
    products = [ProductFactory(sku=f"P{i}", family=family) for i in range(4)]
    flags = [
        Flag.objects.create(kind=Flag.Kind.WRONG_VARIANT, product=p, score=0.9, model_version=version)
        for p in products
    ]
    return {"flags": flags}


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_review_tool_closes_the_loop_through_the_api(celery_worker, tmp_path, settings):
    """What a script does with the API (the review simulator does it round after round): read the open
    flags, decide them, train a version from the decisions with `activate`, follow both jobs. A real
    worker runs the jobs."""
    settings.FLAG_WRONG_VARIANT_THRESHOLD = 0.0  # every listing of a 2+ family gets a flag to decide
    settings.FLAG_WRONG_VARIANT_MAX_FRACTION = 1.0
    write_catalogue(tmp_path)
    catalogue_import(path=tmp_path / "catalogue.jsonl")
    finished(score_start().pk)
    client = api(UserFactory(username="loop-admin", is_staff=True))

    page = client.get("/api/flags", {"status": "open", "ordering": "-score", "limit": 5}).json()
    assert len(page["results"]) == 5 and page["next_cursor"]
    for flag in page["results"]:
        truly = flag["sku"] == "PLANTED" or {flag["sku"], flag["counterpart_sku"]} == {"circle-red", "DUP"}
        response = post_json(
            client,
            f"/api/flags/{flag['id']}/decision",
            {"decision": "confirm" if truly else "reject", "client_request_id": f"loop-{flag['id']}"},
        )
        assert response.status_code == 201, response.content
    labels = client.get("/api/labels", {"limit": 500}).json()["results"]
    decided = {f["sku"] for f in page["results"]}
    assert labels and all(x["a"] in decided or x["b"] in decided for x in labels)

    # one step cannot beat the active version: `force` activates it anyway, as an admin may
    body = {"steps": 1, "activate": True, "force": True, "end_to_end": False}
    response = post_json(client, "/api/jobs/train", body)
    assert response.status_code == 202, response.content
    train = client.get(f"/api/jobs/{response.json()['id']}").json()
    assert train["kind"] == "train"
    finished(train["id"], timeout=600)
    counts = client.get(f"/api/jobs/{train['id']}").json()["counts"]
    version = ModelVersion.objects.get(name=counts["model_version"])
    assert version.config["model"]["end_to_end"] is False, "as the request asked"
    assert any(version.metrics["review_pairs_used"].values()), "the decisions trained it"
    assert counts["activated"] and "activated anyway: forced" in counts["gate"]
    assert ModelVersion.objects.get(is_active=True) == version
    # activation re-scores the catalogue: the new version's flags replace the old ones
    finished(counts["rescore_job"], timeout=600)
    rescore = client.get(f"/api/jobs/{counts['rescore_job']}").json()
    assert rescore["kind"] == "score" and rescore["status"] == "succeeded"
    scored = ProductEmbedding.objects.filter(model_version=version, scored_at__isnull=False)
    assert scored.count() == Product.objects.count(), "every listing re-scored by the new version"
    assert not Flag.objects.filter(status="open").exclude(model_version=version).exists()
    decided = Flag.objects.filter(pk__in=[f["id"] for f in page["results"]])
    assert not decided.filter(status="open").exists(), "a decided flag is not raised again"
