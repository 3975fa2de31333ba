"""Pick a broker by URL: ``memory://``, ``redis://…``, ``postgresql://…``.

A shared broker's URL may name its channel: ``redis://host:6379/0?channel=shop``,
``postgresql://host/db?channel=shop``. Redis pub/sub channels ignore the database number,
so deployments sharing one Redis should each name their own.
"""

from __future__ import annotations

from urllib.parse import unquote

from websocketspec.broker.base import Broker
from websocketspec.broker.memory import MemoryBroker
from websocketspec.exceptions import ConfigurationError

__all__ = ["broker_from_url"]


def broker_from_url(url: str | None) -> Broker:
    """Create the broker a URL names; its driver is imported only here.

    Raises:
        ConfigurationError: the scheme is unknown, or ``channel`` is empty or repeated.
    """
    if not url or url == "memory://":
        return MemoryBroker()
    scheme = url.partition("://")[0].lower()
    url, channel = _take_channel(url)
    if scheme in ("redis", "rediss", "unix"):
        from websocketspec.broker.redis import RedisBroker

        return (
            RedisBroker(url) if channel is None else RedisBroker(url, channel=channel)
        )
    if scheme in ("postgresql", "postgres") or scheme.startswith("postgresql+"):
        from websocketspec.broker.postgres import PostgresBroker

        return (
            PostgresBroker(url)
            if channel is None
            else PostgresBroker(url, channel=channel)
        )
    raise ConfigurationError(
        f"unknown broker URL {url!r}; expected memory://, redis://… or postgresql://…"
    )


def _take_channel(url: str) -> tuple[str, str | None]:
    """Split ``channel=…`` off a URL's query; every other parameter stays as written."""
    base, sep, rest = url.partition("?")
    if not sep:
        return url, None
    query, hash_, fragment = rest.partition("#")
    kept: list[str] = []
    channels: list[str] = []
    for item in query.split("&"):
        name, _, value = item.partition("=")
        if unquote(name) == "channel":
            channels.append(unquote(value.replace("+", " ")))
        elif item:
            kept.append(item)
    if not channels:
        return url, None
    if len(channels) > 1 or not channels[0]:
        raise ConfigurationError(
            "a broker URL names one non-empty channel at most (?channel=name)"
        )
    query = "&".join(kept)
    return f"{base}{'?' if query else ''}{query}{hash_}{fragment}", channels[0]
