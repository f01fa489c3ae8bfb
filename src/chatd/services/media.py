"""Media: uploads, downloads, access, references from messages, quota, GC, quarantine.

Bytes live in a `BlobStore` by their sha256 (so equal uploads share storage); the
database holds the metadata, written through the group committer like everything else:

- `media` (by media id): one upload — who uploaded it, its blob, type, filename, size,
  thumbnails, and its references: the upload's own (until DELETE) and one per message
  that carries it. A media id is a Snowflake of this shard (random to a client: it says
  nothing about the content, so nobody can probe for a file by its hash).
- `blobs` (by sha256): how many media records (and thumbnails) use the bytes.
- `media_refs` (conversation id, media id) on the conversation's owner: the message's
  audience (its members when it was sent), written in the same batch as the message.
- `media_conversations` (media id, conversation id): where a media is referenced.

Access: the uploader, or anyone in the audience of a message that carries the media, in
any conversation. A member removed later keeps what was sent to them; one who joins
later never could read those messages, so never gets their media.

Cluster seam: a media id names its shard (the Snowflake's shard bits). On one shard
the owner's reference and the media's count are written in the same batch
(`reference_in_batch`). Across shards the sender's shard would resolve the attachment on
the media's shard (`resolve_attachments`) and the owner would post the reference there
after its batch lands; `ReferenceSource` is where the media's shard asks an owner about
its `media_refs`. Only the one-shard path is built and tested today (docs/architecture.md).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import puremagic
import trio

from chatd.config import MediaConfig
from chatd.domain import media as rules
from chatd.domain.ids import SnowflakeGenerator
from chatd.domain.media import BlobRecord, MediaRecord, MediaRef, Thumbnail
from chatd.errors import (
    BadRequest,
    Forbidden,
    InsufficientStorage,
    NotFound,
    PayloadTooLarge,
    Quarantined,
)
from chatd.services import thumbnails
from chatd.services.clock import Clock
from chatd.services.commands import Commands
from chatd.storage import Batch, Store, records
from chatd.storage.blobs import BlobStore, StagedFile, Staging, close_source

log = logging.getLogger(__name__)

#: Conversations looked at per access check (a media forwarded into more is rare; the
#: uploader and the first conversations decide).
MAX_CONVERSATIONS_CHECKED = 256
#: Attachments one message may carry.
MAX_ATTACHMENTS = 16
#: Records the GC changes per batch.
GC_BATCH = 256


def unknown_media(media_id: int) -> NotFound:
    """A media the caller may not see answers exactly as one that does not exist."""
    return NotFound(f"no media with id {media_id} that you can see", code="unknown_media")


class ReferenceSource(Protocol):
    """Where a media's shard learns who may read the messages that carry it: the
    conversation's owner (`media_refs`). Local on one shard; over the mesh otherwise."""

    def reference(self, conversation_id: int, media_id: int) -> MediaRef | None: ...


@dataclass(frozen=True, slots=True)
class Usage:
    used_bytes: int
    quota_bytes: int


@dataclass(frozen=True, slots=True)
class Blob:
    """What a download serves: the record and, for a thumbnail, which one."""

    media: MediaRecord
    sha256: str
    size: int
    content_type: str
    filename: str


@dataclass(frozen=True, slots=True)
class GcReport:
    uploads_deleted: int
    blobs_deleted: int


