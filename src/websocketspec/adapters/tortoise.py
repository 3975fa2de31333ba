r"""The Tortoise ORM adapter: Tortoise models served on SQLite and PostgreSQL (asyncpg).

Tortoise is async throughout, so nothing here blocks the event loop. Models are
described from their metadata (``Model._meta``) once ``Tortoise.init`` has run; every
statement is parameterised SQL, sent through Tortoise's own client for the model's
connection (``execute_query_dict``), with identifiers taken from that metadata only.
Tortoise's query builder cannot say everything the filter contract needs (collations,
functions of our own), so this module writes the SQL, per database:

- PostgreSQL: text comparisons and sorts use ``COLLATE "C"`` (code-point order);
  ``ilike`` compares ``lower(col COLLATE "und-x-icu")`` with the pattern folded by
  :meth:`str.lower`; integer and decimal operands are cast to ``int8`` and ``numeric``
  so that a value out of the column's range compares instead of failing.
- SQLite: ``like``/``ilike`` call functions registered on Tortoise's connection that
  run the very regex the matcher uses; decimals (stored by Tortoise as text) compare
  and sort as numbers. Values are stored as Tortoise stores them: datetimes as UTC
  ``YYYY-MM-DD HH:MM:SS[.ffffff]+00:00`` text, UUIDs as text, decimals as text.

Each operation is one unit: a read is one statement or one transaction, a write is one
Tortoise transaction (``in_transaction``) holding the statements, the re-read rows, the
handler's ``check`` (after-hooks, row security), the idempotency record and the change
log. Tortoise routes ORM calls made in that task to the transaction, so an after-hook
that uses the ORM runs inside the write's transaction. On SQLite, Tortoise keeps one
connection per database and serialises transactions on it; a write takes SQLite's
write lock with its first statement (like ``BEGIN IMMEDIATE``), so that writers in
other processes wait instead of failing.

Creates fill Tortoise's Python-side defaults (``default=``, ``auto_now``,
``auto_now_add``); updates refresh ``auto_now``. Tortoise's signals and field
validators do not run (use hooks), and deletes leave ``on_delete`` to the database's
constraint, as with the other adapters. Many-to-many relations are not served.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from datetime import time as time_of_day
from decimal import Decimal, InvalidOperation
from enum import Enum
from typing import Any

import msgspec

from websocketspec.adapters.base import (
    Adapter,
    Change,
    KeyTakenError,
    Remember,
    Write,
    WriteCheck,
)
from websocketspec.adapters.common import dump, round_decimal, sqlite_ilike, sqlite_like
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
from websocketspec.protocol.values import TEXT_TYPES, ColumnType, coerce, to_utc
from websocketspec.query import PreloadQuery, ReadQuery
from websocketspec.registry import (
    ColumnInfo,
    EntityInfo,
    ModelDescription,
    RelationInfo,
)
from websocketspec.types import Record

try:
    from tortoise import fields as tf
    from tortoise.backends.base.client import BaseDBAsyncClient
    from tortoise.context import TortoiseContext, get_current_context
    from tortoise.context import _current_context as _tortoise_context
    from tortoise.exceptions import BaseORMException
    from tortoise.exceptions import IntegrityError as TortoiseIntegrityError
    from tortoise.fields.relational import (
        BackwardFKRelation,
        ForeignKeyFieldInstance,
        ManyToManyFieldInstance,
    )
    from tortoise.models import Model
    from tortoise.transactions import in_transaction
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError("tortoise-orm", "tortoise") from exc

from websocketspec.adapters.tortoise_log import (
    KEYS_DDL,
    Database,
    Params,
    TortoiseChangeLog,
    lock_install,
)

__all__ = ["TortoiseAdapter", "TortoiseChangeLog", "tortoise_url"]

log = logging.getLogger(__name__)

_INTEGRITY: tuple[type[BaseException], ...] = (
    TortoiseIntegrityError,
    sqlite3.IntegrityError,
)
_DRIVER: tuple[type[BaseException], ...] = (BaseORMException, sqlite3.Error, OSError)
try:
    import asyncpg
except ImportError:  # pragma: no cover - PostgreSQL needs tortoise-orm[asyncpg]
    pass
else:
    _INTEGRITY += (asyncpg.IntegrityConstraintViolationError,)
    _DRIVER += (asyncpg.PostgresError, asyncpg.InterfaceError)


def tortoise_url(url: str) -> str:
    """Turn a plain (or SQLAlchemy-style) database URL into Tortoise's ``db_url``.

    ``sqlite:///app.db`` (a relative path, as SQLAlchemy reads it) becomes
    ``sqlite://app.db`` and ``sqlite:////srv/app.db`` becomes ``sqlite:///srv/app.db``;
    ``postgresql://…`` and ``postgresql+asyncpg://…`` become ``postgres://…`` (asyncpg).
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(
            f"expected a database URL like 'sqlite:///app.db', got {url!r}"
        )
    base = scheme.split("+", 1)[0].lower()
    if base == "sqlite":
        # SQLAlchemy's third slash ends an empty host; Tortoise reads the rest as the path.
        return f"sqlite://{rest[1:] if rest.startswith('/') else rest}"
    if base in ("postgresql", "postgres"):
        return f"postgres://{rest}"
    raise ValueError(f"unsupported database URL scheme {scheme!r}")


