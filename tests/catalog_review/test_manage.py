"""Admin pages: jobs (re-score, train, cancel, live table) and model versions (gate, activation)."""

import pytest
from django.urls import reverse

from catalog_review.models import Job, ModelVersion, VersionScorer
from catalog_review.services.model_versions import promotion_decision
from tests.factories import FamilyFactory, ProductFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(client, admin_user):
    client.force_login(admin_user)
    return client


STAFF_GETS = ["manage_jobs", "manage_models", "manage_tokens"]
STAFF_POSTS = [
    ("manage_revoke_token", {"token_id": 1}),
    ("manage_start_score", {}),
    ("manage_start_train", {}),
    ("manage_cancel_job", {"job_id": 1}),
    ("manage_activate_model", {"version_id": 1}),
]


@pytest.mark.parametrize("name", STAFF_GETS)
def test_reviewers_get_403(reviewer_client, name):
    assert reviewer_client.get(reverse(name)).status_code == 403


@pytest.mark.parametrize(("name", "kwargs"), STAFF_POSTS)
def test_reviewers_cannot_start_cancel_or_promote(reviewer_client, name, kwargs):
    assert reviewer_client.post(reverse(name, kwargs=kwargs)).status_code == 403
    assert not Job.objects.exists()


@pytest.mark.parametrize(("name", "kwargs"), STAFF_POSTS)
def test_actions_refuse_get(admin_client, name, kwargs):
    assert admin_client.get(reverse(name, kwargs=kwargs)).status_code == 405


def test_start_a_rescore_of_one_family_and_watch_it(admin_client, admin_user):
    family = FamilyFactory(code="F1")
    ProductFactory(family=family)
    ProductFactory(family=family)
    response = admin_client.post(reverse("manage_start_score"), {"family": "F1"})
    job = Job.objects.get(kind=Job.Kind.SCORE)
    assert response.status_code == 302 and response.url == reverse("job", args=[job.pk])
    assert job.scope["family"] == "F1" and job.total == 4 and job.requested_by == admin_user
    page = admin_client.get(reverse("manage_jobs"))
    assert b"F1" in page.content and b'hx-trigger="every 2s"' in page.content, (
        "the table polls while a job runs"
    )


def test_unknown_family_is_a_clear_400(admin_client):
    response = admin_client.post(reverse("manage_start_score"), {"family": "nope"})
    assert response.status_code == 400 and b"no family with code" in response.content
    assert not Job.objects.exists()


def test_start_training_and_cancel_it(admin_client):
    response = admin_client.post(reverse("manage_start_train"), {"steps": "5", "activate": "on"})
    job = Job.objects.get(kind=Job.Kind.TRAIN)
    assert response.url == reverse("job", args=[job.pk])
    assert job.scope == {"activate": True, "force": False, "steps": 5, "folds": 2, "reason": "admin"}
    assert b"Cancel job" in admin_client.get(reverse("job", args=[job.pk])).content
    admin_client.post(reverse("manage_cancel_job", args=[job.pk]))
    job.refresh_from_db()
    assert job.status == Job.Status.CANCELLED and job.finished_at
    response = admin_client.post(reverse("manage_start_train"), {"steps": "0"})
    assert response.status_code == 400
    page = admin_client.get(reverse("manage_jobs")).content.decode()
    assert "as configured: end to end on a GPU worker, frozen on a CPU" in page  # TRAIN_END_TO_END=auto
    response = admin_client.post(reverse("manage_start_train"), {"backbones": "sideways"})
    assert response.status_code == 400 and b"Select a valid choice" in response.content
    admin_client.post(reverse("manage_start_train"), {"steps": "5", "backbones": "end_to_end"})
    job = Job.objects.filter(kind=Job.Kind.TRAIN).latest("pk")
    assert job.scope["end_to_end"] is True and job.scope_label == "5 steps, end to end"


def test_activation_goes_through_the_promotion_gate(admin_client):
    active = ModelVersion.objects.create(
        name="v1", is_active=True, metrics={"validation": {"pr_auc": 0.8, "wrong_variant_ap": 0.7}}
    )
    worse = ModelVersion.objects.create(
        name="v2",
        parent=active,
        metrics={"validation": {"pr_auc": 0.6}, "parent_on_same_data": {"pr_auc": 0.8}},
    )
    page = admin_client.get(reverse("manage_models"))
    assert page.status_code == 200 and b"0.800" in page.content
    response = admin_client.post(reverse("manage_activate_model", args=[worse.pk]), follow=True)
    assert b"Not activated" in response.content
    assert ModelVersion.objects.get(is_active=True) == active
    admin_client.post(reverse("manage_activate_model", args=[worse.pk]), {"force": "1"})
    assert ModelVersion.objects.get(is_active=True) == worse
    # back to the better one: its own validation against the active's, no force needed
    admin_client.post(reverse("manage_activate_model", args=[active.pk]))
    assert ModelVersion.objects.get(is_active=True) == active
    # the packaged backbones can always come back, whatever their (absent) figures
    zero_shot = ModelVersion.objects.create(name="zero-shot")
    response = admin_client.post(reverse("manage_activate_model", args=[zero_shot.pk]), follow=True)
    assert b"zero-shot is now the active model version" in response.content
    assert ModelVersion.objects.get(is_active=True) == zero_shot


