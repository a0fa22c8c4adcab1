"""Headless Chromium (Debian's, driven by Playwright): a reviewer logs in and browses the catalogue.
Screenshots of the key pages are saved under test-artifacts/ to be looked at."""

import json
import os
import shutil
from pathlib import Path

import pytest

from catalog_review.models import Product
from catalog_review.runtime import PROJECT_ROOT
from catalog_review.services.catalogue_import import catalogue_import
from tests.conftest import ARTIFACTS
from tests.factories import UserFactory

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SAMPLE = PROJECT_ROOT / "sample_data" / "grocery" / "catalogue.jsonl"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (.ci/run installs it)"
    ),
]


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop on this thread; the ORM calls the tests make here are
    # ordinary blocking calls, not coroutines, so Django's async guard does not apply to them.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
            ],
        )
        yield browser
        browser.close()
    os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)


@pytest.fixture
def page(browser, live_server):
    context = browser.new_context(viewport={"width": 1280, "height": 800}, base_url=live_server.url)
    page = context.new_page()
    yield page
    context.close()


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=False)


def log_in(page, username="reviewer", password="pw-for-tests"):
    page.goto("/")
    assert "/login/" in page.url
    shot(page, "login")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("button[type=submit]")
    page.wait_for_url("**/")


def test_reviewer_browses_the_sample_catalogue(page):
    UserFactory(username="reviewer")
    catalogue_import(path=SAMPLE)
    log_in(page)
    assert page.locator(".count").inner_text().startswith("83 listings")
    # the first row of cards is in view: their (lazy) images load and decode
    page.wait_for_function(
        "Array.from(document.images).slice(0, 5).every(i => i.complete && i.naturalWidth > 0)"
    )
    shot(page, "catalogue")

    # live search swaps the results in place (htmx) and keeps the URL shareable
    page.fill("input[name=q]", "milk")
    expected = Product.objects.search("milk").count()  # milks by title, plus the juice planted in family milk
    page.wait_for_function(f"document.querySelector('.count').innerText.startsWith('{expected} listings')")
    assert "q=milk" in page.url
    titles = page.locator(".card .title").all_inner_texts()
    assert "Arla Standard Milk" in titles and "ARLA STANDARD MILK 1L" in titles

    # category filter
    page.fill("input[name=q]", "")
    page.select_option("select[name=category]", label="\u2003\u2003Apple")
    page.wait_for_function("document.querySelector('.count').innerText.startsWith('6 listings')")
    assert "q=" in page.url and "category=" in page.url

    # a family page shows all its members side by side
    page.click("text=family apple >> nth=0")
    page.wait_for_url("**/families/apple/")
    assert page.locator(".card").count() == 6  # five apples and the planted Conference pear
    assert "Conference" in page.locator(".card .title").all_inner_texts()
    shot(page, "family")


def test_titles_are_rendered_escaped(page, tmp_path):
    UserFactory(username="reviewer")
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"sku": "X1", "title": "<img src=x onerror=alert(1)> Dress"}) + "\n")
    catalogue_import(path=path)
    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    log_in(page)
    assert page.locator(".card .title").inner_text() == "<img src=x onerror=alert(1)> Dress"
    assert dialogs == []


def _flags_on_the_sample(media_root):
    """Flags on the real sample catalogue (as a score job would raise them), with heatmaps."""
    import numpy as np

    from catalog_review.models import Flag, ModelVersion
    from ml_worker.heatmap import render_heatmap

    catalogue_import(path=SAMPLE)
    version = ModelVersion.objects.create(name="maps-demo", is_active=True)
    flags = []
    attention = np.outer(np.hanning(7), np.hanning(7))
    for sku, score in (("GS-021", 0.93), ("GS-028", 0.88), ("GS-071", 0.81)):  # the planted errors
        product = Product.objects.select_related("family").get(sku=sku)
        heat = f"heatmaps/test/{product.pk}.png"
        (media_root / heat).parent.mkdir(parents=True, exist_ok=True)
        (media_root / heat).write_bytes(render_heatmap(media_root / product.image, attention))
        members = product.family.products.exclude(pk=product.pk)
        flags.append(
            Flag.objects.create(
                kind=Flag.Kind.WRONG_VARIANT,
                product=product,
                score=score,
                model_version=version,
                heatmap=heat,
                evidence={
                    "agrees_with": 0,
                    "family_size": members.count() + 1,
                    "family_agreement": [{"sku": m.sku, "p_same_family": 0.12} for m in members],
                },
            )
        )
    return flags


