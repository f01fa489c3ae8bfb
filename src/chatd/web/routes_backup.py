"""`POST /admin/backup`: an online backup of this shard, streamed to the operator as a tar.

Declared only when `server.admin_token` is set, like /metrics. The request names no path:
the snapshot goes where `storage/backup.py` puts it (inside the data directory) and comes
back in the response, so the same route serves an operator on the box and one on another
machine, and no token can make the server write anywhere else. docs/operations.md has
the procedure; `chatd backup` is the client.
"""

from __future__ import annotations

import time

from quart import Response

from chatd.errors import Conflict, Unavailable
from chatd.services.context import Services
from chatd.storage.backup import BackupFailed, BackupRunning
from chatd.web.api import Access, Api, Media
from chatd.web.render import Reply

TAR = "application/x-tar"


def register(api: Api, services: Services) -> None:
    if not services.config.server.admin_token:
        return  # operator routes are off: not served, nor described

    backups = services.backups
    shard = services.config.cluster.shard

    @api.route(
        "POST", "/admin/backup", summary="Back up this shard (needs server.admin_token)",
        description=(
            "Takes a consistent snapshot of this shard while it keeps serving (a RocksDB "
            "checkpoint and the media files it references) and streams it as a tar: "
            "db/… (the checkpoint), media/…, and manifest.json last (sizes and sha256 of "
            "every file, shard, ring, summary). Every send acknowledged before the request "
            "arrived is in it. One backup at a time (409 backup_running). `chatd backup` "
            "unpacks and checks it; `chatd restore` puts it back (docs/operations.md)."),
        access=Access.ADMIN, response=Media(TAR, {"type": "string", "format": "binary"}),
        errors=(409, 503))
    async def backup() -> Reply:
        try:
            stream = await backups.start()
        except BackupRunning as exc:
            raise Conflict(str(exc), code="backup_running") from None
        except BackupFailed as exc:
            raise Unavailable(str(exc), code="backup_failed") from None
        response = Response(stream, content_type=TAR)
        # quart cuts a response off after RESPONSE_TIMEOUT (60 s); a large shard takes
        # longer to send. A client that stops reading is still cut off, after
        # server.send_timeout without progress (web/hypercorn_adapter.py).
        response.timeout = None
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        response.headers["Content-Disposition"] = \
            f'attachment; filename="chatd-{shard}-{stamp}.tar"'
        return response
