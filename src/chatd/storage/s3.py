"""The S3-compatible blob backend: path-style URLs, SigV4, multipart above a threshold.

Requests are signed with botocore's own SigV4 signer (`S3SigV4Auth`, `S3SigV4QueryAuth`
for presigned URLs) and sent with httpx, which runs on Trio. botocore is used for the
signature only: its HTTP stack (urllib3) blocks and would need a thread per request, and
the signing rules are the part worth not writing ourselves (docs/architecture.md).

Payload hashes: every upload is staged and hashed before it is stored, so a single PUT
is signed with the sha256 already known (no second read). A multipart upload reads one
part at a time (at most `multipart_threshold` bytes in memory), hashes and sends it.

Keys are `<prefix><sha256>`; the prefix is the shard's name, so shards sharing a bucket
each count their own references and never delete each other's copy of the same bytes.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import trio
from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from chatd.storage.errors import StorageError


class BlobBackendError(StorageError):
    """The object store answered with an error (or not at all)."""


@dataclass(frozen=True)
class S3Settings:
    endpoint: str
    bucket: str
    region: str
    access_key: str
    secret_key: str = field(repr=False)
    multipart_threshold: int = 16 * 1024 * 1024
    prefix: str = ""
    timeout: float = 60.0


class _KnownPayloadAuth(S3SigV4Auth):  # type: ignore[misc]
    """SigV4 with the payload's sha256 given, not computed from the body (the body is a
    stream, and its hash is known already)."""

    def payload(self, request: AWSRequest) -> str:
        known: str | None = request.context.get("payload_sha256")
        if known is not None:
            return known
        result: str = super().payload(request)
        return result


_UPLOAD_ID = re.compile(rb"<UploadId>([^<]+)</UploadId>")
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


class S3BlobStore:
    def __init__(self, settings: S3Settings) -> None:
        self._settings = settings
        self._credentials = Credentials(settings.access_key, settings.secret_key)
        self._http = httpx.AsyncClient(timeout=settings.timeout)

    @property
    def settings(self) -> S3Settings:
        return self._settings

    def _url(self, sha256: str = "", query: str = "", *, prefix: str | None = None) -> str:
        base = f"{self._settings.endpoint.rstrip('/')}/{quote(self._settings.bucket)}"
        if sha256:
            base += "/" + quote((self._settings.prefix if prefix is None else prefix) + sha256)
        return f"{base}?{query}" if query else base

    def _signed(self, method: str, url: str, payload_sha256: str,
                headers: dict[str, str] | None = None) -> dict[str, str]:
        request = AWSRequest(method=method, url=url, headers=headers or {})
        request.context["payload_sha256"] = payload_sha256
        _KnownPayloadAuth(self._credentials, "s3", self._settings.region).add_auth(request)
        return dict(request.headers.items())

    async def _send(self, method: str, url: str, *, payload_sha256: str = _EMPTY_SHA256,
                    content: Any = None, headers: dict[str, str] | None = None,
                    ok: tuple[int, ...] = (200,)) -> httpx.Response:
        signed = self._signed(method, url, payload_sha256, headers)
        try:
            response = await self._http.request(method, url, content=content, headers=signed)
        except httpx.HTTPError as exc:
            raise BlobBackendError(f"S3 {method} failed: {exc}") from exc
        if response.status_code not in ok:
            raise BlobBackendError(f"S3 {method} answered {response.status_code}: "
                                   f"{response.text[:300]}")
        return response

    async def create_bucket(self) -> None:
        """Make the bucket (tests and first setup); an existing one is fine."""
        await self._send("PUT", self._url(), ok=(200, 409))

    async def put(self, sha256: str, staged: Path, size: int) -> None:
        try:
            if size <= self._settings.multipart_threshold:
                await self._put_single(sha256, staged, size)
            else:
                await self._put_multipart(sha256, staged, size)
        finally:
            await trio.Path(staged).unlink(missing_ok=True)

    async def _put_single(self, sha256: str, staged: Path, size: int) -> None:
        await self._send("PUT", self._url(sha256), payload_sha256=sha256,
                         content=_file_range(staged, 0, size),
                         headers={"Content-Length": str(size)})

    async def _put_multipart(self, sha256: str, staged: Path, size: int) -> None:
        created = await self._send("POST", self._url(sha256, "uploads="))
        found = _UPLOAD_ID.search(created.content)
        if found is None:
            raise BlobBackendError("S3 did not give an UploadId for a multipart upload")
        upload_id = found.group(1).decode()
        part_size = self._settings.multipart_threshold
        etags: list[str] = []
        try:
            for number, start in enumerate(range(0, size, part_size), start=1):
                length = min(part_size, size - start)
                data = await trio.to_thread.run_sync(_read_range, staged, start, length)
                query = urlencode({"partNumber": number, "uploadId": upload_id})
                response = await self._send(
                    "PUT", self._url(sha256, query), content=data,
                    payload_sha256=hashlib.sha256(data).hexdigest(),
                    headers={"Content-Length": str(length)})
                etags.append(response.headers.get("ETag", ""))
            body = ("<CompleteMultipartUpload>" + "".join(
                f"<Part><PartNumber>{number}</PartNumber><ETag>{etag}</ETag></Part>"
                for number, etag in enumerate(etags, start=1))
                + "</CompleteMultipartUpload>").encode()
            await self._send("POST", self._url(sha256, urlencode({"uploadId": upload_id})),
                             content=body, payload_sha256=hashlib.sha256(body).hexdigest())
        except BaseException:
            with trio.CancelScope(shield=True), trio.move_on_after(10):
                await self._send("DELETE", self._url(sha256, urlencode(
                    {"uploadId": upload_id})), ok=(200, 204, 404))
            raise

    async def read(self, sha256: str, start: int, length: int, *,
                   prefix: str | None = None) -> AsyncIterator[bytes]:
        """`prefix`: another shard's, to read its blob from the shared bucket."""
        if length <= 0:
            return
        url = self._url(sha256, prefix=prefix)
        headers = self._signed("GET", url, _EMPTY_SHA256,
                               {"Range": f"bytes={start}-{start + length - 1}"})
        async with self._http.stream("GET", url, headers=headers) as response:
            if response.status_code not in (200, 206):
                await response.aread()
                raise BlobBackendError(f"S3 GET answered {response.status_code}")
            async for chunk in response.aiter_bytes(1 << 20):
                yield chunk

    def read_of(self, shard: str, sha256: str, start: int, length: int
                ) -> AsyncIterator[bytes]:
        """Another shard's blob, from the bucket they share (under its prefix)."""
        return self.read(sha256, start, length, prefix=f"{shard}/")

    async def delete(self, sha256: str) -> None:
        await self._send("DELETE", self._url(sha256), ok=(200, 204, 404))

    async def exists(self, sha256: str) -> bool:
        response = await self._send("HEAD", self._url(sha256), ok=(200, 404))
        return response.status_code == 200

    def presigned_url(self, sha256: str, ttl: float, *, content_type: str,
                      disposition: str) -> str | None:
        """A URL S3 serves directly until it expires, with the type and disposition chatd
        would have sent (S3's response-* overrides)."""
        query = urlencode({"response-content-type": content_type,
                           "response-content-disposition": disposition}, quote_via=quote)
        request = AWSRequest(method="GET", url=self._url(sha256, query))
        S3SigV4QueryAuth(self._credentials, "s3", self._settings.region,
                         expires=int(ttl)).add_auth(request)
        url: str = request.url
        return url

    async def aclose(self) -> None:
        await self._http.aclose()


def _read_range(path: Path, start: int, length: int) -> bytes:
    with open(path, "rb") as file:
        file.seek(start)
        return file.read(length)


async def _file_range(path: Path, start: int, length: int) -> AsyncIterator[bytes]:
    async with await trio.open_file(path, "rb") as file:
        await file.seek(start)
        remaining = length
        while remaining > 0:
            chunk = await file.read(min(1 << 20, remaining))
            if not chunk:
                break
            remaining -= len(chunk)
            yield chunk
