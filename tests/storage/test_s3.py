"""The S3 backend against moto's S3 server on loopback: single and multipart puts,
ranged reads, deletes, presigned URLs; and a shard serving media from it."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import trio
from moto.server import ThreadedMotoServer

from chatd.storage.blobs import Staging
from chatd.storage.errors import StorageError
from chatd.storage.s3 import S3BlobStore, S3Settings
from tests.conftest import ServerFactory
from tests.helpers import new_account
from tests.media_files import png

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def settings(endpoint: str, bucket: str) -> S3Settings:
    return S3Settings(endpoint=endpoint, bucket=bucket, region="us-east-1",
                      access_key="testing", secret_key="testing",
                      multipart_threshold=5 * MIB, prefix="shard-a/")


@pytest.fixture
async def store(moto_endpoint: str) -> AsyncIterator[S3BlobStore]:
    blobs = S3BlobStore(settings(moto_endpoint, f"b{os.getpid()}-{trio.current_time():.0f}"))
    await blobs.create_bucket()
    yield blobs
    await blobs.aclose()


async def staged(tmp_path: Path, data: bytes) -> tuple[str, Path]:
    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(data), MIB):
            yield data[start:start + MIB]

    file = await Staging(tmp_path / "staging").write(chunks())
    return file.sha256, file.path


async def read_all(store: S3BlobStore, sha256: str, start: int, length: int) -> bytes:
    return b"".join([chunk async for chunk in store.read(sha256, start, length)])


@pytest.mark.parametrize("size", [1000, 12 * MIB + 17])  # one PUT; a multipart upload
async def test_put_read_delete(store: S3BlobStore, tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    sha256, path = await staged(tmp_path, data)
    assert not await store.exists(sha256)
    await store.put(sha256, path, size)
    assert not path.exists()  # the staged file is consumed
    assert await store.exists(sha256)
    assert await read_all(store, sha256, 0, size) == data
    assert await read_all(store, sha256, size - 1, 1) == data[-1:]
    assert await read_all(store, sha256, 5, 100) == data[5:105]
    # Another shard sharing the bucket reads it under this shard's prefix.
    other = S3BlobStore(dataclasses.replace(store.settings, prefix="shard-b/"))
    assert not await other.exists(sha256)
    assert b"".join([c async for c in other.read_of("shard-a", sha256, 7, 9)]) == data[7:16]
    await other.aclose()
    url = store.presigned_url(sha256, 60, content_type="application/pdf",
                              disposition='attachment; filename="x.pdf"')
    assert url is not None
    async with httpx.AsyncClient() as http:
        direct = await http.get(url)
        assert direct.status_code == 200 and hashlib.sha256(direct.content).hexdigest() == sha256
        assert direct.headers["content-type"] == "application/pdf"
        assert direct.headers["content-disposition"] == 'attachment; filename="x.pdf"'
        # (moto's server does not check signatures, so a tampered URL cannot be tested
        # here; real S3 refuses it.)
        assert "X-Amz-Signature=" in url and "X-Amz-Expires=60" in url
    await store.delete(sha256)
    assert not await store.exists(sha256)
    await store.delete(sha256)  # deleting what is gone is not an error


async def test_errors_are_storage_errors(moto_endpoint: str, tmp_path: Path) -> None:
    missing = S3BlobStore(settings(moto_endpoint, "no-such-bucket"))
    sha256, path = await staged(tmp_path, b"x" * 10)
    with pytest.raises(StorageError):
        await missing.put(sha256, path, 10)
    await missing.aclose()


@pytest.mark.parametrize("download", ["proxy", "redirect"])
async def test_a_shard_serves_media_from_s3(start_server: ServerFactory, moto_endpoint: str,
                                            download: str) -> None:
    bucket = f"shard-{download}-{os.getpid()}"
    setup = S3BlobStore(settings(moto_endpoint, bucket))
    await setup.create_bucket()
    await setup.aclose()
    server = await start_server(media={
        "backend": "s3", "s3_endpoint": moto_endpoint, "s3_bucket": bucket,
        "s3_access_key": "testing", "s3_secret_key": "testing", "s3_download": download})
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        alice = await new_account(http)
        data = png()
        response = await http.post("/media/upload", content=data, headers={
            **alice.headers, "Content-Type": "image/png"})
        assert response.status_code == 201, response.text
        body = response.json()
        got = await http.get(body["url"], headers={**alice.headers, "Range": "bytes=1-4"})
        if download == "proxy":
            assert got.status_code == 206 and got.content == data[1:5]
        else:
            assert got.status_code == 302
            direct = await http.get(got.headers["location"])
            assert direct.status_code == 200 and direct.content == data
        thumb = await http.get(f"{body['url']}/thumbnail?size=96", headers=alice.headers,
                               follow_redirects=True)
        assert thumb.status_code == 200 and thumb.content[:4] == b"RIFF"