def test_reviewer_works_through_the_queue_with_the_keyboard(page, media_root):
    from catalog_review.models import Flag, ReviewDecision

    UserFactory(username="reviewer")
    flags = _flags_on_the_sample(media_root)
    log_in(page)
    page.goto("/review/")
    assert page.locator("table.queue tbody tr").count() == 3
    shot(page, "review-queue")
    page.keyboard.press("Enter")  # start reviewing
    page.wait_for_url(f"**/flags/{flags[0].pk}/**")
    page.wait_for_function("document.querySelector('.rcard.flagged img.photo').complete")
    page.evaluate("window.__no_reload = true")
    page.keyboard.press("h")  # heatmap on
    assert page.locator("body.heat-on").count() == 1
    shot(page, "review-flag")
    page.keyboard.press("?")
    assert page.locator("#keys-help").is_visible()
    shot(page, "review-keys")
    page.keyboard.press("Escape")

    page.keyboard.press("y")  # confirm: the next flag loads in place
    page.wait_for_url(f"**/flags/{flags[1].pk}/**")
    page.wait_for_selector(f"#flag-panel[data-flag='{flags[1].pk}']")
    page.keyboard.press("n")  # reject
    page.wait_for_selector(f"#flag-panel[data-flag='{flags[2].pk}']")
    assert page.evaluate("window.__no_reload") is True, "decisions never reload the page"
    page.keyboard.press("u")  # undo the reject: back on flag 2, open again
    page.wait_for_selector(f"#flag-panel[data-flag='{flags[1].pk}'][data-status='open']")
    assert "Decision undone." in page.locator("#flag-panel").inner_text()
    page.keyboard.press("/")
    page.keyboard.type("juice is not milk")
    page.keyboard.press("Escape")
    page.keyboard.press("y")
    page.wait_for_selector(f"#flag-panel[data-flag='{flags[2].pk}']")
    page.keyboard.press("s")  # skip the last one: nothing left for me
    page.wait_for_selector("text=Nothing left to review here")

    statuses = {f.pk: Flag.objects.get(pk=f.pk).status for f in flags}
    assert statuses == {flags[0].pk: "confirmed", flags[1].pk: "confirmed", flags[2].pk: "open"}
    assert ReviewDecision.objects.filter(flag=flags[1], decision="confirm").get().note == "juice is not milk"
    assert list(ReviewDecision.objects.filter(flag=flags[1]).values_list("decision", flat=True)) == [
        "reject",
        "undo",
        "confirm",
    ]


