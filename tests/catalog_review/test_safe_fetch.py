"""Image URLs never reach inside (DESIGN 10): loopback, private, link-local and reserved addresses are
refused, on the URL and on every redirect; http(s) only; one deadline for the whole download; every
connection failure reads the same. Real sockets, local servers."""

import http.server
import ipaddress
import shutil
import ssl
import subprocess
import threading
import time

import pytest

from catalog_review.models import ImageStatus
from catalog_review.services.images import ImageRejected, TransientFetchError, fetch_image_bytes
from catalog_review.services.safe_fetch import UNREACHABLE, is_public
from tests.conftest import jpeg_bytes

GOOD = jpeg_bytes(size=(20, 20))


def serve(host: str, routes: dict):
    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            routes[self.path](self)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer((host, 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://{host}:{server.server_address[1]}", hits


def image(handler):
    handler.send_response(200)
    handler.send_header("Content-Length", str(len(GOOD)))
    handler.end_headers()
    handler.wfile.write(GOOD)


def redirect_to(location):
    def send(handler):
        handler.send_response(302)
        handler.send_header("Location", location)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    return send


def drip(handler):  # one byte every 0.3 s: 30 s for the whole image
    handler.send_response(200)
    handler.send_header("Content-Length", "100")
    handler.end_headers()
    try:
        for _ in range(100):
            handler.wfile.write(b"\xff")
            handler.wfile.flush()
            time.sleep(0.3)
    except OSError:
        pass


@pytest.fixture
def inside():
    """The 'internal' server: the app, a database, a metadata service."""
    server, url, hits = serve("127.0.0.1", {"/admin/": image, "/good.jpg": image})
    yield url, hits
    server.shutdown()


@pytest.fixture
def allowed(settings):
    """An image server the user allowed (on 127.0.0.2), and the deadline the tests use."""
    settings.IMAGE_FETCH_ALLOWED_HOSTS = ["127.0.0.2"]
    settings.IMAGE_FETCH_TIMEOUT_S = 2.0
    yield settings


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",
     "224.0.0.1", "240.0.0.1", "::1", "fe80::1", "fc00::1", "::ffff:127.0.0.1", "::"],
)  # fmt: skip
def test_inside_addresses_are_not_public(address):
    assert not is_public(ipaddress.ip_address(address))


def test_public_addresses_are(settings):
    assert is_public(ipaddress.ip_address("93.184.216.34")) and is_public(
        ipaddress.ip_address("2606:4700::1")
    )


def test_loopback_urls_are_refused_without_a_request(allowed, inside):
    url, hits = inside
    port = url.rsplit(":", 1)[1]
    for target in (f"{url}/admin/", f"http://localhost:{port}/good.jpg", "http://localhost:5432/",
                   f"http://[::1]:{port}/", "http://169.254.169.254/latest/meta-data/"):  # fmt: skip
        with pytest.raises(ImageRejected, match="not point to a public internet address") as refused:
            fetch_image_bytes(target)
        assert refused.value.status == ImageStatus.FETCH_FAILED
    assert hits == [], "the inside server was never asked"


def test_a_redirect_inside_or_off_http_is_refused(allowed, inside):
    url, hits = inside
    routes = {"/to-inside.jpg": redirect_to(f"{url}/admin/"), "/to-ftp.jpg": redirect_to("ftp://127.0.0.2/x.jpg"),
              "/good.jpg": image, "/hop.jpg": redirect_to("/good.jpg")}  # fmt: skip
    server, outside, _ = serve("127.0.0.2", routes)
    try:
        assert fetch_image_bytes(f"{outside}/hop.jpg") == GOOD, "an allowed host and its redirects work"
        with pytest.raises(ImageRejected, match="public internet address"):
            fetch_image_bytes(f"{outside}/to-inside.jpg")
        with pytest.raises(ImageRejected, match="only http"):
            fetch_image_bytes(f"{outside}/to-ftp.jpg")
    finally:
        server.shutdown()
    assert hits == []


def test_one_deadline_for_the_whole_download(allowed):
    server, outside, _ = serve("127.0.0.2", {"/drip.jpg": drip})
    try:
        started = time.monotonic()
        with pytest.raises(TransientFetchError, match="longer than 2 s"):
            fetch_image_bytes(f"{outside}/drip.jpg")
        assert time.monotonic() - started < 10, "held for the deadline, not for the 30 s of the drip"
    finally:
        server.shutdown()


def test_connection_failures_read_the_same(allowed):
    server, _, _ = serve("127.0.0.2", {})
    port = server.server_address[1]
    server.shutdown()
    server.server_close()  # nothing listens there now
    messages = set()
    for target in (f"http://127.0.0.2:{port}/x.jpg", "http://no-such-host.invalid/x.jpg"):
        with pytest.raises(TransientFetchError) as failed:
            fetch_image_bytes(target)
        messages.add(str(failed.value))
    assert messages == {UNREACHABLE}


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
def test_https_checks_the_certificate_of_the_host_named_in_the_url(allowed, tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.2",
         "-addext", "subjectAltName=IP:127.0.0.2", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    server, _, hits = serve("127.0.0.2", {"/good.jpg": image})
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    try:
        with pytest.raises(TransientFetchError, match="TLS certificate was refused"):
            fetch_image_bytes(f"https://127.0.0.2:{server.server_address[1]}/good.jpg")  # self-signed
    finally:
        server.shutdown()
    assert hits == []
