"""A user's email-notification settings and the digest schedule, pure. (Mute and
previews are the user's notification preferences, shared with push:
services/notify_prefs.py.)

The settings live on the user's home (`email_settings`); the schedule of the next digest
(`email_digests`) too, so a due digest survives a restart (services/email_notify.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

#: An address we send to: ASCII only, an unquoted local part and a dotted host name.
#: Narrower than RFC 5321 on purpose: nothing here can end a header line or need
#: encoding, so an address can never carry a header into a mail. The same pattern is the
#: JSON Schema of the field (web/models.py).
ADDRESS_PATTERN = (r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@"
                   r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                   r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$")
ADDRESS_MAX = 254
_ADDRESS = re.compile(ADDRESS_PATTERN[:-1] + r"\Z")

#: Seconds a message waits unread before it is mailed (Matrix waits about ten minutes).
DEFAULT_DELAY_S = 600
MIN_DELAY_S = 60
MAX_DELAY_S = 7 * 24 * 3600


def valid_address(address: str) -> bool:
    return len(address) <= ADDRESS_MAX and _ADDRESS.match(address) is not None


@dataclass(frozen=True, slots=True)
class EmailSettings:
    """What a user chose. `address` is the verified address (mail goes only there);
    `pending` an address waiting for its link to be followed (only the verification mail
    goes to it)."""

    address: str = ""
    pending: str = ""
    enabled: bool = False
    delay_s: int = DEFAULT_DELAY_S

    @property
    def active(self) -> bool:
        """Whether digests go out: enabled, with a verified address."""
        return self.enabled and bool(self.address)


@dataclass(slots=True)
class DigestState:
    """The digest schedule of one user: when the next is due (0: none pending), when the
    last went out, and, per conversation it listed, the newest seq it covered (a later
    digest lists a conversation again only for messages after that)."""

    due_ms: int = 0
    last_sent_ms: int = 0
    mailed: dict[int, int] = field(default_factory=dict)
    #: Sends that failed in a row (the retry backs off with it).
    failures: int = 0


def next_due(state: DigestState, now_ms: int, delay_s: int) -> int:
    """When a message arriving now makes a digest due: `delay_s` from now, and never
    sooner than `delay_s` after the last digest (one per user per period)."""
    delay_ms = delay_s * 1000
    return max(now_ms + delay_ms, state.last_sent_ms + delay_ms)


def retry_after_ms(failures: int) -> int:
    """Backoff after `failures` failed sends in a row: 30 s doubling, at most an hour."""
    return int(min(30_000 * 2 ** max(0, failures - 1), 3_600_000))
