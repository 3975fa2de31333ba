r"""The Django ORM adapter: Django models served on SQLite and PostgreSQL.

Django's database layer is synchronous and keeps one connection per thread. Every
operation of this adapter is therefore one synchronous unit run in Django's own thread
(:func:`asgiref.sync.sync_to_async` with ``thread_sensitive=True``), so the event loop
never blocks: a read is one unit; a write is one unit inside one
``transaction.atomic(using=…)`` that holds the statements, the re-read of every row, the
handler's ``check`` (after-hooks, row security, called back on the event loop with
:func:`asgiref.sync.async_to_sync`), the idempotency record and the change log. An
after-hook that uses the ORM through ``sync_to_async`` runs in that same thread and
transaction. Operations of all Django adapters of a process share that one thread:
they run one at a time, which bounds throughput (see the README's adapter section).

Filters are compiled to SQL by this module, not by Django's lookups, so that they keep
the contract of :mod:`websocketspec.protocol.filters` exactly (Django's lookups would,
for example, drop an integer filter past the column's range, letting NULLs through):

- PostgreSQL: text comparisons and sorts use ``COLLATE "C"`` (code-point order);
  ``ilike`` compares ``lower(col COLLATE "und-x-icu")`` with the pattern folded by
  :meth:`str.lower`.
- SQLite: ``like``/``ilike`` call functions registered on each connection (Django's
  ``connection_created`` signal) that run the very regex the matcher uses. File
  databases run in WAL mode with ``synchronous=NORMAL`` by default, and on Django 5.1
  and later writes take the lock up front (``BEGIN IMMEDIATE``).

Rows are read through querysets (``values()``), so Django's own conversions apply, and
are keyed by each field's ``attname`` (``user_id`` for a foreign key ``user``). Creates
go through ``Manager.create`` (``save()`` and its signals run); updates and deletes are
single statements on the rows they name, like the SQLAlchemy adapter's: ``on_delete``
handlers that Django emulates in Python (``CASCADE``) and delete signals do not run, so
that no row ever changes without its subscribers being told; the database's own
constraints decide. Multi-table inheritance is not served (only a model's local fields).
Run Django with ``USE_TZ = True`` (its default): with ``USE_TZ = False`` naive datetimes
are taken as UTC, which holds only with ``TIME_ZONE = "UTC"``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, ParamSpec, TypeVar

import msgspec

from websocketspec.adapters.base import (
    Adapter,
    Change,
    KeyTakenError,
    Remember,
    Write,
    WriteCheck,
)
from websocketspec.adapters.changelog import (
    KEYS_DDL,
    STREAMS_DDL,
    load_changes,
    outbox_ddl,
    outbox_values,
    place,
)
from websocketspec.adapters.common import (
    INSTALL_LOCK,
    dump,
    new_epoch,
    round_decimal,
    sqlite_ilike,
    sqlite_like,
)
from websocketspec.adapters.preload import attach_children, preload_keys
from websocketspec.adapters.writes import (
    check_row_limit,
    refused,
    stamp_batch,
    updated,
)
from websocketspec.exceptions import (
    ConfigurationError,
    MissingDependencyError,
    OperationError,
    ProtocolError,
)
from websocketspec.protocol.filters import (
    Condition,
    Expr,
    Group,
    Op,
    like_pattern,
)
from websocketspec.protocol.values import (
    TEXT_TYPES,
    ColumnType,
    normalize,
    to_utc,
)
from websocketspec.query import PreloadQuery, ReadQuery
from websocketspec.registry import (
    ColumnInfo,
    EntityInfo,
    ModelDescription,
    RelationInfo,
)
from websocketspec.types import Record

# Settings under a private name: introspecting a public one would load them.
try:
    from asgiref.sync import async_to_sync, sync_to_async
    from django.conf import settings as _settings
    from django.db import (
        DatabaseError,
        IntegrityError,
        connections,
        models,
        transaction,
    )
    from django.db import Error as DjangoError
    from django.db.backends.signals import connection_created
    from django.db.models.expressions import Expression, OrderBy, Window
    from django.db.models.functions import Collate, RowNumber
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError("django", "django") from exc

__all__ = ["DjangoAdapter", "DjangoChangeLog"]

log = logging.getLogger(__name__)

_P = ParamSpec("_P")
_R = TypeVar("_R")


_INTEGER_BOUNDS = {
    "SmallIntegerField": (-(2**15), 2**15 - 1),
    "SmallAutoField": (-(2**15), 2**15 - 1),
    "PositiveSmallIntegerField": (0, 2**15 - 1),
    "IntegerField": (-(2**31), 2**31 - 1),
    "AutoField": (-(2**31), 2**31 - 1),
    "PositiveIntegerField": (0, 2**31 - 1),
    "BigIntegerField": (-(2**63), 2**63 - 1),
    "BigAutoField": (-(2**63), 2**63 - 1),
    "PositiveBigIntegerField": (0, 2**63 - 1),
}
"""The range each integer field holds, as declared (the same on every database, as the
SQLAlchemy adapter declares ``Integer`` 32-bit even on SQLite)."""

_TYPES = {
    **dict.fromkeys(_INTEGER_BOUNDS, ColumnType.INTEGER),
    "FloatField": ColumnType.FLOAT,
    "DecimalField": ColumnType.DECIMAL,
    "TextField": ColumnType.TEXT,
    "BooleanField": ColumnType.BOOLEAN,
    "NullBooleanField": ColumnType.BOOLEAN,
    "DateField": ColumnType.DATE,
    "DateTimeField": ColumnType.DATETIME,
    "TimeField": ColumnType.TIME,
    "UUIDField": ColumnType.UUID,
    "JSONField": ColumnType.JSON,
    "BinaryField": ColumnType.BYTES,
    **dict.fromkeys(
        [
            "CharField",
            "SlugField",
            "EmailField",
            "URLField",
            "FilePathField",
            "FileField",
            "ImageField",
            "GenericIPAddressField",
            "IPAddressField",
        ],
        ColumnType.STRING,
    ),
}


def _portable_type(field: Any) -> ColumnType:
    if field.is_relation:
        return _portable_type(field.target_field)
    return _TYPES.get(field.get_internal_type(), ColumnType.JSON)


def _bounds(field: Any) -> tuple[Any, Any] | None:
    if field.is_relation:
        return _bounds(field.target_field)
    internal = field.get_internal_type()
    if internal in _INTEGER_BOUNDS:
        return _INTEGER_BOUNDS[internal]
    if internal == "DecimalField" and field.max_digits:
        scale = field.decimal_places or 0
        top = Decimal(10) ** (field.max_digits - scale) - Decimal(1).scaleb(-scale)
        return -top, top
    return None


def _default(field: Any, single_key: bool) -> tuple[Any, bool]:
    """A JSON-friendly description of a field's default, and whether it has one."""
    db_default = getattr(field, "db_default", models.NOT_PROVIDED)
    if db_default is not models.NOT_PROVIDED:
        value = getattr(db_default, "value", db_default)
        return (value if isinstance(value, (str, int, float, bool)) else None), True
    if field.has_default():
        value = field.default
        return (value if isinstance(value, (str, int, float, bool)) else None), True
    if field.primary_key and isinstance(field, models.AutoField):
        return None, single_key
    return None, False


