"""Product images: resolve a catalogue's image reference, verify the bytes, store content-addressed.

Every failure is an `ImageRejected` with the image status to record and a sentence for the user;
nothing here raises anything else for bad data.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from PIL import Image, UnidentifiedImageError

from catalog_review.models import ImageStatus

ALLOWED_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp"}
_READ_CHUNK = 64 * 1024


class ImageRejected(Exception):
    def __init__(self, status: str, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


class TransientFetchError(Exception):
    """A download failed in a way that may succeed later (timeout, 5xx, connection reset)."""


@dataclass(frozen=True)
class VerifiedImage:
    data: bytes
    sha256: str
    extension: str
    width: int
    height: int


def is_url(reference: str) -> bool:
    return reference.lower().startswith(("http://", "https://"))


def resolve_local_image(reference: str, images_root: Path) -> Path:
    """The file a local reference points at; it must lie inside `images_root` (no `..` escapes,
    no symlinks out, absolute paths only inside the root)."""
    if "\x00" in reference:
        raise ImageRejected(ImageStatus.INVALID, "image path contains a NUL byte")
    root = images_root.resolve()
    candidate = Path(reference)
    if not candidate.is_absolute():
        candidate = root / candidate
    resolved = candidate.resolve()
    if not resolved.is_relative_to(root):
        raise ImageRejected(
            ImageStatus.INVALID,
            f"image path {reference!r} points outside the images root {root} "
            "(pass --images-root to widen it)",
        )
    if not resolved.exists():
        raise ImageRejected(ImageStatus.MISSING, f"image file {reference!r} not found")
    if not resolved.is_file():
        raise ImageRejected(ImageStatus.INVALID, f"image path {reference!r} is not a regular file")
    return resolved


def read_local_image(path: Path) -> bytes:
    size = path.stat().st_size
    if size > settings.IMAGE_MAX_BYTES:
        raise ImageRejected(
            ImageStatus.TOO_LARGE,
            f"image file is {size:,} bytes, over the {settings.IMAGE_MAX_BYTES:,}-byte limit",
        )
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ImageRejected(
            ImageStatus.INVALID, f"image file could not be read: {exc.strerror or exc}"
        ) from None


def verify_image(data: bytes) -> VerifiedImage:
    """Decode the whole image (catches truncation) after checking its pixel count against the
    decompression-bomb limit, which is read from the header before any pixel is decoded."""
    if len(data) > settings.IMAGE_MAX_BYTES:
        raise ImageRejected(
            ImageStatus.TOO_LARGE,
            f"image is {len(data):,} bytes, over the {settings.IMAGE_MAX_BYTES:,}-byte limit",
        )
    if not data:
        raise ImageRejected(ImageStatus.INVALID, "image file is empty")
    max_pixels = settings.IMAGE_MAX_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels  # Pillow refuses > 2x this in open(); we refuse > 1x below
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if image.format not in ALLOWED_FORMATS:
                raise ImageRejected(
                    ImageStatus.INVALID,
                    f"image format {image.format} is not supported (use {', '.join(ALLOWED_FORMATS)})",
                )
            if width * height > max_pixels:
                raise ImageRejected(
                    ImageStatus.TOO_LARGE,
                    f"image is {width}x{height} pixels, over the {max_pixels:,}-pixel limit "
                    "(possible decompression bomb)",
                )
            image.load()
            extension = ALLOWED_FORMATS[image.format]
    except Image.DecompressionBombError:
        raise ImageRejected(
            ImageStatus.TOO_LARGE,
            f"image is over the {max_pixels:,}-pixel limit (possible decompression bomb)",
        ) from None
    except UnidentifiedImageError:
        raise ImageRejected(ImageStatus.INVALID, "file is not an image Pillow can read") from None
    except ImageRejected:
        raise
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageRejected(ImageStatus.INVALID, f"image is corrupt or truncated: {exc}") from None
    return VerifiedImage(
        data=data, sha256=hashlib.sha256(data).hexdigest(), extension=extension, width=width, height=height
    )


def store_image(image: VerifiedImage) -> str:
    """Write the bytes under MEDIA_ROOT at a path named by their sha256 (once); return that path."""
    relative = f"images/{image.sha256[:2]}/{image.sha256}.{image.extension}"
    target = Path(settings.MEDIA_ROOT) / relative
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as tmp:
            tmp.write(image.data)
        os.replace(tmp.name, target)  # atomic: a reader never sees half a file
        os.chmod(target, 0o644)
    return relative


def fetch_image_bytes(url: str) -> bytes:
    """Download with a byte cap and an overall deadline. Permanent failures raise ImageRejected,
    ones worth retrying raise TransientFetchError."""
    if not is_url(url):
        raise ImageRejected(ImageStatus.INVALID, f"not an http(s) URL: {url!r}")
    timeout = settings.IMAGE_FETCH_TIMEOUT_S
    limit = settings.IMAGE_MAX_BYTES
    deadline = time.monotonic() + timeout
    request = urllib.request.Request(url, headers={"User-Agent": "CatalogReview/0.1 (image import)"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            declared = response.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > limit:
                raise ImageRejected(
                    ImageStatus.TOO_LARGE,
                    f"server announces {int(declared):,} bytes, over the {limit:,}-byte limit",
                )
            chunks, received = [], 0
            while True:
                if time.monotonic() > deadline:
                    raise TransientFetchError(f"download took longer than {timeout:g} s")
                chunk = response.read(_READ_CHUNK)
                if not chunk:
                    break
                received += len(chunk)
                if received > limit:
                    raise ImageRejected(ImageStatus.TOO_LARGE, f"download exceeded the {limit:,}-byte limit")
                chunks.append(chunk)
            return b"".join(chunks)
    except urllib.error.HTTPError as exc:
        if exc.code >= 500 or exc.code == 429:
            raise TransientFetchError(f"HTTP {exc.code} from server") from None
        raise ImageRejected(ImageStatus.FETCH_FAILED, f"HTTP {exc.code} {exc.reason}") from None
    except TimeoutError:
        raise TransientFetchError(f"no answer within {timeout:g} s") from None
    except urllib.error.URLError as exc:
        raise TransientFetchError(f"could not connect: {exc.reason}") from None
    except (ConnectionError, OSError) as exc:
        if isinstance(exc, ImageRejected):
            raise
        raise TransientFetchError(f"connection failed: {exc}") from None
