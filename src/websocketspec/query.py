"""Query options and row data, validated against one entity.

The dispatcher turns a request's (hook-adjusted) :class:`QueryOptions` into a
:class:`ReadQuery`: every column checked against the model, every filter value coerced,
the security filters that hooks added ANDed around the client's expression, the page
size clamped, and the sort made stable by ending with the primary key. Adapters receive
only these validated values, so no client text ever reaches SQL as an identifier.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from websocketspec.exceptions import (
    InvalidFilterError,
    InvalidMessageError,
    InvalidModelError,
    LimitError,
    ValidationError,
)
from websocketspec.protocol.filters import Expr, all_of, compile_filters
from websocketspec.protocol.messages import FilterOption, QueryOptions, SortOption
from websocketspec.protocol.values import ColumnType, coerce, coerce_key
from websocketspec.registry import EntityInfo, ModelRegistry, RelationInfo

__all__ = [
    "Limits",
    "PreloadQuery",
    "ReadQuery",
    "build_read_query",
    "parse_record_id",
    "project",
    "validate_data",
]


@dataclass(frozen=True, slots=True)
class Limits:
    """Page sizes and list lengths that reads may use."""

    default_page_size: int = 100
    max_page_size: int = 1000
    max_filters: int = 100
    max_in: int = 1000


@dataclass(frozen=True, slots=True)
class PreloadQuery:
    """A validated preload: which relation, and its own query options."""

    relation: RelationInfo
    target: EntityInfo
    columns: tuple[str, ...] | None
    where: Expr | None
    sort: tuple[tuple[str, bool], ...]
    limit: int | None


@dataclass(frozen=True, slots=True)
class ReadQuery:
    """A validated read: ``sort`` pairs are ``(column, descending)``."""

    where: Expr | None
    columns: tuple[str, ...] | None
    sort: tuple[tuple[str, bool], ...]
    limit: int
    offset: int
    preload: tuple[PreloadQuery, ...] = ()


def _columns(
    entity: EntityInfo, columns: Sequence[str] | None
) -> tuple[str, ...] | None:
    if not columns:
        return None
    for name in columns:
        if not isinstance(name, str) or name not in entity.columns:
            raise InvalidFilterError(
                f"unknown column {name!r} in columns",
                code="invalid_column",
                details={"field": name},
            )
    return tuple(dict.fromkeys(columns))


def _sort(
    entity: EntityInfo, sort: Sequence[SortOption]
) -> tuple[tuple[str, bool], ...]:
    out: list[tuple[str, bool]] = []
    seen: set[str] = set()
    for option in sort:
        if option.column not in entity.columns:
            raise InvalidFilterError(
                f"unknown column {option.column!r} in sort",
                code="invalid_column",
                details={"field": option.column},
            )
        if entity.column_types.get(option.column) is ColumnType.JSON:
            # JSON has no order on PostgreSQL, and SQLite would order its text.
            raise InvalidFilterError(
                f"cannot sort by the JSON column {option.column!r}",
                code="invalid_column",
                details={"field": option.column},
            )
        direction = option.direction.lower()
        if direction not in ("asc", "desc"):
            raise InvalidMessageError(
                f"sort direction must be 'asc' or 'desc', got {option.direction!r}",
                details={"field": option.column},
            )
        if option.column not in seen:
            seen.add(option.column)
            out.append((option.column, direction == "desc"))
    out.extend((pk, False) for pk in entity.primary_key if pk not in seen)
    return tuple(out)


def _filters(
    entity: EntityInfo, filters: Sequence[FilterOption], limits: Limits
) -> Expr | None:
    if len(filters) > limits.max_filters:
        raise LimitError(
            f"at most {limits.max_filters} filters are allowed, got {len(filters)}",
            code="too_many_filters",
            details={"max_filters": limits.max_filters},
        )
    return compile_filters(filters, entity.column_types, max_in=limits.max_in)


def _count(name: str, value: int | None, default: int | None) -> int | None:
    if value is None:
        return default
    if isinstance(value, bool) or value < 0:
        raise InvalidMessageError(
            f"{name} must be a non-negative integer, got {value!r}",
            details={"field": name},
        )
    return value


def build_where(
    entity: EntityInfo,
    client: Sequence[FilterOption],
    security: Sequence[FilterOption],
    limits: Limits,
) -> Expr | None:
    """The client's filters ANDed with the security filters that hooks added."""
    return all_of(_filters(entity, client, limits), _filters(entity, security, limits))