def test_models_page_draws_the_pr_curves_of_new_and_compared_versions(admin_client):
    flat, rising = [1.0] * 21, [round(1 - i / 40, 3) for i in range(21)]
    ModelVersion.objects.create(
        name="v3",
        metrics={
            "validation": {
                "pr_auc": 0.9,
                "wrong_variant_ap": 0.91,
                "duplicate_ap": 0.89,
                "pr_curve_wrong_variant": flat,
                "pr_curve_duplicate": rising,
                "review_accuracy": 0.875,
            },
            "parent_on_same_data": {
                "pr_auc": 0.7,
                "wrong_variant_ap": 0.66,
                "pr_curve_wrong_variant": rising,
            },
            "gate_noise": {"pr_auc": {"sd": 0.004, "p05": 0.19, "p95": 0.21, "resamples": 300}},
        },
        training_data={"family_listings": 10, "families": 4, "review_pairs": 8},
    )
    ModelVersion.objects.create(
        name="v2",
        metrics={"validation": {"pr_auc": 0.8}},
        training_data={"family_listings": 10, "families": 4, "review_pairs": 3},
    )
    ModelVersion.objects.create(name="old", metrics={"validation": {"pr_auc": 0.5}})  # before curves
    html = admin_client.get(reverse("manage_models")).content.decode()
    assert html.count('class="pr-chart"') == 2, "wrong variant and duplicate for v3, none for v2, old"
    # precision 1 everywhere: the top edge of the 132x84 plot, from recall 0 to 1
    assert 'points="0.0,0.0 6.6,0.0' in html and "132.0,0.0" in html
    assert html.count('class="curve old"') == 1, "only the wrong-variant curve was compared"
    assert "AP 0.910 vs 0.660" in html and "accuracy on held-out reviewer labels 0.875" in html
    assert html.count("data-noise") == 1 and "differences within 0.007 are validation noise" in html
    assert "How each version" in html and "data-scorer" not in html, "no score job has fitted a scorer yet"

    # a score job's fitted scorer: its combiners' reliability on the plants and the family retrieval
    bins = [
        {"predicted": 0.02, "observed": 0.01, "weight": 0.9, "rows": 900},
        {"predicted": 0.5, "observed": 0.45, "weight": 0.05, "rows": 60},
        {"predicted": 0.9, "observed": 1.0, "weight": 0.05, "rows": 40},
    ]
    combiner = {"summary": {"reliability": bins, "planted_ap": 0.812, "planted": 100, "clean": 900}}
    VersionScorer.objects.create(
        model_version=ModelVersion.objects.get(name="v3"),
        arrays=b"",
        listings=1000,
        meta={
            "wrong_variant": {"kinds": {"wrong_product": combiner, "wrong_image": combiner}},
            "duplicate": {"kinds": {"same_photo": combiner, "own_photo": combiner}},
            "summary": {"family_recall": {"recall_at_1": 0.5, "recall_at_5": 0.75, "recall_at_10": 0.875}},
        },
    )
    html = admin_client.get(reverse("manage_models")).content.decode()
    assert html.count('class="reliability"') == 4 and html.count('class="bin"') == 12
    assert "duplicate, own photo" in html
    assert 'cx="48.0" cy="52.8"' in html, "predicted 0.5 across, observed 0.45 up, on the 96 px plot"
    assert "AP on plants 0.812" in html and "on 1000 listings" in html
    assert "Recall@1 <strong>0.500</strong>, @5 <strong>0.750</strong>, @10 <strong>0.875</strong>" in html


