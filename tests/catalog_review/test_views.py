"""Browse pages: login required, methods, filters, escaping, pinned query counts."""

import re

import pytest
from django.test import Client
from django.urls import reverse

from catalog_review.models import ImageStatus, Job, ModelVersion
from tests.factories import CategoryFactory, FamilyFactory, ProductFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def catalogue():
    women = CategoryFactory(name="Women", path="Women")
    dresses = CategoryFactory(name="Dresses", parent=women)
    men = CategoryFactory(name="Men", path="Men")
    family = FamilyFactory(code="F-dress")
    ProductFactory(sku="D1", title="Red dress", family=family, category=dresses, attributes={"colour": "Red"})
    ProductFactory(sku="D2", title="Blue dress", family=family, category=dresses)
    ProductFactory(sku="M1", title="Shirt <b>bold</b>", category=men)
    return {"women": women, "dresses": dresses, "men": men, "family": family}


PAGES = [
    ("catalogue", {}),
    ("family", {"code": "F-dress"}),
    ("product", {"sku": "D1"}),
]


@pytest.mark.parametrize(("name", "kwargs"), PAGES)
def test_pages_need_login(client, catalogue, name, kwargs):
    url = reverse(name, kwargs=kwargs)
    response = client.get(url)
    assert response.status_code == 302 and response.url.startswith(reverse("login"))


@pytest.mark.parametrize(("name", "kwargs"), PAGES)
def test_pages_refuse_post(reviewer_client, catalogue, name, kwargs):
    assert reviewer_client.post(reverse(name, kwargs=kwargs)).status_code == 405


def test_media_needs_login_and_refuses_traversal(client, reviewer_client, media_root):
    (media_root / "images").mkdir(exist_ok=True)
    (media_root / "images" / "x.txt").write_text("hello")
    url = reverse("media", kwargs={"path": "images/x.txt"})
    from django.test import Client

    assert Client().get(url).status_code == 302
    assert reviewer_client.get(url).status_code == 200
    assert reviewer_client.get("/media/../secret_key").status_code == 404
    assert reviewer_client.get("/media/images/%2e%2e/%2e%2e/etc/passwd").status_code == 404


def test_catalogue_lists_and_searches(reviewer_client, catalogue):
    response = reviewer_client.get(reverse("catalogue"))
    assert response.status_code == 200
    assert [p.sku for p in response.context["page"].object_list] == ["D1", "D2", "M1"]
    response = reviewer_client.get(reverse("catalogue"), {"q": "DRESS"})
    assert [p.sku for p in response.context["page"].object_list] == ["D1", "D2"]
    response = reviewer_client.get(reverse("catalogue"), {"q": "m1"})
    assert [p.sku for p in response.context["page"].object_list] == ["M1"]


def test_category_filter_includes_descendants(reviewer_client, catalogue):
    response = reviewer_client.get(reverse("catalogue"), {"category": catalogue["women"].pk})
    assert [p.sku for p in response.context["page"].object_list] == ["D1", "D2"]
    response = reviewer_client.get(
        reverse("catalogue"), {"family": "F-dress", "image_status": ImageStatus.NONE}
    )
    assert response.context["page"].paginator.count == 2


def test_bad_filters_are_reported_not_a_500(reviewer_client, catalogue):
    response = reviewer_client.get(reverse("catalogue"), {"category": "nope", "page": "-3"})
    assert response.status_code == 200
    assert "Some filters were not understood" in response.content.decode()
    assert response.context["page"].paginator.count == 3


def test_htmx_request_gets_only_the_results_partial(reviewer_client, catalogue):
    response = reviewer_client.get(reverse("catalogue"), {"q": "dress"}, headers={"HX-Request": "true"})
    html = response.content.decode()
    assert html.lstrip().startswith('<section id="results"') and "<html" not in html


def test_user_text_is_escaped(reviewer_client, catalogue):
    html = reviewer_client.get(reverse("catalogue")).content.decode()
    assert "Shirt &lt;b&gt;bold&lt;/b&gt;" in html and "<b>bold</b>" not in html


def test_catalogue_query_count_does_not_grow_with_the_page(
    reviewer_client, catalogue, django_assert_num_queries
):
    for _ in range(40):
        ProductFactory(family=catalogue["family"], category=catalogue["men"])
    # session, user, the planner's row estimate, count (the estimate is small), page of products
    # (families and categories joined), category choices
    with django_assert_num_queries(7):  # + the active model version (top bar)
        reviewer_client.get(reverse("catalogue"))


