"""`POST /admin/compact`: purge deleted bytes from this shard's disk now.

Declared only when `server.admin_token` is set, like /admin/backup. It runs what the
purge task runs every `storage.purge_interval` (storage/purge.py) and answers once it is
done: every memtable flushed, the write-ahead log that held deleted records dropped, the
key ranges that had deletions compacted. Before that it sweeps (expired and retained
messages, media references of deleted messages) and runs a media GC pass, so that what
was deleted before the request has left every file under the data directory when the
answer comes (docs/privacy.md).
"""

from __future__ import annotations

from chatd.services.context import Services
from chatd.web.api import Access, Api
from chatd.web.render import NO_CONTENT, Reply


def register(api: Api, services: Services) -> None:
    if not services.config.server.admin_token:
        return  # operator routes are off: not served, nor described

    @api.route(
        "POST", "/admin/compact",
        summary="Purge deleted data from this shard's disk now (needs server.admin_token)",
        description=(
            "Sweeps expired and retained messages, drops the media references of deleted "
            "messages, collects media no reference holds, then flushes RocksDB and "
            "compacts the key ranges that had deletions. Answers 204 when done. It is what "
            "happens anyway within storage.purge_interval (and media.gc_interval)."),
        access=Access.ADMIN, status=204)
    async def compact() -> Reply:
        await services.sweeper.sweep()
        await services.media.collect_garbage()
        await services.purger.purge_now()
        return NO_CONTENT
