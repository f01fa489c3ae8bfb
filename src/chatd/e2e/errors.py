"""The SDK's error vocabulary: one family, so an application catches `E2EError` and
decides per subclass whether to warn, retry later, or give up."""

from __future__ import annotations


class E2EError(Exception):
    """Something end-to-end encryption could not do; the message says what and why."""


class WrongPassphrase(E2EError):
    """The state directory exists but this passphrase does not open it."""


class StateCorrupt(E2EError):
    """A state file is unreadable with the right passphrase (tampered or truncated)."""


class DecryptionError(E2EError):
    """A message that cannot be decrypted now. `retryable` ones are kept and tried again
    when keys arrive (a Megolm session not shared with us yet)."""

    retryable = False


class MissingKeys(DecryptionError):
    """We do not hold the session this message was encrypted with (yet)."""

    retryable = True


class ReplayError(DecryptionError):
    """The same Megolm (session, index) was seen before under another message: a replay."""


class ForgedMessage(DecryptionError):
    """The ciphertext decrypts but its claims do not match who relayed it or where (sender,
    conversation or recipient bound inside the plaintext differ from the envelope)."""


class UntrustedKeys(E2EError):
    """A device's keys failed a check (a bad signature on a claimed one-time key)."""
