"""Per-connection limits as plain state: the message-rate token bucket and origin checks."""

from __future__ import annotations

import time
from urllib.parse import urlsplit

__all__ = ["TokenBucket", "is_origin_allowed"]


class TokenBucket:
    """Allows ``rate`` events per second on average, and bursts of up to ``burst``.

    Args:
        rate: tokens added per second.
        burst: the bucket's size (default: one second's worth, at least 1).
    """

    __slots__ = ("_level", "_stamp", "burst", "rate")

    def __init__(self, rate: float, burst: int | None = None) -> None:
        if rate <= 0:
            raise ValueError(f"expected a positive rate, got {rate!r}")
        self.rate = rate
        self.burst = float(burst if burst is not None else max(1, round(rate)))
        self._level = self.burst
        self._stamp = time.monotonic()

    def take(self, now: float | None = None) -> bool:
        """Take one token if there is one."""
        now = time.monotonic() if now is None else now
        self._level = min(self.burst, self._level + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._level >= 1.0:
            self._level -= 1.0
            return True
        return False


def _origin_key(url: str) -> tuple[str, str, int | None] | None:
    try:
        parts = urlsplit(url.strip().lower())
        port = parts.port
    except ValueError:
        return None
    if not parts.scheme or not parts.hostname:
        return None
    default = {"http": 80, "https": 443, "ws": 80, "wss": 443}.get(parts.scheme)
    return parts.scheme, parts.hostname, port if port is not None else default


def is_origin_allowed(
    origin: str | None, host: str | None, allowed: tuple[str, ...]
) -> bool:
    """Whether a handshake's ``Origin`` may connect.

    No ``Origin`` (a non-browser client) passes; so does a same-origin browser (the
    origin's host and port are the ``Host`` header's) and any origin in ``allowed``
    (``"*"`` allows all).
    """
    if origin is None or "*" in allowed:
        return True
    key = _origin_key(origin)
    if key is None:
        return False
    if any(_origin_key(a) == key for a in allowed):
        return True
    if host:
        scheme, hostname, port = key
        host_key = _origin_key(f"{scheme}://{host}")
        if host_key is not None and host_key[1:] == (hostname, port):
            return True
    return False
