"""A user's data on request: the export (a zip of everything chatd holds about them) and
the erasure, across every shard; and the operator's view of an account.

Where each part is (docs/privacy.md, "Export and erase"):

- the home (services/account_admin.py): profile, settings, devices, last seen, the
  account's state; the erasure's first step (mark, tombstone profile, handle freed,
  devices and tokens revoked) and its last (erased);
- every shard as a conversation owner: the user's conversations and memberships
  (`ConversationsOf`), their messages (`History`, kept when they sent them), and the
  erasure of their part of each (`EraseMember`);
- every shard as a media shard: the uploads it took from the user (`gdpr.media_of`),
  dropped with their files on erasure (`gdpr.erase_local`, which also deletes the
  user's exports kept there and empties the note and evidence of the reports they filed
  there);
- every shard as the home of reported users: the reports the user filed
  (`home.reports_filed`, paged: reports are kept by the reported user's home, with no
  index by reporter); the user's own home: their block list (each block's flag is on
  the pair's direct chat owner) and their abuse records and the reports against them
  (`home.abuse_erase`); every owner: invites to the user (declined on erasure).

An export is made by the shard that was asked (its id names that shard) in a background
task: gathered here, async, from wherever the parts are, then written as a zip in a
worker thread (services/exports.py). An erasure runs on the user's home: the first step
is one durable batch, every later step is idempotent, and a step that cannot be done now
(a shard unreachable) leaves the account "erasing"; the sweeper (`run`) finishes it every
`gdpr.sweep_interval` and at startup.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from chatd.config import GdprConfig, LimitsConfig
from chatd.domain import rules
from chatd.domain.ids import direct_conversation_id
from chatd.domain.media import MediaRecord
from chatd.domain.models import Conversation, Device, Message, User
from chatd.domain.reports import Report
from chatd.errors import BadRequest, ChatdError, Unavailable
from chatd.protocol import frames
from chatd.protocol import owner as ops
from chatd.services.abuse import AbuseHome, report_from_wire
from chatd.services.account_admin import AccountAdmin, AccountState
from chatd.services.blocks import BlockList
from chatd.services.exports import ExportRecord, ExportStopped, ExportStore
from chatd.services.media import Blob, MediaService
from chatd.services.owner_api import PAGE_BYTES, OwnerApi
from chatd.services.peer_bodies import int_field
from chatd.services.routing import Router
from chatd.services.shard_calls import call
from chatd.services.users import device_from_wire, user_from_wire

log = logging.getLogger(__name__)

#: Seconds an erasure request waits for the erasure to finish before answering that it
#: goes on in the background ("erasing"); and how long a shard forwarding it waits.
ERASE_WAIT = 20.0
ERASE_FORWARD_TIMEOUT = ERASE_WAIT + 10.0
#: The files of an export, in the order the zip holds them.
EXPORT_FILES = ("export.json", "profile.json", "settings.json", "devices.json",
                "conversations.json", "messages.json", "media.json", "blocks.json",
                "reports.json")
#: Reports one export lists at most (those the user filed, gathered from every shard).
EXPORT_MAX_REPORTS = 10_000


@dataclass
class ExportContents:
    """What an export holds, gathered: JSON documents by file name, and media files to
    copy in (scratch path, name in the zip)."""

    documents: dict[str, Any] = field(default_factory=dict)
    files: list[tuple[Path, str]] = field(default_factory=list)


#: Bytes of a media file copied into the zip between two looks at `stopping`.
_COPY_CHUNK = 1 << 20


def write_zip(contents: ExportContents, path: Path,
              stopping: threading.Event | None = None) -> None:
    """The zip, written in the caller's thread (a worker thread: compression is CPU).
    Gives up (ExportStopped) at the first look at `stopping` after it is set: between
    files and between chunks of a file, so a shutdown waits for at most one chunk.
    (`chatd admin` writes one offline, with nothing to stop it: no event.)"""
    stopping = stopping or threading.Event()
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, document in contents.documents.items():
            if stopping.is_set():
                raise ExportStopped
            archive.writestr(name, json.dumps(document, indent=2, ensure_ascii=False))
        for source, name in contents.files:
            with open(source, "rb") as reader, archive.open(name, "w") as writer:
                while chunk := reader.read(_COPY_CHUNK):
                    if stopping.is_set():
                        raise ExportStopped
                    writer.write(chunk)


@dataclass(frozen=True, slots=True)
class AccountView:
    """An account as the operator sees it (`Gdpr.show`)."""

    user: User
    state: AccountState
    devices: list[Device]
    conversations: int
    uploads: int
    upload_bytes: int
    #: Shards that could not be asked: the counts leave out what they hold.
    unreachable: list[str]


class Gdpr:
    def __init__(self, *, router: Router, admin: AccountAdmin, owner_api: OwnerApi,
                 media: MediaService, exports: ExportStore, blocks: BlockList,
                 abuse: AbuseHome, config: GdprConfig, limits: LimitsConfig,
                 now_ms: Callable[[], int]) -> None:
        self._router = router
        self._admin = admin
        self._abuse = abuse
        self._owner_api = owner_api
        self._media = media
        self.exports = exports
        self._config = config
        self._limits = limits
        self._now_ms = now_ms
        #: What peers may ask of this shard (services/peering.py); the local door runs the
        #: same handlers (services/shard_calls.py).
        self.requests: dict[str, Callable[[dict[str, Any]], Any]] = {
            "gdpr.erase": self._erase_request,
            "gdpr.media_of": self._media_of_request,
            "gdpr.erase_local": self._erase_local_request,
        }
        # The home's block lists and abuse records are reached through their own
        # `home.*` requests (services/blocks.py, services/abuse.py).
        self._handlers = {**blocks.requests, **abuse.requests, **admin.requests,
                          **self.requests}
        #: Users whose erasure is being finished now (by a request or the sweeper).
        self._finishing: set[int] = set()
        self._nursery: trio.Nursery | None = None

    async def _call(self, shard: str, method: str, body: dict[str, Any], *,
                    what: str = "home", timeout: float | None = None) -> Any:  # noqa: ASYNC109
        return await call(self._router, self._handlers, shard, method, body, what=what,
                          timeout=timeout)

    async def _at_home(self, user_id: int, method: str, *,
                       timeout: float | None = None, **body: Any) -> Any:  # noqa: ASYNC109
        return await self._call(self._router.home_of_user(user_id), method,
                                {"user_id": user_id, **body}, timeout=timeout)

    # -- the background task ----------------------------------------------------------------

    async def run(self) -> None:
        """Make exports in the background, delete expired ones, and finish erasures that
        were interrupted: at startup, then every `gdpr.sweep_interval` seconds."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                await self.exports.remove_leftovers()
                while True:
                    await self.sweep()
                    await trio.sleep(self._config.sweep_interval)
            finally:
                # Cancelled: the shard is stopping. An export being written gives up at
                # its next look (services/exports.py), so the nursery does not wait for
                # a large zip to be finished.
                self._nursery = None
                self.exports.stopping.set()

    async def sweep(self) -> None:
        for user_id in self._admin.erasing():
            await self.finish_erase(user_id)
        try:
            deleted = await self.exports.sweep()
        except ChatdError as exc:
            log.warning("deleting expired exports stopped early: %s", exc.message)
        else:
            if deleted:
                log.info("deleted %d expired exports", deleted)

    # -- erasure ----------------------------------------------------------------------------

    async def erase(self, user_id: int, password: str | None) -> str:
        """Erase the user everywhere; `password` is checked first (None: the operator).
        Runs on the user's home. Returns "erased", or "erasing" when steps are left for
        the sweeper (a shard could not be reached, or it took longer than ERASE_WAIT)."""
        status: str = await self._at_home(user_id, "gdpr.erase", password=password,
                                          timeout=ERASE_FORWARD_TIMEOUT)
        return status

    async def _erase_request(self, body: dict[str, Any]) -> Any:
        user_id = int_field(body, "user_id")
        password = body.get("password")
        if password is not None and not isinstance(password, str):
            raise BadRequest("password: expected a string", code="malformed_command")
        # Shielded, as a registration is: once the password matched, the first step lands
        # whatever happens to the request that asked for it.
        with trio.CancelScope(shield=True):
            if password is not None:
                await self._admin.verify_password(user_id, password)
            await self._admin.begin_erase(user_id)
        with trio.move_on_after(ERASE_WAIT):
            return await self.finish_erase(user_id)
        return "erasing"

    async def finish_erase(self, user_id: int) -> str:
        """Every step after the home's first, each idempotent; "erasing" when one could
        not be done now (the sweeper tries again)."""
        if self._admin.state(user_id).erased_at:
            return "erased"
        if user_id in self._finishing:
            return "erasing"
        self._finishing.add(user_id)
        try:
            await self._admin.run_erase_hooks(user_id)
            photo = self._admin.state(user_id).photo
            if photo:
                await self._media.unpin_photo(photo)
                await self._admin.photo_released(user_id)
            # Uploads (and exports) first: their bytes are what a user most expects gone,
            # and dropping them needs nothing of the conversations. Each shard also
            # empties the notes and evidence of the reports the user filed there.
            for shard in self._router.shards:
                await self._call(shard, "gdpr.erase_local", {"user_id": user_id},
                                 what="media")
            await self._drop_blocks(user_id)
            await self._decline_invites(user_id)
            for conversation in await self._conversations(user_id, strict=True):
                await self._erase_member(conversation.conversation_id, user_id)
            # Last of the home's records: the counters, the limit and the reports
            # against the user (copies of their messages' text).
            await self._at_home(user_id, "home.abuse_erase")
            await self._admin.finish_erase(user_id)
        except ChatdError as exc:
            log.warning("the erasure of user %d goes on later: %s", user_id, exc.message)
            return "erasing"
        finally:
            self._finishing.discard(user_id)
        log.info("user %d erased", user_id)
        return "erased"

    async def _erase_member(self, conversation_id: int, user_id: int) -> None:
        """The user's messages in the conversation become tombstones (bodies and
        attachment references gone) and they leave it with a `member_erased` entry, on
        its owner (`EraseMember`, services/deletion.py)."""
        await self._router.ask(ops.EraseMember(conversation_id, user_id))

    async def _drop_blocks(self, user_id: int) -> None:
        """The user's blocks go: an erased account can message nobody, so they protect
        nothing any more. The flag on each direct chat's owner first, then the row at
        home, so an interrupted erasure finds the rows still to do."""
        for peer_id, _ in await self._at_home(user_id, "home.blocks"):
            await self._router.ask(ops.SetBlock(direct_conversation_id(user_id, peer_id),
                                                user_id, peer_id, False))
            await self._at_home(user_id, "home.unblock", peer_id=peer_id)

    async def _decline_invites(self, user_id: int) -> None:
        """Invites to the user are declined on each group's owner (the invite and its
        index row go); invites the user sent stay with the invitee, naming an id."""
        for shard in self._router.shards:
            query = ops.InvitesOf(0, user_id)
            if self._router.is_local(shard):
                invites = self._owner_api.invites_of(query)
            else:
                invites = await self._router.remote(shard, query).wait()
            for conversation_id, *_ in invites:
                await self._router.ask(ops.AnswerInvite(int(conversation_id), user_id,
                                                        False))

    async def _erase_local_request(self, body: dict[str, Any]) -> Any:
        user_id = int_field(body, "user_id")
        uploads = await self._media.erase_uploads(user_id)
        exports = await self.exports.delete_of(user_id)
        reports = await self._abuse.strip_filed(user_id)
        return {"uploads": uploads, "exports": exports, "reports_stripped": reports}

    async def _reports_filed(self, user_id: int) -> tuple[list[Report], bool]:
        """The reports the user filed, from every shard (each keeps those against the
        users homed there), at most EXPORT_MAX_REPORTS (then True: cut short)."""
        found: list[Report] = []
        for shard in self._router.shards:
            after: list[int] | None = None
            while True:
                answer = await self._call(shard, "home.reports_filed",
                                          {"user_id": user_id, "after": after})
                found.extend(report_from_wire(item) for item in answer["reports"])
                if len(found) >= EXPORT_MAX_REPORTS:
                    return found[:EXPORT_MAX_REPORTS], True
                after = answer["after"]
                if after is None:
                    break
        return found, False

    # -- what is where -----------------------------------------------------------------------

    async def _conversations(self, user_id: int, *, strict: bool) -> list[Conversation]:
        """The user's conversations, asked of every shard. `strict`: a shard that cannot
        be asked fails the call (an erasure must not miss one); otherwise it is left out."""
        found: list[Conversation] = []
        for shard in self._router.shards:
            after = -1
            while after:
                query = ops.ConversationsOf(0, user_id, 0, max(after, 0), {})
                try:
                    if self._router.is_local(shard):
                        page, after = self._owner_api.conversations_of(query)
                    else:
                        page, after = await self._router.remote(shard, query).wait()
                except ChatdError:
                    if strict:
                        raise
                    break
                found.extend(conversation for conversation, _ in page)
        return found

    async def _uploads(self, user_id: int, *, strict: bool) -> list[tuple[str, dict[str, Any]]]:
        """(shard, upload) for every upload of the user on every shard."""
        found: list[tuple[str, dict[str, Any]]] = []
        for shard in self._router.shards:
            try:
                uploads = await self._call(shard, "gdpr.media_of", {"user_id": user_id},
                                           what="media")
            except ChatdError:
                if strict:
                    raise
                continue
            found.extend((shard, upload) for upload in uploads)
        return found

    async def _media_of_request(self, body: dict[str, Any]) -> Any:
        return [_upload_to_wire(record, quarantined=self._media.is_quarantined(record.sha256))
                for record in await self._media.uploads_of(int_field(body, "user_id"))]

    # -- the operator's view -----------------------------------------------------------------

    async def show(self, user_id: int) -> AccountView:
        """The account as its home holds it, with counts from every shard (those that
        could not be asked are named in `unreachable`)."""
        home = await self._at_home(user_id, "home.admin_show")
        unreachable: list[str] = []
        conversations = await self._conversations(user_id, strict=False)
        uploads = await self._uploads(user_id, strict=False)
        for shard in self._router.shards:
            peers = self._router.peers
            if not self._router.is_local(shard) and (peers is None or not peers.is_up(shard)):
                unreachable.append(shard)
        return AccountView(user_from_wire(home["user"]),
                           AccountState.from_record(home["state"]),
                           [device_from_wire(item) for item in home["devices"]],
                           len(conversations), len(uploads),
                           sum(int(upload["size"]) for _, upload in uploads), unreachable)

    async def deactivate(self, user_id: int) -> AccountState:
        return AccountState.from_record(await self._at_home(user_id, "home.admin_deactivate"))

    async def reactivate(self, user_id: int) -> AccountState:
        return AccountState.from_record(await self._at_home(user_id, "home.admin_reactivate"))

    # -- export -----------------------------------------------------------------------------

    async def start_export(self, user_id: int) -> ExportRecord:
        """Begin an export of the user, made in the background (`run`); 409 while one is
        being made."""
        nursery = self._nursery
        if nursery is None:
            raise Unavailable("exports are not being made now (starting or stopping)",
                              code="shutting_down")
        await self._at_home(user_id, "home.admin_show")  # 404 for nobody, before a record
        record = await self.exports.begin(user_id)
        nursery.start_soon(self._make_export, record)
        return record

    async def _make_export(self, record: ExportRecord) -> None:
        scratch = self.exports.scratch(record.export_id)
        try:
            contents = await self.gather(record.user_id, scratch)
            await self.exports.finish(
                record, lambda path, stopping: write_zip(contents, path, stopping))
        except ExportStopped:
            log.info("export %s stopped: the shard is stopping", record.export_id)
        except ChatdError as exc:
            # The export is removed (ExportStore.finish or here); the user asks again.
            log.warning("export %s failed: %s", record.export_id, exc.message)
            with trio.CancelScope(shield=True):
                await self.exports.delete([record.export_id])
        except Exception:
            log.exception("export %s failed", record.export_id)
            with trio.CancelScope(shield=True):
                await self.exports.delete([record.export_id])
        finally:
            # Whatever happened, the user may ask for another export now.
            self.exports.release(record.user_id)

    async def gather(self, user_id: int, scratch: Path) -> ExportContents:
        """Everything of the user's, from every shard, as the export's documents; their
        uploads' bytes copied into `scratch`. Fails (503) when a shard cannot be asked:
        an export that silently missed a shard would say less than the user is owed."""
        contents = ExportContents()
        home = await self._at_home(user_id, "home.export_profile")
        conversations = await self._conversations(user_id, strict=True)
        messages, truncated = await self._messages(user_id, conversations)
        uploads, copied, skipped = await self._copy_uploads(user_id, scratch, contents)
        reports, reports_truncated = await self._reports_filed(user_id)
        contents.documents = {
            "export.json": {
                "user_id": str(user_id), "made_at": self._now_ms(),
                "made_by_shard": self._router.shard,
                "files": list(EXPORT_FILES),
                "messages_truncated": truncated,
                "max_messages": self._config.export_max_messages,
                "media_files_copied": copied, "media_files_left_out": skipped,
                "max_media_bytes": self._config.export_max_media_bytes,
                "reports_truncated": reports_truncated,
                "about": "Everything chatd holds about this account. Ids are decimal "
                         "strings; times are ms since the Unix epoch. messages.json holds "
                         "the messages you sent (bodies as sent: text, or base64 for other "
                         "content types); media/ holds the files you uploaded; "
                         "blocks.json whom you block; reports.json the reports you "
                         "filed (reports about you are not included: they hold other "
                         "people's words and identities).",
            },
            "profile.json": home["profile"],
            "settings.json": {**home["settings"], "last_seen": home["last_seen"]},
            "blocks.json": home["blocks"],
            "reports.json": [_report_to_json(report) for report in reports],
            "devices.json": home["devices"],
            "conversations.json": [_conversation_to_json(conv, user_id)
                                   for conv in conversations],
            "messages.json": messages,
            "media.json": uploads,
        }
        # Documents of the home's other services (account_admin.export_parts), e.g.
        # notifications.json; a home from before them sends none.
        for name, document in (home.get("parts") or {}).items():
            if str(name) not in contents.documents:
                contents.documents[str(name)] = document
                contents.documents["export.json"]["files"].append(str(name))
        return contents

    async def _messages(self, user_id: int, conversations: list[Conversation]
                        ) -> tuple[list[dict[str, Any]], bool]:
        """The messages the user sent, oldest first per conversation, at most
        `gdpr.export_max_messages` in all (then True: cut short). Read a page at a time
        from each owner, as a client reads history."""
        kept: list[dict[str, Any]] = []
        budget = self._config.export_max_messages
        for conv in conversations:
            after = 0
            local = self._router.owns(conv.conversation_id)
            while True:
                page = await self._router.ask(ops.History(
                    conv.conversation_id, user_id, after, -1, self._limits.history_page_max,
                    0 if local else PAGE_BYTES))
                for message in page.messages:
                    # The server's own entries (joins, renames) are the conversation's
                    # record, not something the user wrote.
                    if message.sender_id != user_id or \
                            message.content_type == rules.SYSTEM_CONTENT_TYPE:
                        continue
                    if len(kept) >= budget:
                        return kept, True
                    kept.append(_message_to_json(message))
                if not page.has_more or not page.messages:
                    break
                after = page.messages[-1].seq
        return kept, False

    async def _copy_uploads(self, user_id: int, scratch: Path, contents: ExportContents
                            ) -> tuple[list[dict[str, Any]], int, int]:
        """The user's uploads, listed; their bytes copied to `scratch` (from whichever
        shard holds them) up to `gdpr.export_max_media_bytes`. Quarantined bytes are
        listed, never copied."""
        listed: list[dict[str, Any]] = []
        budget = self._config.export_max_media_bytes
        copied = skipped = 0
        for shard, upload in await self._uploads(user_id, strict=True):
            name = None
            size = int(upload["size"])
            if not upload["quarantined"] and size <= budget:
                name = f"media/{upload['media_id']}-{_safe_name(str(upload['filename']))}"
                target = scratch / str(upload["media_id"])
                await trio.Path(scratch).mkdir(parents=True, exist_ok=True)
                blob = Blob(str(upload["sha256"]), size, str(upload["content_type"]),
                            str(upload["filename"]), shard)
                async with await trio.open_file(target, "wb") as out:
                    async for chunk in self._media.read(blob, 0, size):
                        await out.write(chunk)
                contents.files.append((target, name))
                budget -= size
                copied += 1
            else:
                skipped += 1
            listed.append({**upload, "file": name})
        return listed, copied, skipped


