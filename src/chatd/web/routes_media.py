"""Routes: /media — upload (streamed), download with Range and ETag, thumbnails, signed
links, deletion, usage, and the operator's quarantine."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from urllib.parse import unquote

from quart import Response, request
from werkzeug.datastructures import Headers
from werkzeug.sansio.multipart import Data, Epilogue, File, MultipartDecoder, NeedData

from chatd.domain import media as rules
from chatd.domain.models import Session
from chatd.errors import BadRequest, LengthRequired
from chatd.services.context import Services
from chatd.services.media import Blob
from chatd.storage.blobs import close_source
from chatd.web import media_response, models
from chatd.web.api import Access, Api, Media
from chatd.web.auth import authenticate
from chatd.web.client_address import client_address
from chatd.web.render import NO_CONTENT, Reply, uploaded
from chatd.web.streamed_body import body_of

#: The paths whose bodies reach their handler unbuffered (web/streamed_body.py).
STREAMED_PATHS = frozenset({"/media/upload"})
#: Seconds an upload may go without a part of its body arriving.
UPLOAD_IDLE_TIMEOUT = 60.0
#: Responses of bytes, of the media's own type: their schema in /openapi.json.
_BYTES = Media("*/*", {"type": "string", "format": "binary"})
#: 304 and 302 carry no body.
_NOTHING = Media("*/*", {"type": "string", "maxLength": 0})
_UPLOAD_TYPES = ("application/octet-stream", "image/jpeg", "image/png", "video/mp4",
                 "application/pdf", "multipart/form-data")


async def _multipart_file(chunks: AsyncIterator[bytes], boundary: bytes,
                          found: dict[str, str]) -> AsyncIterator[bytes]:
    """The one file part of a multipart/form-data body, streamed (werkzeug's sans-I/O
    decoder); other fields are read past. Its filename and type go into `found`."""
    decoder = MultipartDecoder(boundary, max_form_memory_size=64 * 1024)
    in_file = seen_file = False
    finished = False

    def events() -> list[Data | File]:
        nonlocal in_file, seen_file, finished
        out: list[Data | File] = []
        while True:
            event = decoder.next_event()
            if isinstance(event, NeedData):
                return out
            if isinstance(event, Epilogue):
                finished = True
                return out
            if isinstance(event, File):
                if seen_file:
                    raise BadRequest("the form carries more than one file; send one",
                                     code="invalid_field")
                seen_file = in_file = True
                found["filename"] = event.filename or ""
                found["content_type"] = event.headers.get("Content-Type",
                                                          rules.OPAQUE)
            elif isinstance(event, Data) and in_file:
                out.append(event)
                if not event.more_data:
                    in_file = False

    try:
        async for chunk in chunks:
            decoder.receive_data(chunk)
            for event in events():
                if isinstance(event, Data) and event.data:
                    yield event.data
        decoder.receive_data(None)
        for event in events():
            if isinstance(event, Data) and event.data:
                yield event.data
    except ValueError as exc:  # werkzeug's own complaint about a malformed body
        raise BadRequest(f"malformed multipart body: {exc}") from None
    finally:
        await close_source(chunks)
    if not seen_file or not finished:
        raise BadRequest("the form has no complete file part (field 'file')",
                         code="missing_field")


def register(api: Api, services: Services) -> None:
    media = services.media

    def url_of(media_id: int) -> str:
        return f"/media/{media_id}"

    @api.route("POST", "/media/upload",
               summary="Upload a file (raw body or multipart/form-data with one file part)",
               description="Content-Type and Content-Length are required for a raw body; "
                           "X-Filename is an optional label. application/octet-stream is "
                           "stored opaque (end-to-end encrypted media).",
               raw_body=_UPLOAD_TYPES, status=201, response=models.Uploaded,
               errors=(411, 413, 415, 429, 451, 507))
    async def upload(session: Session) -> Reply:
        declared = request.headers.get("Content-Type")
        if not declared:
            raise BadRequest("Content-Type: required (the file's type, or "
                             "application/octet-stream)", code="missing_field")
        length_header = request.headers.get("Content-Length")
        multipart = declared.split(";", 1)[0].strip().lower() == "multipart/form-data"
        if length_header is None and not multipart:
            raise LengthRequired("Content-Length: required for an upload")
        declared_length = int(length_header) if length_header and length_header.isdigit() \
            else None
        media.check_upload_start(session.user_id, declared_length)
        # Charged from the declared length before a byte is read; a body of unknown
        # length (chunked multipart) must find the bucket out of debt, and pays after.
        address = client_address(request, services.proxies)
        services.ratelimits.take("media_bytes", account=session.user_id, address=address,
                                 cost=declared_length if declared_length is not None else 1)
        body = body_of(request, idle_timeout=UPLOAD_IDLE_TIMEOUT)
        found = {"content_type": declared,
                 "filename": _header_filename(request.headers.get("X-Filename", ""))}
        if multipart:
            body = _multipart_file(body, _boundary(declared), found)
        else:
            rules.check_content_type(declared)  # refused before a byte is read
        record = await media.upload(
            session.user_id, chunks=body,
            describe=lambda: (found["content_type"], found["filename"] or None))
        if declared_length is None:
            services.ratelimits.charge("media_bytes", account=session.user_id,
                                       address=address, cost=record.size)
        return uploaded(url_of(record.media_id), record), 201

    @api.route("GET", "/media/usage", summary="Your media usage and quota", response=models.Usage)
    async def usage(session: Session) -> Reply:
        current = media.usage(session.user_id)
        return models.Usage(current.used_bytes, current.quota_bytes)

    async def who(query: models.DownloadQuery, media_id: int) -> int:
        if query.sig is not None:
            return media.link_user(media_id, query.u or "", query.e or "", query.sig)
        session = await authenticate(request, services.users)
        return session.user_id

    @api.route("GET", "/media/{media_id}",
               summary="Download (Range, ETag); a bearer token or a signed link's u, e, sig",
               access=Access.USER_OR_LINK, query=models.DownloadQuery, response=_BYTES,
               also={206: _BYTES, 302: _NOTHING, 304: _NOTHING}, errors=(401, 403, 404, 416, 451))
    async def download(media_id: int, query: models.DownloadQuery) -> Reply:
        user_id = await who(query, media_id)
        return await _respond(services, await media.open_download(media_id, user_id))

    @api.route("GET", "/media/{media_id}/thumbnail",
               summary="A thumbnail of an image (size 96 cropped square, 320 or 640)",
               access=Access.USER_OR_LINK, query=models.ThumbnailQuery, response=_BYTES,
               also={206: _BYTES, 302: _NOTHING, 304: _NOTHING}, errors=(401, 403, 404, 416, 451))
    async def thumbnail(media_id: int, query: models.ThumbnailQuery) -> Reply:
        user_id = await who(query, media_id)
        return await _respond(services, await media.open_download(media_id, user_id,
                                                                  query.size))

    @api.route("POST", "/media/{media_id}/link",
               summary="A signed link to the media that works without a token until it expires",
               body=models.LinkRequest, response=models.Link, errors=(404, 451))
    async def link(session: Session, media_id: int, body: models.LinkRequest) -> Reply:
        query, expires_at = await media.make_link(media_id, session.user_id, body.ttl_s)
        return models.Link(f"{url_of(media_id)}?{query}", expires_at)

    @api.route("DELETE", "/media/{media_id}", summary="Drop your upload's own reference",
               response=None, status=204, errors=(403, 404))
    async def delete(session: Session, media_id: int) -> Reply:
        await media.delete(media_id, session.user_id)
        return NO_CONTENT

    if not services.config.server.admin_token:
        return

    @api.route("POST", "/admin/media/quarantine",
               summary="Make content unavailable by its sha256, now and for future uploads",
               access=Access.ADMIN, body=models.Quarantine, response=None, status=204)
    async def quarantine(body: models.Quarantine) -> Reply:
        await media.quarantine(body.sha256, body.reason)
        return NO_CONTENT


def _header_filename(value: str) -> str:
    """X-Filename is percent-encoded UTF-8 (`encodeURIComponent`); raw UTF-8 bytes, which
    arrive decoded as Latin-1, are taken too. It is cleaned later like any filename."""
    with contextlib.suppress(UnicodeEncodeError, UnicodeDecodeError):
        value = value.encode("latin-1").decode("utf-8")
    return unquote(value, errors="replace")


def _boundary(content_type: str) -> bytes:
    for parameter in content_type.split(";")[1:]:
        name, _, value = parameter.strip().partition("=")
        if name.strip().lower() == "boundary" and value:
            return value.strip().strip('"').encode("latin-1")
    raise BadRequest("Content-Type: multipart/form-data needs a boundary", code="invalid_field")


async def _respond(services: Services, blob: Blob) -> Response:
    """The bytes of `blob` (or a range, or 304, or a redirect to S3), with the headers
    that make a browser treat them as data and never as a page of this origin. A 416 is
    raised: the error handler adds `Content-Range: bytes */size` (web/app.py)."""
    config = services.config.media
    redirect = None
    if config.backend == "s3" and config.s3_download == "redirect":
        redirect = services.media.blobs.presigned_url(
            blob.sha256, config.s3_presign_ttl, content_type=blob.content_type,
            disposition=rules.content_disposition(blob.content_type, blob.filename))
    planned = media_response.plan(
        blob, method=request.method, range_header=request.headers.get("Range"),
        if_none_match=request.headers.get("If-None-Match"), redirect_to=redirect)
    body = services.media.read(blob, planned.start, planned.length) \
        if planned.length else b""
    response = Response(body, status=planned.status, headers=Headers(planned.headers))
    if planned.status in (200, 206):
        response.headers["Content-Length"] = str(planned.content_length)
    else:  # 304, 302: no body, so no type (quart would say text/html)
        response.headers.pop("Content-Type", None)
    return response
