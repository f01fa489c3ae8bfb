"""The content-filter hook for plaintext bodies, and the filter chatd ships.

A filter sees every text/* body as it is sent, on the shard the sender is connected to,
before it is routed to the owner (services/messaging.py `start_send`). It answers a
`Verdict`; a refused send is `403 content_blocked` (REST) or an `error` frame (WS), and
nothing is written. It runs on the hot path, synchronously: a filter must be quick and
must not block (no I/O). Bodies of other content types (ciphertext, media) are never
shown to it: the server cannot read them.

`[abuse] content_filter = "package.module:Class"` installs one; the class is called with
the `[abuse]` settings (config.AbuseConfig). Unset, `UrlDomainBlocklist` is installed when
`blocked_domains` lists any domain, and no filter at all otherwise (a send pays nothing).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import unquote


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    #: Why a body was refused: shown to its sender, so it names the rule, not the
    #: filter's internals.
    reason: str = ""


ALLOW = Verdict(True)


class ContentFilter(Protocol):
    def check(self, conversation_id: int, sender_id: int, content_type: str,
              text: str) -> Verdict: ...


#: Dots that IDNA (and browsers) read as the label separator, beside "." itself.
_DOTS = str.maketrans({"\u3002": ".", "\uff0e": ".", "\uff61": "."})
#: Dotted names: labels of letters, digits and hyphens (any script) joined by dots.
#: Every such token is looked up, with or without a scheme, so `evil.example`,
#: `https://evil.example/x` and `user@evil.example` are all found.
_DOTTED = re.compile(r"[\w-]+(?:\.[\w-]+)+")


def normalise_domain(domain: str) -> str:
    """A domain as the blocklist compares it: NFKC, lower case, no end dots, each label
    in its ASCII (punycode) form, so `BÜCHER.example`, `bücher.example.` and
    `xn--bcher-kva.example` are one name. A label IDNA refuses is kept as it is."""
    text = unicodedata.normalize("NFKC", domain).translate(_DOTS).lower().strip(".")
    labels = []
    for label in text.split("."):
        if label.isascii():
            labels.append(label)
            continue
        try:
            labels.append(label.encode("idna").decode("ascii"))
        except UnicodeError:
            labels.append(label)
    return ".".join(labels)


class UrlDomainBlocklist:
    """Refuses text naming a blocked domain or any subdomain of one, as a URL or a bare
    name: `evil.example` blocks `https://evil.example/a`, `www.evil.example` and
    `EVIL.example`, but not `notevil.example`. Percent-escapes, full-width characters,
    ideographic dots and internationalised names are read as a browser would first."""

    def __init__(self, config: object | None = None, *,
                 domains: Iterable[str] | None = None) -> None:
        names = domains if domains is not None else getattr(config, "blocked_domains", ())
        self._blocked = frozenset(normalise_domain(name) for name in names if name.strip("."))

    def check(self, conversation_id: int, sender_id: int, content_type: str,
              text: str) -> Verdict:
        if not self._blocked:
            return ALLOW
        found = self.blocked_in(text)
        if found is None:
            return ALLOW
        return Verdict(False, f"links to {found} are not allowed on this server")

    def blocked_in(self, text: str) -> str | None:
        """The first blocked domain the text names, or None."""
        if "%" in text:
            text = unquote(text)
        text = unicodedata.normalize("NFKC", text).translate(_DOTS)
        for token in _DOTTED.findall(text):
            labels = normalise_domain(token).split(".")
            # The name and each parent: a subdomain of a blocked domain is blocked too.
            for start in range(len(labels)):
                candidate = ".".join(labels[start:])
                if candidate in self._blocked:
                    return candidate
        return None
