r"""The operator table: filters validated against column types, and evaluated in memory.

One table, two back ends. :func:`compile_filters` turns the wire's flat filter list into
an expression tree with every value coerced to its column's type; adapters translate
that tree to SQL, and :func:`matches` evaluates it against a row for subscription
matching. Both follow the same rules, which the parity property test holds them to:

- NULL matches only ``is_null``; every other operator is false on NULL (``neq`` and
  ``not_in`` too, as in SQL). ``eq null`` means ``is_null``, ``neq null`` ``is_not_null``.
- Text compares by code point. ``like`` is case-sensitive, ``ilike`` folds both sides
  with :meth:`str.lower`; patterns use ``%`` and ``_`` with ``\`` as the escape.
- A run of filters joined by ``logic_operator: "OR"`` is one parenthesised group, ANDed
  with the rest: ``[A, B(OR), C]`` is ``(A OR B) AND C``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from typing import Any, TypeAlias

from websocketspec.exceptions import InvalidFilterError, LimitError
from websocketspec.protocol.messages import FilterOption
from websocketspec.protocol.values import ORDERED_TYPES, TEXT_TYPES, ColumnType, coerce

__all__ = [
    "Condition",
    "Expr",
    "Group",
    "Op",
    "all_of",
    "compile_filters",
    "like_pattern",
    "like_regex",
    "matches",
]


class Op(StrEnum):
    """Filter operators (wire names, matched case-insensitively)."""

    EQ = "eq"
    NEQ = "neq"
    GT = "gt"
    GTE = "gte"
    LT = "lt"
    LTE = "lte"
    LIKE = "like"
    ILIKE = "ilike"
    IN = "in"
    NOT_IN = "not_in"
    IS_NULL = "is_null"
    IS_NOT_NULL = "is_not_null"
    BETWEEN = "between"
    CONTAINS = "contains"
    STARTSWITH = "startswith"
    ENDSWITH = "endswith"


_OPS = {op.value: op for op in Op}
_TEXT_OPS = frozenset({Op.LIKE, Op.ILIKE, Op.CONTAINS, Op.STARTSWITH, Op.ENDSWITH})
_ORDER_OPS = frozenset({Op.GT, Op.GTE, Op.LT, Op.LTE, Op.BETWEEN})
_LIST_OPS = frozenset({Op.IN, Op.NOT_IN})


@dataclass(frozen=True, slots=True)
class Condition:
    """One validated comparison. ``value`` is coerced; a tuple for list operators.

    For ``ilike`` the value is the pattern already folded with :meth:`str.lower`.
    """

    column: str
    op: Op
    value: Any
    type: ColumnType


@dataclass(frozen=True, slots=True)
class Group:
    """Conditions joined by ``and`` or ``or``."""

    kind: str
    items: tuple[Expr, ...]


Expr: TypeAlias = Condition | Group


def compile_filters(
    filters: Sequence[FilterOption],
    columns: Mapping[str, ColumnType],
    *,
    max_in: int | None = None,
) -> Expr | None:
    """Validate wire filters against a model's columns and build an expression.

    Args:
        filters: the filters, in wire order.
        columns: column name to type, for the entity they apply to.
        max_in: the longest list an ``in``/``not_in``/``between`` value may be.

    Returns:
        The expression, or ``None`` when there are no filters.

    Raises:
        InvalidFilterError: an unknown column (code ``invalid_column``), operator,
            logic operator, or a value that does not fit.
    """
    runs: list[list[Condition]] = []
    for index, option in enumerate(filters):
        logic = (option.logic_operator or "AND").upper()
        if logic not in ("AND", "OR"):
            raise InvalidFilterError(
                f"logic_operator must be 'AND' or 'OR', got {option.logic_operator!r}",
                details={"index": index},
            )
        condition = _condition(option, columns, index, max_in)
        if logic == "OR" and runs:
            runs[-1].append(condition)
        else:
            runs.append([condition])
    parts: list[Expr] = [
        run[0] if len(run) == 1 else Group("or", tuple(run)) for run in runs
    ]
    return all_of(*parts)


def all_of(*exprs: Expr | None) -> Expr | None:
    """AND together the expressions that are not ``None``."""
    present = tuple(e for e in exprs if e is not None)
    if not present:
        return None
    if len(present) == 1:
        return present[0]
    return Group("and", present)


def _condition(
    option: FilterOption,
    columns: Mapping[str, ColumnType],
    index: int,
    max_in: int | None,
) -> Condition:
    ctype = columns.get(option.column)
    if ctype is None:
        raise InvalidFilterError(
            f"unknown column {option.column!r} in filter",
            code="invalid_column",
            details={"field": option.column, "index": index},
        )
    found = (
        _OPS.get(option.operator.lower()) if isinstance(option.operator, str) else None
    )
    if found is None:
        raise InvalidFilterError(
            f"unknown operator {option.operator!r}; expected one of {', '.join(_OPS)}",
            details={"field": option.column, "index": index},
        )
    op: Op = found

    def bad(why: str) -> InvalidFilterError:
        return InvalidFilterError(
            f"filter on {option.column!r} ({op.value}): {why}",
            details={"field": option.column, "index": index},
        )

    value = option.value
    if op in (Op.EQ, Op.NEQ) and value is None:
        op = Op.IS_NULL if op is Op.EQ else Op.IS_NOT_NULL
    if op in (Op.IS_NULL, Op.IS_NOT_NULL):
        return Condition(option.column, op, None, ctype)
    if ctype is ColumnType.JSON:
        raise bad("JSON columns support only is_null and is_not_null")
    if op in _TEXT_OPS and ctype not in TEXT_TYPES:
        raise bad("this operator applies to text columns only")
    if op in _ORDER_OPS and ctype not in ORDERED_TYPES:
        raise bad("this column type has no order")
    if op in _LIST_OPS or op is Op.BETWEEN:
        if not isinstance(value, list):
            raise bad("the value must be a list")
        if op is Op.BETWEEN and len(value) != 2:
            raise bad("the value must be a list of two bounds")
        if max_in is not None and len(value) > max_in:
            raise LimitError(
                f"filter on {option.column!r} ({op.value}): the list may hold at most {max_in} values",
                code="too_many_values",
                details={"field": option.column, "index": index, "max_in": max_in},
            )
        if any(v is None for v in value):
            raise bad("the list may not hold null; use is_null")
        try:
            items = tuple(coerce(v, ctype) for v in value)
        except ValueError as exc:
            raise bad(str(exc)) from None
        if op is not Op.BETWEEN:
            items = tuple(dict.fromkeys(items))
        return Condition(option.column, op, items, ctype)
    if value is None:
        raise bad("the value may not be null; use is_null or is_not_null")
    try:
        coerced = coerce(value, ctype)
    except ValueError as exc:
        raise bad(str(exc)) from None
    if op is Op.ILIKE:
        coerced = coerced.lower()
    return Condition(option.column, op, coerced, ctype)


def like_pattern(op: Op, value: str) -> str:
    r"""The LIKE pattern (``\`` escapes) for a text operator's value."""
    if op in (Op.LIKE, Op.ILIKE):
        # A trailing lone escape matches a backslash (see like_regex); SQL databases
        # refuse such a pattern, so spell the backslash out.
        trailing = len(value) - len(value.rstrip("\\"))
        return value + "\\" if trailing % 2 else value
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    if op is Op.CONTAINS:
        return f"%{escaped}%"
    if op is Op.STARTSWITH:
        return f"{escaped}%"
    return f"%{escaped}"


