"""Routes: a user's export and erasure of their data (GDPR): POST /me/export, GET
/me/export/{export_id}, DELETE /me. The operator's equivalents are in
web/routes_admin_users.py; both call services/gdpr.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import trio
from quart import Response

from chatd.domain.models import Session
from chatd.services.context import Services
from chatd.services.exports import ExportRecord
from chatd.web import models
from chatd.web.api import Api, Media
from chatd.web.render import Reply

ZIP = Media("application/zip", {"type": "string", "format": "binary"})
#: Bytes of an export file sent per read.
_CHUNK = 256 * 1024


def register(api: Api, services: Services) -> None:
    gdpr = services.gdpr

    @api.route("POST", "/me/export", summary="Ask for a copy of your data (a zip)",
               status=202, response=models.ExportStatus, errors=(409,),
               description="Made in the background; GET /me/export/{export_id} answers 202 "
                           "until it is ready, then the zip (docs/privacy.md lists its "
                           "files). One export at a time (409 export_running); kept for "
                           "gdpr.export_ttl (24 h), on the shard that was asked.")
    async def start_export(session: Session) -> Reply:
        record = await gdpr.start_export(session.user_id)
        return models.ExportStatus(record.export_id, "pending"), 202

    @api.route("GET", "/me/export/{export_id}", summary="Your export: 202 while it is "
               "being made, then the zip", response=ZIP, also={202: models.ExportStatus})
    async def get_export(session: Session, export_id: str) -> Reply:
        return await export_reply(services, gdpr.exports.get(export_id, session.user_id))

    @api.route("DELETE", "/me", summary="Erase your account and your data (cannot be undone)",
               body=models.EraseAccount, response=models.EraseResult,
               also={202: models.EraseResult}, errors=(403,),
               description="Needs your password and `erase: true`. Revokes every device and "
                           "token, frees your handle, replaces your profile with \"deleted "
                           "account\", drops your uploads and exports, and turns every "
                           "message you sent into a tombstone, leaving each conversation "
                           "with a `member_erased` entry. 200 `erased` when done; 202 "
                           "`erasing` when a shard could not be reached now (finished in "
                           "the background). A wrong password is 403 `wrong_password`.")
    async def erase_me(session: Session, body: models.EraseAccount) -> Reply:
        # (`erase` is true: the model admits nothing else.)
        status = await gdpr.erase(session.user_id, body.password)
        return models.EraseResult(status), 200 if status == "erased" else 202


async def export_reply(services: Services, record: ExportRecord) -> Reply:
    """202 while the export is made; the zip, streamed from its file, once ready."""
    if not record.ready:
        return models.ExportStatus(record.export_id, "pending"), 202
    path = services.gdpr.exports.path(record.export_id)
    response = Response(_file_chunks(path), content_type=ZIP.media_type)
    response.timeout = None  # a large export takes longer than quart's 60 s to send
    response.headers["Content-Disposition"] = \
        f'attachment; filename="chatd-export-{record.export_id}.zip"'
    response.headers["Content-Length"] = str(record.size)
    response.headers["Cache-Control"] = "no-store"
    return response


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    async with await trio.open_file(path, "rb") as source:
        while chunk := await source.read(_CHUNK):
            yield chunk
