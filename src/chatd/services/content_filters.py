"""Which content filter a shard runs (domain/content_filter.py has the hook's contract).

`[abuse] content_filter = "package.module:Class"` names one to import, constructed with
the `[abuse]` settings; unset, the shipped `UrlDomainBlocklist` runs when
`blocked_domains` lists any domain, and nothing runs otherwise, so a send pays nothing.
"""

from __future__ import annotations

import importlib

from chatd.config import AbuseConfig, ConfigError
from chatd.domain.content_filter import ContentFilter, UrlDomainBlocklist


def load_content_filter(config: AbuseConfig) -> ContentFilter | None:
    if not config.content_filter:
        return UrlDomainBlocklist(config) if config.blocked_domains else None
    module_name, _, class_name = config.content_filter.partition(":")
    try:
        module = importlib.import_module(module_name)
        factory = getattr(module, class_name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"abuse.content_filter: cannot load {config.content_filter!r}: "
                          f"{exc}") from None
    built = factory(config)
    if not callable(getattr(built, "check", None)):
        raise ConfigError(f"abuse.content_filter: {config.content_filter!r} has no "
                          "check(conversation_id, sender_id, content_type, text) method")
    content_filter: ContentFilter = built
    return content_filter