def _report_to_json(report: Report) -> dict[str, Any]:
    """A report the user filed, as they filed it, with where it stands. The copy of the
    reported message's text is left out (the reported person's words, which the user saw
    in the conversation), as is the moderators' note."""
    return {"report_id": str(report.report_id), "reported_user_id": str(report.reported_id),
            "conversation_id": str(report.conversation_id), "seq": report.seq or None,
            "reason": report.reason, "note": report.note, "evidence": report.evidence,
            "created_at": report.created_at, "status": report.status,
            "resolved_at": report.resolved_at or None, "action": report.action or None}


def _safe_name(filename: str) -> str:
    return filename.replace("/", "_").replace("\\", "_") or "file"


def _upload_to_wire(record: MediaRecord, *, quarantined: bool) -> dict[str, Any]:
    return {"media_id": str(record.media_id), "sha256": record.sha256, "size": record.size,
            "content_type": record.content_type, "filename": record.filename,
            "created_at": record.created_at, "width": record.width, "height": record.height,
            "deleted_by_you": not record.own_ref, "quarantined": quarantined}


def _conversation_to_json(conv: Conversation, user_id: int) -> dict[str, Any]:
    member = conv.members.get(user_id)
    return {"conversation_id": str(conv.conversation_id), "kind": conv.kind,
            "name": conv.name, "created_by": str(conv.created_by),
            "created_at": conv.created_at,
            "your_membership": {"role": member.role if member else None,
                                "joined_seq": member.joined_seq if member else None},
            "members": [{"user_id": str(member_id), "role": entry.role}
                        for member_id, entry in conv.members.items()]}


def _message_to_json(message: Message) -> dict[str, Any]:
    body = message.body
    return {"conversation_id": str(message.conversation_id), "seq": message.seq,
            "message_id": str(message.message_id), "ts": message.ts,
            "client_msg_id": message.client_msg_id, "content_type": message.content_type,
            "body": base64.b64encode(body).decode() if isinstance(body, bytes) else body,
            "attachments": [{"media_id": str(item["media_id"]),
                             "filename": item.get("filename", ""),
                             "content_type": item.get("content_type", ""),
                             "size": item.get("size", 0)} for item in message.attachments],
            # What it replied to, mentioned, whether it was forwarded: the user's own
            # doing. Not the quote, which is someone else's text.
            **{name: value for name, value in frames.rich_payload(message).items()
               if name != "quote"}}

