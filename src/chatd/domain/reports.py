"""Reports of users, pure: the record, its reasons and resolutions, and their rules.

A report names a conversation the reporter is in and a user of it (directly, or as the
sender of a message the reporter can read). It lives on the reported user's home, where
their abuse counters are (services/abuse.py); its id is minted there, so the id names
its shard as a user id names its home.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from chatd.errors import BadRequest, PayloadTooLarge

#: Why a report is made. "other" wants a note.
REASONS = ("spam", "abuse", "harassment", "illegal", "other")
#: What an admin may do with a report: `dismiss` (unfounded: it stops counting toward
#: the reported user's score), `uphold` (founded, nothing more), `limit` (founded: limit
#: the account), `unlimit` (lift the account's limit, clearing its counters).
ACTIONS = ("dismiss", "uphold", "limit", "unlimit")
Status = Literal["open", "resolved"]
STATUSES: tuple[Status, ...] = ("open", "resolved")
#: The reporter's own words beside the reason, in characters.
MAX_NOTE = 1000
#: An admin's note on a resolution or a limit, in characters.
MAX_ADMIN_NOTE = 1000


@dataclass(frozen=True, slots=True)
class Report:
    report_id: int
    reported_id: int
    reporter_id: int
    conversation_id: int
    #: The message reported (0: the user was reported without one).
    seq: int
    reason: str
    note: str
    #: Plaintext the reporter's client supplied (the server cannot read encrypted
    #: chats), stored as given.
    evidence: str
    created_at: int
    #: The message, as the owner holds it: its id, content type and, for text/*, its text
    #: (what the server can vouch for, beside the client's evidence).
    message_id: int = 0
    content_type: str = ""
    message_text: str = ""
    status: str = "open"
    resolved_at: int = 0
    action: str = ""
    resolution_note: str = ""


def status_code(status: str) -> int:
    """A status as the first part of the report's key: listing by status is one scan."""
    return STATUSES.index(status)


def check_reason(reason: str, note: str) -> None:
    if reason not in REASONS:
        raise BadRequest(f"reason: must be one of {', '.join(REASONS)}", code="invalid_field")
    if reason == "other" and not note.strip():
        raise BadRequest("note: say what is wrong when the reason is 'other'",
                         code="invalid_field")
    if len(note) > MAX_NOTE:
        raise BadRequest(f"note: at most {MAX_NOTE} characters", code="invalid_field")


def check_evidence(evidence: str, max_bytes: int) -> None:
    size = len(evidence.encode())
    if size > max_bytes:
        raise PayloadTooLarge(f"evidence is {size} bytes; the limit is {max_bytes} "
                              "(abuse.max_evidence_bytes)", code="evidence_too_large")


def check_action(action: str, note: str) -> None:
    if action not in ACTIONS:
        raise BadRequest(f"action: must be one of {', '.join(ACTIONS)}", code="invalid_field")
    if len(note) > MAX_ADMIN_NOTE:
        raise BadRequest(f"note: at most {MAX_ADMIN_NOTE} characters", code="invalid_field")
