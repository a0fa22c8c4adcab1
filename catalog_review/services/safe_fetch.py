"""Fetching a URL a catalogue names, without letting it reach inside (DESIGN 10).

A catalogue is user input: an image URL may point at the app itself, the database port or a cloud
metadata service. Every hop (the URL and each redirect) is checked before it is connected to:

- http and https only, on any port;
- the host is resolved once, and every address it resolves to must be a public internet address (not
  loopback, private, shared, link-local, multicast, reserved or unspecified, IPv4 or IPv6, IPv4-mapped
  included), unless the host is named in `IMAGE_FETCH_ALLOWED_HOSTS` (host names, addresses or
  networks a user wants reached, e.g. an internal image server);
- the connection goes to the checked address itself (a second DNS answer cannot swap it: rebinding),
  and the connected socket's peer address is checked again;
- the whole download, redirects included, has one deadline: each socket read waits at most the time
  left, so a server that drips one byte at a time cannot hold a worker.

Failures tell the user what to fix without mapping the network behind the worker: every connection
failure reads the same.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import time
import urllib.parse
from dataclasses import dataclass

from django.conf import settings

MAX_REDIRECTS = 5
REDIRECTS = {301, 302, 303, 307, 308}
USER_AGENT = "CatalogReview/0.1 (image import)"
_READ_CHUNK = 64 * 1024
UNREACHABLE = "could not download the image (no connection to the server)"


class FetchRefused(Exception):
    """The URL (or a redirect) may not be fetched: not http(s), or not a public address."""


class FetchTimeout(Exception):
    pass


class FetchFailed(Exception):
    """Connection-level failure (refused, reset, DNS): retryable, and always the same message."""


@dataclass
class FetchResponse:
    status: int
    reason: str
    headers: http.client.HTTPMessage
    body: bytes


def _allowed(host: str, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    for entry in settings.IMAGE_FETCH_ALLOWED_HOSTS:
        if entry.lower() == host.lower():
            return True
        try:
            if address in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue
    return False


def is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


def _resolve(host: str, port: int, deadline: float) -> list[tuple]:
    if time.monotonic() > deadline:
        raise FetchTimeout()
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise FetchFailed(UNREACHABLE) from None
    checked = []
    for family, kind, proto, _, sockaddr in infos:
        address = ipaddress.ip_address(sockaddr[0].split("%")[0])
        if not (is_public(address) or _allowed(host, address)):
            raise FetchRefused("the image URL does not point to a public internet address")
        checked.append((family, kind, proto, sockaddr, address))
    if not checked:
        raise FetchFailed(UNREACHABLE)
    return checked


def _connect(host: str, port: int, deadline: float) -> socket.socket:
    for family, kind, proto, sockaddr, address in _resolve(host, port, deadline):
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            sock.connect(sockaddr)
            peer = ipaddress.ip_address(sock.getpeername()[0].split("%")[0])
            if peer != address:  # (cannot differ for a direct connect; checked all the same)
                raise FetchRefused("the image URL does not point to a public internet address")
            return sock
        except FetchRefused:
            sock.close()
            raise
        except TimeoutError:
            sock.close()
            raise FetchTimeout() from None
        except OSError:
            sock.close()
            continue
    raise FetchFailed(UNREACHABLE)


class _PinnedConnection(http.client.HTTPConnection):
    """An HTTP(S) connection over a socket we opened to a checked address."""

    def __init__(self, host: str, port: int, sock: socket.socket, tls: bool):
        super().__init__(host, port)
        self.sock = sock
        if tls:
            context = ssl.create_default_context()
            self.sock = context.wrap_socket(sock, server_hostname=host)

    def connect(self):  # the socket is already connected
        pass


def fetch(url: str, *, timeout: float, max_bytes: int, too_large: type[Exception]) -> FetchResponse:
    """GET `url` following up to MAX_REDIRECTS redirects, all within `timeout` seconds; the body is cut
    at `max_bytes` (raising `too_large(message)`). Raises FetchRefused, FetchTimeout, FetchFailed."""
    deadline = time.monotonic() + timeout
    for _ in range(MAX_REDIRECTS + 1):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise FetchRefused("only http(s) URLs with a host name are fetched")
        tls = parts.scheme == "https"
        try:
            port = parts.port or (443 if tls else 80)
        except ValueError:
            raise FetchRefused("the URL's port is not a number") from None
        host = parts.hostname
        sock = _connect(host, port, deadline)
        connection = live = None
        try:
            connection = _PinnedConnection(host, port, sock, tls)
            target = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
            live = connection.sock  # (the connection lets go of it once the response owns it)
            connection.request("GET", target, headers={"User-Agent": USER_AGENT, "Accept": "image/*"})
            live.settimeout(max(0.01, deadline - time.monotonic()))
            response = connection.getresponse()
            if response.status in REDIRECTS and response.getheader("Location"):
                url = urllib.parse.urljoin(url, response.getheader("Location"))
                continue
            declared = response.getheader("Content-Length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise too_large(
                    f"server announces {int(declared):,} bytes, over the {max_bytes:,}-byte limit"
                )
            chunks, received = [], 0
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise FetchTimeout()
                live.settimeout(left)
                chunk = response.read1(_READ_CHUNK)
                if not chunk:
                    break
                received += len(chunk)
                if received > max_bytes:
                    raise too_large(f"download exceeded the {max_bytes:,}-byte limit")
                chunks.append(chunk)
            return FetchResponse(response.status, response.reason, response.headers, b"".join(chunks))
        except TimeoutError:
            raise FetchTimeout() from None
        except ssl.SSLError:
            raise FetchFailed(
                "could not download the image (the server's TLS certificate was refused)"
            ) from None
        except (http.client.HTTPException, OSError):
            raise FetchFailed(UNREACHABLE) from None
        finally:
            for opened in (live, sock):
                if opened is not None:
                    opened.close()
    raise FetchRefused(f"more than {MAX_REDIRECTS} redirects")
