"""A real SMTP server for tests: aiosmtpd's `Controller` on loopback, in its own thread,
keeping every mail it accepts (parsed, with its envelope)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

import trio
from aiosmtpd.controller import Controller


@dataclass(frozen=True)
class Received:
    """One accepted mail: the envelope (MAIL FROM, RCPT TO), the raw bytes, parsed."""

    sender: str
    recipients: list[str]
    raw: bytes
    message: EmailMessage

    def part(self, subtype: str) -> str:
        body = self.message.get_body(preferencelist=(subtype,))
        assert body is not None, f"no text/{subtype} part"
        content: str = body.get_content()
        return content


class _Handler:
    def __init__(self) -> None:
        self.mails: list[Received] = []
        self._lock = threading.Lock()

    # (aiosmtpd's name for the hook.)
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        raw = bytes(envelope.original_content or envelope.content)
        parsed = message_from_bytes(raw, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        with self._lock:
            self.mails.append(Received(envelope.mail_from, list(envelope.rcpt_tos), raw, parsed))
        return "250 OK"


def free_port() -> int:
    """A port nothing listens on now (aiosmtpd's Controller cannot take port 0)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class SmtpSink:
    def __init__(self, port: int) -> None:
        self.port = port
        self._handler = _Handler()
        self._controller: Controller | None = None

    @property
    def mails(self) -> list[Received]:
        return list(self._handler.mails)

    def start(self) -> None:
        self._controller = Controller(self._handler, hostname="127.0.0.1", port=self.port)
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:  # noqa: ASYNC109  # a test's bound
        """At least `count` mails, within `timeout` seconds."""
        with trio.fail_after(timeout):
            while len(self._handler.mails) < count:  # noqa: ASYNC110  # filled by another thread
                await trio.sleep(0.02)
        return self.mails


@contextmanager
def smtp_sink(*, started: bool = True) -> Iterator[SmtpSink]:
    sink = SmtpSink(free_port())
    if started:
        sink.start()
    try:
        yield sink
    finally:
        sink.stop()