@dataclass(frozen=True, slots=True)
class _Mapping:
    """Per-entity ORM objects: the model and the wire-name to field map."""

    model: Any
    fields: dict[str, Any]
    """Wire name (the field's ``attname``) to Django field."""
    table: str
    names: tuple[str, ...]


# -- SQL expressions ----------------------------------------------------------------


class _Sql(Expression):  # type: ignore[misc]  # Django ships no type information
    """A boolean SQL condition over columns of the queried model.

    ``template`` names the compiled columns ``{0}``, ``{1}``… and holds one ``%s`` per
    parameter; the columns are resolved by Django (so table aliases stay right in
    subqueries), the parameters bound by the driver.
    """

    conditional = True

    def __init__(
        self, template: str, columns: Sequence[Any], params: Sequence[Any]
    ) -> None:
        super().__init__(output_field=models.BooleanField())
        self.template = template
        self.columns = list(columns)
        self.params = list(params)

    def get_source_expressions(self) -> list[Any]:
        return self.columns

    def set_source_expressions(self, exprs: Sequence[Any]) -> None:
        self.columns = list(exprs)

    def as_sql(self, compiler: Any, connection: Any) -> tuple[str, list[Any]]:
        parts: list[str] = []
        params: list[Any] = []
        for column in self.columns:
            sql, column_params = compiler.compile(column)
            parts.append(sql)
            params.extend(column_params)
        return self.template.format(*parts), [*params, *self.params]


class _Junction(Expression):  # type: ignore[misc]  # Django ships no type information
    """Conditions joined by ``AND`` or ``OR``, parenthesised."""

    conditional = True

    def __init__(self, kind: str, items: Sequence[Any]) -> None:
        super().__init__(output_field=models.BooleanField())
        self.kind = kind
        self.items = list(items)

    def get_source_expressions(self) -> list[Any]:
        return self.items

    def set_source_expressions(self, exprs: Sequence[Any]) -> None:
        self.items = list(exprs)

    def as_sql(self, compiler: Any, connection: Any) -> tuple[str, list[Any]]:
        parts: list[str] = []
        params: list[Any] = []
        for item in self.items:
            sql, item_params = compiler.compile(item)
            parts.append(f"({sql})")
            params.extend(item_params)
        return f" {self.kind.upper()} ".join(parts), params


_FALSE = "1 = 0"