class _Overlay:
    """Records changed by commands whose batch has not landed: a command reads its
    predecessors' writes here first (two uploads of the same bytes in one batch must
    both count). Cleared when the batch lands, or on a reload."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._values: dict[tuple[str, Any], Any] = {}

    def get(self, family: records.Family[Any, Any], key: Any) -> Any:
        marker = (family.name, key)
        if marker in self._values:
            return self._values[marker]
        return self._store.get(family, key)

    def put(self, batch: Batch, family: records.Family[Any, Any], key: Any, value: Any) -> None:
        self._track(batch)
        self._values[(family.name, key)] = value
        batch.put(family, key, value)

    def delete(self, batch: Batch, family: records.Family[Any, Any], key: Any) -> None:
        self._track(batch)
        self._values[(family.name, key)] = None
        batch.delete(family, key)

    def _track(self, batch: Batch) -> None:
        if batch.first_time("media-overlay"):
            batch.after_commit.append(self.clear)

    def clear(self) -> None:
        self._values.clear()


class MediaService:
    def __init__(self, *, store: Store, commands: Commands, blobs: BlobStore, staging: Staging,
                 config: MediaConfig, ids: SnowflakeGenerator, clock: Clock,
                 link_secret: bytes) -> None:
        self._store = store
        self._commands = commands
        self.blobs = blobs
        self._staging = staging
        self._config = config
        self._ids = ids
        self._clock = clock
        self._link_secret = link_secret
        self._overlay = _Overlay(store)
        # Blobs an upload is putting in place and has not committed yet: the GC leaves
        # their files alone (the upload is about to count them again).
        self._placing: dict[str, int] = {}
        self.references: ReferenceSource = _LocalReferences(store)
        # Thumbnails and sniffing are CPU work in threads: a few at once.
        self._cpu = trio.CapacityLimiter(2)

    @property
    def config(self) -> MediaConfig:
        return self._config

    def forget_pending(self) -> None:
        """The committer's reload: memory may be ahead of the disk."""
        self._overlay.clear()

    # -- upload -------------------------------------------------------------------------------

    def check_upload_start(self, user_id: int, declared_length: int | None) -> None:
        """What can be refused before a byte is read: the declared length against the
        size limit and the user's quota."""
        if declared_length is None:
            return
        if declared_length > self._config.max_upload_bytes:
            raise self.too_large()
        self._check_quota(user_id, declared_length)

    def too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"an upload is at most {self._config.max_upload_bytes} bytes "
                               "(media.max_upload_bytes)", code="media_too_large")

    def _check_quota(self, user_id: int, size: int) -> None:
        used = self._overlay.get(records.MEDIA_USAGE, user_id) or 0
        if used + size > self._config.quota_bytes:
            raise InsufficientStorage(
                f"this upload of {size} bytes would take you past your quota: "
                f"{used} of {self._config.quota_bytes} bytes used; delete some media "
                "(DELETE /media/{id}) or ask the operator", code="quota_exceeded")

    async def upload(self, user_id: int, *, chunks: AsyncIterator[bytes],
                     describe: Callable[[], tuple[str, str | None]]) -> MediaRecord:
        """Stage the body (hashed and fsynced as it arrives), check it, make thumbnails,
        put the blobs in place and commit the record. The body is never held in memory.
        `describe()` gives the declared content type and filename once the body is in (a
        multipart body names them inside it)."""
        staged = await self._staging.write(self._limited(chunks))
        placed: list[str] = []
        try:
            declared_type, filename = describe()
            declared = rules.check_content_type(declared_type)
            label = rules.clean_filename(filename)
            content_type = self._sniffed(declared, staged)
            self._check_quarantine(staged.sha256)
            info = None
            if rules.kind_of(content_type) == "image" and content_type != rules.OPAQUE:
                async with self._cpu:
                    info = await trio.to_thread.run_sync(partial(
                        thumbnails.render, staged.path,
                        max_pixels=self._config.max_image_pixels,
                        image_format=self._config.thumbnail_format))
            thumbs = await self._stage_thumbnails(info)
            for sha256 in [staged.sha256, *(thumb.sha256 for thumb, _ in thumbs)]:
                self._placing[sha256] = self._placing.get(sha256, 0) + 1
                placed.append(sha256)
            await self.blobs.put(staged.sha256, staged.path, staged.size)
            for thumb, path in thumbs:
                await self.blobs.put(thumb.sha256, path, thumb.length)
            record = MediaRecord(
                self._ids.next_id(), user_id, staged.sha256, staged.size, content_type, label,
                self._clock.now_ms(), info.width if info else 0, info.height if info else 0,
                tuple(thumb.to_record() for thumb, _ in thumbs))
            return await self._commands.submit(partial(self._add_upload, record))
        finally:
            Staging.discard(staged.path)
            for sha256 in placed:
                self._placing[sha256] -= 1
                if not self._placing[sha256]:
                    del self._placing[sha256]

    async def _limited(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        total = 0
        try:
            async for chunk in chunks:
                total += len(chunk)
                if total > self._config.max_upload_bytes:
                    raise self.too_large()
                yield chunk
        finally:
            await close_source(chunks)

    def _sniffed(self, declared: str, staged: StagedFile) -> str:
        if declared == rules.OPAQUE:
            return rules.OPAQUE  # end-to-end encrypted: never looked into
        try:
            found = [match.mime_type for match in puremagic.magic_string(staged.head)
                     if match.mime_type]
        except (puremagic.PureError, ValueError):
            found = []
        return rules.decide_type(declared, found)

    async def _stage_thumbnails(self, info: thumbnails.ImageInfo | None
                                ) -> list[tuple[Thumbnail, Path]]:
        if info is None:
            return []
        staged = []
        for rendered in info.thumbnails:
            file = await trio.to_thread.run_sync(self._staging.write_bytes, rendered.data)
            staged.append((Thumbnail(rendered.size, file.sha256, rendered.content_type,
                                     rendered.width, rendered.height, file.size), file.path))
        return staged

    def _add_upload(self, record: MediaRecord, batch: Batch) -> MediaRecord:
        self._check_quota(record.uploader_id, record.size)
        self._check_quarantine(record.sha256)
        used = self._overlay.get(records.MEDIA_USAGE, record.uploader_id) or 0
        self._overlay.put(batch, records.MEDIA_USAGE, record.uploader_id, used + record.size)
        self._overlay.put(batch, records.MEDIA, record.media_id, record)
        batch.put(records.MEDIA_UNREFERENCED, (record.created_at, record.media_id), None)
        self._count_blob(batch, record.sha256, record.size, +1)
        for thumb in record.thumbs:
            self._count_blob(batch, thumb.sha256, thumb.length, +1)
        return record

    def _count_blob(self, batch: Batch, sha256: str, size: int, delta: int) -> None:
        blob: BlobRecord | None = self._overlay.get(records.BLOBS, sha256)
        refs = (blob.refs if blob else 0) + delta
        self._overlay.put(batch, records.BLOBS, sha256, BlobRecord(sha256, size, max(refs, 0)))
        if refs <= 0:
            batch.put(records.DEAD_BLOBS, sha256, None)  # the GC deletes it
        elif delta > 0 and blob is not None and blob.refs <= 0:
            batch.delete(records.DEAD_BLOBS, sha256)

    # -- access ---------------------------------------------------------------------------

    def find(self, media_id: int) -> MediaRecord | None:
        record: MediaRecord | None = self._overlay.get(records.MEDIA, media_id)
        return record

    def may_access(self, media: MediaRecord, user_id: int) -> bool:
        if media.uploader_id == user_id and media.own_ref:
            return True
        if media.photo_refs > 0:
            # A profile or group photo: shown to anyone who sees the profile or the
            # group, which is every signed-in user until privacy settings say otherwise.
            return True
        for (_, conversation_id), _ in self._store.scan(
                records.MEDIA_CONVERSATIONS, records.u64(media.media_id),
                limit=MAX_CONVERSATIONS_CHECKED):
            ref = self.references.reference(conversation_id, media.media_id)
            if ref is not None and user_id in ref.audience:
                return True
        return False

    def accessible(self, media_id: int, user_id: int) -> MediaRecord:
        """The media if `user_id` may see it (404 alike otherwise); 451 if quarantined."""
        media = self.find(media_id)
        if media is None or not self.may_access(media, user_id):
            raise unknown_media(media_id)
        self._check_quarantine(media.sha256)
        return media

    def _check_quarantine(self, sha256: str) -> None:
        if self._store.get(records.QUARANTINE, sha256) is not None:
            raise Quarantined("this content was made unavailable by the operator",
                              code="quarantined")

    def download(self, media_id: int, user_id: int, thumbnail: int | None = None) -> Blob:
        media = self.accessible(media_id, user_id)
        if thumbnail is None:
            return Blob(media, media.sha256, media.size, media.content_type, media.filename)
        thumb = media.thumbnail(thumbnail)
        if thumb is None:
            raise NotFound(f"media {media_id} has no {thumbnail} px thumbnail (images get "
                           "96, 320 and 640; other media none)", code="no_thumbnail")
        stem = media.filename.rsplit(".", 1)[0]
        extension = thumb.content_type.split("/", 1)[1]
        return Blob(media, thumb.sha256, thumb.length, thumb.content_type,
                    f"{stem}-{thumbnail}.{extension}")

    # -- signed links ---------------------------------------------------------------------------

    def make_link(self, media_id: int, user_id: int, ttl_s: float) -> tuple[str, int]:
        """(query string, expiry in ms) of a link that serves the media without a token."""
        self.accessible(media_id, user_id)
        if not 0 < ttl_s <= self._config.max_link_ttl:
            raise BadRequest(f"ttl_s: must be within 0..{self._config.max_link_ttl:g} seconds "
                             "(media.max_link_ttl)", code="invalid_field")
        expires_at = self._clock.now_ms() + int(ttl_s * 1000)
        signature = rules.link_signature(self._link_secret, media_id, user_id, expires_at)
        return f"u={user_id}&e={expires_at}&sig={signature}", expires_at

    def link_user(self, media_id: int, user: str, expires: str, signature: str) -> int:
        """The user a signed link speaks for; 403 `invalid_link` when it was tampered with
        or has expired."""
        try:
            user_id, expires_at = int(user), int(expires)
        except ValueError:
            raise Forbidden("this link is malformed", code="invalid_link") from None
        if not rules.link_is_valid(self._link_secret, media_id, user_id, expires_at,
                                   signature, self._clock.now_ms()):
            raise Forbidden("this link is invalid or has expired; ask for a new one",
                            code="invalid_link")
        return user_id

    # -- references from messages ---------------------------------------------------------------

    def resolve_attachments(self, user_id: int, media_ids: list[int]) -> list[dict[str, Any]]:
        """What a message stores of each attachment, checked where the sender is: each
        media exists and the sender may access it (403 `media_forbidden` otherwise, as the
        issue asks: sending someone else's media is refused, not hidden)."""
        if len(media_ids) > MAX_ATTACHMENTS:
            raise BadRequest(f"attachments: at most {MAX_ATTACHMENTS}", code="invalid_field")
        found = []
        for media_id in dict.fromkeys(media_ids):  # the same media twice is carried once
            media = self.find(media_id)
            if media is None or not self.may_access(media, user_id):
                raise Forbidden(f"attachments: you may not send media {media_id} (upload it "
                                "yourself, or forward media you received)",
                                code="media_forbidden")
            self._check_quarantine(media.sha256)
            found.append(rules.attachment_record(media))
        return found

    def check_references(self, attachments: tuple[dict[str, Any], ...]) -> None:
        """Inside the owner's send command, before it changes anything: the media are still
        there (the GC or a DELETE may have come between the check and the command)."""
        for attachment in attachments:
            media = self.find(attachment["media_id"])
            if media is None or not media.referenced:
                raise NotFound(f"media {attachment['media_id']} was deleted meanwhile",
                               code="unknown_media")

    def reference_in_batch(self, batch: Batch, conversation_id: int, seq: int,
                           audience: tuple[int, ...],
                           attachments: tuple[dict[str, Any], ...]) -> None:
        """The owner's side of a message that carries media, in the message's batch: the
        audience (conversation-keyed, so replicated with the log), and the media's count."""
        for attachment in attachments:
            media_id: int = attachment["media_id"]
            key = (conversation_id, media_id)
            ref: MediaRef | None = self._overlay.get(records.MEDIA_REFS, key)
            if ref is None:
                ref = MediaRef(seq, sorted(audience))
            else:
                ref = MediaRef(min(ref.first_seq, seq), sorted(set(ref.audience) | set(audience)))
            self._overlay.put(batch, records.MEDIA_REFS, key, ref)
            self.count_reference(batch, media_id, conversation_id)

    def count_reference(self, batch: Batch, media_id: int, conversation_id: int) -> None:
        """The media's shard: one more message carries the media."""
        media = self.find(media_id)
        if media is None:
            return
        if media.message_refs == 0:
            batch.delete(records.MEDIA_UNREFERENCED, (media.created_at, media_id))
        self._overlay.put(batch, records.MEDIA, media_id,
                          replace(media, message_refs=media.message_refs + 1))
        batch.put(records.MEDIA_CONVERSATIONS, (media_id, conversation_id), None)

    # -- profile and group photos --------------------------------------------------------------

    async def pin_photo(self, media_id: int, user_id: int) -> MediaRecord:
        """Count `media_id` as a photo (a profile's or a group's): it must be an image the
        user may access, with thumbnails. Raises 404 / 400 `not_an_image`."""
        media = self.accessible(media_id, user_id)
        if not media.thumbs:
            raise BadRequest(f"photo_media_id: media {media_id} is not an image chatd could "
                             "make thumbnails of", code="not_an_image")

        def apply(batch: Batch) -> MediaRecord:
            current = self.find(media_id)
            if current is None or not current.referenced:
                raise unknown_media(media_id)
            if current.message_refs == 0 and current.photo_refs == 0:
                batch.delete(records.MEDIA_UNREFERENCED, (current.created_at, media_id))
            pinned = replace(current, photo_refs=current.photo_refs + 1)
            self._overlay.put(batch, records.MEDIA, media_id, pinned)
            return pinned

        return await self._commands.submit(apply)

    async def unpin_photo(self, media_id: int) -> None:
        """A profile or group no longer shows `media_id`."""

        def apply(batch: Batch) -> None:
            current = self.find(media_id)
            if current is None or current.photo_refs == 0:
                return
            unpinned = replace(current, photo_refs=current.photo_refs - 1)
            if unpinned.referenced:
                self._overlay.put(batch, records.MEDIA, media_id, unpinned)
            else:
                self._drop(batch, unpinned)

        await self._commands.submit(apply)

    # -- lifecycle --------------------------------------------------------------------------

    async def delete(self, media_id: int, user_id: int) -> None:
        """Drop the upload's own reference (the uploader's). Messages that carry it keep
        it alive for their audience."""

        def apply(batch: Batch) -> None:
            media = self.find(media_id)
            if media is None or not media.own_ref:
                raise unknown_media(media_id)
            if media.uploader_id != user_id:
                if self.may_access(media, user_id):
                    raise Forbidden("only the uploader may delete an upload",
                                    code="not_uploader")
                raise unknown_media(media_id)
            used = self._overlay.get(records.MEDIA_USAGE, user_id) or 0
            self._overlay.put(batch, records.MEDIA_USAGE, user_id, max(0, used - media.size))
            kept = replace(media, own_ref=False)
            if kept.referenced:
                self._overlay.put(batch, records.MEDIA, media_id, kept)
            else:
                self._drop(batch, media)

        await self._commands.submit(apply)

    def _drop(self, batch: Batch, media: MediaRecord) -> None:
        self._overlay.delete(batch, records.MEDIA, media.media_id)
        batch.delete(records.MEDIA_UNREFERENCED, (media.created_at, media.media_id))
        self._count_blob(batch, media.sha256, media.size, -1)
        for thumb in media.thumbs:
            self._count_blob(batch, thumb.sha256, thumb.length, -1)

    def usage(self, user_id: int) -> Usage:
        used = self._store.get(records.MEDIA_USAGE, user_id) or 0
        return Usage(used, self._config.quota_bytes)

    async def quarantine(self, sha256: str, reason: str) -> None:
        """Make the bytes unavailable: every media with them, now and in future uploads."""
        sha256 = sha256.lower()
        if len(sha256) != 64 or not all(ch in "0123456789abcdef" for ch in sha256):
            raise BadRequest("sha256: 64 hex digits", code="invalid_field")

        def apply(batch: Batch) -> None:
            batch.put(records.QUARANTINE, sha256, {"at": self._clock.now_ms(),
                                                  "reason": reason})

        await self._commands.submit(apply)

    async def collect_garbage(self) -> GcReport:
        """One GC pass: uploads still unreferenced after `unreferenced_ttl`, then blobs
        whose count reached 0 (their files too)."""
        cutoff = self._clock.now_ms() - int(self._config.unreferenced_ttl * 1000)
        uploads = 0
        while True:
            expired = self._store.range(records.MEDIA_UNREFERENCED, records.pair(0, 0),
                                        records.pair(max(cutoff, 0), 0), limit=GC_BATCH)
            if not expired:
                break
            uploads += await self._commands.submit(partial(self._expire, expired))
            if len(expired) < GC_BATCH:
                break
        blobs = 0
        after: bytes | None = None
        while True:
            dead = self._store.scan(records.DEAD_BLOBS, b"", after=after, limit=GC_BATCH)
            if not dead:
                break
            after = dead[-1][0].encode("ascii")
            candidates = [sha256 for sha256, _ in dead if sha256 not in self._placing]
            gone = await self._commands.submit(partial(self._bury, candidates))
            for sha256 in gone:
                try:
                    await self.blobs.delete(sha256)
                except OSError:
                    log.exception("could not delete blob %s; its record is gone", sha256)
            blobs += len(gone)
            if len(dead) < GC_BATCH:
                break
        return GcReport(uploads, blobs)

    def _expire(self, expired: list[tuple[tuple[int, int], None]], batch: Batch) -> int:
        count = 0
        for (created_at, media_id), _ in expired:
            media = self.find(media_id)
            batch.delete(records.MEDIA_UNREFERENCED, (created_at, media_id))
            if media is None or media.message_refs > 0 or media.photo_refs > 0:
                continue
            if media.own_ref:
                used = self._overlay.get(records.MEDIA_USAGE, media.uploader_id) or 0
                self._overlay.put(batch, records.MEDIA_USAGE, media.uploader_id,
                                  max(0, used - media.size))
            self._drop(batch, media)
            count += 1
        return count

    def _bury(self, candidates: list[str], batch: Batch) -> list[str]:
        gone = []
        for sha256 in candidates:
            blob: BlobRecord | None = self._overlay.get(records.BLOBS, sha256)
            batch.delete(records.DEAD_BLOBS, sha256)
            if blob is None or blob.refs <= 0:
                self._overlay.delete(batch, records.BLOBS, sha256)
                gone.append(sha256)
        return gone

    async def run_collector(self) -> None:
        """The GC task: a pass every `gc_interval` seconds."""
        while True:
            await trio.sleep(self._config.gc_interval)
            try:
                report = await self.collect_garbage()
            except Exception:
                log.exception("media GC pass failed; retrying at the next interval")
                continue
            if report.uploads_deleted or report.blobs_deleted:
                log.info("media GC: %d unreferenced uploads and %d blobs deleted",
                         report.uploads_deleted, report.blobs_deleted)


class _LocalReferences:
    """One shard: the owner's `media_refs` are in this database."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def reference(self, conversation_id: int, media_id: int) -> MediaRef | None:
        ref: MediaRef | None = self._store.get(records.MEDIA_REFS, (conversation_id, media_id))
        return ref

