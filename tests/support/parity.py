"""What the SQL/in-memory parity property tests share: the columns under test.

Each test draws its own values (``tests/integration/test_filter_parity.py`` through the
API on SQLAlchemy, ``tests/conformance`` on every adapter); a :class:`Column` says which
operators apply to a column's type and how to draw a row's value and a filter's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from websocketspec.protocol.filters import Op
from websocketspec.protocol.values import ORDERED_TYPES, TEXT_TYPES, ColumnType

__all__ = ["TEXT_OPS", "Column", "like_escape", "make_column"]

TEXT_OPS = [Op.LIKE, Op.ILIKE, Op.CONTAINS, Op.STARTSWITH, Op.ENDSWITH]


@dataclass(frozen=True)
class Column:
    """A column under test: its type, and how to draw values as a client sends them."""

    name: str
    type: ColumnType
    nullable: bool
    row_values: st.SearchStrategy[Any]
    filter_values: st.SearchStrategy[Any]

    @property
    def operators(self) -> list[Op]:
        if self.type is ColumnType.JSON:
            return [Op.IS_NULL, Op.IS_NOT_NULL]
        ops = [Op.EQ, Op.NEQ, Op.IN, Op.NOT_IN, Op.IS_NULL, Op.IS_NOT_NULL]
        if self.type in ORDERED_TYPES:
            ops += [Op.GT, Op.GTE, Op.LT, Op.LTE, Op.BETWEEN]
        if self.type in TEXT_TYPES:
            ops += TEXT_OPS
        return ops


def make_column(
    name: str,
    ctype: ColumnType,
    values: st.SearchStrategy[Any],
    *,
    nullable: bool = True,
    filters: st.SearchStrategy[Any] | None = None,
) -> Column:
    """A column whose filters draw from ``filters``, else from its row ``values``."""
    return Column(name, ctype, nullable, values, values if filters is None else filters)


def like_escape(text: str) -> str:
    """``text`` as a LIKE pattern matching it literally."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