# -- model metadata -------------------------------------------------------------------


def _portable_type(field: tf.Field[Any]) -> ColumnType:
    if isinstance(field, tf.BooleanField):
        return ColumnType.BOOLEAN
    if isinstance(field, (tf.IntField, tf.TimeDeltaField)):
        return ColumnType.INTEGER
    if isinstance(field, tf.FloatField):
        return ColumnType.FLOAT
    if isinstance(field, tf.DecimalField):
        return ColumnType.DECIMAL
    if isinstance(field, tf.DatetimeField):
        return ColumnType.DATETIME
    if isinstance(field, tf.DateField):
        return ColumnType.DATE
    if isinstance(field, tf.TimeField):
        return ColumnType.TIME
    if isinstance(field, tf.UUIDField):
        return ColumnType.UUID
    if isinstance(field, tf.JSONField):
        return ColumnType.JSON
    if isinstance(field, tf.BinaryField):
        return ColumnType.BYTES
    if isinstance(field, tf.TextField):
        return ColumnType.TEXT
    if isinstance(field, tf.CharField):
        return ColumnType.STRING
    return {
        int: ColumnType.INTEGER,
        float: ColumnType.FLOAT,
        str: ColumnType.STRING,
        bool: ColumnType.BOOLEAN,
    }.get(field.field_type, ColumnType.JSON)


def _bounds(field: tf.Field[Any]) -> tuple[Any, Any] | None:
    """The range a whole or fixed-point number column holds, as declared."""
    if isinstance(field, tf.SmallIntField):
        return -(2**15), 2**15 - 1
    if isinstance(field, (tf.BigIntField, tf.TimeDeltaField)):
        return -(2**63), 2**63 - 1
    if isinstance(field, tf.IntField):
        return -(2**31), 2**31 - 1
    if isinstance(field, tf.DecimalField):
        scale = int(field.decimal_places)
        top = Decimal(10) ** (int(field.max_digits) - scale) - Decimal(1).scaleb(-scale)
        return -top, top
    return None


def _stamp(field: tf.Field[Any]) -> str | None:
    """``"always"`` for ``auto_now``, ``"create"`` for ``auto_now_add``, else ``None``."""
    if not isinstance(field, (tf.DatetimeField, tf.TimeField)):
        return None
    if field.auto_now:
        return "always"
    return "create" if field.auto_now_add else None


def _default(field: tf.Field[Any]) -> tuple[Any, bool]:
    """A JSON-friendly description of a field's default, and whether it has one."""
    default = field.default
    if default is not None:
        if isinstance(default, Enum):
            default = default.value
        if isinstance(default, (str, int, float, bool)):
            return default, True
        return None, True
    if field.has_db_default() or _stamp(field) is not None:
        return None, True
    # Tortoise keys are single columns: a generated one is the database's to fill.
    return None, bool(field.pk and field.generated)


@dataclass(frozen=True, slots=True)
class _Column:
    """One served column: its wire name, its SQL and how its values convert."""

    name: str
    sql: str
    """The quoted column name."""
    type: ColumnType
    scale: int | None
    """The decimal places of a decimal column."""


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


class _Mapping:
    """Per-entity SQL: the table, the columns by wire name, the select list, defaults."""

    __slots__ = ("columns", "defaults", "pk", "select", "stamps", "table")

    def __init__(self, model: type[Model]) -> None:
        meta = model._meta
        table = _quote(meta.db_table)
        schema = getattr(meta, "schema", None)
        self.table = f"{_quote(schema)}.{table}" if schema else table
        self.columns: dict[str, _Column] = {}
        self.defaults: dict[str, Any] = {}
        """Python-side defaults: a value, or a callable giving one."""
        self.stamps: dict[str, str] = {}
        for name, field in meta.fields_map.items():
            db_column = meta.fields_db_projection.get(name)
            if db_column is None:
                continue
            ctype = _portable_type(field)
            scale = (
                int(field.decimal_places)
                if isinstance(field, tf.DecimalField)
                else None
            )
            self.columns[name] = _Column(name, _quote(db_column), ctype, scale)
            if field.default is not None:
                self.defaults[name] = field.default
            stamp = _stamp(field)
            if stamp is not None:
                self.stamps[name] = stamp
        self.pk = self.columns[meta.pk_attr]
        self.select = ", ".join(
            c.sql if c.sql == _quote(c.name) else f"{c.sql} AS {_quote(c.name)}"
            for c in self.columns.values()
        )