def test_dashboard_counts_precision_and_agreement(admin_client, reviewer):
    from django.test import Client

    from catalog_review.models import Flag
    from catalog_review.services import review
    from tests.factories import CategoryFactory, UserFactory

    version = ModelVersion.objects.create(name="v1", is_active=True)
    shoes = CategoryFactory(name="Shoes", path="Shoes")
    flags = [
        Flag.objects.create(
            kind=Flag.Kind.WRONG_VARIANT,
            product=ProductFactory(category=shoes),
            score=score,
            model_version=version,
        )
        for score in (0.95, 0.92, 0.75, 0.72, 0.71)
    ]
    alice = UserFactory(username="alice")
    bob = UserFactory(username="bob")
    review.decide(flag_id=flags[0].pk, user=reviewer, decision="confirm")
    review.decide(flag_id=flags[1].pk, user=reviewer, decision="reject")
    review.decide(flag_id=flags[2].pk, user=alice, decision="confirm")
    review.undo(flag_id=flags[2].pk, user=alice)
    review.decide(flag_id=flags[2].pk, user=reviewer, decision="confirm")  # alice and reviewer agree
    review.decide(flag_id=flags[4].pk, user=bob, decision="reject")
    review.undo(flag_id=flags[4].pk, user=bob)
    review.decide(flag_id=flags[4].pk, user=reviewer, decision="confirm")  # bob and reviewer disagree
    as_reviewer = Client()
    as_reviewer.force_login(reviewer)
    assert as_reviewer.get(reverse("manage_dashboard")).status_code == 403
    response = admin_client.get(reverse("manage_dashboard"))
    assert response.status_code == 200
    stats = response.context["stats"]
    assert stats["by_kind"]["wrong variant"] == {"confirmed": 3, "rejected": 1, "open": 1}
    assert stats["by_category"]["Shoes"]["confirmed"] == 3
    band = {(b["kind"], b["band"]): b for b in stats["bands"]}
    assert band[("wrong variant", "0.9-1.0")]["precision"] == 0.5
    assert band[("wrong variant", "0.7-0.8")]["precision"] == 1.0
    assert stats["agreement"] == {"flags": 2, "agreeing": 1}
    by_name = {r["name"]: r for r in stats["reviewers"]}
    assert {name: r["total"] for name, r in by_name.items()} == {"alice": 1, "bob": 1, "reviewer": 4}
    assert {name: (r["agreeing"], r["shared"]) for name, r in by_name.items()} == {
        "alice": (1, 1),
        "bob": (0, 1),
        "reviewer": (1, 2),
    }
    assert "0 of 1" in response.content.decode()  # bob's column
    assert b"<svg" in response.content


def test_the_dashboard_reads_its_aggregates_as_last_computed_and_says_when(admin_client, settings):
    """At a million listings the aggregates take seconds: the worker's beat task computes them every
    DASHBOARD_REFRESH_S, the page reads the stored ones (saying how old), recomputes them when older than
    DASHBOARD_MAX_AGE_S (no beat running) or when the admin asks."""
    from datetime import timedelta

    from django.utils import timezone

    from catalog_review.models import DashboardSnapshot, Flag
    from catalog_review.tasks import refresh_dashboard

    version = ModelVersion.objects.create(name="v1", is_active=True)

    def open_flag():
        Flag.objects.create(
            kind=Flag.Kind.DUPLICATE, product=ProductFactory(), score=0.9, model_version=version
        )

    def shown():
        response = admin_client.get(reverse("manage_dashboard"))
        assert b"Figures as of" in response.content
        return response.context["stats"]["by_kind"]["duplicate"].get("open", 0)

    open_flag()
    assert shown() == 1 and DashboardSnapshot.objects.count() == 1  # none stored yet: computed
    open_flag()
    assert shown() == 1, "the stored figures, not a new aggregation per page"
    assert "dashboard computed in" in refresh_dashboard()  # the beat task
    assert shown() == 2
    open_flag()
    admin_client.post(reverse("manage_dashboard"))  # "Refresh now"
    assert shown() == 3
    open_flag()
    DashboardSnapshot.objects.update(
        computed_at=timezone.now() - timedelta(seconds=settings.DASHBOARD_MAX_AGE_S + 1)
    )
    assert shown() == 4, "too old (no worker refreshing them): computed again"
    assert "refresh-dashboard" in settings.CELERY_BEAT_SCHEDULE


