"""Review: queue, flag page, decisions (+ labelled pairs), conflicts, idempotent retries, undo, claims."""

from datetime import timedelta

import pytest
from django.db.models import F
from django.db.models.functions import Abs
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from catalog_review.models import Flag, LabelledPair, ModelVersion, ReviewDecision
from catalog_review.services import review
from tests.factories import FamilyFactory, ProductFactory, UserFactory

pytestmark = pytest.mark.django_db
R = LabelledPair.Relation


@pytest.fixture
def flags():
    version = ModelVersion.objects.create(name="v1", is_active=True)
    family = FamilyFactory(code="FAM-1")
    wrong = ProductFactory(sku="W", title="Bar shelf <b>yellow</b>", family=family)
    members = [ProductFactory(sku=f"M{i}", title=f"Circle lamp {i}", family=family) for i in range(3)]
    other = ProductFactory(sku="O", title="Circle lamp copy")
    made = {
        "wrong_variant": Flag.objects.create(
            kind=Flag.Kind.WRONG_VARIANT,
            product=wrong,
            score=0.9,
            model_version=version,
            evidence={
                "agrees_with": 0,
                "family_size": 4,
                "family_agreement": [{"sku": m.sku, "p_same_family": 0.1} for m in members],
            },
        ),
        "duplicate": Flag.objects.create(
            kind=Flag.Kind.DUPLICATE,
            product=members[0],
            counterpart=other,
            score=0.7,
            model_version=version,
            evidence={
                "duplicate_score": 0.7,
                "image_cosine": 0.98,
                "title_cosine": 0.95,
                "same_family": False,
            },
        ),
    }
    made["low"] = Flag.objects.create(
        kind=Flag.Kind.WRONG_VARIANT, product=members[1], score=0.55, model_version=version
    )
    return made


REVIEW_PAGES = [("review_queue", {}), ("review_next", {}), ("flag", {"flag_id": 0})]


@pytest.mark.parametrize(("name", "kwargs"), REVIEW_PAGES)
def test_review_pages_need_login(client, flags, name, kwargs):
    kwargs = {k: flags["duplicate"].pk for k in kwargs}
    response = client.get(reverse(name, kwargs=kwargs))
    assert response.status_code == 302 and response.url.startswith(reverse("login"))


def test_decision_endpoints_refuse_get(reviewer_client, flags):
    for name in ("flag_decide", "flag_undo", "flag_claim"):
        assert reviewer_client.get(reverse(name, args=[flags["duplicate"].pk])).status_code == 405


@pytest.mark.parametrize("order", ["score", "uncertain"])
def test_queue_pages_follow_a_keyset_cursor_and_serve_every_flag_once(reviewer_client, settings, order):
    """Next pages are read after the last row served (page 2,000 costs what page 2 does): following
    Next from the first page serves every open flag once, in the queue's order, ties on score included."""
    import re

    from catalog_review.pagination import encode_cursor

    settings.REVIEW_PAGE_SIZE = 3
    version = ModelVersion.objects.create(name="v1", is_active=True)
    scores = [0.9, 0.8, 0.8, 0.8, 0.7, 0.55, 0.5, 0.45, 0.3, 0.3]
    for score in scores:
        Flag.objects.create(
            kind=Flag.Kind.WRONG_VARIANT, product=ProductFactory(), score=score, model_version=version
        )
    first = reviewer_client.get(reverse("review_queue"), {"order": order})
    expected = [f.pk for f in first.context["page"].object_list]
    url, seen, numbers = reverse("review_queue"), [], []
    response = first
    while True:
        page = response.context["page"]
        seen += [f.pk for f in page.object_list]
        numbers.append(page.number)
        link = re.search(r'href="\?([^"]*after=[^"]*)"[^>]*>Next', response.content.decode())
        if page.next_cursor is None:
            assert link is None
            break
        response = reviewer_client.get(f"{url}?{link[1].replace('&amp;', '&')}")
    queue = list(
        Flag.objects.filter(status="open")
        .annotate(u=Abs(F("score") - 0.5))
        .order_by(*(("u", "id") if order == "uncertain" else ("-score", "id")))
        .values_list("id", flat=True)
    )
    assert seen == queue and seen[:3] == expected, "every flag once, in order"
    assert numbers == [1, 2, 3, 4] and "Page 4 of 4" in response.content.decode()
    # a cursor that is not one (edited, another ordering's): the first page, not an error
    response = reviewer_client.get(url, {"order": order, "after": "bm9wZQ==", "page": 7})
    assert response.status_code == 200 and response.context["page"].number == 1
    forged = encode_cursor(["abc", 1])  # well-formed, not numbers: never reaches the database
    response = reviewer_client.get(url, {"order": order, "after": forged, "page": 2})
    assert response.status_code == 200 and response.context["page"].number == 1