# -- values -----------------------------------------------------------------------------


def _load_decimal(value: Any, scale: int | None) -> Decimal:
    number = value if isinstance(value, Decimal) else Decimal(str(value))
    if scale is not None:
        with contextlib.suppress(InvalidOperation):
            number = number.quantize(Decimal(1).scaleb(-scale))
    return number


def _load_time(value: Any) -> time_of_day:
    parsed: time_of_day = (
        time_of_day.fromisoformat(value) if isinstance(value, str) else value
    )
    offset = parsed.utcoffset()
    if offset is None:
        return parsed
    # TIMETZ from outside the API may carry another offset: the wire's times are UTC.
    moment = datetime.combine(date(2000, 1, 1), parsed.replace(tzinfo=None)) - offset
    return moment.time()


def _load(column: _Column, value: Any) -> Any:
    """A value read from the database, as the matcher and the wire want it."""
    if value is None:
        return None
    ctype = column.type
    if ctype is ColumnType.DATETIME:
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        return to_utc(value)
    if ctype is ColumnType.UUID:
        # asyncpg returns its own UUID type: hand out the standard one.
        return value if type(value) is uuid.UUID else uuid.UUID(str(value))
    if ctype is ColumnType.DECIMAL:
        return _load_decimal(value, column.scale)
    if ctype is ColumnType.BOOLEAN:
        return bool(value)
    if ctype is ColumnType.FLOAT:
        return float(value)
    if ctype is ColumnType.DATE:
        return date.fromisoformat(value[:10]) if isinstance(value, str) else value
    if ctype is ColumnType.TIME:
        return _load_time(value)
    if ctype is ColumnType.JSON:
        # SQLite's JSON columns have numeric affinity: a JSON number comes back a number.
        if isinstance(value, (str, bytes)):
            return msgspec.json.decode(value)
        return value
    if ctype is ColumnType.BYTES:
        return bytes(value)
    return value


_COMPARISONS = {
    Op.EQ: "=",
    Op.NEQ: "<>",
    Op.GT: ">",
    Op.GTE: ">=",
    Op.LT: "<",
    Op.LTE: "<=",
}