def test_the_gate_weighs_held_out_reviewer_labels_once_there_are_enough(settings):
    settings.PROMOTION_MIN_REVIEW_PAIRS, settings.PROMOTION_TOLERANCE = 20, 0.005
    active = {
        "pr_auc": 0.68,
        "validation_review_pairs": 40,
        "review_same_family_ap": 0.90,
        "review_same_product_ap": 0.80,
    }
    new = active | {"pr_auc": 0.67, "review_same_family_ap": 0.95, "review_same_product_ap": 0.85}
    # planted errors a little worse, the real errors reviewers labelled clearly better: promoted
    ok, reason = promotion_decision(new, active)
    assert ok and "40 held-out reviewer pairs" in reason and "0.7850 vs active 0.7650" in reason
    # too few reviewer labels to count: the planted errors alone decide, and refuse
    few = {"validation_review_pairs": 5}
    ok, reason = promotion_decision(new | few, active | few)
    assert not ok and reason.startswith("validation PR-AUC: 0.6700") and "worse" in reason
    # as good on planted errors, worse on reviewer labels: refused
    ok, _ = promotion_decision(
        active | {"review_same_family_ap": 0.80, "review_same_product_ap": 0.70}, active
    )
    assert not ok
    # a metric only one side was measured on is left out of both
    ok, reason = promotion_decision(new | {"review_same_product_ap": None}, active)
    assert ok and "same_product_ap" not in reason


def test_the_gate_does_not_refuse_a_version_for_the_validation_sets_own_noise(settings):
    settings.PROMOTION_MIN_REVIEW_PAIRS, settings.PROMOTION_TOLERANCE = 20, 0.005
    active = {"pr_auc": 0.8187, "validation_review_pairs": 0}
    new = {"pr_auc": 0.8135, "validation_review_pairs": 0}  # session 11's refused round: 0.0052 lower
    assert not promotion_decision(new, active)[0]  # the fixed tolerance alone refuses it
    noise = {"pr_auc": {"sd": 0.006, "p05": -0.011, "p95": 0.009, "resamples": 300}}
    ok, reason = promotion_decision(new, active, noise)
    assert ok and "0.0052 lower: within the validation noise (0.0099)" in reason
    ok, reason = promotion_decision({"pr_auc": 0.80}, active, noise)  # 0.0187 lower: beyond it
    assert not ok and reason.endswith(
        "worse than the active version's 0.8187, beyond the validation noise (0.0099)"
    )
    quiet = {"pr_auc": {"sd": 0.001, "p05": -0.002, "p95": 0.002, "resamples": 300}}
    ok, reason = promotion_decision({"pr_auc": 0.815}, active, quiet)  # the tolerance is the floor
    assert ok and "within the tolerance" in reason
    # with reviewer labels in the gate, only a bootstrap of that same gate score counts
    labelled = {"validation_review_pairs": 40, "review_same_family_ap": 0.9, "review_same_product_ap": 0.8}
    worse = labelled | {"review_same_family_ap": 0.88}  # gate score 0.0076 lower
    ok, reason = promotion_decision(new | worse, active | labelled, noise)
    assert not ok and "noise" not in reason  # the planted-only bootstrap does not speak for this score
    both = noise | {
        "gate_with_review": {"sd": 0.006, "keys": ["review_same_family_ap", "review_same_product_ap"]}
    }
    assert promotion_decision(new | worse, active | labelled, both)[0]


def test_admins_create_list_and_revoke_api_tokens_in_the_ui(admin_client, reviewer):
    from django.test import Client

    from catalog_review.models import ApiToken

    as_reviewer = Client()
    as_reviewer.force_login(reviewer)
    assert as_reviewer.post(reverse("manage_tokens"), {"user": reviewer.pk}).status_code == 403

    response = admin_client.post(
        reverse("manage_tokens"), {"user": reviewer.pk, "name": "nightly export", "expires_days": "30"}
    )
    assert response.status_code == 200 and response["Cache-Control"] == "no-store"
    html = response.content.decode()
    token = html.split("data-token>")[0].rsplit('value="', 1)[1].split('"')[0]
    assert token.startswith("cr_") and "cannot be shown again" in html
    api = Client(HTTP_AUTHORIZATION=f"Bearer {token}")
    assert api.get("/api/flags").status_code == 200
    listed = admin_client.get(reverse("manage_tokens")).content.decode()
    assert token not in listed, "shown once"
    assert token[:8] in listed and "nightly export" in listed and ">active<" in listed
    stored = ApiToken.objects.get(prefix=token[:8])
    assert stored.expires_at is not None and stored.user == reviewer
    # bad input: a clear error, nothing created
    bad = admin_client.post(reverse("manage_tokens"), {"user": reviewer.pk, "expires_days": "0"})
    assert bad.status_code == 400 and ApiToken.objects.count() == 1
    response = admin_client.post(reverse("manage_revoke_token", args=[stored.pk]), follow=True)
    assert "Token revoked." in response.content.decode() and ">revoked<" in response.content.decode()
    assert api.get("/api/flags").status_code == 401
    assert admin_client.post(reverse("manage_revoke_token", args=[999999])).status_code == 404
