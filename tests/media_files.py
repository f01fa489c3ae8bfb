"""Real files for the media tests, made in the test: a JPEG with EXIF orientation and
GPS, a PNG, a PDF, random bytes, a sparse file, a decompression bomb."""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import AsyncIterator
from pathlib import Path

import trio
from PIL import Image

#: EXIF tags.
ORIENTATION = 0x0112
GPS_IFD = 0x8825


def jpeg_with_exif(width: int = 200, height: int = 100) -> bytes:
    """Red on the left half, blue on the right, stored landscape with orientation 6
    (shown rotated a quarter clockwise: portrait, red on top), and a GPS position."""
    image = Image.new("RGB", (width, height), "blue")
    image.paste((255, 0, 0), (0, 0, width // 2, height))
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    exif[GPS_IFD] = {1: "N", 2: (52.0, 22.0, 1.5), 3: "E", 4: (4.0, 53.0, 2.0)}
    out = io.BytesIO()
    image.save(out, "JPEG", exif=exif.tobytes(), quality=90)
    return out.getvalue()


def png(width: int = 64, height: int = 48) -> bytes:
    out = io.BytesIO()
    Image.new("RGBA", (width, height), (0, 128, 0, 200)).save(out, "PNG")
    return out.getvalue()


def pdf() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (20, 20), "white").save(out, "PDF")
    return out.getvalue()


def bomb(pixels_per_side: int = 20_000) -> bytes:
    """A PNG of 400 megapixels that compresses to a few hundred KB."""
    out = io.BytesIO()
    Image.new("1", (pixels_per_side, pixels_per_side)).save(out, "PNG", optimize=True)
    return out.getvalue()


def sparse_file(path: Path, size: int) -> Path:
    """A file of `size` bytes that takes almost no disk: a hole with a few bytes in it."""
    with open(path, "wb") as file:
        file.write(b"start")
        file.seek(size // 2)
        file.write(b"middle")
        file.truncate(size)
    return path


def sha256_of_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


async def file_chunks(path: Path, chunk: int = 1 << 20) -> AsyncIterator[bytes]:
    async with await trio.open_file(path, "rb") as file:
        while data := await file.read(chunk):
            yield data


def random_bytes(size: int) -> bytes:
    return os.urandom(size)
