"""The notification mails, pure: a digest of unread conversations and the verification
mail, as `email.message.EmailMessage` (multipart text + HTML).

What users wrote (display names, group names, previews) goes only into the bodies: the
HTML part escapes it (`html.escape`), the text part has its line breaks and controls
flattened so a preview cannot fake lines of its own. Headers carry only fixed strings,
the operator's `from`, an address that passed `email_settings.valid_address` (ASCII, no
spaces) and our own signed URLs; the default policy encodes and checks every header
anyway (it refuses a CR or LF in one).
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

DIGEST_SUBJECT = "You have unread messages"
VERIFY_SUBJECT = "Confirm your email address"
#: Characters of a preview (the newest unread message's text) shown at most.
PREVIEW_CHARS = 140
#: Conversations a digest lists at most (the most recently active first).
MAX_ITEMS = 20

#: The default policy (headers encoded and checked: a CR or LF in one is refused), with
#: RFC 5322's own line limit: a `List-Unsubscribe` URL longer than 78 characters has no
#: place to fold, and the default would RFC 2047-encode it, which mail clients do not
#: decode in that header (RFC 2369 wants a bare <URL>).
POLICY = policy.default.clone(max_line_length=998)

_FLATTEN = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")


@dataclass(frozen=True, slots=True)
class DigestItem:
    """One conversation in a digest."""

    #: The group's name, or the other person's display name in a direct chat.
    title: str
    is_group: bool
    unread: int
    #: The newest unread message's text and sender, when previews are allowed for it.
    preview: str | None = None
    sender_name: str | None = None


@dataclass(frozen=True, slots=True)
class Envelope:
    sender: str
    to: str
    #: The server's public base URL (links in the mail start with it).
    base_url: str


def flatten(text: str, limit: int) -> str:
    """One line of at most `limit` characters."""
    line = _FLATTEN.sub(" ", text).strip()
    return line if len(line) <= limit else line[:limit - 1].rstrip() + "…"


def _headers(message: EmailMessage, envelope: Envelope, subject: str, now_ms: int) -> None:
    message["Subject"] = subject
    message["From"] = envelope.sender
    message["To"] = envelope.to
    message["Date"] = format_datetime(datetime.fromtimestamp(now_ms / 1000, UTC))
    domain = envelope.sender.rpartition("@")[2].strip(" >") or None
    message["Message-ID"] = make_msgid(domain=domain)
    # Mail a program sent on its own: no auto-replies to it (RFC 3834).
    message["Auto-Submitted"] = "auto-generated"


def digest(envelope: Envelope, items: list[DigestItem], *, unsubscribe_url: str,
           now_ms: int) -> EmailMessage:
    """The digest: conversations and their unread counts, previews where allowed, and
    the RFC 8058 one-click unsubscribe headers."""
    total = sum(item.unread for item in items)
    lines = [f"You have {total} unread message{'s' if total != 1 else ''} in "
             f"{len(items)} conversation{'s' if len(items) != 1 else ''}:", ""]
    rows = []
    for item in items[:MAX_ITEMS]:
        title = flatten(item.title, 80) or "(no name)"
        kind = "group" if item.is_group else "chat"
        lines.append(f"- {title} ({kind}): {item.unread} unread")
        cell = (f"<strong>{html.escape(title)}</strong> <small>({kind})</small>: "
                f"{item.unread} unread")
        if item.preview is not None:
            preview = flatten(item.preview, PREVIEW_CHARS)
            who = flatten(item.sender_name or "", 80)
            lines.append(f"    {who + ': ' if who else ''}{preview}")
            cell += (f"<br><span style=\"color:#555\">"
                     f"{html.escape(who) + ': ' if who else ''}{html.escape(preview)}</span>")
        rows.append(f"<li>{cell}</li>")
    if len(items) > MAX_ITEMS:
        more = len(items) - MAX_ITEMS
        lines.append(f"… and {more} more")
        rows.append(f"<li>… and {more} more</li>")
    open_url = envelope.base_url
    lines += ["", f"Open chatd: {open_url}", "",
              f"Stop these emails: {unsubscribe_url}"]
    text = "\n".join(lines) + "\n"
    page = (
        "<!DOCTYPE html><html><body>"
        f"<p>You have {total} unread message{'s' if total != 1 else ''}:</p>"
        f"<ul>{''.join(rows)}</ul>"
        f"<p><a href=\"{html.escape(open_url)}\">Open chatd</a></p>"
        f"<p><small><a href=\"{html.escape(unsubscribe_url)}\">Stop these emails</a>"
        "</small></p></body></html>")
    message = EmailMessage(policy=POLICY)
    _headers(message, envelope, DIGEST_SUBJECT, now_ms)
    message["List-Unsubscribe"] = f"<{unsubscribe_url}>"
    message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    message.set_content(text, cte="quoted-printable")
    message.add_alternative(page, subtype="html", cte="quoted-printable")
    return message


def verification(envelope: Envelope, *, verify_url: str, now_ms: int) -> EmailMessage:
    """The mail that proves the address is the user's: the only mail an unverified
    address ever gets. It carries no text of the user's (not even their display name):
    anyone can have it sent to any address, so it must not carry a stranger's words."""
    text = ("Hello,\n\nconfirm that this address may receive notifications of "
            f"unread messages by opening this link (it works for 24 hours):\n\n"
            f"{verify_url}\n\nIf you did not ask for this, ignore this email: nothing will "
            "be sent to this address.\n")
    page = ("<!DOCTYPE html><html><body>"
            "<p>Hello,</p>"
            "<p>confirm that this address may receive notifications of unread messages "
            "(the link works for 24 hours):</p>"
            f"<p><a href=\"{html.escape(verify_url)}\">Confirm this address</a></p>"
            "<p>If you did not ask for this, ignore this email: nothing will be sent to "
            "this address.</p></body></html>")
    message = EmailMessage(policy=POLICY)
    _headers(message, envelope, VERIFY_SUBJECT, now_ms)
    message.set_content(text, cte="quoted-printable")
    message.add_alternative(page, subtype="html", cte="quoted-printable")
    return message