class TortoiseAdapter(Adapter):
    """Serve Tortoise ORM models.

    Register models after ``Tortoise.init`` (their relations are resolved then)::

        await Tortoise.init(db_url=tortoise_url(url), modules={"models": [models]})
        handler = Handler(TortoiseAdapter())
        handler.registry.register_model("public.users", models.User)

    Args:
        connection: the Tortoise connection name the models use.
        context: the Tortoise context to work in; by default the one current when
            the first model is registered (``Tortoise.init``'s). The adapter uses it
            from every task, whichever context that task has.
        sqlite_synchronous: ``PRAGMA synchronous`` for SQLite: ``NORMAL`` (default,
            in WAL mode a power loss may lose the last commits but never corrupts) or
            ``FULL``.
    """

    def __init__(
        self,
        connection: str = "default",
        *,
        context: TortoiseContext | None = None,
        sqlite_synchronous: str = "NORMAL",
    ) -> None:
        if sqlite_synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"expected NORMAL or FULL, got {sqlite_synchronous!r}")
        self.connection = connection
        self.context = context
        self._sqlite_synchronous = sqlite_synchronous.upper()
        self.pg = False
        """Whether the database is PostgreSQL (else SQLite); known once started."""
        self._dialect: str | None = None
        self._maps: dict[int, _Mapping] = {}
        self._keys_ready = False
        self._keys_lock = asyncio.Lock()
        self.log: TortoiseChangeLog | None = None
        """The change log, once a shared broker asked for one (:meth:`enable_log`)."""

    # -- set-up -------------------------------------------------------------------

    def _context(self) -> TortoiseContext:
        if self.context is None:
            self.context = get_current_context()
            if self.context is None:
                raise ConfigurationError(
                    "Tortoise is not initialised: call Tortoise.init() before serving, "
                    "or pass TortoiseAdapter(context=…)"
                )
        return self.context

    @contextlib.contextmanager
    def _current(self) -> Iterator[TortoiseContext]:
        """Make the adapter's context current in this task, for Tortoise's transactions.

        ``TortoiseContext.__enter__`` keeps one token on the context object, so it
        cannot be entered by concurrent tasks; the context variable can.
        """
        context = self._context()
        if get_current_context() is context:
            yield context
            return
        token = _tortoise_context.set(context)
        try:
            yield context
        finally:
            _tortoise_context.reset(token)

    def _client(self) -> BaseDBAsyncClient:
        client = self._context().connections.get(self.connection)
        if self._dialect is None:
            dialect = client.capabilities.dialect
            module = type(client).__module__
            if dialect == "postgres" and module.startswith("tortoise.backends.asyncpg"):
                self.pg = True
            elif dialect != "sqlite":
                raise ConfigurationError(
                    "the Tortoise adapter serves SQLite and PostgreSQL through asyncpg; "
                    f"connection {self.connection!r} uses {module}"
                )
            self._dialect = dialect
        return client

    async def _ready(self) -> BaseDBAsyncClient:
        """The connection's client; on SQLite, its connection prepared for our SQL."""
        client = self._client()
        if not self.pg:
            # Tortoise keeps one SQLite connection per client; it is replaced only
            # when closed, so a mark on it says whether it was prepared.
            async with client.acquire_connection() as raw:
                if not getattr(raw, "_websocketspec_ready", False):
                    await raw.create_function(
                        "ws_like", 2, sqlite_like, deterministic=True
                    )
                    await raw.create_function(
                        "ws_ilike", 2, sqlite_ilike, deterministic=True
                    )
                    cursor = await raw.execute(
                        f"PRAGMA synchronous={self._sqlite_synchronous}"
                    )
                    await cursor.close()
                    raw._websocketspec_ready = True
        return client

    async def start(self) -> None:
        """Check the backend and prepare the connection."""
        try:
            await self._ready()
        except _DRIVER as exc:
            raise _operation_error("read", exc) from exc

    async def enable_log(
        self, entities: Sequence[EntityInfo], *, notify: str | None
    ) -> TortoiseChangeLog:
        """Record every write in the transactional outbox from now on."""
        if self.log is None:
            await self._ready()
            by_key = {e.key: e for e in entities}
            change_log = TortoiseChangeLog(self, by_key.get, notify=notify)
            await change_log.install(entities)
            self.log = change_log
        return self.log

    def describe(self, model: Any) -> ModelDescription:
        """Describe a Tortoise model from its metadata."""
        if not (isinstance(model, type) and issubclass(model, Model)):
            raise TypeError(f"expected a Tortoise model class, got {model!r}")
        meta = model._meta
        if self.context is None:
            self.context = get_current_context()
        infos: list[ColumnInfo] = []
        relations: list[RelationInfo] = []
        for name, field in meta.fields_map.items():
            if isinstance(field, ManyToManyFieldInstance):
                log.info(
                    "relation %s.%s is many-to-many: not served", model.__name__, name
                )
                continue
            if isinstance(field, ForeignKeyFieldInstance):
                target = field.related_model
                if not isinstance(target, type):
                    raise ConfigurationError(
                        f"{model.__name__}.{name} is not resolved: register models "
                        "after Tortoise.init()"
                    )
                relations.append(
                    RelationInfo(
                        name=name,
                        kind="one",
                        target=target,
                        local_columns=(str(field.source_field),),
                        remote_columns=(str(field.to_field),),
                    )
                )
                continue
            if isinstance(field, BackwardFKRelation):
                relations.append(
                    RelationInfo(
                        name=name,
                        kind="many" if field.__class__ is BackwardFKRelation else "one",
                        target=field.related_model,
                        local_columns=(field.to_field_instance.model_field_name,),
                        remote_columns=(str(field.relation_field),),
                    )
                )
                continue
            if name not in meta.fields_db_projection:
                continue
            default, has_default = _default(field)
            infos.append(
                ColumnInfo(
                    name=name,
                    type=_portable_type(field),
                    max_length=getattr(field, "max_length", None)
                    if isinstance(field, tf.CharField)
                    else None,
                    bounds=_bounds(field),
                    nullable=bool(field.null) and not field.pk,
                    primary_key=field.pk,
                    default=default,
                    has_default=has_default,
                )
            )
        self._maps[id(model)] = _Mapping(model)
        return ModelDescription(columns=tuple(infos), relations=tuple(relations))

    def _map(self, entity: EntityInfo) -> _Mapping:
        mapping = entity.state.get("tortoise")
        if mapping is None:
            mapping = self._maps.get(id(entity.model))
            if mapping is None:
                self.describe(entity.model)
                mapping = self._maps[id(entity.model)]
            entity.state["tortoise"] = mapping
        return mapping

    # -- units of work ------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def unit(
        self,
        operation: str,
        *,
        lock: str | None = None,
        snapshot: bool = False,
    ) -> AsyncIterator[Database]:
        """One transaction on the adapter's connection.

        Driver errors leave it as :class:`~websocketspec.exceptions.OperationError`
        (a constraint's with a neutral public message).

        Args:
            operation: what runs, for the error code (``read``, ``create``, …).
            lock: on SQLite, take the write lock up front with a no-op write to this
                (quoted) table, for a unit that reads before it writes.
            snapshot: on PostgreSQL, read from one REPEATABLE READ snapshot.
        """
        try:
            await self._ready()
            with self._current():
                async with in_transaction(self.connection) as tx:
                    if snapshot and self.pg:
                        await tx.execute_query_dict(
                            "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"
                        )
                    if lock is not None and not self.pg:
                        # The first write statement takes the lock, waiting for other
                        # writers (the busy timeout), as BEGIN IMMEDIATE would; a
                        # later read-to-write upgrade would fail at once instead.
                        await tx.execute_query_dict(f"DELETE FROM {lock} WHERE 0")
                    yield tx
        except (ProtocolError, KeyTakenError, OperationError):
            raise
        except _INTEGRITY as exc:
            raise refused(operation, exc) from exc
        except _DRIVER as exc:
            raise _operation_error(operation, exc) from exc

    # -- SQL building -------------------------------------------------------------

    def _value(self, column: _Column, value: Any, *, store: bool) -> Any:
        """A value as the driver takes it for ``column`` (stored, or compared)."""
        if value is None:
            return None
        ctype = column.type
        if ctype is ColumnType.DECIMAL and store and column.scale is not None:
            # PostgreSQL rounds so on store; SQLite keeps the text as sent, and filters
            # would compare a value that no row shows.
            value = round_decimal(value, column.scale)
        if self.pg:
            if ctype is ColumnType.TIME:
                # Tortoise declares TIMETZ; the wire's times are UTC.
                return value.replace(tzinfo=UTC)
            if ctype is ColumnType.JSON:
                return dump(value)
            return value
        if ctype is ColumnType.DECIMAL:
            # Stored as Tortoise stores it (text); compared as a number (see _plain).
            return str(value) if store else float(value)
        if ctype is ColumnType.DATETIME:
            return to_utc(value).isoformat(" ")
        if ctype in (ColumnType.DATE, ColumnType.TIME):
            return value.isoformat()
        if ctype is ColumnType.UUID:
            return str(value)
        if ctype is ColumnType.JSON:
            return dump(value)
        return value

    def _operand(self, p: Params, column: _Column, value: Any) -> str:
        """Bind a filter value so that the database compares it exactly as given."""
        bound = self._value(column, value, store=False)
        if self.pg and not isinstance(bound, bool):
            # Typed as the column, a value would be cast to it: out of range for int4
            # (an error) or rounded to the scale of numeric(p, s).
            if column.type is ColumnType.INTEGER:
                return p(bound, "::int8")
            if column.type is ColumnType.DECIMAL:
                return p(bound, "::numeric")
        return p(bound)

    def _plain(self, column: _Column) -> str:
        """The column as compared for equality."""
        if column.type is ColumnType.DECIMAL and not self.pg:
            return f"CAST({column.sql} AS NUMERIC)"
        return column.sql

    def _ordered(self, column: _Column) -> str:
        """The column as ordered: text by code point, decimals as numbers."""
        if self.pg and column.type in TEXT_TYPES:
            return f'{column.sql} COLLATE "C"'
        return self._plain(column)

    def _where(self, p: Params, m: _Mapping, expr: Expr) -> str:
        if isinstance(expr, Group):
            joiner = " AND " if expr.kind == "and" else " OR "
            return "(" + joiner.join(self._where(p, m, e) for e in expr.items) + ")"
        return self._condition(p, m, expr)

    def _condition(self, p: Params, m: _Mapping, c: Condition) -> str:
        column = m.columns[c.column]
        op = c.op
        if op is Op.IS_NULL:
            return f"{column.sql} IS NULL"
        if op is Op.IS_NOT_NULL:
            return f"{column.sql} IS NOT NULL"
        if op in (Op.IN, Op.NOT_IN):
            if not c.value:
                # NOT IN () is true even for NULL in SQL; the contract says NULL never matches.
                return "1 = 0" if op is Op.IN else f"{column.sql} IS NOT NULL"
            items = ", ".join(self._operand(p, column, v) for v in c.value)
            word = "IN" if op is Op.IN else "NOT IN"
            return f"{self._plain(column)} {word} ({items})"
        if op in (Op.LIKE, Op.ILIKE, Op.CONTAINS, Op.STARTSWITH, Op.ENDSWITH):
            pattern = like_pattern(op, c.value)
            if not self.pg:
                fn = "ws_ilike" if op is Op.ILIKE else "ws_like"
                return f"{fn}({column.sql}, {p(pattern)}) = 1"
            if op is Op.ILIKE:
                return (
                    f'lower({column.sql} COLLATE "und-x-icu") '
                    f"LIKE {p(pattern)} ESCAPE '\\'"
                )
            return f"{column.sql} LIKE {p(pattern)} ESCAPE '\\'"
        target = self._ordered(column)
        if op is Op.BETWEEN:
            low, high = c.value
            low_sql = self._operand(p, column, low)
            return f"({target} >= {low_sql} AND {target} <= {self._operand(p, column, high)})"
        left = self._plain(column) if op in (Op.EQ, Op.NEQ) else target
        return f"{left} {_COMPARISONS[op]} {self._operand(p, column, c.value)}"

    def _order(self, m: _Mapping, sort: Sequence[tuple[str, bool]]) -> str:
        return ", ".join(
            f"{self._ordered(m.columns[name])} "
            + ("DESC NULLS FIRST" if descending else "ASC NULLS LAST")
            for name, descending in sort
        )

    def _row(self, m: _Mapping, raw: dict[str, Any]) -> Record:
        return {name: _load(column, raw[name]) for name, column in m.columns.items()}

    def _key_clause(self, p: Params, m: _Mapping, key: tuple[Any, ...]) -> str:
        (value,) = key
        return f"{m.pk.sql} = {self._operand(p, m.pk, value)}"

    # -- reads --------------------------------------------------------------------

    async def read_many(
        self, entity: EntityInfo, query: ReadQuery
    ) -> tuple[list[Record], int]:
        """Read one page of rows and the total count, in one transaction."""
        async with self.unit("read") as db:
            return await self._page(db, entity, query)

    async def snapshot(
        self, entity: EntityInfo, query: ReadQuery
    ) -> tuple[list[Record], int, tuple[int, str] | None]:
        """Read a page and, when a change log is kept, its stream position, atomically.

        On PostgreSQL the reads share one REPEATABLE READ snapshot; on SQLite one read
        transaction (WAL) gives the same.
        """
        if self.log is None:
            rows, total = await self.read_many(entity, query)
            return rows, total, None
        async with self.unit("read", snapshot=True) as db:
            position = await self.log.position(db, entity.key)
            rows, total = await self._page(db, entity, query)
        return rows, total, position

    async def _page(
        self, db: Database, entity: EntityInfo, query: ReadQuery
    ) -> tuple[list[Record], int]:
        m = self._map(entity)
        p = Params(self.pg)
        where = (
            "" if query.where is None else f" WHERE {self._where(p, m, query.where)}"
        )
        filters = list(p.values)
        order = self._order(m, query.sort)
        found = await db.execute_query_dict(
            f"SELECT {m.select} FROM {m.table}{where} ORDER BY {order} "
            f"LIMIT {p(query.limit)} OFFSET {p(query.offset)}",
            p.values,
        )
        rows = [self._row(m, r) for r in found]
        counted = await db.execute_query_dict(
            f"SELECT count(*) AS n FROM {m.table}{where}", filters
        )
        if query.preload and rows:
            await self._preload(db, rows, query.preload)
        return rows, int(counted[0]["n"])

    async def read_one(
        self, entity: EntityInfo, key: tuple[Any, ...], query: ReadQuery
    ) -> Record | None:
        """Read the row with primary key ``key`` if it matches ``query.where``."""
        m = self._map(entity)
        p = Params(self.pg)
        where = self._key_clause(p, m, key)
        if query.where is not None:
            where += f" AND {self._where(p, m, query.where)}"
        statement = f"SELECT {m.select} FROM {m.table} WHERE {where}"
        if query.preload:
            async with self.unit("read") as db:
                found = await db.execute_query_dict(statement, p.values)
                if not found:
                    return None
                row = self._row(m, found[0])
                await self._preload(db, [row], query.preload)
            return row
        try:
            # One statement needs no transaction.
            client = await self._ready()
            found = await client.execute_query_dict(statement, p.values)
        except _DRIVER as exc:
            raise _operation_error("read", exc) from exc
        return self._row(m, found[0]) if found else None

    async def _preload(
        self, db: Database, rows: list[Record], preloads: Sequence[PreloadQuery]
    ) -> None:
        for pre in preloads:
            rel = pre.relation
            tm = self._map(pre.target)
            keys = preload_keys(rows, rel)
            children: list[Record] = []
            if keys:
                p = Params(self.pg)
                remote = [tm.columns[c] for c in rel.remote_columns]
                if len(remote) == 1:
                    items = ", ".join(self._operand(p, remote[0], k[0]) for k in keys)
                    match = f"{remote[0].sql} IN ({items})"
                else:
                    tuples = ", ".join(
                        "("
                        + ", ".join(
                            self._operand(p, r, v)
                            for r, v in zip(remote, k, strict=True)
                        )
                        + ")"
                        for k in keys
                    )
                    match = f"({', '.join(r.sql for r in remote)}) IN ({tuples})"
                where = match
                if pre.where is not None:
                    where += f" AND {self._where(p, tm, pre.where)}"
                order = self._order(tm, pre.sort)
                if pre.limit is not None and rel.kind == "many":
                    partition = ", ".join(r.sql for r in remote)
                    names = ", ".join(_quote(name) for name in tm.columns)
                    statement = (
                        f"SELECT {names} FROM (SELECT {tm.select}, row_number() OVER "
                        f"(PARTITION BY {partition} ORDER BY {order}) AS _ws_rank "
                        f"FROM {tm.table} WHERE {where}) AS _ws_ranked "
                        f"WHERE _ws_rank <= {p(pre.limit)} ORDER BY _ws_rank"
                    )
                else:
                    statement = (
                        f"SELECT {tm.select} FROM {tm.table} WHERE {where} "
                        f"ORDER BY {order}"
                    )
                children = [
                    self._row(tm, raw)
                    for raw in await db.execute_query_dict(statement, p.values)
                ]
            attach_children(rows, pre, children)

    # -- writes -------------------------------------------------------------------

    async def write(
        self, entity: EntityInfo, write: Write, check: WriteCheck
    ) -> tuple[Any, list[Change]] | None:
        """Run a create, update or delete (one row or many) in one transaction."""
        m = self._map(entity)
        if write.remember is not None:
            # Before the write's transaction: on SQLite it holds the only connection.
            await self._ensure_keys_table()
        reads_first = write.operation != "create" and write.remember is None
        async with self.unit(
            write.operation, lock=m.table if reads_first else None
        ) as db:
            if write.remember is not None:
                await self._claim(db, write.remember)
            if write.operation == "create":
                changes = await self._insert(db, m, entity, write.rows)
            else:
                olds = await self._locked(db, m, write)
                if write.key is not None and not olds:
                    if write.remember is not None:
                        # Nothing is written, and this transaction commits: free the
                        # key, or it would stay claimed with no answer to replay.
                        await self._forget(db, write.remember)
                    return None
                changes = await self._change(db, m, entity, write, olds)
            if write.bulk:
                changes = stamp_batch(changes)
            result = await check(changes)
            if write.remember is not None:
                await self._remember(db, write.remember, result)
            if self.log is not None:
                changes = await self.log.append(db, changes)
        return result, changes

    def _filled(self, m: _Mapping, data: Record) -> dict[str, Any]:
        """A create's values: the data, Python-side defaults and timestamps filled in."""
        values: dict[str, Any] = {}
        for name, column in m.columns.items():
            if name in data:
                values[name] = data[name]
            elif name in m.stamps:
                values[name] = _now(column.type)
            elif name in m.defaults:
                default = m.defaults[name]
                value = default() if callable(default) else copy.deepcopy(default)
                if isinstance(value, Enum):
                    value = value.value
                with contextlib.suppress(ValueError):
                    value = coerce(value, column.type)
                values[name] = value
        return values

    async def _insert(
        self, db: Database, m: _Mapping, entity: EntityInfo, rows: Sequence[Record]
    ) -> list[Change]:
        changes = []
        for data in rows:
            values = self._filled(m, data)
            p = Params(self.pg)
            if values:
                names = ", ".join(m.columns[name].sql for name in values)
                binds = ", ".join(
                    p(self._value(m.columns[name], v, store=True))
                    for name, v in values.items()
                )
                statement = f"INSERT INTO {m.table} ({names}) VALUES ({binds})"
            else:
                statement = f"INSERT INTO {m.table} DEFAULT VALUES"
            found = await db.execute_query_dict(
                f"{statement} RETURNING {m.select}", p.values
            )
            changes.append(Change("create", entity.key, None, self._row(m, found[0])))
        return changes

    async def _locked(self, db: Database, m: _Mapping, write: Write) -> list[Record]:
        """The rows a write changes, locked (in key order, so writers never deadlock)."""
        p = Params(self.pg)
        conditions = []
        if write.key is not None:
            conditions.append(self._key_clause(p, m, write.key))
        if write.where is not None:
            conditions.append(self._where(p, m, write.where))
        statement = f"SELECT {m.select} FROM {m.table}"
        if conditions:
            statement += " WHERE " + " AND ".join(conditions)
        statement += f" ORDER BY {m.pk.sql}"
        if write.limit is not None:
            statement += f" LIMIT {p(write.limit + 1)}"
        if self.pg:
            statement += " FOR UPDATE"
        rows = [
            self._row(m, r) for r in await db.execute_query_dict(statement, p.values)
        ]
        check_row_limit(write, rows)
        return rows

    async def _change(
        self,
        db: Database,
        m: _Mapping,
        entity: EntityInfo,
        write: Write,
        olds: list[Record],
    ) -> list[Change]:
        if not olds:
            return []
        pk = m.pk.name
        keys = [old[pk] for old in olds]
        p = Params(self.pg)
        if write.operation == "delete":
            items = ", ".join(self._operand(p, m.pk, k) for k in keys)
            await db.execute_query_dict(
                f"DELETE FROM {m.table} WHERE {m.pk.sql} IN ({items})", p.values
            )
            return [Change("delete", entity.key, old, None) for old in olds]
        values = dict(write.data or {})
        for name, stamp in m.stamps.items():
            if stamp == "always" and name not in values:
                values[name] = _now(m.columns[name].type)
        assignments = ", ".join(
            f"{m.columns[name].sql} = {p(self._value(m.columns[name], v, store=True))}"
            for name, v in values.items()
        )
        items = ", ".join(self._operand(p, m.pk, k) for k in keys)
        found = await db.execute_query_dict(
            f"UPDATE {m.table} SET {assignments} WHERE {m.pk.sql} IN ({items}) "
            f"RETURNING {m.select}",
            p.values,
        )
        news = {new[pk]: new for new in (self._row(m, r) for r in found)}
        return updated(entity.key, olds, keys, news)

    # -- idempotency ----------------------------------------------------------------

    async def _ensure_keys_table(self) -> None:
        # One at a time here (concurrent first uses would race on CREATE TABLE); the
        # advisory lock does the same across processes on PostgreSQL.
        if self._keys_ready:
            return
        async with self._keys_lock:
            if not self._keys_ready:  # another task may have created it meanwhile
                async with self.unit("create") as db:
                    await lock_install(db, self.pg)
                    await db.execute_query_dict(KEYS_DDL)
                self._keys_ready = True

    async def remembered(self, remember: Remember) -> tuple[str, Any] | None:
        """The fingerprint and answer stored for a key, within its window."""
        await self._ensure_keys_table()
        p = Params(self.pg)
        statement = (
            "SELECT fingerprint, response FROM websocketspec_idempotency "
            f'WHERE identity = {p(remember.identity)} AND "key" = {p(remember.key)} '
            f"AND created_at >= {p(time.time() - remember.window)} "
            "AND response IS NOT NULL"
        )
        try:
            client = await self._ready()
            found = await client.execute_query_dict(statement, p.values)
        except _DRIVER as exc:
            raise _operation_error("read", exc) from exc
        if not found:
            return None
        return str(found[0]["fingerprint"]), msgspec.json.decode(found[0]["response"])

    async def _claim(self, db: Database, remember: Remember) -> None:
        """Take the key in this transaction (first thing, so a twin waits on it)."""
        p = Params(self.pg)
        await db.execute_query_dict(
            "DELETE FROM websocketspec_idempotency "
            f'WHERE identity = {p(remember.identity)} AND "key" = {p(remember.key)} '
            f"AND created_at < {p(time.time() - remember.window)}",
            p.values,
        )
        p = Params(self.pg)
        try:
            await db.execute_query_dict(
                "INSERT INTO websocketspec_idempotency "
                '(identity, "key", fingerprint, created_at) VALUES '
                f"({p(remember.identity)}, {p(remember.key)}, "
                f"{p(remember.fingerprint)}, {p(time.time())})",
                p.values,
            )
        except _INTEGRITY as exc:
            raise KeyTakenError(remember.key) from exc

    async def _forget(self, db: Database, remember: Remember) -> None:
        p = Params(self.pg)
        await db.execute_query_dict(
            "DELETE FROM websocketspec_idempotency "
            f'WHERE identity = {p(remember.identity)} AND "key" = {p(remember.key)}',
            p.values,
        )

    async def _remember(self, db: Database, remember: Remember, result: Any) -> None:
        p = Params(self.pg)
        await db.execute_query_dict(
            f"UPDATE websocketspec_idempotency SET response = {p(dump(result))} "
            f'WHERE identity = {p(remember.identity)} AND "key" = {p(remember.key)}',
            p.values,
        )


def _now(ctype: ColumnType) -> Any:
    moment = datetime.now(UTC)
    return moment.time() if ctype is ColumnType.TIME else moment


def _operation_error(operation: str, exc: BaseException) -> OperationError:
    log.error("%s failed in the database: %s", operation, exc)
    return OperationError(operation, str(exc))