def test_the_reviewer_s_day_feedback_fixes_comparison_search_and_claims(
    browser, live_server, media_root, tmp_path
):
    """Issue 23 in the browser: the status line after each key, a fix with a confirmation that reaches
    export_corrections (and leaves it on undo), a duplicate compared above the decision bar at 1440 x 900,
    the meaning search's empty state, looking without claiming, and no token page for a reviewer."""
    from django.core.management import call_command

    from catalog_review.models import Flag

    UserFactory(username="reviewer")
    flags = _flags_on_the_sample(media_root)
    duplicate = Flag.objects.create(
        kind=Flag.Kind.DUPLICATE,
        product=Product.objects.get(sku="GS-041"),
        counterpart=Product.objects.get(sku="GS-042"),
        score=0.7,
        model_version=flags[0].model_version,
        evidence={
            "lines": [{"channel": "title_words", "strength": 1.0, "text": "titles share most words (0.80)"}]
        },
    )
    context = browser.new_context(viewport={"width": 1440, "height": 900}, base_url=live_server.url)
    page = context.new_page()
    log_in(page)

    # looking at a flag from a link does not claim it
    page.goto(f"/flags/{flags[1].pk}/")
    assert Flag.objects.get(pk=flags[1].pk).claimed_by is None

    # the review flow: confirm the first flag with the family it belongs to (f, type, Enter)
    page.goto("/review/next/")
    page.wait_for_selector(f"#flag-panel[data-flag='{flags[0].pk}']")
    page.keyboard.press("f")
    page.keyboard.type("pear")
    page.keyboard.press("Enter")
    status = page.locator("#flag-panel [role=status]")
    status.get_by_text(f"Flag #{flags[0].pk} confirmed as wrong variant. Undo (u)").wait_for()
    assert "open flags left in this queue · 1 decided by you today" in status.inner_text()
    shot(page, "review-feedback")
    call_command("export_corrections", output=tmp_path / "c.jsonl")
    lines = [json.loads(x) for x in (tmp_path / "c.jsonl").read_text().splitlines()]
    assert [(x["sku"], x["suggested_family"]) for x in lines] == [("GS-021", "pear")]
    page.keyboard.press("u")  # undo: the correction leaves the export
    page.wait_for_selector(f"#flag-panel[data-flag='{flags[0].pk}'][data-status='open']")
    call_command("export_corrections", output=tmp_path / "c.jsonl")
    assert (tmp_path / "c.jsonl").read_text() == ""

    # a duplicate: both listings and every field above the sticky decision bar, without scrolling
    page.goto(f"/flags/{duplicate.pk}/")
    page.wait_for_selector("table.compare")
    bar_top = page.locator(".decide-bar").bounding_box()["y"]
    table = page.locator("table.compare").bounding_box()
    assert table["y"] + table["height"] <= bar_top + 1, (table, bar_top)
    assert page.locator("table.compare tr.differs[data-field=title]").count() == 1
    shot(page, "review-duplicate-compare")

    # meaning search: a query that means nothing finds nothing, and says so
    page.goto("/?q=xxxx&match=meaning")
    assert "Nothing in the catalogue means something close to “xxxx”" in page.locator("#results").inner_text()
    shot(page, "catalogue-meaning-none")

    # a 2,000-character note without spaces wraps; a decided flag offers no note field
    from django.contrib.auth import get_user_model

    from catalog_review.services import review

    reviewer = get_user_model().objects.get(username="reviewer")
    review.decide(flag_id=flags[2].pk, user=reviewer, decision="reject", note="x" * 2000)
    page.goto(f"/flags/{flags[2].pk}/")
    assert page.evaluate("document.documentElement.scrollWidth") <= 1440
    assert page.locator("input[name=note]").count() == 0

    # a reviewer cannot reach the token page
    response = page.goto("/manage/tokens/")
    assert response.status == 403 and "Not allowed" in page.content()
    shot(page, "error-403")
    context.close()


def test_two_reviewers_on_one_flag_exactly_one_decision_wins(browser, live_server, media_root):
    from catalog_review.models import Flag, ReviewDecision

    UserFactory(username="reviewer")
    UserFactory(username="alice")
    flag = _flags_on_the_sample(media_root)[0]
    pages = []
    for name in ("reviewer", "alice"):
        context = browser.new_context(viewport={"width": 1280, "height": 800}, base_url=live_server.url)
        p = context.new_page()
        log_in(p, username=name)
        # the first reviewer starts reviewing (the review flow claims the flag); alice opens the flag's link
        p.goto("/review/next/" if name == "reviewer" else f"/flags/{flag.pk}/")
        pages.append(p)
    first, second = pages
    assert first.locator("#flag-panel").get_attribute("data-flag") == str(flag.pk)
    second.reload()
    assert "reviewer is reviewing this flag (claimed until" in second.locator("#flag-panel").inner_text()
    shot(second, "review-claimed")
    first.keyboard.press("y")
    first.wait_for_selector(f"#flag-panel:not([data-flag='{flag.pk}'])")
    second.keyboard.press("n")
    second.wait_for_selector("text=this flag was already confirmed by reviewer")
    assert Flag.objects.get(pk=flag.pk).status == "confirmed"
    assert ReviewDecision.objects.filter(flag=flag).count() == 1
    for p in pages:
        p.context.close()


@pytest.mark.worker
def test_admin_rescores_a_family_and_watches_the_bar_reach_100(page, celery_worker):
    from catalog_review.models import Job

    UserFactory(username="boss", is_staff=True)
    catalogue_import(path=SAMPLE)
    log_in(page, username="boss")
    page.click("nav >> text=Jobs")
    page.wait_for_url("**/manage/jobs/")
    page.fill("#id_family", "apple")
    shot(page, "admin-jobs")
    page.click("text=Start scoring")
    page.wait_for_url("**/jobs/*/")
    job = Job.objects.get(kind=Job.Kind.SCORE)
    assert job.scope["family"] == "apple"
    page.wait_for_selector("#job-progress strong.status-succeeded", timeout=240_000)
    assert page.locator("#job-progress .bar-fill").get_attribute("style").replace(" ", "") == "width:100%"
    shot(page, "admin-job-done")
    page.click("nav >> text=Models")
    assert "zero-shot" in page.locator("table.models").inner_text()
    shot(page, "admin-models")