def build_read_query(
    registry: ModelRegistry,
    entity: EntityInfo,
    options: QueryOptions,
    security: Sequence[FilterOption],
    limits: Limits,
) -> ReadQuery:
    """Validate read options against an entity.

    Raises:
        InvalidFilterError: unknown columns (``invalid_column``), bad filters.
        InvalidMessageError: a bad sort direction, limit or offset.
    """
    limit = _count("limit", options.limit, limits.default_page_size) or 0
    offset = _count("offset", options.offset, 0) or 0
    preloads: list[PreloadQuery] = []
    for preload in options.preload:
        relation = entity.relations.get(preload.relation)
        target = registry.for_model(relation.target) if relation is not None else None
        if relation is None or target is None:
            raise InvalidFilterError(
                f"unknown relation {preload.relation!r} in preload",
                code="invalid_column",
                details={"field": preload.relation},
            )
        plimit = _count("preload.limit", preload.limit, None)
        preloads.append(
            PreloadQuery(
                relation=relation,
                target=target,
                columns=_columns(target, preload.columns),
                where=_filters(target, preload.filters, limits),
                sort=_sort(target, preload.sort),
                limit=None if plimit is None else min(plimit, limits.max_page_size),
            )
        )
    return ReadQuery(
        where=build_where(entity, options.filters, security, limits),
        columns=_columns(entity, options.columns),
        sort=_sort(entity, options.sort),
        limit=min(limit, limits.max_page_size),
        # Past every row either way; databases take offsets of 64 bits at most.
        offset=min(offset, 2**63 - 1),
        preload=tuple(preloads),
    )


def validate_columns(
    entity: EntityInfo, columns: Sequence[str] | None
) -> tuple[str, ...] | None:
    """Check a ``columns`` option; ``None`` or empty means every column."""
    return _columns(entity, columns)


def parse_record_id(entity: EntityInfo, record_id: Any) -> tuple[Any, ...]:
    """Convert a ``record_id`` to the primary key's values.

    A single-column key takes a string or a number; a composite key takes an
    object naming every key column.

    Raises:
        InvalidMessageError: the id is missing or does not fit the key.
    """
    if record_id is None or record_id == "":
        raise InvalidMessageError("record_id is required for this operation")
    pk = entity.primary_key
    if isinstance(record_id, dict):
        if set(record_id) != set(pk):
            raise InvalidMessageError(
                f"record_id must name the key columns {list(pk)}",
                details={"field": "record_id"},
            )
        values = [record_id[name] for name in pk]
    elif len(pk) == 1:
        values = [record_id]
    else:
        raise InvalidMessageError(
            f"this entity has a composite key; send record_id as an object with {list(pk)}",
            details={"field": "record_id"},
        )
    try:
        return tuple(
            coerce_key(value, entity.columns[name].type)
            for name, value in zip(pk, values, strict=True)
        )
    except ValueError as exc:
        raise InvalidMessageError(
            f"record_id does not fit the primary key: {exc}",
            details={"field": "record_id"},
        ) from None


def validate_data(
    entity: EntityInfo, data: Any, *, partial: bool, key: tuple[Any, ...] | None = None
) -> dict[str, Any]:
    """Validate and coerce row data for a create (``partial=False``) or an update.

    Raises:
        InvalidModelError: ``data`` is not an object, or an update names no column.
        ValidationError: an unknown column, a value that does not fit, a missing
            required column, or an attempt to change the primary key.
    """
    if not isinstance(data, dict):
        raise InvalidModelError("data must be an object holding the row's columns")
    if partial and not data:
        raise InvalidModelError("data must name at least one column to change")
    out: dict[str, Any] = {}
    for name, value in data.items():
        column = entity.columns.get(name)
        if column is None:
            raise ValidationError(f"unknown column {name!r}", field=name)
        if value is None:
            if not column.nullable:
                raise ValidationError(f"{name} may not be null", field=name)
            out[name] = None
            continue
        try:
            coerced = coerce(value, column.type)
        except ValueError as exc:
            raise ValidationError(f"{name}: {exc}", field=name) from None
        if column.max_length is not None and len(coerced) > column.max_length:
            raise ValidationError(
                f"{name}: at most {column.max_length} characters, got {len(coerced)}",
                field=name,
            )
        if (
            column.bounds is not None
            and not column.bounds[0] <= coerced <= column.bounds[1]
        ):
            low, high = column.bounds
            raise ValidationError(
                f"{name}: must be between {low} and {high}", field=name
            )
        out[name] = coerced
    if partial and key is not None:
        for name, current in zip(entity.primary_key, key, strict=True):
            if name in out and out[name] != current:
                raise ValidationError("the primary key cannot be changed", field=name)
            out.pop(name, None)
        if not out:
            raise InvalidModelError("data must name at least one column to change")
    if not partial:
        for column in entity.columns.values():
            if (
                column.name not in out
                and not column.nullable
                and not column.has_default
            ):
                raise ValidationError(f"{column.name} is required", field=column.name)
    return out


def project(
    row: dict[str, Any], columns: tuple[str, ...] | None, keep: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Limit a row to ``columns`` (plus ``keep``), in the order asked for."""
    if columns is None:
        return row
    wanted = columns + tuple(k for k in keep if k not in columns)
    return {name: row.get(name) for name in wanted}
