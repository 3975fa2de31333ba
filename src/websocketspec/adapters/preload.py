"""Relation preloads, the part every adapter does the same, with no ORM.

An adapter fetches the children of a page's rows in one query of its own making; these
functions pick the keys to fetch and hang the fetched children on their rows.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from websocketspec.query import PreloadQuery
from websocketspec.registry import RelationInfo
from websocketspec.types import Record

__all__ = ["attach_children", "preload_keys"]


def preload_keys(
    rows: Iterable[Record], relation: RelationInfo
) -> set[tuple[Any, ...]]:
    """The rows' local keys of ``relation``, without those holding a null."""
    keys = {tuple(row.get(c) for c in relation.local_columns) for row in rows}
    return {k for k in keys if None not in k}


def attach_children(
    rows: Iterable[Record], preload: PreloadQuery, children: Iterable[Record]
) -> None:
    """Set each row's relation to its children, grouped by their remote key.

    A ``many`` relation gets the list (empty when none), a ``one`` relation the first
    child or ``None``; with ``preload.columns``, each child holds only those columns.
    """
    relation = preload.relation
    found: dict[tuple[Any, ...], list[Record]] = {}
    for child in children:
        key = tuple(child[c] for c in relation.remote_columns)
        found.setdefault(key, []).append(child)
    for row in rows:
        mine = found.get(tuple(row.get(c) for c in relation.local_columns), [])
        if preload.columns is not None:
            mine = [{c: child.get(c) for c in preload.columns} for child in mine]
        row[relation.name] = (
            mine if relation.kind == "many" else (mine[0] if mine else None)
        )
