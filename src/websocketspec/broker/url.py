"""Pick a broker by URL: ``memory://``, ``redis://…``, ``postgresql://…``."""

from __future__ import annotations

from websocketspec.broker.base import Broker
from websocketspec.broker.memory import MemoryBroker
from websocketspec.exceptions import ConfigurationError

__all__ = ["broker_from_url"]


def broker_from_url(url: str | None) -> Broker:
    """Create the broker a URL names; its driver is imported only here.

    Raises:
        ConfigurationError: the scheme is unknown.
    """
    if not url or url == "memory://":
        return MemoryBroker()
    scheme = url.partition("://")[0].lower()
    if scheme in ("redis", "rediss", "unix"):
        from websocketspec.broker.redis import RedisBroker

        return RedisBroker(url)
    if scheme in ("postgresql", "postgres") or scheme.startswith("postgresql+"):
        from websocketspec.broker.postgres import PostgresBroker

        return PostgresBroker(url)
    raise ConfigurationError(
        f"unknown broker URL {url!r}; expected memory://, redis://… or postgresql://…"
    )