class DjangoAdapter(Adapter):
    """Serve Django models (register them with ``register_model("public.users", User)``).

    Django must be configured (``settings.configure`` or ``DJANGO_SETTINGS_MODULE`` and
    ``django.setup()``) before models are registered.

    Args:
        using: the database alias (``settings.DATABASES``) to read and write.
        sqlite_synchronous: ``PRAGMA synchronous`` for SQLite databases: ``NORMAL``
            (default, in WAL mode a power loss may lose the last commits but never
            corrupts) or ``FULL``.
    """

    def __init__(
        self, using: str = "default", *, sqlite_synchronous: str = "NORMAL"
    ) -> None:
        if sqlite_synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"expected NORMAL or FULL, got {sqlite_synchronous!r}")
        self.using = using
        self._sqlite_synchronous = sqlite_synchronous.upper()
        self._maps: dict[int, _Mapping] = {}
        self._keys_ready = False
        self.log: DjangoChangeLog | None = None
        """The change log, once a shared broker asked for one (:meth:`enable_log`)."""
        connection_created.connect(self._on_connection_created)

    # -- the thread -----------------------------------------------------------------

    async def _run(
        self, fn: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs
    ) -> _R:
        """Run ``fn`` as one unit in Django's thread, on a healthy connection."""

        def unit() -> _R:
            self._check_connection()
            return fn(*args, **kwargs)

        return await sync_to_async(unit, thread_sensitive=True)()

    def _check_connection(self) -> None:
        """Drop a connection that failed (Django does so only between HTTP requests).

        Unlike ``close_if_unusable_or_obsolete``, keep a healthy one however old: this
        thread's connection is the adapter's only one, and reconnecting per operation
        (``CONN_MAX_AGE = 0``) would cost a round trip each time.
        """
        conn = connections[self.using]
        if conn.connection is None or conn.in_atomic_block:
            return
        if conn.get_autocommit() != conn.settings_dict["AUTOCOMMIT"]:
            conn.close()
        elif conn.errors_occurred:
            if conn.is_usable():
                conn.errors_occurred = False
            else:
                conn.close()

    def _on_connection_created(
        self, sender: Any, connection: Any, **kwargs: Any
    ) -> None:
        if connection.alias == self.using and connection.vendor == "sqlite":
            self._prepare_sqlite(connection.connection)

    def _prepare_sqlite(self, raw: Any) -> None:
        raw.create_function("ws_like", 2, sqlite_like, deterministic=True)
        raw.create_function("ws_ilike", 2, sqlite_ilike, deterministic=True)
        cursor = raw.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA synchronous={self._sqlite_synchronous}")
            cursor.execute("PRAGMA foreign_keys=ON")
        finally:
            cursor.close()

    # -- set-up -------------------------------------------------------------------

    async def start(self) -> None:
        """Open this thread's connection and prepare it (SQLite functions, pragmas).

        Raises:
            ConfigurationError: the database is neither SQLite nor PostgreSQL.
        """
        connection_created.connect(self._on_connection_created)
        try:
            await self._run(self._start)
        except DjangoError as exc:
            raise _operation_error("read", exc) from exc

    def _start(self) -> None:
        conn = connections[self.using]
        if conn.vendor not in ("sqlite", "postgresql"):
            raise ConfigurationError(
                f"DjangoAdapter serves SQLite and PostgreSQL, not {conn.vendor!r}"
            )
        already = conn.connection is not None
        conn.ensure_connection()
        if already and conn.vendor == "sqlite":
            # Opened before this adapter existed: the signal did not see it.
            self._prepare_sqlite(conn.connection)

    async def stop(self) -> None:
        """Close this thread's connection."""
        connection_created.disconnect(self._on_connection_created)
        with contextlib.suppress(DjangoError):
            await sync_to_async(connections[self.using].close, thread_sensitive=True)()

    async def enable_log(
        self, entities: Sequence[EntityInfo], *, notify: str | None
    ) -> DjangoChangeLog:
        """Record every write in the transactional outbox from now on."""
        if self.log is None:
            by_key = {e.key: e for e in entities}
            change_log = DjangoChangeLog(self, by_key.get, notify=notify)
            try:
                await self._run(change_log.install, [e.key for e in entities])
            except DjangoError as exc:
                raise _operation_error("read", exc) from exc
            self.log = change_log
        return self.log

    def describe(self, model: Any) -> ModelDescription:
        """Describe a Django model from its ``_meta``."""
        meta = getattr(model, "_meta", None)
        if meta is None or not hasattr(meta, "local_concrete_fields"):
            raise TypeError(f"expected a Django model class, got {model!r}")
        if meta.abstract:
            raise TypeError(f"model {model!r} is abstract")
        fields = list(meta.local_concrete_fields)
        keys = [f for f in fields if f.primary_key]
        pk_fields = getattr(meta.pk, "fields", None)
        if pk_fields:  # a composite primary key (Django 5.2)
            keys = list(pk_fields)
        key_names = {f.attname for f in keys}
        infos: list[ColumnInfo] = []
        for field in fields:
            is_key = field.attname in key_names
            default, has_default = _default(field, len(keys) == 1)
            internal = field.get_internal_type()
            infos.append(
                ColumnInfo(
                    name=field.attname,
                    type=_portable_type(field),
                    max_length=(
                        field.max_length
                        if internal
                        in ("CharField", "SlugField", "EmailField", "URLField")
                        and isinstance(field.max_length, int)
                        else None
                    ),
                    bounds=_bounds(field),
                    nullable=bool(field.null) and not is_key,
                    primary_key=is_key,
                    default=default,
                    has_default=has_default,
                )
            )
        relations: list[RelationInfo] = []
        for field in meta.get_fields():
            if not field.is_relation or field.many_to_many:
                if field.is_relation:
                    log.info(
                        "relation %s.%s goes through a join table: not served",
                        model.__name__,
                        field.name,
                    )
                continue
            if field.concrete and (field.many_to_one or field.one_to_one):
                if field.model is not model or not hasattr(field, "target_field"):
                    continue
                relations.append(
                    RelationInfo(
                        name=field.name,
                        kind="one",
                        target=field.related_model,
                        local_columns=(field.attname,),
                        remote_columns=(field.target_field.attname,),
                    )
                )
            elif field.auto_created and not field.concrete:
                # The reverse side of a foreign key (or one-to-one) pointing here.
                name = field.get_accessor_name()
                hidden = getattr(field, "hidden", None)  # is_hidden() before Django 5.1
                if hidden is None:
                    hidden = field.is_hidden()
                if not name or hidden:
                    continue
                remote = field.field
                relations.append(
                    RelationInfo(
                        name=name,
                        kind="one" if field.one_to_one else "many",
                        target=field.related_model,
                        local_columns=(remote.target_field.attname,),
                        remote_columns=(remote.attname,),
                    )
                )
        self._maps[id(model)] = _Mapping(
            model=model,
            fields={f.attname: f for f in fields},
            table=meta.db_table,
            names=tuple(f.attname for f in fields),
        )
        return ModelDescription(columns=tuple(infos), relations=tuple(relations))

    def _map(self, entity: EntityInfo) -> _Mapping:
        mapping: _Mapping | None = entity.state.get("django")
        if mapping is None:
            mapping = self._maps.get(id(entity.model))
            if mapping is None:
                self.describe(entity.model)
                mapping = self._maps[id(entity.model)]
            entity.state["django"] = mapping
        return mapping

    def _objects(self, m: _Mapping) -> Any:
        # The base manager: a custom default manager's filtering is not the API's.
        return m.model._base_manager.using(self.using)

    # -- values ---------------------------------------------------------------------

    def _store(self, m: _Mapping, name: str, value: Any) -> Any:
        """A value to write, decimals rounded to the field's scale (half away from zero).

        PostgreSQL rounds so on store; SQLite would keep the value as sent.
        """
        field = m.fields[name]
        if isinstance(value, Decimal) and isinstance(field, models.DecimalField):
            places = field.decimal_places
            if isinstance(places, int):
                value = round_decimal(value, places)
            return value
        return self._naive(value)

    @staticmethod
    def _naive(value: Any) -> Any:
        if isinstance(value, datetime) and not _settings.USE_TZ:
            return to_utc(value).replace(tzinfo=None)
        return value

    def _param(self, conn: Any, m: _Mapping, name: str, value: Any) -> Any:
        """A filter value bound as the database compares it exactly as given."""
        if isinstance(value, (Decimal, int, float, str)) and not isinstance(
            value, bool
        ):
            # Never through the field: it would round a decimal or cast to its range.
            return value
        return m.fields[name].get_db_prep_value(
            self._naive(value), conn, prepared=False
        )

    def _row(self, values: dict[str, Any]) -> Record:
        return {key: normalize(value) for key, value in values.items()}

    # -- SQL building -----------------------------------------------------------------

    def where(self, conn: Any, m: _Mapping, expr: Expr | None) -> Any:
        """Translate a filter expression into a Django conditional expression."""
        if expr is None:
            return None
        return self._clause(conn, m, expr)

    def _clause(self, conn: Any, m: _Mapping, expr: Expr) -> Any:
        if isinstance(expr, Group):
            return _Junction(expr.kind, [self._clause(conn, m, e) for e in expr.items])
        return self._condition(conn, m, expr)

    def _condition(self, conn: Any, m: _Mapping, c: Condition) -> Any:
        column = [models.F(c.column)]
        op = c.op
        postgres = conn.vendor == "postgresql"
        if op is Op.IS_NULL:
            return _Sql("{0} IS NULL", column, [])
        if op is Op.IS_NOT_NULL:
            return _Sql("{0} IS NOT NULL", column, [])
        if op in (Op.IN, Op.NOT_IN):
            values = [self._param(conn, m, c.column, v) for v in c.value]
            if not values:
                # NOT IN () would be true even for NULL; the contract says NULL never
                # matches.
                return _Sql(_FALSE if op is Op.IN else "{0} IS NOT NULL", column, [])
            marks = ", ".join(["%s"] * len(values))
            word = "IN" if op is Op.IN else "NOT IN"
            return _Sql(f"{{0}} {word} ({marks})", column, values)
        if op in (Op.LIKE, Op.ILIKE, Op.CONTAINS, Op.STARTSWITH, Op.ENDSWITH):
            pattern = like_pattern(op, c.value)
            if not postgres:
                fn = "ws_ilike" if op is Op.ILIKE else "ws_like"
                return _Sql(f"{fn}({{0}}, %s) = 1", column, [pattern])
            if op is Op.ILIKE:
                return _Sql(
                    "lower({0} COLLATE \"und-x-icu\") LIKE %s ESCAPE '\\'",
                    column,
                    [pattern],
                )
            return _Sql("{0} LIKE %s ESCAPE '\\'", column, [pattern])
        ordered = '{0} COLLATE "C"' if postgres and c.type in TEXT_TYPES else "{0}"
        if op is Op.BETWEEN:
            low, high = (self._param(conn, m, c.column, v) for v in c.value)
            return _Sql(f"{ordered} BETWEEN %s AND %s", column, [low, high])
        value = self._param(conn, m, c.column, c.value)
        if op is Op.EQ:
            return _Sql("{0} = %s", column, [value])
        if op is Op.NEQ:
            return _Sql("{0} <> %s", column, [value])
        sign = {Op.GT: ">", Op.GTE: ">=", Op.LT: "<", Op.LTE: "<="}[op]
        return _Sql(f"{ordered} {sign} %s", column, [value])

    def _keys(
        self,
        conn: Any,
        m: _Mapping,
        entity: EntityInfo,
        keys: Sequence[tuple[Any, ...]],
    ) -> Any:
        """A condition matching the rows with these primary keys."""
        pk = entity.primary_key
        if not keys:
            return _Sql(_FALSE, [models.F(pk[0])], [])
        if len(pk) == 1:
            values = [self._param(conn, m, pk[0], k[0]) for k in keys]
            marks = ", ".join(["%s"] * len(values))
            return _Sql(f"{{0}} IN ({marks})", [models.F(pk[0])], values)
        return _Junction(
            "or",
            [
                _Junction(
                    "and",
                    [
                        _Sql("{0} = %s", [models.F(n)], [self._param(conn, m, n, v)])
                        for n, v in zip(pk, key, strict=True)
                    ],
                )
                for key in keys
            ],
        )

    def _order(
        self, conn: Any, entity: EntityInfo, sort: Sequence[tuple[str, bool]]
    ) -> list[Any]:
        out: list[Any] = []
        for name, descending in sort:
            column: Any = models.F(name)
            if conn.vendor == "postgresql" and entity.column_types[name] in TEXT_TYPES:
                column = Collate(column, "C")
            out.append(
                OrderBy(column, descending=True, nulls_first=True)
                if descending
                else OrderBy(column, nulls_last=True)
            )
        return out

    def _filtered(self, conn: Any, m: _Mapping, *conditions: Any) -> Any:
        qs = self._objects(m)
        for condition in conditions:
            if condition is not None:
                qs = qs.filter(condition)
        return qs

    # -- reads --------------------------------------------------------------------

    async def read_many(
        self, entity: EntityInfo, query: ReadQuery
    ) -> tuple[list[Record], int]:
        """Read one page of rows and the total count."""
        try:
            return await self._run(self._page, entity, query)
        except DjangoError as exc:
            raise _operation_error("read", exc) from exc

    async def snapshot(
        self, entity: EntityInfo, query: ReadQuery
    ) -> tuple[list[Record], int, tuple[int, str] | None]:
        """Read a page and, when a change log is kept, its stream position, atomically.

        On PostgreSQL the reads share one REPEATABLE READ snapshot; on SQLite one read
        transaction (WAL) gives the same.
        """
        change_log = self.log
        if change_log is None:
            rows, total = await self.read_many(entity, query)
            return rows, total, None

        def unit() -> tuple[list[Record], int, tuple[int, str] | None]:
            conn = connections[self.using]
            with transaction.atomic(using=self.using):
                if conn.vendor == "postgresql":
                    with conn.cursor() as cursor:
                        cursor.execute(
                            "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"
                        )
                position = change_log.position(entity.key)
                rows, total = self._page_in(entity, query)
            return rows, total, position

        try:
            return await self._run(unit)
        except DjangoError as exc:
            raise _operation_error("read", exc) from exc

    def _page(self, entity: EntityInfo, query: ReadQuery) -> tuple[list[Record], int]:
        # One transaction, so that the total counts the rows the page was taken from.
        with transaction.atomic(using=self.using):
            return self._page_in(entity, query)

    def _page_in(
        self, entity: EntityInfo, query: ReadQuery
    ) -> tuple[list[Record], int]:
        conn = connections[self.using]
        m = self._map(entity)
        qs = self._filtered(conn, m, self.where(conn, m, query.where))
        page = qs.order_by(*self._order(conn, entity, query.sort)).values(*m.names)
        rows = [self._row(r) for r in page[query.offset : query.offset + query.limit]]
        total = int(qs.count())
        if query.preload and rows:
            self._preload(conn, rows, query.preload)
        return rows, total

    async def read_one(
        self, entity: EntityInfo, key: tuple[Any, ...], query: ReadQuery
    ) -> Record | None:
        """Read the row with primary key ``key`` if it matches ``query.where``."""

        def unit() -> Record | None:
            conn = connections[self.using]
            m = self._map(entity)
            qs = self._filtered(
                conn,
                m,
                self._keys(conn, m, entity, [key]),
                self.where(conn, m, query.where),
            )
            found = list(qs.values(*m.names)[:1])
            if not found:
                return None
            row = self._row(found[0])
            if query.preload:
                self._preload(conn, [row], query.preload)
            return row

        try:
            return await self._run(unit)
        except DjangoError as exc:
            raise _operation_error("read", exc) from exc

    def _preload(
        self, conn: Any, rows: list[Record], preloads: Sequence[PreloadQuery]
    ) -> None:
        for p in preloads:
            rel = p.relation
            tm = self._map(p.target)
            keys = preload_keys(rows, rel)
            children: list[Record] = []
            if keys:
                remote = list(rel.remote_columns)
                if len(remote) == 1:
                    values = [self._param(conn, tm, remote[0], k[0]) for k in keys]
                    marks = ", ".join(["%s"] * len(values))
                    match = _Sql(f"{{0}} IN ({marks})", [models.F(remote[0])], values)
                else:
                    match = _Junction(
                        "or",
                        [
                            _Junction(
                                "and",
                                [
                                    _Sql(
                                        "{0} = %s",
                                        [models.F(n)],
                                        [self._param(conn, tm, n, v)],
                                    )
                                    for n, v in zip(remote, k, strict=True)
                                ],
                            )
                            for k in keys
                        ],
                    )
                qs = self._filtered(conn, tm, match, self.where(conn, tm, p.where))
                order = self._order(conn, p.target, p.sort)
                if p.limit is not None and rel.kind == "many":
                    ranked = (
                        qs.annotate(
                            ws_rank=Window(
                                RowNumber(),
                                partition_by=[models.F(n) for n in remote],
                                order_by=order,
                            )
                        )
                        .filter(ws_rank__lte=p.limit)
                        .order_by("ws_rank", *order)
                        .values(*tm.names, "ws_rank")
                    )
                    raws = [
                        {k: v for k, v in r.items() if k != "ws_rank"} for r in ranked
                    ]
                else:
                    raws = list(qs.order_by(*order).values(*tm.names))
                children = [self._row(r) for r in raws]
            attach_children(rows, p, children)

    # -- writes -------------------------------------------------------------------

    async def write(
        self, entity: EntityInfo, write: Write, check: WriteCheck
    ) -> tuple[Any, list[Change]] | None:
        """Run a create, update or delete (one row or many) in one transaction."""
        operation = write.operation
        try:
            return await self._run(self._write, entity, write, check)
        except (ProtocolError, KeyTakenError):
            raise
        except IntegrityError as exc:
            raise refused(operation, exc) from exc
        except DjangoError as exc:
            raise _operation_error(operation, exc) from exc

    def _write(
        self, entity: EntityInfo, write: Write, check: WriteCheck
    ) -> tuple[Any, list[Change]] | None:
        conn = connections[self.using]
        m = self._map(entity)
        if write.remember is not None:
            self._ensure_keys_table(conn)
        with _immediate(conn), transaction.atomic(using=self.using):
            if write.remember is not None:
                self._claim(conn, write.remember)
            if write.operation == "create":
                changes = self._insert(conn, m, entity, write.rows)
            else:
                olds = self._locked(conn, m, entity, write)
                if write.key is not None and not olds:
                    return None
                changes = self._change(conn, m, entity, write, olds)
            if write.bulk:
                changes = stamp_batch(changes)
            # After-hooks run on the event loop; an ORM call they make through
            # sync_to_async comes back to this thread, inside this transaction.
            result = async_to_sync(check)(changes)
            if write.remember is not None:
                self._remember(conn, write.remember, result)
            if self.log is not None:
                changes = self.log.append(conn, changes)
        return result, changes

    def _reread(
        self,
        conn: Any,
        m: _Mapping,
        entity: EntityInfo,
        keys: Sequence[tuple[Any, ...]],
    ) -> dict[tuple[Any, ...], Record]:
        qs = self._filtered(conn, m, self._keys(conn, m, entity, keys))
        rows = (self._row(r) for r in qs.values(*m.names))
        return {tuple(r[n] for n in entity.primary_key): r for r in rows}

    def _insert(
        self, conn: Any, m: _Mapping, entity: EntityInfo, rows: Sequence[Record]
    ) -> list[Change]:
        keys: list[tuple[Any, ...]] = []
        for data in rows:
            values = {name: self._store(m, name, v) for name, v in data.items()}
            obj = self._objects(m).create(**values)
            keys.append(
                tuple(
                    normalize(getattr(obj, m.fields[n].attname))
                    for n in entity.primary_key
                )
            )
        news = self._reread(conn, m, entity, keys)
        return [Change("create", entity.key, None, news[k]) for k in keys]

    def _change(
        self,
        conn: Any,
        m: _Mapping,
        entity: EntityInfo,
        write: Write,
        olds: list[Record],
    ) -> list[Change]:
        if not olds:
            return []
        keys = [tuple(old[name] for name in entity.primary_key) for old in olds]
        target = self._keys(conn, m, entity, keys)
        if write.operation == "delete":
            self._delete(conn, m, entity, keys)
            return [Change("delete", entity.key, old, None) for old in olds]
        values = {
            name: self._store(m, name, v) for name, v in (write.data or {}).items()
        }
        self._filtered(conn, m, target).update(**values)
        news = self._reread(conn, m, entity, keys)
        return updated(entity.key, olds, keys, news)

    def _delete(
        self,
        conn: Any,
        m: _Mapping,
        entity: EntityInfo,
        keys: Sequence[tuple[Any, ...]],
    ) -> None:
        """``DELETE`` exactly these rows: no Python-side cascade, no signals."""
        quote = conn.ops.quote_name
        columns = [quote(m.fields[n].column) for n in entity.primary_key]
        params: list[Any] = []
        if len(columns) == 1:
            where = f"{columns[0]} IN ({', '.join(['%s'] * len(keys))})"
            params = [self._param(conn, m, entity.primary_key[0], k[0]) for k in keys]
        else:
            pair = " AND ".join(f"{c} = %s" for c in columns)
            where = " OR ".join([f"({pair})"] * len(keys))
            for key in keys:
                params.extend(
                    self._param(conn, m, n, v)
                    for n, v in zip(entity.primary_key, key, strict=True)
                )
        with conn.cursor() as cursor:
            cursor.execute(f"DELETE FROM {quote(m.table)} WHERE {where}", params)

    def _locked(
        self, conn: Any, m: _Mapping, entity: EntityInfo, write: Write
    ) -> list[Record]:
        """The rows a write changes, locked (in key order, so writers never deadlock)."""
        qs = self._filtered(
            conn,
            m,
            self._keys(conn, m, entity, [write.key]) if write.key is not None else None,
            self.where(conn, m, write.where),
        )
        qs = qs.order_by(*entity.primary_key).values(*m.names)
        if write.limit is not None:
            qs = qs[: write.limit + 1]
        if conn.features.has_select_for_update:
            qs = qs.select_for_update()
        rows = [self._row(r) for r in qs]
        check_row_limit(write, rows)
        return rows

    # -- idempotency ----------------------------------------------------------------

    def _ensure_keys_table(self, conn: Any) -> None:
        if self._keys_ready:
            return
        with transaction.atomic(using=self.using), conn.cursor() as cursor:
            _lock_install(conn, cursor)
            cursor.execute(KEYS_DDL)
        self._keys_ready = True

    async def remembered(self, remember: Remember) -> tuple[str, Any] | None:
        """The fingerprint and answer stored for a key, within its window."""

        def unit() -> tuple[str, Any] | None:
            conn = connections[self.using]
            self._ensure_keys_table(conn)
            with conn.cursor() as cursor:
                cursor.execute(
                    "SELECT fingerprint, response FROM websocketspec_idempotency "
                    'WHERE identity = %s AND "key" = %s AND created_at >= %s '
                    "AND response IS NOT NULL",
                    [remember.identity, remember.key, time.time() - remember.window],
                )
                found = cursor.fetchone()
            if found is None:
                return None
            return str(found[0]), msgspec.json.decode(found[1])

        try:
            return await self._run(unit)
        except DjangoError as exc:
            raise _operation_error("read", exc) from exc

    def _claim(self, conn: Any, remember: Remember) -> None:
        """Take the key in this transaction (first thing, so a twin waits on it)."""
        with conn.cursor() as cursor:
            cursor.execute(
                'DELETE FROM websocketspec_idempotency WHERE identity = %s AND "key" = %s '
                "AND created_at < %s",
                [remember.identity, remember.key, time.time() - remember.window],
            )
            try:
                cursor.execute(
                    "INSERT INTO websocketspec_idempotency "
                    '(identity, "key", fingerprint, created_at) VALUES (%s, %s, %s, %s)',
                    [
                        remember.identity,
                        remember.key,
                        remember.fingerprint,
                        time.time(),
                    ],
                )
            except IntegrityError as exc:
                raise KeyTakenError(remember.key) from exc

    def _remember(self, conn: Any, remember: Remember, result: Any) -> None:
        with conn.cursor() as cursor:
            cursor.execute(
                "UPDATE websocketspec_idempotency SET response = %s "
                'WHERE identity = %s AND "key" = %s',
                [dump(result), remember.identity, remember.key],
            )


