"""Server settings: limits and timeouts, with defaults that never slow a good client."""

from __future__ import annotations

from dataclasses import dataclass

from websocketspec.query import Limits

__all__ = ["Config"]


@dataclass(frozen=True, slots=True)
class Config:
    """Settings of a :class:`~websocketspec.Handler`."""

    default_page_size: int = 100
    """Rows a list read returns when it gives no ``limit``."""
    max_page_size: int = 1000
    """The largest ``limit`` applied; larger ones are clamped."""
    max_filters: int = 100
    """Filters in one request (client and hook filters counted apart)."""
    max_in: int = 1000
    """Values in one ``in``/``not_in`` list."""
    max_batch: int = 100
    """Messages in one batch frame."""
    max_in_flight: int = 64
    """Requests of one connection handled at once; past it the server stops reading."""
    max_subscriptions: int = 1000
    """Subscriptions one connection may hold (``too_many_subscriptions`` past it)."""
    max_queue: int = 10_000
    """Messages waiting to be sent to one connection before it is closed (1013)."""
    max_queue_bytes: int = 32 * 1024 * 1024
    """Bytes waiting to be sent to one connection before it is closed (1013)."""
    close_timeout: float = 10.0
    """Seconds a closing connection waits for its requests in flight."""

    @property
    def limits(self) -> Limits:
        """The query limits, as :mod:`websocketspec.query` takes them."""
        return Limits(
            default_page_size=self.default_page_size,
            max_page_size=self.max_page_size,
            max_filters=self.max_filters,
            max_in=self.max_in,
        )