def test_long_lists_show_the_planners_estimate_not_a_count_of_every_row(reviewer_client, catalogue, settings):
    """Past ESTIMATE_COUNTS_ABOVE rows, the catalogue, the queue and the review progress say "about N"
    from the table statistics instead of counting every row on each load."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from catalog_review.models import Flag, ModelVersion
    from catalog_review.pagination import count_of

    version = ModelVersion.objects.create(name="v1", is_active=True)
    products = [ProductFactory(family=catalogue["family"], category=catalogue["men"]) for _ in range(30)]
    for p in products:
        Flag.objects.create(kind=Flag.Kind.WRONG_VARIANT, product=p, score=0.9, model_version=version)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE catalog_review_product")
        cursor.execute("ANALYZE catalog_review_flag")
    assert str(count_of(Flag.objects.all())) == "30"  # below the limit: exact
    settings.ESTIMATE_COUNTS_ABOVE = 10
    estimated = count_of(Flag.objects.all())
    assert not estimated.exact and str(estimated).startswith("about ")
    page = reviewer_client.get(reverse("catalogue")).content.decode()
    assert re.search(r"about [\d,]+ listings", page)
    queue = reviewer_client.get(reverse("review_queue")).content.decode()
    assert re.search(r"about [\d,]+ open flags", queue) and re.search(r"about [\d,]+ wrong variant", queue)
    with CaptureQueriesContext(connection) as captured:
        reviewer_client.get(reverse("review_queue"))
    counts = [q["sql"] for q in captured.captured_queries if "COUNT(" in q["sql"] and "_flag" in q["sql"]]
    assert counts == [], "no count of the open flags"
    # a word search's matches: estimated past SEARCH_ESTIMATE_COUNTS_ABOVE, however long the catalogue
    settings.ESTIMATE_COUNTS_ABOVE, settings.SEARCH_ESTIMATE_COUNTS_ABOVE = 10**9, 5
    assert re.search(r"[\d,]+ listings", reviewer_client.get(reverse("catalogue")).content.decode())
    assert (
        "about" not in reviewer_client.get(reverse("catalogue")).content.decode().split("listings")[0][-30:]
    )
    searched = reviewer_client.get(reverse("catalogue"), {"q": "Product"}).content.decode()
    assert re.search(r"about [\d,]+ listings", searched)


def test_family_page_shows_every_member(reviewer_client, catalogue, django_assert_num_queries):
    with django_assert_num_queries(
        6
    ):  # session, user, family, members, confirmed wrong variants, active version
        response = reviewer_client.get(reverse("family", kwargs={"code": "F-dress"}))
    html = response.content.decode()
    assert "Red dress" in html and "Blue dress" in html and "colour" in html
    assert reviewer_client.get(reverse("family", kwargs={"code": "nope"})).status_code == 404


def test_job_page_polls_until_the_job_ends(reviewer_client):
    job = Job.objects.create(kind=Job.Kind.FETCH_IMAGES, total=4, done=1, status=Job.Status.RUNNING)
    html = reviewer_client.get(reverse("job", kwargs={"job_id": job.pk})).content.decode()
    assert 'hx-trigger="every 1s"' in html and 'aria-valuenow="25"' in html
    Job.objects.filter(pk=job.pk).update(status=Job.Status.SUCCEEDED, done=4)
    html = reviewer_client.get(
        reverse("job", kwargs={"job_id": job.pk}), headers={"HX-Request": "true"}
    ).content.decode()
    assert "every 1s" not in html and 'aria-valuenow="100"' in html


def test_job_page_says_in_plain_words_what_ran_who_started_it_and_how_long_it_takes(
    reviewer_client, admin_user
):
    from datetime import timedelta

    from django.utils import timezone

    started = timezone.now() - timedelta(seconds=120)
    job = Job.objects.create(
        kind=Job.Kind.SCORE,
        total=100,
        done=25,
        status=Job.Status.RUNNING,
        started_at=started,
        requested_by=admin_user,
        scope={"reason": "admin", "model_version": "zero-shot"},
        counts={"open_flags": 1234, "duplicate_created": 3, "end_to_end": True, "wrong_variant_cap": 0.0279},
    )
    html = " ".join(reviewer_client.get(reverse("job", kwargs={"job_id": job.pk})).content.decode().split())
    assert "Started by <span data-trigger>admin (admin)</span> · whole catalogue · zero-shot" in html
    import re

    assert re.search(r"running for 2 min \d+ s", html) and re.search(r"about 6 min \d+ s left", html)
    assert "<dt>open flags</dt><dd>1,234</dd>" in html and "<dt>duplicate flags raised</dt><dd>3</dd>" in html
    assert "<dd>yes</dd>" in html and "<dt>wrong variant cap</dt><dd>0.028</dd>" in html
    assert (
        "True" not in html and "open_flags" not in html and "{" not in html.split("<dl")[1].split("</dl>")[0]
    )
    review = Job.objects.create(kind=Job.Kind.SCORE, scope={"reason": "review", "family_ids": [1]})
    html = reviewer_client.get(reverse("job", kwargs={"job_id": review.pk})).content.decode()
    assert "reviewer confirmation" in html


def test_login_page_logs_in(client, reviewer):
    response = client.post(reverse("login"), {"username": "reviewer", "password": "pw-for-tests"})
    assert response.status_code == 302
    response = client.post(reverse("login"), {"username": "reviewer", "password": "wrong"})
    assert "didn't match" in response.content.decode()


def test_repeated_failed_logins_lock_the_account_then_the_address(client, reviewer, settings):
    from datetime import timedelta

    from django.utils import timezone

    from catalog_review.models import LoginFailure

    settings.LOGIN_MAX_FAILURES_PER_ACCOUNT, settings.LOGIN_MAX_FAILURES_PER_ADDRESS = 3, 5
    settings.LOGIN_LOCKOUT_S = 600
    url, right = reverse("login"), {"username": "reviewer", "password": "pw-for-tests"}
    for _ in range(3):
        assert "didn't match" in client.post(url, {**right, "password": "guess"}).content.decode()
    response = client.post(url, right)  # the right password, too late
    assert response.status_code == 429 and "try again in 10 minute(s)" in response.content.decode()
    # another account from the same address: two more failures lock the address for every account
    UserFactory(username="alice")
    for _ in range(2):
        client.post(url, {"username": "alice", "password": "guess"})
    response = client.post(url, {"username": "alice", "password": "pw-for-tests"})
    assert response.status_code == 429
    other_address = Client(REMOTE_ADDR="10.0.0.9")
    assert other_address.post(url, {"username": "alice", "password": "pw-for-tests"}).status_code == 302
    # the lock lifts when the failures leave the window; a good login clears the account's failures
    LoginFailure.objects.update(at=timezone.now() - timedelta(seconds=601))
    assert client.post(url, right).status_code == 302
    assert not LoginFailure.objects.filter(username="reviewer").exists()


def test_product_page_shows_scores_flags_and_more_like_this(reviewer_client, catalogue):
    import numpy as np

    from catalog_review.models import Flag, ModelVersion, Product, ProductEmbedding

    version = ModelVersion.objects.create(name="v1", is_active=True)
    rng = np.random.default_rng(0)
    base = rng.standard_normal(256)
    for i, product in enumerate(Product.objects.order_by("sku")):  # D1, D2, M1: D2's image is nearest D1's
        image = base + (0.1 if i == 1 else 3.0) * rng.standard_normal(256) if i else base
        ProductEmbedding.objects.create(
            product=product,
            model_version=version,
            vector=rng.standard_normal(256),
            image_vector=image / np.linalg.norm(image),
            title_vector=rng.standard_normal(256),
            wrong_variant_score=0.83 if i == 0 else 0.1,
        )
    d1 = Product.objects.get(sku="D1")
    Flag.objects.create(kind=Flag.Kind.WRONG_VARIANT, product=d1, score=0.83, model_version=version)
    response = reviewer_client.get(reverse("product", kwargs={"sku": "D1"}))
    assert [p.sku for p in response.context["similar"]] == ["D2", "M1"]
    assert b"wrong variant 0.83" in response.content and b"More like this" in response.content
    response = reviewer_client.get(reverse("product", kwargs={"sku": "D1"}), {"like": "nonsense"})
    assert response.status_code == 200 and response.context["like"] == "image"


def test_search_by_meaning_uses_the_title_space_of_the_active_version(reviewer_client, catalogue):
    """The real text encoder and the zero-shot version: a query lands next to the listing it means."""
    import numpy as np

    from catalog_review.models import Product, ProductEmbedding
    from catalog_review.services.model_versions import active_version, load_model
    from ml_worker.query import title_query_vector

    version = active_version()
    model = load_model(version).final
    for product in Product.objects.all():
        title = title_query_vector(model, product.title)
        ProductEmbedding.objects.create(
            product=product, model_version=version, vector=title, title_vector=title, image_vector=None
        )
    response = reviewer_client.get(reverse("catalogue"), {"q": "crimson gown", "match": "meaning"})
    assert response.status_code == 200
    assert response.context["page"].object_list[0].sku == "D1"  # "Red dress"
    assert np.isclose(np.linalg.norm(title_query_vector(model, "anything")), 1.0, atol=1e-4)
    words = reviewer_client.get(reverse("catalogue"), {"q": "crimson gown"})
    assert words.context["page"].paginator.count == 0, "word match finds nothing: meaning does"
    assert (
        "Match meaning instead" in words.content.decode() and "import_catalogue" not in words.content.decode()
    )
    # each hit says how close it is, most similar first; a query that means nothing finds nothing
    hits = response.context["page"].object_list
    similarities = [p.similarity for p in hits]
    assert similarities == sorted(similarities, reverse=True) and similarities[0] > 0.5
    assert all(s >= 0.45 for s in similarities)
    assert f'data-similarity="{similarities[0]:.2f}"' in response.content.decode()
    nothing = reviewer_client.get(reverse("catalogue"), {"q": "xxxx", "match": "meaning"})
    assert nothing.context["page"].paginator.count == 0
    assert "Nothing in the catalogue means something close to “xxxx”" in nothing.content.decode()


def test_the_active_model_version_is_shown_on_every_page(reviewer_client, client, catalogue):
    assert "none yet" in reviewer_client.get(reverse("catalogue")).content.decode()
    ModelVersion.objects.create(name="maps-20261122-j9", is_active=True)
    html = reviewer_client.get(reverse("review_queue")).content.decode()
    assert '<span class="model-pill"' in html and "maps-20261122-j9" in html  # reviewers: no link
    admin = UserFactory(username="boss", is_staff=True)
    client.force_login(admin)
    html = client.get(reverse("catalogue")).content.decode()
    assert f'<a class="model-pill" href="{reverse("manage_models")}"' in html and "maps-20261122-j9" in html


def test_no_stored_identifier_makes_a_page_fail(reviewer_client):
    """Import refuses control characters in sku and family; rows stored before (or by other means) still
    render everywhere they appear, and their pages resolve."""
    from catalog_review.models import Flag

    family = FamilyFactory(code="FAM\nNL")
    bad = ProductFactory(sku="BAD-NL\nX", title="Bad row", family=family)
    sibling = ProductFactory(sku="GOOD-1", title="Good row", family=family)
    version = ModelVersion.objects.create(name="v1", is_active=True)
    flag = Flag.objects.create(kind=Flag.Kind.WRONG_VARIANT, product=bad, score=0.9, model_version=version)
    urls = [
        reverse("catalogue"),
        reverse("family", kwargs={"code": family.code}),
        reverse("product", kwargs={"sku": bad.sku}),
        reverse("product", kwargs={"sku": sibling.sku}),
        reverse("flag", args=[flag.pk]),
        reverse("review_queue"),
    ]
    for url in urls:
        response = reviewer_client.get(url)
        assert response.status_code == 200, url
    assert "BAD-NL" in reviewer_client.get(reverse("product", kwargs={"sku": bad.sku})).content.decode()


def test_a_refused_request_is_one_log_line_without_a_traceback(reviewer_client):
    """A reviewer opening an admin page is refused (403): logged in one line, no traceback."""
    import io
    import logging

    from catalog_review.log_filters import ClientErrorsInOneLine

    console = next(
        h
        for h in logging.getLogger().handlers
        if any(isinstance(f, ClientErrorsInOneLine) for f in h.filters)
    )
    log = io.StringIO()
    previous = console.setStream(log)
    try:
        response = reviewer_client.get(reverse("manage_models"))
    finally:
        console.setStream(previous)
    assert response.status_code == 403
    assert "Forbidden (Permission denied): /manage/models/" in log.getvalue()
    assert "Traceback" not in log.getvalue(), log.getvalue()


def test_error_pages_keep_the_navigation_and_say_what_to_do(reviewer_client, settings):
    html = reviewer_client.get(reverse("manage_models")).content.decode()
    assert 'data-status="403"' in html and "Admin pages are for staff users" in html
    assert 'class="topbar"' in html, "the navigation stays"
    response = reviewer_client.get("/flags/999999/")
    assert response.status_code == 404 and 'data-status="404"' in response.content.decode()
    assert "Search the catalogue" in response.content.decode()


def test_filter_errors_name_their_field(reviewer_client):
    html = reviewer_client.get(
        reverse("review_queue"), {"min_score": "abc", "max_score": "7"}
    ).content.decode()
    assert "min score: enter a number from 0 to 1" in html and "max score: enter a number from 0 to 1" in html


def test_every_response_says_its_server_time_and_database_share(reviewer_client, catalogue):
    import re

    timing = reviewer_client.get(reverse("catalogue"))["Server-Timing"]
    m = re.fullmatch(r'app;dur=([\d.]+), db;dur=([\d.]+);desc="(\d+) queries"', timing)
    assert m, timing
    app_ms, db_ms, queries = float(m[1]), float(m[2]), int(m[3])
    assert 0 < db_ms <= app_ms and queries >= 1
    refused = Client().get(reverse("catalogue"))  # a redirect to the login page is timed too
    assert refused.status_code == 302 and refused["Server-Timing"].startswith("app;dur=")