def test_queue_lists_open_flags_by_score_and_filters(reviewer_client, flags, django_assert_num_queries):
    # session, user, the planner's estimate of the open flags, counts by kind (exact: the estimate is
    # small; they hold the total too), page, the category and version choices, the active model version
    # (asked by the top bar and the page: one query), my decisions today
    with django_assert_num_queries(9):
        response = reviewer_client.get(reverse("review_queue"))
    assert response.status_code == 200
    assert b"3 open flags \xc2\xb7 0 decided by you today" in response.content
    assert [f.pk for f in response.context["page"].object_list] == [
        flags["wrong_variant"].pk,
        flags["duplicate"].pk,
        flags["low"].pk,
    ]
    assert b"Bar shelf &lt;b&gt;yellow&lt;/b&gt;" in response.content
    response = reviewer_client.get(reverse("review_queue"), {"kind": "duplicate"})
    assert [f.pk for f in response.context["page"].object_list] == [flags["duplicate"].pk]
    assert (
        b"1 open flag \xc2\xb7" in response.content
        and b'<option value="duplicate" selected>' in response.content
    )
    category = flags["duplicate"].product.category
    response = reviewer_client.get(reverse("review_queue"), {"category": category.pk, "kind": "duplicate"})
    assert f'<option value="{category.pk}" selected>'.encode() in response.content
    assert (
        b"1 open flag \xc2\xb7" in response.content
    )  # counted with the filters, not taken from the kind counts
    response = reviewer_client.get(reverse("review_queue"), {"order": "uncertain"})
    assert response.context["page"].object_list[0].pk == flags["low"].pk
    response = reviewer_client.get(reverse("review_queue"), {"min_score": "0.6", "max_score": "0.8"})
    assert [f.pk for f in response.context["page"].object_list] == [flags["duplicate"].pk]


def test_bad_queue_filters_are_reported(reviewer_client, flags):
    response = reviewer_client.get(reverse("review_queue"), {"min_score": "0.9", "max_score": "0.1"})
    assert response.status_code == 200
    assert b"the minimum score is above the maximum" in response.content
    response = reviewer_client.get(reverse("review_queue"), {"min_score": "lots"})
    assert response.status_code == 200 and b"min score: enter a number from 0 to 1" in response.content


