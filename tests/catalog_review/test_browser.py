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
