"""Media: uploads, downloads, access, references from messages, quota, GC, quarantine.

Bytes live in a `BlobStore` by their sha256 (so equal uploads share storage); the
database holds the metadata, written through the group committer like everything else:

- `media` (by media id): one upload — who uploaded it, its blob, type, filename, size,
  thumbnails, and its references: the upload's own (until DELETE), one per conversation
  that carries it, one per profile or group showing it. A media id is a Snowflake of the
  shard that took the upload (so it names that shard), random to a client: it says
  nothing about the content, so nobody can probe for a file by its hash.
- `blobs` (by sha256): how many media records (and thumbnails) use the bytes.
- `media_conversations` (media id, conversation id): where a media is referenced.
- `media_refs` (conversation id, media id), on the conversation's owner: who could read
  the messages that carry it (their members when sent), written in the message's batch.

Access: the uploader, anyone in such an audience, anyone for a photo. Across shards:

    sender's shard ──media.attach──▶ media's shard   checks access, counts the reference
    sender's shard ──owner.send────▶ owner           message + media_refs, one batch
    any shard ──────media.open─────▶ media's shard   access, then which bytes
    media's shard ──media.audience─▶ owner           who could read the conversation's
    any shard ──────media.read─────▶ media's shard   the bytes, 256 KiB a request (or
                                                     the shared S3 bucket directly)

On one shard each arrow is a call.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import puremagic
import trio

from chatd.config import MediaConfig
from chatd.domain import media as rules
from chatd.domain.ids import COUNTER_BITS
from chatd.domain.media import Attaching, BlobRecord, MediaRecord, MediaRef, Thumbnail
from chatd.errors import (
    BadRequest,
    ChatdError,
    Forbidden,
    InsufficientStorage,
    NotFound,
    PayloadTooLarge,
    Quarantined,
    RateLimited,
    Unavailable,
)
from chatd.services import thumbnails
from chatd.services.clock import Clock
from chatd.services.commands import Commands
from chatd.services.peer_bodies import int_field as _int
from chatd.services.routing import Router, unreachable
from chatd.storage import Batch, Store, records
from chatd.storage.blobs import (
    BlobStore,
    LocalBlobStore,
    SharedBlobStore,
    StagedFile,
    Staging,
    close_source,
)

log = logging.getLogger(__name__)

#: Conversations looked at per access check (a media forwarded into more is rare; the
#: uploader and the first conversations decide).
MAX_CONVERSATIONS_CHECKED = 256
#: Attachments one message may carry.
MAX_ATTACHMENTS = 16
#: Records the GC changes per batch.
GC_BATCH = 256
#: Bytes of a blob one mesh request carries (frames are at most 1 MiB by default).
MESH_READ = 256 * 1024


def unknown_media(media_id: int) -> NotFound:
    """A media the caller may not see answers exactly as one that does not exist."""
    return NotFound(f"no media with id {media_id} that you can see", code="unknown_media")


@dataclass(frozen=True, slots=True)
class Usage:
    used_bytes: int
    quota_bytes: int


@dataclass(frozen=True, slots=True)
class Blob:
    """What a download serves: which bytes, of what type, and which shard holds them."""

    sha256: str
    size: int
    content_type: str
    filename: str
    #: The shard whose blob store has the bytes (the media's shard).
    shard: str


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
                 config: MediaConfig, clock: Clock,
                 link_secret: bytes, router: Router, shard_number: int) -> None:
        self._store = store
        self._shard_number = shard_number
        self._router = router
        self._commands = commands
        self.blobs = blobs
        self._staging = staging
        self._config = config
        self._clock = clock
        self._link_secret = link_secret
        self._overlay = _Overlay(store)
        # Blobs an upload is putting in place and has not committed yet: the GC leaves
        # their files alone (the upload is about to count them again).
        self._placing: dict[str, int] = {}
        #: What peers may ask of this shard (services/peering.py routes `media.*` here).
        self.requests: dict[str, Callable[[dict[str, Any]], Awaitable[Any]]] = {
            "media.attach": self._attach_request, "media.open": self._open_request,
            "media.read": self._read_request, "media.audience": self._audience_request,
            "media.photo": self._photo_request, "media.delete": self._delete_request,
            "media.release": self._release_request,
        }
        # Thumbnails and sniffing are CPU work in threads: a few at once.
        self._cpu = trio.CapacityLimiter(2)
        #: Uploads in progress, by user (`media.max_concurrent_uploads`).
        self._uploading: dict[int, int] = {}

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
        in_progress = self._uploading.get(user_id, 0)
        if in_progress >= self._config.max_concurrent_uploads:
            # Each upload in progress may stage up to max_upload_bytes on the data disk
            # before its size meets the quota: this keeps one user's share bounded.
            raise RateLimited(f"{in_progress} uploads of yours are in progress; finish one "
                              "first", retry_after=1.0)
        self._uploading[user_id] = in_progress + 1
        try:
            return await self._upload(user_id, chunks=chunks, describe=describe)
        finally:
            self._uploading[user_id] -= 1
            if not self._uploading[user_id]:
                del self._uploading[user_id]

    async def _upload(self, user_id: int, *, chunks: AsyncIterator[bytes],
                      describe: Callable[[], tuple[str, str | None]]) -> MediaRecord:
        staged = await self._staging.write(self._limited(chunks))
        placed: list[str] = []
        thumbs: list[tuple[Thumbnail, Path]] = []
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
                0, user_id, staged.sha256, staged.size, content_type, label,
                self._clock.now_ms(), info.width if info else 0, info.height if info else 0,
                tuple(thumb.to_record() for thumb, _ in thumbs))
            return await self._commands.submit(partial(self._add_upload, record))
        except BaseException:
            if placed:
                # Files put in place for a record that was refused (quota, quarantine,
                # shutdown): the GC deletes each unless another record counts it.
                with trio.CancelScope(shield=True), contextlib.suppress(ChatdError):
                    await self._commands.submit(partial(self._mark_dead, placed))
            raise
        finally:
            Staging.discard(staged.path)
            for _, path in thumbs:
                Staging.discard(path)
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

    @staticmethod
    def _mark_dead(shas: list[str], batch: Batch) -> None:
        for sha256 in shas:
            batch.put(records.DEAD_BLOBS, sha256, None)

    def _new_media_id(self) -> int:
        while True:
            candidate = rules.random_snowflake(self._shard_number, self._clock.now_ms(),
                                               secrets.randbits(COUNTER_BITS))
            if self.find(candidate) is None:
                return candidate

    def _add_upload(self, record: MediaRecord, batch: Batch) -> MediaRecord:
        self._check_quota(record.uploader_id, record.size)
        self._check_quarantine(record.sha256)
        # Chosen here, in the committer's order, so two uploads cannot take one id.
        record = replace(record, media_id=self._new_media_id())
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

    # -- placement -----------------------------------------------------------------------

    def shard_of(self, media_id: int) -> str:
        """The shard that took the upload: a media id is a Snowflake of that shard, whose
        number it carries, exactly as a user id names its home."""
        return self._router.home_of_user(media_id)

    def _here(self, media_id: int) -> bool:
        return self._router.is_local(self.shard_of(media_id))

    async def _ask(self, shard: str, method: str, body: dict[str, Any]) -> Any:
        return await self._router.ask_peer(shard, method, body, what="media")

    # -- access ---------------------------------------------------------------------------

    def find(self, media_id: int) -> MediaRecord | None:
        """A media of this shard (None for another shard's)."""
        record: MediaRecord | None = self._overlay.get(records.MEDIA, media_id)
        return record

    async def may_access(self, media: MediaRecord, user_id: int) -> bool:
        if media.uploader_id == user_id and media.own_ref:
            return True
        if media.photo_refs > 0:
            # A profile or group photo: shown to anyone who sees the profile or the
            # group, which is every signed-in user until privacy settings say otherwise.
            return True
        for (_, conversation_id), _ in self._store.scan(
                records.MEDIA_CONVERSATIONS, records.u64(media.media_id),
                limit=MAX_CONVERSATIONS_CHECKED):
            audience = await self._audience(conversation_id, media.media_id)
            if audience is not None and user_id in audience:
                return True
        return False

    async def _audience(self, conversation_id: int, media_id: int) -> list[int] | None:
        """Who could read the messages of the conversation that carry the media: the
        owner's `media_refs` (here or asked over the mesh; an unreachable owner grants
        nothing now)."""
        owner = self._router.owner_of_conversation(conversation_id)
        if self._router.is_local(owner):
            return self.audience_here(conversation_id, media_id)
        try:
            found = await self._ask(owner, "media.audience", {
                "conversation_id": conversation_id, "media_id": media_id})
        except ChatdError:
            return None
        return [int(user) for user in found] if isinstance(found, list) else None

    def audience_here(self, conversation_id: int, media_id: int) -> list[int] | None:
        ref: MediaRef | None = self._store.get(records.MEDIA_REFS, (conversation_id, media_id))
        return None if ref is None else list(ref.audience)

    async def accessible(self, media_id: int, user_id: int) -> MediaRecord:
        """A media of this shard if `user_id` may see it (404 alike otherwise); 451 if
        quarantined."""
        media = self.find(media_id)
        if media is None or not await self.may_access(media, user_id):
            raise unknown_media(media_id)
        self._check_quarantine(media.sha256)
        return media

    def is_quarantined(self, sha256: str) -> bool:
        return self._store.get(records.QUARANTINE, sha256) is not None

    def _check_quarantine(self, sha256: str) -> None:
        if self._store.get(records.QUARANTINE, sha256) is not None:
            raise Quarantined("this content was made unavailable by the operator",
                              code="quarantined")

    async def open_download(self, media_id: int, user_id: int,
                            thumbnail: int | None = None) -> Blob:
        """What to serve for a download of the media (or its thumbnail), by any shard:
        the media's shard checks access and names the bytes."""
        shard = self.shard_of(media_id)
        if not self._router.is_local(shard):
            found = await self._ask(shard, "media.open", {
                "media_id": media_id, "user_id": user_id, "thumbnail": thumbnail or 0})
            sha256, size, content_type, filename = found
            return Blob(str(sha256), int(size), str(content_type), str(filename), shard)
        media = await self.accessible(media_id, user_id)
        here = self._router.shard
        if thumbnail is None:
            return Blob(media.sha256, media.size, media.content_type, media.filename, here)
        thumb = media.thumbnail(thumbnail)
        if thumb is None:
            raise NotFound(f"media {media_id} has no {thumbnail} px thumbnail (images get "
                           "96, 320 and 640; other media none)", code="no_thumbnail")
        stem = media.filename.rsplit(".", 1)[0]
        extension = thumb.content_type.split("/", 1)[1]
        return Blob(thumb.sha256, thumb.length, thumb.content_type,
                    f"{stem}-{thumbnail}.{extension}", here)

    def is_local_file(self, blob: Blob) -> bool:
        """Whether the bytes are a file here (the direct path sends it with sendfile)."""
        return self._router.is_local(blob.shard) and isinstance(self.blobs, LocalBlobStore)

    async def read(self, blob: Blob, start: int, length: int) -> AsyncGenerator[bytes, None]:
        """The bytes of a range of `blob`, wherever they are: this shard's store, the
        shared bucket under the other shard's prefix, or the other shard over the mesh
        (`MESH_READ` bytes a request, one request in flight)."""
        if self._router.is_local(blob.shard):
            chunks = self.blobs.read(blob.sha256, start, length)
        elif isinstance(self.blobs, SharedBlobStore):
            chunks = self.blobs.read_of(blob.shard, blob.sha256, start, length)
        else:
            chunks = self._read_over_mesh(blob, start, length)
        try:
            async for chunk in chunks:
                yield chunk
        finally:
            await close_source(chunks)

    async def _read_over_mesh(self, blob: Blob, start: int, length: int
                              ) -> AsyncIterator[bytes]:
        position, end = start, start + length
        while position < end:
            step = min(MESH_READ, end - position)
            data = await self._ask(blob.shard, "media.read", {
                "sha256": blob.sha256, "start": position, "length": step})
            if not isinstance(data, bytes) or len(data) != step:
                raise unreachable(blob.shard, "media")
            position += step
            yield data

    # -- signed links ---------------------------------------------------------------------------

    async def make_link(self, media_id: int, user_id: int, ttl_s: float) -> tuple[str, int]:
        """(query string, expiry in ms) of a link that serves the media without a token."""
        await self.open_download(media_id, user_id)  # may see it (on its shard)
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

    async def attach(self, user_id: int, conversation_id: int,
                     items: list[Attaching]) -> list[dict[str, Any]]:
        """Before a send: each media's shard checks the sender may send it (403
        `media_forbidden` otherwise: sending someone else's media is refused, not hidden)
        and counts the conversation's reference durably. Counted before the message is
        written, so the GC can never take a media a message carries; a send that then
        fails leaves a count (one per media and conversation, so a retry adds none)."""
        # The same media twice is carried once (with the first thumbnail named for it).
        chosen = {item.media_id: item for item in reversed(items)}
        attaching = [chosen[media_id] for media_id in dict.fromkeys(
            item.media_id for item in items)]
        if len(attaching) > MAX_ATTACHMENTS:
            raise BadRequest(f"attachments: at most {MAX_ATTACHMENTS}", code="invalid_field")
        # A client's thumbnail is attached as well: its readers must be able to fetch it.
        media_ids = list(dict.fromkeys([
            *(item.media_id for item in attaching),
            *(item.thumbnail_media_id for item in attaching if item.thumbnail_media_id)]))
        by_shard: dict[str, list[int]] = {}
        for media_id in media_ids:
            by_shard.setdefault(self.shard_of(media_id), []).append(media_id)
        found: dict[int, dict[str, Any]] = {}
        for shard, ids in by_shard.items():
            if self._router.is_local(shard):
                attached = await self.attach_here(user_id, conversation_id, ids)
            else:
                attached = await self._ask(shard, "media.attach", {
                    "user_id": user_id, "conversation_id": conversation_id, "media_ids": ids})
            found.update((int(item["media_id"]), dict(item)) for item in attached)
        result = []
        for item in attaching:
            record = found[item.media_id]
            if item.thumbnail_media_id:
                record = {**record, "thumbnail_media_id": item.thumbnail_media_id}
            result.append(record)
        return result

    async def attach_here(self, user_id: int, conversation_id: int,
                          media_ids: list[int]) -> list[dict[str, Any]]:
        for media_id in media_ids:
            media = self.find(media_id)
            if media is None or not await self.may_access(media, user_id):
                raise Forbidden(f"attachments: you may not send media {media_id} (upload it "
                                "yourself, or forward media you received)",
                                code="media_forbidden")
            self._check_quarantine(media.sha256)

        def apply(batch: Batch) -> list[dict[str, Any]]:
            attached = []
            for media_id in media_ids:
                media = self.find(media_id)
                if media is None or not media.referenced:
                    raise NotFound(f"media {media_id} was deleted meanwhile",
                                   code="unknown_media")
                attached.append(rules.attachment_record(
                    self._count_reference(batch, media, conversation_id)))
            return attached

        return await self._commands.submit(apply)

    def _count_reference(self, batch: Batch, media: MediaRecord,
                         conversation_id: int) -> MediaRecord:
        """One more conversation carries the media (counted once per conversation)."""
        key = (media.media_id, conversation_id)
        if self._overlay.get(records.MEDIA_CONVERSATIONS, key) is not None:
            return media
        self._overlay.put(batch, records.MEDIA_CONVERSATIONS, key, True)
        if media.message_refs == 0 and media.photo_refs == 0:
            batch.delete(records.MEDIA_UNREFERENCED, (media.created_at, media.media_id))
        counted = replace(media, message_refs=media.message_refs + 1)
        self._overlay.put(batch, records.MEDIA, media.media_id, counted)
        return counted

    def record_audience(self, batch: Batch, conversation_id: int, seq: int,
                        audience: tuple[int, ...],
                        attachments: tuple[dict[str, Any], ...]) -> None:
        """The owner's side of a message that carries media, in the message's batch: who
        could read it (conversation-keyed, so it replicates with the log)."""
        carried = [int(attachment["media_id"]) for attachment in attachments] + [
            int(attachment["thumbnail_media_id"]) for attachment in attachments
            if attachment.get("thumbnail_media_id")]
        for media_id in dict.fromkeys(carried):
            key = (conversation_id, media_id)
            ref: MediaRef | None = self._overlay.get(records.MEDIA_REFS, key)
            if ref is None:
                ref = MediaRef(seq, sorted(audience))
            else:
                ref = MediaRef(min(ref.first_seq, seq), sorted(set(ref.audience) | set(audience)),
                               ref.carriers + 1)
            self._overlay.put(batch, records.MEDIA_REFS, key, ref)

    # -- references of deleted messages (services/deletion.py) ---------------------------------

    def release_message_refs(self, batch: Batch, conversation_id: int, sender_id: int,
                             attachments: tuple[dict[str, Any], ...]) -> None:
        """The owner's side of a message that carried media and is deleted (or expired,
        or erased), in the tombstone's batch: one carrier fewer; the last one takes the
        conversation's audience (nobody may fetch the media through it any more) and
        queues the drop of the conversation's reference on the media's shard
        (`media_releases`, conversation-keyed so a replica that takes over finishes it).
        The sender's own upload reference goes too: they took the message back."""
        for media_id in _carried(attachments):
            key = (conversation_id, media_id)
            ref: MediaRef | None = self._overlay.get(records.MEDIA_REFS, key)
            last = ref is None or ref.carriers <= 1
            if ref is not None:
                if last:
                    self._overlay.delete(batch, records.MEDIA_REFS, key)
                else:
                    self._overlay.put(batch, records.MEDIA_REFS, key,
                                      replace(ref, carriers=ref.carriers - 1))
            pending = self._overlay.get(records.MEDIA_RELEASES, key) or {
                "conversation": False, "senders": []}
            senders = sorted({*pending["senders"], sender_id})
            self._overlay.put(batch, records.MEDIA_RELEASES, key, {
                "conversation": bool(pending["conversation"] or last), "senders": senders})

    async def release_pending(self, serves: Callable[[int], bool]) -> int:
        """Drop, on each media's shard, the references deleted messages held (the owner's
        queue, for the conversations this shard serves); how many were done. One that
        cannot be done now (its shard is unreachable) stays queued for the next pass."""
        done = 0
        after: bytes | None = None
        while True:
            rows = self._store.scan(records.MEDIA_RELEASES, b"", after=after, limit=GC_BATCH)
            if not rows:
                return done
            after = records.pair(*rows[-1][0])
            finished = []
            for (conversation_id, media_id), release in rows:
                if not serves(conversation_id):
                    continue
                try:
                    await self._release(media_id, conversation_id, release)
                except ChatdError as exc:
                    log.info("media %d: its references stay until its shard answers (%s)",
                             media_id, exc)
                    continue
                finished.append(((conversation_id, media_id), release))
            if finished:
                await self._commands.submit(partial(self._released, finished))
                done += len(finished)
            if len(rows) < GC_BATCH:
                return done

    def _released(self, finished: list[tuple[tuple[int, int], Any]], batch: Batch) -> None:
        for key, release in finished:
            # Unless a deletion queued another release of it meanwhile.
            if self._overlay.get(records.MEDIA_RELEASES, key) == release:
                self._overlay.delete(batch, records.MEDIA_RELEASES, key)

    async def _release(self, media_id: int, conversation_id: int, release: Any) -> None:
        drop = bool(release.get("conversation"))
        senders = [int(sender) for sender in release.get("senders", ())]
        if self._here(media_id):
            await self.release_here(media_id, conversation_id, drop, senders)
        else:
            await self._ask(self.shard_of(media_id), "media.release", {
                "media_id": media_id, "conversation_id": conversation_id, "drop": drop,
                "senders": senders})

    async def release_here(self, media_id: int, conversation_id: int, drop_conversation: bool,
                           senders: list[int]) -> None:
        """On the media's shard: the conversation no longer carries the media (when
        `drop_conversation`), and the upload's own reference goes if its uploader is
        among `senders`. Idempotent: a repeat finds nothing left to drop. A media no
        reference holds any more is dropped, and its blob goes at the next GC pass."""

        def apply(batch: Batch) -> None:
            media = self.find(media_id)
            if media is None:
                return
            changed = media
            key = (media_id, conversation_id)
            if drop_conversation and self._overlay.get(records.MEDIA_CONVERSATIONS, key):
                self._overlay.delete(batch, records.MEDIA_CONVERSATIONS, key)
                changed = replace(changed, message_refs=max(0, changed.message_refs - 1))
            if changed.own_ref and changed.uploader_id in senders:
                used = self._overlay.get(records.MEDIA_USAGE, changed.uploader_id) or 0
                self._overlay.put(batch, records.MEDIA_USAGE, changed.uploader_id,
                                  max(0, used - changed.size))
                changed = replace(changed, own_ref=False)
            if changed is media:
                return
            if changed.referenced:
                self._overlay.put(batch, records.MEDIA, media_id, changed)
            else:
                self._drop(batch, changed)

        await self._commands.submit(apply)

    # -- profile and group photos --------------------------------------------------------------

    async def pin_photo(self, media_id: int, user_id: int) -> None:
        """Count `media_id` as a photo (a profile's or a group's): it must be an image the
        user may access, with thumbnails. Raises 404 / 400 `not_an_image`. On the media's
        shard."""
        if not self._here(media_id):
            await self._ask(self.shard_of(media_id), "media.photo",
                            {"media_id": media_id, "user_id": user_id, "pin": True})
            return
        media = await self.accessible(media_id, user_id)
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

        await self._commands.submit(apply)

    async def unpin_photo(self, media_id: int) -> None:
        """A profile or group no longer shows `media_id`."""
        if not self._here(media_id):
            await self._ask(self.shard_of(media_id), "media.photo",
                            {"media_id": media_id, "user_id": 0, "pin": False})
            return

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
        if not self._here(media_id):
            await self._ask(self.shard_of(media_id), "media.delete",
                            {"media_id": media_id, "user_id": user_id})
            return
        media = self.find(media_id)
        if media is not None and media.own_ref and media.uploader_id != user_id:
            if await self.may_access(media, user_id):
                raise Forbidden("only the uploader may delete an upload", code="not_uploader")
            raise unknown_media(media_id)

        def apply(batch: Batch) -> None:
            media = self.find(media_id)
            if media is None or not media.own_ref or media.uploader_id != user_id:
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

    # -- export and erase (services/gdpr.py) ----------------------------------------------

    async def uploads_of(self, user_id: int) -> list[MediaRecord]:
        """The user's uploads on this shard that still exist (their own reference may be
        gone: a message still carries them). Media has no index by uploader, so this is a
        scan of this shard's media records, a page at a time (the loop serves between
        pages): exports and erasures are rare, and an index would cost every upload."""
        found: list[MediaRecord] = []
        after: bytes | None = None
        while page := self._store.scan(records.MEDIA, b"", after=after, limit=GC_BATCH * 4):
            after = records.u64(page[-1][0])
            found.extend(record for _, record in page if record.uploader_id == user_id)
            await trio.lowlevel.checkpoint()
        return found

    async def erase_uploads(self, user_id: int) -> int:
        """Drop every upload of the user on this shard, whatever still references it
        (messages, photos): the record, where it was referenced, the user's usage; then
        collect the blobs no other upload shares, so their files leave the disk now, not
        at the next GC pass. Returns how many uploads were dropped. Idempotent."""
        uploads = await self.uploads_of(user_id)

        def apply(batch: Batch) -> int:
            dropped = 0
            for listed in uploads:
                media = self.find(listed.media_id)
                if media is None:
                    continue
                for key, _ in self._store.scan(records.MEDIA_CONVERSATIONS,
                                               records.u64(media.media_id)):
                    self._overlay.delete(batch, records.MEDIA_CONVERSATIONS, key)
                self._drop(batch, media)
                dropped += 1
            self._overlay.delete(batch, records.MEDIA_USAGE, user_id)
            return dropped

        dropped: int = await self._commands.submit(apply)
        await self.collect_garbage()
        return dropped

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


    # -- what peers ask (services/peering.py) ---------------------------------------------------

    async def _attach_request(self, body: dict[str, Any]) -> Any:
        ids = body.get("media_ids")
        if not isinstance(ids, list) or not all(_is_int(item) for item in ids):
            raise BadRequest("media_ids: a list of ids", code="malformed_command")
        return await self.attach_here(_int(body, "user_id"), _int(body, "conversation_id"),
                                      [int(item) for item in ids])

    async def _open_request(self, body: dict[str, Any]) -> Any:
        media_id = _int(body, "media_id")
        if not self._here(media_id):
            raise unknown_media(media_id)
        thumbnail = _int(body, "thumbnail") or None
        blob = await self.open_download(media_id, _int(body, "user_id"), thumbnail)
        return [blob.sha256, blob.size, blob.content_type, blob.filename]

    async def _read_request(self, body: dict[str, Any]) -> Any:
        sha256, start, length = body.get("sha256"), _int(body, "start"), _int(body, "length")
        if not isinstance(sha256, str) or not 0 < length <= MESH_READ or start < 0:
            raise BadRequest("media.read: sha256, start, length (at most "
                             f"{MESH_READ})", code="malformed_command")
        if self._store.get(records.BLOBS, sha256) is None:
            raise NotFound("no such blob here", code="unknown_media")
        return b"".join([chunk async for chunk in self.blobs.read(sha256, start, length)])

    async def _audience_request(self, body: dict[str, Any]) -> Any:
        await trio.lowlevel.checkpoint()
        conversation_id = _int(body, "conversation_id")
        if not self._router.owns(conversation_id):
            raise Unavailable("not this conversation's owner", code="not_owner")
        return self.audience_here(conversation_id, _int(body, "media_id"))

    async def _photo_request(self, body: dict[str, Any]) -> Any:
        media_id = _int(body, "media_id")
        if not self._here(media_id):
            raise unknown_media(media_id)
        if body.get("pin") is True:
            await self.pin_photo(media_id, _int(body, "user_id"))
        else:
            await self.unpin_photo(media_id)
        return None

    async def _release_request(self, body: dict[str, Any]) -> Any:
        media_id = _int(body, "media_id")
        senders = body.get("senders")
        if not isinstance(senders, list) or not all(_is_int(item) for item in senders):
            raise BadRequest("senders: a list of ids", code="malformed_command")
        if not self._here(media_id):
            raise unknown_media(media_id)
        await self.release_here(media_id, _int(body, "conversation_id"),
                                body.get("drop") is True, [int(item) for item in senders])
        return None

    async def _delete_request(self, body: dict[str, Any]) -> Any:
        media_id = _int(body, "media_id")
        if not self._here(media_id):
            raise unknown_media(media_id)
        await self.delete(media_id, _int(body, "user_id"))
        return None


def _carried(attachments: tuple[dict[str, Any], ...]) -> list[int]:
    """The media a message's attachments reference (their own thumbnails included)."""
    return list(dict.fromkeys([int(item["media_id"]) for item in attachments] + [
        int(item["thumbnail_media_id"]) for item in attachments
        if item.get("thumbnail_media_id")]))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
