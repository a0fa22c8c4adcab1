"""Product images: resolve a catalogue's image reference, verify the bytes, store content-addressed.

Every failure is an `ImageRejected` with the image status to record and a sentence for the user;
nothing here raises anything else for bad data.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from PIL import Image, UnidentifiedImageError

from catalog_review.models import ImageStatus
from catalog_review.services import safe_fetch

ALLOWED_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp"}


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
    """Download with a byte cap and one deadline for the whole download (redirects included), refusing
    any hop that does not go to a public internet address (`services.safe_fetch`). Permanent failures
    raise ImageRejected, ones worth retrying raise TransientFetchError."""
    if not is_url(url):
        raise ImageRejected(ImageStatus.INVALID, f"not an http(s) URL: {url!r}")
    timeout = settings.IMAGE_FETCH_TIMEOUT_S

    def too_large(message: str) -> ImageRejected:
        return ImageRejected(ImageStatus.TOO_LARGE, message)

    try:
        response = safe_fetch.fetch(
            url, timeout=timeout, max_bytes=settings.IMAGE_MAX_BYTES, too_large=too_large
        )
    except safe_fetch.FetchRefused as exc:
        raise ImageRejected(ImageStatus.FETCH_FAILED, f"image URL refused: {exc}") from None
    except safe_fetch.FetchTimeout:
        raise TransientFetchError(f"download took longer than {timeout:g} s") from None
    except safe_fetch.FetchFailed as exc:
        raise TransientFetchError(str(exc)) from None
    if response.status >= 500 or response.status == 429:
        raise TransientFetchError(f"HTTP {response.status} from server")
    if response.status >= 300:
        raise ImageRejected(ImageStatus.FETCH_FAILED, f"HTTP {response.status} {response.reason}")
    return response.body
