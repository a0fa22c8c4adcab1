"""A real Celery worker process over real Redis: http(s) images are downloaded by `default`-queue
tasks that update their Job row."""

import http.server
import json
import threading
import time

import pytest

from catalog_review.models import ImageStatus, Job, Product
from catalog_review.services.catalogue_import import catalogue_import
from tests.conftest import jpeg_bytes, wait_for

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

GOOD = jpeg_bytes(size=(40, 30))


class ImageHandler(http.server.BaseHTTPRequestHandler):
    hits: dict[str, int] = {}

    def do_GET(self):
        ImageHandler.hits[self.path] = ImageHandler.hits.get(self.path, 0) + 1
        if self.path == "/good.jpg":
            self._send(200, GOOD, "image/jpeg")
        elif self.path == "/big.jpg":  # over the worker's 200,000-byte limit, no Content-Length
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.end_headers()
            for _ in range(30):
                self.wfile.write(b"\xff" * 10_000)
        elif self.path == "/page.html":
            self._send(200, b"<html>not an image</html>", "text/html")
        elif self.path == "/slow.jpg":  # longer than the worker's 3 s timeout
            time.sleep(5)
            self._send(200, GOOD, "image/jpeg")
        elif self.path == "/flaky.jpg" and ImageHandler.hits[self.path] == 1:
            self._send(503, b"busy", "text/plain")
        elif self.path == "/flaky.jpg":
            self._send(200, GOOD, "image/jpeg")
        else:
            self._send(404, b"not found", "text/plain")

    def _send(self, status, body, content_type):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def image_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), ImageHandler)
    ImageHandler.hits = {}
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_worker_downloads_images_and_finishes_the_job(celery_worker, image_server, tmp_path, media_root):
    rows = [
        {
            "sku": name,
            "title": name,
            "image": f"{image_server}/{name}.jpg" if name != "page" else f"{image_server}/page.html",
        }
        for name in ("good", "big", "page", "missing", "slow", "flaky")
    ]
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))

    report = catalogue_import(path=path)
    assert report.images_queued == 6 and report.fetch_job_id is not None
    # (no check of the "pending" state here: the live worker may already have fetched some)

    job = wait_for(
        lambda: Job.objects.filter(pk=report.fetch_job_id, status=Job.Status.SUCCEEDED).first(),
        timeout=60,
        message="the image download job to finish",
    )
    assert (job.total, job.done, job.failed) == (6, 2, 4)
    products = {p.sku: p for p in Product.objects.all()}
    assert products["good"].image_status == ImageStatus.OK
    assert (media_root / products["good"].image).read_bytes() == GOOD
    assert products["flaky"].image_status == ImageStatus.OK, "a 503 is retried"
    assert products["big"].image_status == ImageStatus.TOO_LARGE
    assert products["page"].image_status == ImageStatus.INVALID
    assert products["missing"].image_status == ImageStatus.FETCH_FAILED
    assert "HTTP 404" in products["missing"].image_error
    assert products["slow"].image_status == ImageStatus.FETCH_FAILED
    assert "gave up after retries" in products["slow"].image_error

    # re-importing the same catalogue downloads nothing again
    hits = dict(ImageHandler.hits)
    report = catalogue_import(path=path)
    assert report.images_queued == 4  # the failed ones are tried again; the good ones are kept
    wait_for(
        lambda: Job.objects.filter(pk=report.fetch_job_id, status=Job.Status.SUCCEEDED).exists(),
        timeout=60,
        message="the second download job",
    )
    assert ImageHandler.hits["/good.jpg"] == hits["/good.jpg"]
    assert Product.objects.get(sku="good").image_status == ImageStatus.OK


def test_redelivered_task_counts_once(celery_worker, image_server):
    """acks_late means a task can run twice; the second delivery must change nothing."""
    from catalog_review.services import jobs as job_service
    from catalog_review.tasks import fetch_product_image
    from tests.factories import ProductFactory

    url = f"{image_server}/good.jpg"
    product = ProductFactory(image_status=ImageStatus.PENDING, image_source=url)
    job = job_service.job_create(kind=Job.Kind.FETCH_IMAGES, total=1)
    fetch_product_image.delay(product_id=product.pk, url=url, job_id=job.pk)
    wait_for(
        lambda: Job.objects.filter(pk=job.pk, status=Job.Status.SUCCEEDED).exists(),
        timeout=30,
        message="the job",
    )
    # the same message delivered again (acks_late: a worker that dies before acknowledging leaves it to
    # be delivered again), run here to its end before the assertions
    late = fetch_product_image.apply(kwargs={"product_id": product.pk, "url": url, "job_id": job.pk})
    assert late.get() == "skipped"
    job.refresh_from_db()
    assert (job.done, job.failed) == (1, 0)