# -- the change log -------------------------------------------------------------------


def _lock_install(conn: Any, cursor: Any) -> None:
    """Serialise table creation between processes starting at once (``--workers``)."""
    if conn.vendor == "postgresql":
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [INSTALL_LOCK])


class DjangoChangeLog:
    """The outbox of one database, read and written through Django's connection.

    Args:
        adapter: the adapter whose database (and thread) the log uses.
        resolve: finds an entity's description by its canonical name (to decode rows).
        notify: the PostgreSQL channel each commit is signalled on, or ``None``.
    """

    def __init__(
        self,
        adapter: DjangoAdapter,
        resolve: Callable[[str], EntityInfo | None],
        *,
        notify: str | None = None,
    ) -> None:
        self.adapter = adapter
        self._resolve = resolve
        self.notify = notify

    @property
    def _conn(self) -> Any:
        return connections[self.adapter.using]

    def install(self, entities: Sequence[str]) -> None:
        """Create the tables when missing and a stream row for every entity (sync)."""
        conn = self._conn
        if conn.vendor != "postgresql":
            self.notify = None
        with transaction.atomic(using=self.adapter.using), conn.cursor() as cursor:
            _lock_install(conn, cursor)
            cursor.execute(STREAMS_DDL)
            cursor.execute(outbox_ddl(conn.vendor == "postgresql"))
            for key in entities:
                cursor.execute(
                    "INSERT INTO websocketspec_streams (entity, seq, epoch) "
                    "VALUES (%s, 0, %s) ON CONFLICT (entity) DO NOTHING",
                    [key, new_epoch()],
                )

    def append(self, conn: Any, changes: Sequence[Change]) -> list[Change]:
        """Record a transaction's changes of one entity; returns them with positions.

        Runs inside the write's transaction: the stream row's update takes the sequence
        numbers (its lock orders commits), the outbox rows follow, and on PostgreSQL one
        ``pg_notify`` names the last position (delivered at commit only).
        """
        if not changes:
            return []
        entity = changes[0].entity
        count = len(changes)
        with conn.cursor() as cursor:
            if conn.vendor == "postgresql":
                # Capture triggers (deferred to commit) skip what the API records itself.
                cursor.execute("SELECT set_config('websocketspec.api', 'on', true)")
            cursor.execute(
                "UPDATE websocketspec_streams SET seq = seq + %s WHERE entity = %s "
                "RETURNING seq, epoch",
                [count, entity],
            )
            row = cursor.fetchone()
            if row is None:
                last, epoch = count, new_epoch()
                cursor.execute(
                    "INSERT INTO websocketspec_streams (entity, seq, epoch) "
                    "VALUES (%s, %s, %s)",
                    [entity, last, epoch],
                )
            else:
                last, epoch = int(row[0]), str(row[1])
            placed = place(changes, last, epoch)
            cursor.executemany(
                "INSERT INTO websocketspec_outbox (entity, seq, operation, "
                '"old", "new", txid, batch_index, batch_size) '
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                [list(outbox_values(c)) for c in placed],
            )
            if self.notify is not None:
                cursor.execute(
                    "SELECT pg_notify(%s, %s)", [self.notify, f"{entity}:{last}"]
                )
        return placed

    def position(self, entity: str) -> tuple[int, str]:
        """The stream position of ``entity`` as the current transaction sees it (sync)."""
        with self._conn.cursor() as cursor:
            cursor.execute(
                "SELECT seq, epoch FROM websocketspec_streams WHERE entity = %s",
                [entity],
            )
            row = cursor.fetchone()
        return (0, "") if row is None else (int(row[0]), str(row[1]))

    async def positions(self) -> dict[str, tuple[int, str]]:
        """The latest ``(seq, epoch)`` of every stream."""

        def unit() -> dict[str, tuple[int, str]]:
            with self._conn.cursor() as cursor:
                cursor.execute("SELECT entity, seq, epoch FROM websocketspec_streams")
                rows = cursor.fetchall()
            return {str(e): (int(s), str(ep)) for e, s, ep in rows}

        return await self.adapter._run(unit)

    async def changes_since(
        self, entity: str, after: int, limit: int = 1000
    ) -> tuple[int, list[Change]]:
        """The changes of ``entity`` after ``after``, and the lowest seq still held."""

        def unit() -> tuple[Any, Any, list[Any]]:
            with self._conn.cursor() as cursor:
                cursor.execute(
                    "SELECT epoch FROM websocketspec_streams WHERE entity = %s",
                    [entity],
                )
                stream = cursor.fetchone()
                cursor.execute(
                    "SELECT min(seq) FROM websocketspec_outbox WHERE entity = %s",
                    [entity],
                )
                low = cursor.fetchone()[0]
                cursor.execute(
                    'SELECT seq, operation, "old", "new", txid, batch_index, batch_size '
                    "FROM websocketspec_outbox WHERE entity = %s AND seq > %s "
                    "ORDER BY seq LIMIT %s",
                    [entity, after, limit],
                )
                return stream, low, cursor.fetchall()

        stream, low, rows = await self.adapter._run(unit)
        epoch = str(stream[0]) if stream is not None else ""
        changes = load_changes(entity, epoch, self._resolve(entity), rows)
        return (int(low) if low is not None else 0), changes

    async def prune(self, keep: int) -> int:
        """Delete all but the newest ``keep`` changes of each entity; returns how many."""

        def unit() -> int:
            removed = 0
            with (
                transaction.atomic(using=self.adapter.using),
                self._conn.cursor() as cursor,
            ):
                cursor.execute("SELECT entity, seq FROM websocketspec_streams")
                for entity, seq in cursor.fetchall():
                    cursor.execute(
                        "DELETE FROM websocketspec_outbox WHERE entity = %s AND seq <= %s",
                        [entity, int(seq) - keep],
                    )
                    removed += max(cursor.rowcount, 0)
            return removed

        return await self.adapter._run(unit)


# -- helpers ----------------------------------------------------------------------------


@contextlib.contextmanager
def _immediate(conn: Any) -> Iterator[None]:
    """Make SQLite's next transaction take the write lock up front (Django 5.1+).

    A write reads before it writes; a deferred transaction would have to upgrade its
    read lock, which fails at once when another connection writes meanwhile.
    """
    if conn.vendor != "sqlite" or getattr(conn, "transaction_mode", "") is not None:
        yield
        return
    conn.transaction_mode = "IMMEDIATE"
    try:
        yield
    finally:
        conn.transaction_mode = None


def _operation_error(operation: str, exc: BaseException) -> OperationError:
    if isinstance(exc, DatabaseError):
        log.error("%s failed in the database: %s", operation, exc)
    else:
        log.error("%s failed: %s", operation, exc)
    return OperationError(operation, str(exc))
