"""Server settings: limits and timeouts, with defaults that never slow a good client."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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
    """Seconds a closing connection (or a stopping server) waits for requests in flight."""
    max_message_size: int = 1024 * 1024
    """The largest frame the application handles (``message_too_large`` past it, and the
    connection stays open). The WebSocket server's own frame limit, set higher, closes the
    connection with 1009 instead."""
    max_depth: int = 32
    """The deepest nesting of JSON arrays and objects in a message (``message_too_deep``)."""
    max_response_size: int = 1024 * 1024
    """The largest response; a larger one is refused with ``response_too_large``."""
    max_messages_per_second: float | None = None
    """Messages one connection may send per second (a token bucket; ``rate_limited``
    past it). Off by default."""
    rate_burst: int | None = None
    """How many messages above the rate a connection may send at once (default: one
    second's worth)."""
    max_connections_per_client: int | None = None
    """Connections one client address may hold at once (refused with HTTP 429). Off by
    default; behind a proxy every client has the proxy's address."""
    allowed_origins: tuple[str, ...] = ()
    """Origins (``https://app.example.com``) whose browsers may connect besides the
    server's own; ``("*",)`` allows every origin. Clients sending no ``Origin`` header
    (servers, scripts) always pass."""
    request_timeout: float | None = 30.0
    """Seconds a database operation may take before it fails with ``<operation>_error``."""
    idle_timeout: float | None = None
    """Close a connection with no traffic either way for this many seconds. Off by default."""
    max_bulk_rows: int = 1000
    """Rows one multi-row create, update or delete may change (``too_many_rows``)."""
    idempotency_window: float = 24 * 3600.0
    """Seconds an idempotency key is remembered."""
    identity: Callable[[Any], Any] | None = None
    """Who a connection is, as a function of the connection (default:
    ``connection.metadata["user_id"]``; ``None`` is every anonymous client). It picks
    whose idempotency keys a connection uses (one shared space for anonymous clients)
    and, for after-read hooks declared ``per_identity``, which subscribers share one
    run of them: include here whatever those hooks read of the connection (a tenant,
    roles)."""

    def identity_of(self, connection: Any) -> Any:
        """Who ``connection`` is: ``identity(connection)`` when set.

        Else its ``metadata.get("user_id")``: ``None`` for an anonymous connection.
        """
        if self.identity is not None:
            return self.identity(connection)
        return connection.metadata.get("user_id")

    @property
    def limits(self) -> Limits:
        """The query limits, as :mod:`websocketspec.query` takes them."""
        return Limits(
            default_page_size=self.default_page_size,
            max_page_size=self.max_page_size,
            max_filters=self.max_filters,
            max_in=self.max_in,
        )
