"""Validation rules for user-supplied values: handles, names, passwords, content types.

Each function returns the normalised value or raises `BadRequest` naming the field and
the rule that was broken.
"""

from __future__ import annotations

import re
import unicodedata

from chatd.errors import BadRequest

_E164 = re.compile(r"\+[1-9][0-9]{6,14}")
_USERNAME = re.compile(r"[a-z0-9_.]{3,32}")
_CONTENT_TYPE = re.compile(r"[a-z0-9][a-z0-9.+-]{0,62}/[a-z0-9][a-z0-9.+-]{0,62}")
_CLIENT_MSG_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")

MAX_PASSWORD_LENGTH = 1024
MAX_DISPLAY_NAME = 64
MAX_STATUS_TEXT = 140
MAX_GROUP_NAME = 100
MAX_DEVICE_NAME = 64

#: Content types the server itself writes (membership changes and the like).
SYSTEM_CONTENT_TYPE = "chatd/system"
#: What a deleted (or expired, or erased) message becomes: a tombstone at its seq, with
#: no body and no attachments (services/deletion.py).
DELETED_CONTENT_TYPE = "chatd/deleted"
#: Entries that change another entry (docs/api.md, "Reactions, edits and pins"): the
#: server writes them for their own routes; their bodies name the `target` seq.
REACTION_CONTENT_TYPE = "chatd/reaction"
EDIT_CONTENT_TYPE = "chatd/edit"
PIN_CONTENT_TYPE = "chatd/pin"
ANNOTATION_CONTENT_TYPES = (REACTION_CONTENT_TYPE, EDIT_CONTENT_TYPE, PIN_CONTENT_TYPE)
#: Content types only the server writes.
RESERVED_CONTENT_TYPES = (SYSTEM_CONTENT_TYPE, DELETED_CONTENT_TYPE, *ANNOTATION_CONTENT_TYPES)


def normalize_handle(raw: str) -> str:
    """A handle is an E.164 phone number or a username; usernames compare case-insensitively."""
    handle = raw.strip()
    if handle.startswith("+"):
        if not _E164.fullmatch(handle):
            raise BadRequest("handle: a phone number must be in E.164 form, like +14155550123")
        return handle
    handle = handle.lower()
    if not _USERNAME.fullmatch(handle):
        raise BadRequest(
            "handle: a username is 3 to 32 characters of a-z, 0-9, '_' and '.'"
            " (or give a phone number in E.164 form)"
        )
    return handle


def check_password(password: str, min_length: int) -> str:
    if len(password) < min_length:
        raise BadRequest(f"password: must be at least {min_length} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise BadRequest(f"password: must be at most {MAX_PASSWORD_LENGTH} characters")
    return password


#: Unicode categories a name may not contain: controls (Cc), format characters (Cf: bidi
#: overrides such as U+202E, zero-width spaces), surrogates (Cs) and line or paragraph
#: separators (Zl, Zp). Invisible or reordering characters let one name pass for another.
_REFUSED_IN_NAMES = {"Cc": "control characters", "Cf": "invisible or bidi format characters",
                     "Cs": "lone surrogates", "Zl": "line breaks", "Zp": "line breaks"}
_ZERO_WIDTH_JOINER = "\u200d"
#: How much longer than its limit a name may be before NFC (decomposed input composes
#: to fewer characters; nothing legitimate is this much longer).
_MAX_RAW_FACTOR = 4
_EMOJI_CATEGORIES = ("So", "Sk")


def clean_text(raw: str, field: str, *, max_length: int, allow_empty: bool = False) -> str:
    """Single-line human text shown as a name (display, group and device names, status):
    trimmed, NFC, with no control, format or separator characters. The one exception is
    a zero-width joiner inside an emoji sequence (family and profession emoji need it)."""
    if len(raw) > max_length * _MAX_RAW_FACTOR:
        # Before normalising: NFC reorders combining marks with a quadratic sort, so a
        # long run of them (sent as a name) would stall the whole loop.
        raise BadRequest(f"{field}: must be at most {max_length} characters")
    text = unicodedata.normalize("NFC", raw.strip())
    if not text and not allow_empty:
        raise BadRequest(f"{field}: must not be empty")
    if len(text) > max_length:
        raise BadRequest(f"{field}: must be at most {max_length} characters")
    if not text.isascii() or not text.isprintable():
        for index, char in enumerate(text):
            category = unicodedata.category(char)
            if category in _REFUSED_IN_NAMES and not _joins_emoji(text, index):
                raise BadRequest(f"{field}: must not contain {_REFUSED_IN_NAMES[category]} "
                                 f"(U+{ord(char):04X} at position {index})")
    return text


def _joins_emoji(text: str, index: int) -> bool:
    if text[index] != _ZERO_WIDTH_JOINER or not 0 < index < len(text) - 1:
        return False
    before, after = text[index - 1], text[index + 1]
    # U+FE0F (emoji presentation) may stand between an emoji and the joiner.
    if before == "\ufe0f" and index > 1:
        before = text[index - 2]
    return (unicodedata.category(before) in _EMOJI_CATEGORIES
            and unicodedata.category(after) in _EMOJI_CATEGORIES)


def check_content_type(raw: str) -> str:
    content_type = raw.strip().lower()
    if not _CONTENT_TYPE.fullmatch(content_type):
        raise BadRequest("content_type: must look like 'type/subtype', e.g. 'text/plain'")
    if content_type in RESERVED_CONTENT_TYPES:
        raise BadRequest(f"content_type: {content_type} is reserved for the server")
    return content_type


def is_text_content(content_type: str) -> bool:
    """Text content types carry a UTF-8 string body; all others carry opaque bytes."""
    return content_type.startswith("text/")


#: What an end-to-end encrypted conversation accepts (issue 14): Olm and Megolm
#: ciphertexts and encrypted media descriptors. All are opaque bytes to the server.
ENCRYPTED_CONTENT_TYPES = ("application/vnd.chatd.olm", "application/vnd.chatd.megolm",
                           "application/vnd.chatd.encrypted-media")


def check_encrypted_content(content_type: str) -> None:
    """An encrypted conversation takes ciphertext only: plaintext would be stored, indexed
    and shown in previews, which is what the conversation's members chose against."""
    if content_type not in ENCRYPTED_CONTENT_TYPES:
        raise BadRequest(f"content_type: this conversation is end-to-end encrypted; it "
                         f"takes only {', '.join(ENCRYPTED_CONTENT_TYPES)}, not "
                         f"{content_type}", code="plaintext_refused")


def check_client_msg_id(raw: str) -> str:
    if not _CLIENT_MSG_ID.fullmatch(raw):
        raise BadRequest("client_msg_id: 1 to 64 characters of A-Z, a-z, 0-9, '.', '_', ':', '-'")
    return raw