def test_flag_page_shows_family_and_evidence_and_claims(reviewer_client, reviewer, flags):
    flag = flags["wrong_variant"]
    response = reviewer_client.get(reverse("flag", args=[flag.pk]))
    assert response.status_code == 200
    text = " ".join(response.content.decode().split())
    assert (
        "Probability this listing does not belong in family" in text
        and '<strong data-evidence="probability">0.90' in text
    )
    assert "agrees with 0 of 3 other members by the model's pair head" in text, (
        "a trained version's pair head"
    )
    assert text.count("P(same family) with the flagged listing: <strong>0.10</strong>") == 3
    assert response.context["members"][0].sku == "W"
    flag.refresh_from_db()
    assert flag.claimed_by is None, "looking at a flag does not claim it (the review flow does)"
    assert "every 60s" not in text, "nor renews a claim that is not the reader's"
    assert 'data-evidence="lines"' not in text

    # the evidence channels in words, most decisive first, as the score job wrote them (escaped)
    flag.evidence |= {
        "kinds": {"wrong_product": 0.12, "wrong_image": 0.88},
        "lines": [
            {
                "channel": "attribute_surprise",
                "strength": 2.1,
                "text": "looks like “Beige”, listed as “<i>Black</i>” (colour)",
            },
            {
                "channel": "image_unlike_siblings",
                "strength": 0.8,
                "text": "image unlike its 3 siblings' (0.91)",
            },
        ],
        "family_agreement": [
            {"sku": m["sku"], "p_same_family": 0.1, "image_similarity": 0.42}
            for m in flag.evidence["family_agreement"]
        ],
    }
    flag.save(update_fields=["evidence"])
    text = " ".join(reviewer_client.get(reverse("flag", args=[flag.pk])).content.decode().split())
    assert "a wrong image 0.88" in text
    first, second = text.index("looks like “Beige”"), text.index("image unlike its 3 siblings")
    assert first < second
    assert "&lt;i&gt;Black&lt;/i&gt;" in text and "<i>Black</i>" not in text
    assert text.count("Image similarity to the flagged listing: <strong>0.42</strong>") == 3

    # the zero-shot version's pair head is a fixed formula: no per-sibling P(same family) from it
    flag.model_version.config = {"kind": "zero-shot"}
    flag.model_version.save(update_fields=["config"])
    text = " ".join(reviewer_client.get(reverse("flag", args=[flag.pk])).content.decode().split())
    assert "P(same family)" not in text and "by the model's pair head" not in text
    assert "the image backbone responds most" in text, "the heatmap legend says what it shows"


def test_a_duplicate_flag_compares_the_two_listings_field_by_field(reviewer_client, flags):
    flag = flags["duplicate"]
    a, b = flag.product, flag.counterpart
    a.attributes, b.attributes = (
        {"colour": "Red", "size": "M"},
        {"colour": "red ", "size": "L", "fit": "slim"},
    )
    a.description, b.description = "A lamp.", "A lamp."
    b.category = a.category
    a.save()
    b.save()
    html = reviewer_client.get(reverse("flag", args=[flag.pk])).content.decode()
    text = " ".join(html.split())
    assert "data-compare" in html
    rows = {r.split('data-field="')[1].split('"')[0]: r for r in text.split("<tr")[1:] if 'data-field="' in r}
    assert list(rows)[:5] == ["title", "sku", "family", "category", "description"]
    assert list(rows)[5:] == ["colour", "fit", "size"], "every attribute of either listing, aligned"
    differs = {name for name, row in rows.items() if row.startswith(' class="differs')}
    assert differs == {"title", "family", "fit", "size"}, "case and spacing aside: Red == red"
    assert "Circle lamp copy" in rows["title"] and "slim" in rows["fit"] and "—" in rows["fit"]


def test_confirm_writes_decision_pairs_and_serves_the_next_flag_in_place(reviewer_client, reviewer, flags):
    flag = flags["wrong_variant"]
    response = reviewer_client.post(
        reverse("flag_decide", args=[flag.pk]),
        {"decision": "confirm", "note": "a shelf"},
        HTTP_HX_REQUEST="true",
    )
    assert response.status_code == 200
    assert response["HX-Push-Url"].startswith(reverse("flag", args=[flags["duplicate"].pk]))
    assert b'id="flag-panel"' in response.content and b"<html" not in response.content
    flag.refresh_from_db()
    assert flag.status == Flag.Status.CONFIRMED
    decision = ReviewDecision.objects.get(flag=flag)
    assert (decision.reviewer, decision.decision, decision.note) == (reviewer, "confirm", "a shelf")
    pairs = LabelledPair.objects.filter(decision=decision)
    assert {(p.a.sku, p.b.sku, p.relation) for p in pairs} == {("W", f"M{i}", R.DIFFERENT) for i in range(3)}
    # what happened, announced (role=status), with how to take it back and how far the reviewer is
    text = " ".join(response.content.decode().split())
    feedback = text[text.index('role="status"') :]
    assert f"Flag #{flag.pk} confirmed as wrong variant. Undo (u)" in feedback
    assert "2 open flags left in this queue · 1 decided by you today" in feedback
    # the next flag was claimed by the review flow; its page renews that claim
    assert Flag.objects.get(pk=flags["duplicate"].pk).claimed_by == reviewer and "every 60s" in text
    # without htmx: the same line after the redirect
    response = reviewer_client.post(
        reverse("flag_decide", args=[flags["duplicate"].pk]), {"decision": "reject"}
    )
    page = reviewer_client.get(response.url).content.decode()
    assert f"Flag #{flags['duplicate'].pk} marked not an error. Undo (u)" in page