@lru_cache(maxsize=1024)
def like_regex(pattern: str) -> re.Pattern[str]:
    r"""Compile a LIKE pattern (``%``, ``_``, ``\`` escape) to a full-match regex.

    A trailing lone ``\`` matches a literal backslash.
    """
    out: list[str] = []
    chars = iter(pattern)
    for ch in chars:
        if ch == "\\":
            out.append(re.escape(next(chars, "\\")))
        elif ch == "%":
            out.append(".*")
        elif ch == "_":
            out.append(".")
        else:
            out.append(re.escape(ch))
    return re.compile("".join(out), re.DOTALL)


def matches(expr: Expr | None, row: Mapping[str, Any]) -> bool:
    """Evaluate an expression against a row (``None`` matches every row)."""
    if expr is None:
        return True
    if isinstance(expr, Group):
        if expr.kind == "and":
            return all(matches(item, row) for item in expr.items)
        return any(matches(item, row) for item in expr.items)
    return _evaluate(expr, row.get(expr.column))


def _evaluate(cond: Condition, value: Any) -> bool:
    op = cond.op
    if op is Op.IS_NULL:
        return value is None
    if op is Op.IS_NOT_NULL:
        return value is not None
    if value is None:
        return False
    target = cond.value
    if op is Op.EQ:
        return bool(value == target)
    if op is Op.NEQ:
        return bool(value != target)
    if op is Op.GT:
        return bool(value > target)
    if op is Op.GTE:
        return bool(value >= target)
    if op is Op.LT:
        return bool(value < target)
    if op is Op.LTE:
        return bool(value <= target)
    if op is Op.IN:
        return value in target
    if op is Op.NOT_IN:
        return value not in target
    if op is Op.BETWEEN:
        return bool(target[0] <= value <= target[1])
    if op is Op.LIKE:
        return like_regex(target).fullmatch(value) is not None
    if op is Op.ILIKE:
        return like_regex(target).fullmatch(value.lower()) is not None
    if op is Op.CONTAINS:
        return target in value
    if op is Op.STARTSWITH:
        return bool(value.startswith(target))
    return bool(value.endswith(target))
