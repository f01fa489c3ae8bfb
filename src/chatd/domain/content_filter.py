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
#: Runs of name characters: letters and digits (any script), hyphens and dots. Each
#: dotted name in a run is looked up, with or without a scheme, so `evil.example`,
#: `https://evil.example/x` and `user@evil.example` are all found. Underscores end a
#: name (chat apps and Markdown wrap a link in them: `_evil.example_`). One character
#: class, matched greedily: linear in the text (a pattern that wanted a dot after each
#: run backtracked, quadratic in a 64 KiB body without one, on the event loop).
_RUNS = re.compile(r"(?:[^\W_]|[.-])+")
#: Default-ignorable characters (soft hyphen, zero-width spaces and joiners, bidi
#: controls, variation selectors, tags): not shown, and dropped by a browser's IDNA
#: mapping, so `ev\u00adil.example` opens evil.example. Removed before looking.
_IGNORABLE = re.compile(
    "[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f"
    "\u202a-\u202e\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0\U0001bca0-\U0001bca3"
    "\U0001d173-\U0001d17a\U000e0000-\U000e0fff]")


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
        #: The most labels a blocked name has: only that many of a name's last labels
        #: can match (its parents), however long the name.
        self._depth = max((name.count(".") + 1 for name in self._blocked), default=0)

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
        text = _IGNORABLE.sub("", unicodedata.normalize("NFKC", text).translate(_DOTS))
        for run in _RUNS.findall(text):
            # A run's dotted names ("a..b" is two; a leading or trailing dot ends one).
            for token in run.split(".."):
                labels = [label for label in token.split(".") if label]
                if len(labels) < 2:
                    continue
                labels = normalise_domain(".".join(labels[-self._depth:])).split(".")
                # The name and each parent: a subdomain of a blocked domain is blocked too.
                for start in range(len(labels)):
                    candidate = ".".join(labels[start:])
                    if candidate in self._blocked:
                        return candidate
        return None