@pytest.mark.parametrize(
    ("kind", "decision", "relation", "count"),
    [
        ("wrong_variant", "reject", R.SAME_FAMILY, 3),
        ("duplicate", "confirm", R.SAME_PRODUCT, 1),
        ("duplicate", "reject", R.DIFFERENT, 1),
    ],
)
def test_each_decision_teaches_its_pairs(reviewer, flags, kind, decision, relation, count):
    result = review.decide(flag_id=flags[kind].pk, user=reviewer, decision=decision)
    pairs = LabelledPair.objects.filter(decision=result.decision)
    assert pairs.count() == count and {p.relation for p in pairs} == {relation}


def test_skip_leaves_the_flag_open_and_out_of_my_queue(reviewer_client, reviewer, flags):
    flag = flags["wrong_variant"]
    response = reviewer_client.post(reverse("flag_decide", args=[flag.pk]), {"decision": "skip"})
    assert response.status_code == 302
    flag.refresh_from_db()
    assert flag.status == Flag.Status.OPEN and flag.claimed_by is None
    assert not LabelledPair.objects.exists()
    nxt = review.next_flag(user=reviewer, queue=Flag.objects.filter(status="open").order_by("-score"))
    assert nxt.pk != flag.pk


def test_second_decision_gets_409_naming_who_decided(reviewer_client, flags):
    flag = flags["duplicate"]
    other = UserFactory(username="alice")
    review.decide(flag_id=flag.pk, user=other, decision="reject")
    response = reviewer_client.post(reverse("flag_decide", args=[flag.pk]), {"decision": "confirm"})
    assert response.status_code == 409
    assert b"already rejected by alice" in response.content
    assert ReviewDecision.objects.filter(flag=flag).count() == 1


def test_a_retried_request_is_recorded_once(reviewer_client, flags):
    flag = flags["duplicate"]
    for _ in range(2):
        response = reviewer_client.post(
            reverse("flag_decide", args=[flag.pk]), {"decision": "confirm", "client_request_id": "req-1"}
        )
        assert response.status_code == 302
    assert ReviewDecision.objects.filter(flag=flag).count() == 1
    assert LabelledPair.objects.count() == 1


def test_a_retried_skip_is_carried_out_once(reviewer, flags):
    flag = flags["wrong_variant"]
    first = review.decide(flag_id=flag.pk, user=reviewer, decision="skip", client_request_id="s-1")
    again = review.decide(flag_id=flag.pk, user=reviewer, decision="skip", client_request_id="s-1")
    assert first.created and not again.created and again.decision.pk == first.decision.pk
    # a request id already spent answers with its decision, even under another verb: nothing written
    reused = review.decide(flag_id=flag.pk, user=reviewer, decision="confirm", client_request_id="s-1")
    assert not reused.created and reused.decision.pk == first.decision.pk
    assert ReviewDecision.objects.filter(flag=flag).count() == 1
    flag.refresh_from_db()
    assert flag.status == Flag.Status.OPEN and not LabelledPair.objects.exists()


