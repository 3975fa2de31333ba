"""Django's ``DATABASES`` entry for a plain database URL (``sqlite:///app.db``, …)."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit


def database_settings(url: str) -> dict[str, Any]:
    """Turn ``sqlite:///path`` or ``postgresql://user:pw@host:port/name`` into settings.

    SQLAlchemy-style ``+driver`` suffixes (``postgresql+asyncpg://``) are accepted.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.split("+")[0].lower()
    if scheme == "sqlite":
        return {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": url.split("://", 1)[1][1:] or ":memory:",
        }
    if scheme in ("postgresql", "postgres"):
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": unquote(parts.path.lstrip("/")),
            "USER": unquote(parts.username or ""),
            "PASSWORD": unquote(parts.password or ""),
            "HOST": parts.hostname or "",
            "PORT": str(parts.port or ""),
        }
    raise ValueError(
        f"unsupported database URL {url!r}: use sqlite:/// or postgresql://"
    )
