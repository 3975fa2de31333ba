"""Type aliases shared across the package."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, TypeAlias

__all__ = ["ASGIReceive", "ASGISend", "JSONValue", "Record", "Scope"]

JSONValue: TypeAlias = Any
"""A value that came from, or goes to, JSON."""

Record: TypeAlias = dict[str, Any]
"""One row as a plain dict: column name to Python value."""

Scope: TypeAlias = MutableMapping[str, Any]
ASGIReceive: TypeAlias = Callable[[], Awaitable[MutableMapping[str, Any]]]
ASGISend: TypeAlias = Callable[[MutableMapping[str, Any]], Awaitable[None]]