def test_deciding_a_missing_flag_is_a_404(reviewer_client, flags):
    response = reviewer_client.post(reverse("flag_decide", args=[999999]), {"decision": "confirm"})
    assert response.status_code == 404


def test_bad_decision_is_a_400(reviewer_client, flags):
    response = reviewer_client.post(
        reverse("flag_decide", args=[flags["duplicate"].pk]), {"decision": "maybe"}
    )
    assert response.status_code == 400
    assert not ReviewDecision.objects.exists()


def test_undo_reopens_and_retracts_pairs(reviewer_client, reviewer, flags):
    flag = flags["wrong_variant"]
    review.decide(flag_id=flag.pk, user=reviewer, decision="confirm")
    response = reviewer_client.post(reverse("flag_undo", args=[flag.pk]))
    assert response.status_code == 200 and b"Decision undone." in response.content
    flag.refresh_from_db()
    assert flag.status == Flag.Status.OPEN
    undo = ReviewDecision.objects.get(decision="undo")
    assert undo.undoes.decision == "confirm"
    retractions = LabelledPair.objects.filter(retracts__isnull=False)
    assert retractions.count() == 3 and all(p.decision == undo for p in retractions)
    assert LabelledPair.objects.count() == 6, "append-only: nothing deleted"
    assert b"undid" in response.content  # the history shows it
    assert reviewer_client.post(reverse("flag_undo", args=[flag.pk])).status_code == 409


def test_only_the_deciding_reviewer_or_an_admin_can_undo(reviewer_client, reviewer, flags):
    flag = flags["wrong_variant"]
    alice = UserFactory(username="alice")
    review.decide(flag_id=flag.pk, user=alice, decision="reject")
    response = reviewer_client.post(reverse("flag_undo", args=[flag.pk]))
    assert response.status_code == 403 and b"decided by alice" in response.content
    flag.refresh_from_db()
    assert flag.status == Flag.Status.REJECTED, "alice's decision stands"
    assert not LabelledPair.objects.filter(retracts__isnull=False).exists(), "and her labels"
    admin = UserFactory(username="boss", is_staff=True)
    review.undo(flag_id=flag.pk, user=admin)
    flag.refresh_from_db()
    assert flag.status == Flag.Status.OPEN


def test_a_request_id_belongs_to_its_reviewer(reviewer, flags):
    flag = flags["duplicate"]
    alice = UserFactory(username="alice")
    review.decide(flag_id=flag.pk, user=alice, decision="confirm", client_request_id="r-1")
    with pytest.raises(review.ReviewConflict, match="already used"):
        review.decide(flag_id=flag.pk, user=reviewer, decision="confirm", client_request_id="r-1")
    with pytest.raises(review.ReviewConflict, match="already used"):  # nor another flag's request
        review.decide(flag_id=flags["wrong_variant"].pk, user=alice, decision="skip", client_request_id="r-1")
    assert ReviewDecision.objects.count() == 1


def test_claimed_flags_are_not_served_to_another_reviewer_until_the_lease_expires(reviewer, flags):
    queue = Flag.objects.filter(status="open").order_by("-score", "id")
    alice = UserFactory(username="alice")
    first = review.next_flag(user=reviewer, queue=queue)
    second = review.next_flag(user=alice, queue=queue)
    assert first.pk == flags["wrong_variant"].pk and second.pk != first.pk
    Flag.objects.filter(pk=first.pk).update(claim_expires_at=timezone.now() - timedelta(seconds=1))
    assert review.next_flag(user=alice, queue=queue.exclude(pk=second.pk)).pk == first.pk


def test_claim_renewal(reviewer_client, flags):
    flag = flags["duplicate"]
    assert reviewer_client.post(reverse("flag_claim", args=[flag.pk])).status_code == 204
    alice = Client()
    alice.force_login(UserFactory(username="alice"))
    assert alice.post(reverse("flag_claim", args=[flag.pk])).status_code == 409


