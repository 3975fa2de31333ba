"""Adapters: one per ORM, doing all database work for the handler."""

from websocketspec.adapters.base import Adapter, Change, WriteCheck

__all__ = ["Adapter", "Change", "WriteCheck"]
