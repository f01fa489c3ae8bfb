"""Thumbnails of images, with Pillow: crop 96, scale 320 and 640, as WebP or JPEG.

Runs in a worker thread (decoding is CPU work that releases the GIL in Pillow's C code).
EXIF orientation is applied to the pixels and no metadata is written to the output, so
a thumbnail carries neither EXIF nor GPS. The pixel limit is checked from the header,
before anything is decoded: a decompression bomb (a small file that decodes to
gigabytes) is refused, not decoded.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps

from chatd.domain.media import THUMBNAIL_SIZES
from chatd.errors import BadRequest

_ORIENTATION = 0x0112


@dataclass(frozen=True, slots=True)
class Rendered:
    size: int
    data: bytes
    content_type: str
    width: int
    height: int


@dataclass(frozen=True, slots=True)
class ImageInfo:
    #: As displayed (after EXIF orientation).
    width: int
    height: int
    thumbnails: list[Rendered]


def render(path: Path, *, max_pixels: int, image_format: str) -> ImageInfo | None:
    """The image's displayed size and its thumbnails; None when Pillow cannot decode it
    (a format it does not know: the upload is kept, without thumbnails). Raises 400
    `image_too_large` past `max_pixels`."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise BadRequest(f"the image is {width}x{height} pixels; at most {max_pixels} "
                                 "are decoded (media.max_image_pixels)",
                                 code="image_too_large")
            # Orientations 5-8 turn the picture a quarter: it is shown taller than wide.
            if image.getexif().get(_ORIENTATION, 1) in (5, 6, 7, 8):
                width, height = height, width
            with warnings.catch_warnings():
                # Pillow's own bomb guard is a warning below twice its limit; the check
                # above is the limit, so its warnings are noise here.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                # JPEG can decode at a reduced scale directly, far faster for photos.
                image.draft("RGB", (1280, 1280))
                oriented = ImageOps.exif_transpose(image)
                oriented.load()
    except Image.DecompressionBombError:
        # Pillow's own guard (twice its default limit) fired before the header check.
        raise BadRequest("the image has more pixels than are decoded "
                         "(media.max_image_pixels)", code="image_too_large") from None
    except BadRequest:
        raise
    except (OSError, ValueError, SyntaxError):
        return None
    if oriented.mode not in ("RGB", "RGBA"):
        oriented = oriented.convert("RGBA" if "A" in oriented.getbands() else "RGB")
    rendered = [_one(oriented, edge, crop, image_format) for edge, crop in THUMBNAIL_SIZES]
    return ImageInfo(width, height, rendered)


def _one(image: Image.Image, edge: int, crop: bool, image_format: str) -> Rendered:
    if crop:
        small = ImageOps.fit(image, (edge, edge), Image.Resampling.LANCZOS)
    else:
        small = image.copy()
        small.thumbnail((edge, edge), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    if image_format == "jpeg":
        if small.mode != "RGB":
            small = small.convert("RGB")
        # No exif= argument: nothing of the original's metadata is carried over.
        small.save(out, "JPEG", quality=82, optimize=True)
        content_type = "image/jpeg"
    else:
        small.save(out, "WEBP", quality=80, method=4)
        content_type = "image/webp"
    return Rendered(edge, out.getvalue(), content_type, small.width, small.height)