def test_a_fresh_claim_is_not_written_again_an_older_one_is_renewed(
    reviewer, flags, django_assert_num_queries
):
    flag = Flag.objects.get(pk=flags["duplicate"].pk)
    assert review.claim(flag=flag, user=reviewer)
    first_expiry = Flag.objects.get(pk=flag.pk).claim_expires_at
    with django_assert_num_queries(0):  # opening the flag right after the queue claimed it
        assert review.claim(flag=flag, user=reviewer)
    older = first_expiry - review.CLAIM_FRESH - timedelta(seconds=1)
    Flag.objects.filter(pk=flag.pk).update(claim_expires_at=older)
    flag.refresh_from_db()
    assert review.claim(flag=flag, user=reviewer)  # the page's periodic renewal writes
    assert Flag.objects.get(pk=flag.pk).claim_expires_at > older
    alice = UserFactory(username="alice")
    assert not review.claim(flag=Flag.objects.get(pk=flag.pk), user=alice)


def test_next_redirects_to_a_claimed_flag_then_says_done(reviewer_client, reviewer, flags):
    response = reviewer_client.get(reverse("review_next"))
    assert response.status_code == 302 and response.url.startswith(
        reverse("flag", args=[flags["wrong_variant"].pk])
    )
    for flag in flags.values():
        review.decide(flag_id=flag.pk, user=reviewer, decision="reject")
    response = reviewer_client.get(reverse("review_next"))
    assert response.status_code == 200 and b"Nothing left to review" in response.content


