"""Sending mail over SMTP from Trio: the standard library's `smtplib` in a worker thread.

Why not an async client: aiosmtplib is asyncio-only, and the other maintained SMTP
clients are blocking. A digest is one short SMTP conversation every few minutes per
user, so a thread per conversation (at most `email.max_connections` at once, under a
`CapacityLimiter`) costs nothing that matters, and `smtplib` is maintained with Python
itself. A conversation that hangs is bounded by `email.timeout` (the socket timeout of
every read and write) and by a Trio deadline around it; the thread is abandoned on
cancel (`abandon_on_cancel`), so a hung server can delay only mail, never the loop or a
shutdown.
"""

from __future__ import annotations

import logging
import smtplib
import ssl
from email.message import EmailMessage
from typing import Protocol

import trio

from chatd.config import EmailConfig

log = logging.getLogger(__name__)


class MailError(Exception):
    """A mail was not accepted by the SMTP server (it may be retried)."""


class MailSender(Protocol):
    async def send(self, message: EmailMessage) -> None: ...


class SmtpSender:
    def __init__(self, config: EmailConfig) -> None:
        self._config = config
        self._limiter = trio.CapacityLimiter(config.max_connections)
        self._tls = ssl.create_default_context()
        #: Mails the server accepted and refused (for /metrics and the benchmark).
        self.sent = 0
        self.failed = 0

    async def send(self, message: EmailMessage) -> None:
        # A second beyond the socket timeout: smtplib's own timeout fires first, and
        # this bounds the whole conversation (connect + TLS + several round trips).
        deadline = self._config.timeout * 3 + 1
        try:
            with trio.fail_after(deadline):
                await trio.to_thread.run_sync(self._send_blocking, message,
                                              limiter=self._limiter, abandon_on_cancel=True)
        except trio.TooSlowError:
            self.failed += 1
            raise MailError(f"the SMTP server did not finish within {deadline:g} s") from None
        except (OSError, smtplib.SMTPException) as exc:
            self.failed += 1
            # The error's text is the server's or the OS's, never our password (smtplib
            # does not quote credentials in its exceptions).
            raise MailError(f"{type(exc).__name__}: {exc}") from None
        self.sent += 1

    def _send_blocking(self, message: EmailMessage) -> None:
        config = self._config
        client: smtplib.SMTP
        if config.security == "tls":
            client = smtplib.SMTP_SSL(config.host, config.port, timeout=config.timeout,
                                      context=self._tls)
        else:
            client = smtplib.SMTP(config.host, config.port, timeout=config.timeout)
        with client:
            if config.security == "starttls":
                client.starttls(context=self._tls)
            if config.user:
                client.login(config.user, config.password)
            client.send_message(message)