def test_u_undoes_my_last_decision_and_shows_that_flag(reviewer_client, reviewer, flags):
    review.decide(flag_id=flags["wrong_variant"].pk, user=reviewer, decision="confirm")
    review.decide(flag_id=flags["duplicate"].pk, user=reviewer, decision="reject")
    response = reviewer_client.post(reverse("review_undo"), HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    assert response["HX-Push-Url"].startswith(reverse("flag", args=[flags["duplicate"].pk]))
    assert Flag.objects.get(pk=flags["duplicate"].pk).status == Flag.Status.OPEN
    assert Flag.objects.get(pk=flags["wrong_variant"].pk).status == Flag.Status.CONFIRMED
    reviewer_client.post(reverse("review_undo"))
    assert Flag.objects.get(pk=flags["wrong_variant"].pk).status == Flag.Status.OPEN
    response = reviewer_client.post(reverse("review_undo"), HTTP_HX_REQUEST="true")
    assert response.status_code == 409 and b"no decision to undo" in response.content


def test_bulk_confirm_all_duplicates_of_a_listing(reviewer_client, reviewer, flags):
    dup = flags["duplicate"]
    third = ProductFactory(sku="O2", title="Circle lamp copy 2")
    more = Flag.objects.create(
        kind=Flag.Kind.DUPLICATE,
        product=dup.product,
        counterpart=third,
        score=0.8,
        model_version=dup.model_version,
    )
    page = reviewer_client.get(reverse("flag", args=[dup.pk]))
    assert b"<strong>1</strong> more open duplicate flag" in page.content and b"Confirm all 2" in page.content
    response = reviewer_client.post(reverse("flag_decide_all", args=[dup.pk]), {"decision": "confirm"})
    assert response.status_code == 302
    assert {Flag.objects.get(pk=pk).status for pk in (dup.pk, more.pk)} == {Flag.Status.CONFIRMED}
    assert LabelledPair.objects.filter(relation=R.SAME_PRODUCT).count() == 2
    bad = reviewer_client.post(reverse("flag_decide_all", args=[flags["low"].pk]), {"decision": "confirm"})
    assert bad.status_code == 400


def test_training_takes_confirmed_wrong_listings_out_of_their_family(reviewer, flags):
    from catalog_review.models import Product
    from catalog_review.services.training import review_pairs_for, training_families

    products = list(Product.objects.select_related("family").order_by("sku"))
    review.decide(flag_id=flags["wrong_variant"].pk, user=reviewer, decision="confirm")  # W is wrong
    review.decide(flag_id=flags["duplicate"].pk, user=reviewer, decision="reject")
    pairs = review_pairs_for(products)
    # W vs each other member: different families; the rejected duplicate: different products
    assert pairs.counts() == {
        "same_family": 0,
        "different_family": 3,
        "same_product": 0,
        "different_product": 1,
    }
    w = [p.sku for p in products].index("W")
    assert all(w in (a, b) for a, b, h in zip(pairs.a, pairs.b, pairs.head, strict=True) if h == 0)
    families, counts = training_families(products)
    by_sku = dict(zip([p.sku for p in products], families, strict=True))
    assert by_sku["W"] == "reviewed-out:W" and by_sku["M0"] == "FAM-1"
    assert counts["review_pairs"] == 4 and counts["listings_moved_out_of_families"] == 1
    assert counts["review_pairs_by_relation"] == {"different": 4}
    w_pk = products[w].pk
    assert review.wrong_variant_labels() == {w_pk: True}, "the calibrator's label: W confirmed"
    review.undo(flag_id=flags["wrong_variant"].pk, user=reviewer)  # retracted: W is back in its family
    assert review.wrong_variant_labels() == {}
    review.decide(flag_id=flags["wrong_variant"].pk, user=reviewer, decision="reject")
    assert review.wrong_variant_labels() == {w_pk: False}
    review.undo(flag_id=flags["wrong_variant"].pk, user=reviewer)
    families, counts = training_families(products)
    assert dict(zip([p.sku for p in products], families, strict=True))["W"] == "FAM-1"
    assert counts["review_pairs"] == 1 and counts["listings_moved_out_of_families"] == 0
    assert review_pairs_for(products).counts()["different_family"] == 0, "retracted labels are not used"


# --- fixes, not only verdicts: corrections for the catalogue system ---------------------------------


def test_a_confirmed_wrong_variant_carries_its_fix_into_the_corrections(
    reviewer_client, reviewer, flags, tmp_path, capsys
):
    import csv
    import json

    from django.core.management import call_command

    from catalog_review.api import create_token

    home = FamilyFactory(code="SHELVES")
    ProductFactory(sku="S1", family=home)
    flag = flags["wrong_variant"]
    # bad fixes: a clear 400, nothing recorded
    for bad, reason in (
        ({"decision": "confirm", "suggested_family": "NOPE"}, "no family with code"),
        ({"decision": "reject", "suggested_family": "SHELVES"}, "goes with a confirmation only"),
        ({"decision": "confirm", "suggested_family": "FAM-1"}, "is in family FAM-1 already"),
        ({"decision": "confirm", "suggested_family": "SHELVES", "no_family": "on"}, "not both"),
    ):
        response = reviewer_client.post(reverse("flag_decide", args=[flag.pk]), bad)
        assert response.status_code == 400 and reason in response.content.decode(), bad
    assert not ReviewDecision.objects.exists()

    reviewer_client.post(
        reverse("flag_decide", args=[flag.pk]),
        {"decision": "confirm", "suggested_family": "SHELVES", "note": "a shelf"},
    )
    review.decide(flag_id=flags["duplicate"].pk, user=reviewer, decision="confirm")
    review.decide(flag_id=flags["low"].pk, user=reviewer, decision="confirm", no_family=True)
    expected = [
        {
            "sku": "W",
            "kind": "wrong_variant",
            "duplicate_of": None,
            "suggested_family": "SHELVES",
            "note": "a shelf",
        },
        {"sku": "M0", "kind": "duplicate", "duplicate_of": "O", "suggested_family": None, "note": ""},
        {"sku": "M1", "kind": "wrong_variant", "duplicate_of": None, "suggested_family": "M1", "note": ""},
    ]  # (no family here: its own sku, the import format's family of its own)

    def keep(line):
        return {k: line[k] for k in ("sku", "kind", "duplicate_of", "suggested_family", "note")}

    call_command("export_corrections", output=tmp_path / "c.jsonl")
    lines = [json.loads(x) for x in (tmp_path / "c.jsonl").read_text().splitlines()]
    assert [keep(x) for x in lines] == expected
    assert set(lines[0]) == {
        "sku",
        "kind",
        "duplicate_of",
        "suggested_family",
        "reviewer",
        "decided_at",
        "note",
    }
    assert lines[0]["reviewer"] == "reviewer" and lines[0]["decided_at"]
    call_command("export_corrections", output=tmp_path / "c.csv")
    rows = list(csv.DictReader(open(tmp_path / "c.csv", encoding="utf-8")))
    assert [r["sku"] for r in rows] == ["W", "M0", "M1"] and rows[1]["duplicate_of"] == "O"

    # the same lines at GET /api/corrections, cursor-paginated
    api = Client(HTTP_AUTHORIZATION=f"Bearer {create_token(reviewer)}")
    first = api.get("/api/corrections", {"limit": 2}).json()
    assert [keep(x) for x in first["results"]] == expected[:2] and first["more"]
    rest = api.get("/api/corrections", {"cursor": first["next_cursor"]}).json()
    assert [keep(x) for x in rest["results"]] == expected[2:] and not rest["more"]
    assert api.get("/api/corrections", {"cursor": "nonsense"}).status_code == 400

    # an undone decision drops out; the family page marks a confirmed wrong variant
    review.undo(flag_id=flags["low"].pk, user=reviewer)
    assert [x["sku"] for x in api.get("/api/corrections").json()["results"]] == ["W", "M0"]
    family_page = reviewer_client.get(reverse("family", args=["FAM-1"])).content.decode()
    assert family_page.count("data-confirmed-wrong") == 1 and 'data-sku="W"' in family_page


def test_mark_as_duplicate_of_this_from_a_product_page(reviewer_client, reviewer, flags):
    from catalog_review.models import Product

    m2, other = Product.objects.get(sku="M2"), Product.objects.get(sku="O")
    response = reviewer_client.post(reverse("mark_duplicate", args=["M2"]), {"of": "O"}, follow=True)
    assert "M2 marked as a duplicate of O" in response.content.decode()
    flag = Flag.objects.get(kind=Flag.Kind.DUPLICATE, product=m2, counterpart=other)
    assert flag.status == Flag.Status.CONFIRMED and flag.decisions.get().reviewer == reviewer
    assert LabelledPair.objects.filter(a=m2, b=other, relation=R.SAME_PRODUCT).exists()
    # the pair the model already flagged is decided, not raised twice; bad input says why
    reviewer_client.post(reverse("mark_duplicate", args=["M0"]), {"of": "O"})
    assert Flag.objects.filter(kind=Flag.Kind.DUPLICATE, product__sku="M0", counterpart__sku="O").count() == 1
    assert flags["duplicate"].decisions.get().decision == "confirm"
    response = reviewer_client.post(reverse("mark_duplicate", args=["M2"]), {"of": "M2"}, follow=True)
    assert "not a duplicate of itself" in response.content.decode()
    response = reviewer_client.post(reverse("mark_duplicate", args=["M2"]), {"of": "ghost"}, follow=True)
    assert "No such listing" in response.content.decode()


def test_admins_download_the_corrections(client, reviewer, flags, admin_user):
    review.decide(flag_id=flags["duplicate"].pk, user=reviewer, decision="confirm")
    client.force_login(reviewer)
    assert client.get(reverse("manage_corrections")).status_code == 403
    client.force_login(admin_user)
    response = client.get(reverse("manage_corrections"), {"format": "csv"})
    assert response.status_code == 200 and "attachment" in response["Content-Disposition"]
    body = response.content.decode()
    assert body.splitlines()[0] == "sku,kind,duplicate_of,suggested_family,reviewer,decided_at,note"
    assert body.splitlines()[1].startswith("M0,duplicate,O,,reviewer,")
    assert client.get(reverse("manage_corrections"), {"format": "xml"}).status_code == 400
