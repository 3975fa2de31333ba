"""The SQLAlchemy 2 (async) adapter: SQLite, PostgreSQL, MariaDB/MySQL.

Plain URLs get an async driver: aiosqlite, asyncpg, asyncmy (:func:`async_url`).

Reads and writes use SQLAlchemy Core on the mapped tables (no ORM sessions on the hot
path). The same filter semantics as the in-memory matcher are enforced per dialect:

- PostgreSQL: text comparisons and sorts use ``COLLATE "C"`` (code-point order);
  ``ilike`` compares ``lower(col COLLATE "und-x-icu")`` with the pattern folded by
  :meth:`str.lower` (ICU's full case mapping equals Python's).
- SQLite: ``like``/``ilike`` call functions registered on each connection that run the
  very regex the matcher uses (SQLite's own LIKE folds ASCII case). File databases run
  in WAL mode with ``synchronous=NORMAL`` by default (``synchronous="FULL"`` for full
  durability on power loss), foreign keys on, and writes take the lock up front
  (``BEGIN IMMEDIATE``) so that read-then-write transactions never dead-end.
- MariaDB/MySQL: text compares by code point and ``ilike`` folds like Python whatever
  the columns' collation (:mod:`websocketspec.adapters.sqlalchemy_mysql`); NULLs are
  ordered by ``col IS NULL`` first (no ``NULLS LAST``); writes run at READ COMMITTED
  (no gap locks, as on PostgreSQL) and re-read their rows in the same transaction where
  the server has no ``RETURNING`` (``UPDATE`` on MariaDB, both on MySQL); every
  ``DATETIME`` holds UTC (the type has no time zone), declare ``DATETIME(fsp=6)`` and
  ``TIME(fsp=6)`` to keep microseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

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
from websocketspec.protocol.values import TEXT_TYPES, ColumnType, normalize, to_utc
from websocketspec.query import PreloadQuery, ReadQuery
from websocketspec.registry import (
    ColumnInfo,
    EntityInfo,
    ModelDescription,
    RelationInfo,
)
from websocketspec.types import Record

try:
    import sqlalchemy as sa
    from sqlalchemy import event
    from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, SQLAlchemyError
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError("sqlalchemy", "sqlalchemy") from exc

from websocketspec.adapters import sqlalchemy_mysql as mysql
from websocketspec.adapters.sqlalchemy_inline import (
    Busy,
    InlineConnection,
    InlineReader,
    InlineWriter,
    file_path,
)
from websocketspec.adapters.sqlalchemy_log import KEYS, SQLAlchemyChangeLog

if TYPE_CHECKING:
    from websocketspec.adapters.sqlalchemy_asyncpg import AsyncpgKeyReader

__all__ = ["SQLAlchemyAdapter", "async_url", "create_engine"]

log = logging.getLogger(__name__)

_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "mysql": "mysql+asyncmy",
    "mariadb": "mariadb+asyncmy",
}


def async_url(url: str) -> str:
    """Turn a plain database URL into one naming an async driver.

    ``sqlite:///app.db`` becomes ``sqlite+aiosqlite:///app.db``, ``postgresql://…``
    becomes ``postgresql+asyncpg://…`` and ``mysql://…`` (``mariadb://…``)
    ``mysql+asyncmy://…`` (``mariadb+asyncmy://…``, which also checks that the server
    is MariaDB); a URL that already names a driver is kept.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(
            f"expected a database URL like 'sqlite:///app.db', got {url!r}"
        )
    if "+" in scheme:
        return url
    driver = _DRIVERS.get(scheme.lower())
    if driver is None:
        raise ValueError(f"unsupported database URL scheme {scheme!r}")
    return f"{driver}://{rest}"


def create_engine(url: str, **kwargs: Any) -> AsyncEngine:
    """Create an async engine from a plain or SQLAlchemy-style URL."""
    return create_async_engine(async_url(url), **kwargs)


def _stored_type(column: sa.Column[Any]) -> sa.types.TypeEngine[Any]:
    """The type the database stores, under any TypeDecorator (SQLModel's AutoString)."""
    t: sa.types.TypeEngine[Any] = column.type
    while isinstance(t, sa.types.TypeDecorator):
        t = t.impl_instance
    return t


def _portable_type(column: sa.Column[Any]) -> ColumnType:
    t = _stored_type(column)
    if isinstance(t, sa.Boolean):
        return ColumnType.BOOLEAN
    if isinstance(t, sa.Integer):
        return ColumnType.INTEGER
    if isinstance(t, sa.Float):
        return ColumnType.FLOAT
    if isinstance(t, sa.Numeric):
        return ColumnType.DECIMAL
    if isinstance(t, sa.DateTime):
        return ColumnType.DATETIME
    if isinstance(t, sa.Date):
        return ColumnType.DATE
    if isinstance(t, sa.Time):
        return ColumnType.TIME
    if isinstance(t, sa.Uuid):
        return ColumnType.UUID
    if isinstance(t, sa.JSON):
        return ColumnType.JSON
    if isinstance(t, sa.LargeBinary):
        return ColumnType.BYTES
    if isinstance(t, sa.Enum):
        return ColumnType.STRING
    if isinstance(t, sa.Text):
        return ColumnType.TEXT
    if isinstance(t, sa.String):
        return ColumnType.STRING
    try:
        python_type = t.python_type
    except NotImplementedError:
        return ColumnType.JSON
    return {
        int: ColumnType.INTEGER,
        float: ColumnType.FLOAT,
        str: ColumnType.STRING,
        bool: ColumnType.BOOLEAN,
    }.get(python_type, ColumnType.JSON)


def _default(column: sa.Column[Any]) -> tuple[Any, bool]:
    """A JSON-friendly description of a column's default, and whether it has one."""
    if column.server_default is not None:
        arg = getattr(column.server_default, "arg", None)
        text = getattr(arg, "text", arg)
        return (text if isinstance(text, (str, int, float, bool)) else None), True
    if column.default is not None:
        arg = getattr(column.default, "arg", None)
        if isinstance(arg, (str, int, float, bool)):
            return arg, True
        return None, True
    if (
        column.primary_key
        and column.autoincrement in (True, "auto")
        and isinstance(_stored_type(column), sa.Integer)
    ):
        table = column.table
        single = len(table.primary_key.columns) == 1 if table is not None else True
        return None, single
    return None, False


def _max_length(column: sa.Column[Any]) -> int | None:
    t = _stored_type(column)
    length = getattr(t, "length", None)
    if isinstance(t, sa.String) and isinstance(length, int):
        return length
    return None


def _bounds(column: sa.Column[Any]) -> tuple[Any, Any] | None:
    """The range a whole or fixed-point number column holds, as declared."""
    t = _stored_type(column)
    if isinstance(t, sa.SmallInteger):
        return -(2**15), 2**15 - 1
    if isinstance(t, sa.BigInteger):
        return -(2**63), 2**63 - 1
    if isinstance(t, sa.Integer):
        # INTEGER is 32 bits on PostgreSQL and MariaDB; SQLite would store more, but the
        # model declares the same range everywhere.
        return -(2**31), 2**31 - 1
    if isinstance(t, sa.Numeric) and not isinstance(t, sa.Float) and t.precision:
        # NUMERIC(p, s) holds p - s digits before the point (PostgreSQL refuses more,
        # SQLite would store a float); values with more than s places are compared as sent.
        scale = t.scale or 0
        top = Decimal(10) ** (t.precision - scale) - Decimal(1).scaleb(-scale)
        return -top, top
    return None


class _Mapping:
    """Per-entity SQL objects: the table and the wire-name to column map."""

    __slots__ = ("by_key", "columns", "json", "naive", "selectable", "table")

    def __init__(
        self,
        table: sa.Table,
        columns: dict[str, sa.Column[Any]],
        *,
        zoneless: bool = False,
    ) -> None:
        self.table = table
        self.columns = columns
        self.by_key: sa.Select[Any] | None = None
        # ``zoneless``: the database keeps no time zone even where the model asks for
        # one (MariaDB/MySQL DATETIME): store every datetime as naive UTC, unless a
        # TypeDecorator binds it (SQLModel's UTCDateTime refuses naive values).
        self.naive = frozenset(
            name
            for name, col in columns.items()
            if isinstance(t := _stored_type(col), sa.DateTime)
            and (
                not t.timezone
                or (zoneless and not isinstance(col.type, sa.types.TypeDecorator))
            )
        )
        self.json = frozenset(
            name
            for name, col in columns.items()
            if isinstance(_stored_type(col), sa.JSON)
        )
        """Columns where None would be stored as JSON 'null', not SQL NULL."""
        self.selectable = [
            col.label(name) if col.key != name or col.name != name else col
            for name, col in columns.items()
        ]


class SQLAlchemyAdapter(Adapter):
    """Serve SQLAlchemy 2 declarative models.

    Args:
        engine: an async engine, or a database URL (``sqlite:///app.db``,
            ``postgresql://user@host/db``) for which one is created and owned.
        sqlite_synchronous: ``PRAGMA synchronous`` for SQLite file databases:
            ``NORMAL`` (default, in WAL mode a power loss may lose the last commits
            but never corrupts) or ``FULL``.
        inline_reads: for SQLite file databases, run reads on a read-only connection
            in the event loop's own thread (a read by key takes tens of microseconds;
            the hop to aiosqlite's thread alone costs about 200). A read that would
            wait on a lock falls back to the thread at once. On PostgreSQL with
            asyncpg, run reads by primary key (without filters or preloads) with
            asyncpg's ``fetchrow`` on up to five connections of the adapter's own
            (never more than the engine's ``pool_size``), made like the engine's: one
            round trip, past SQLAlchemy's pool, greenlets and result objects; values
            are converted as SQLAlchemy would (:mod:`.sqlalchemy_asyncpg`).
        inline_writes: for SQLite file databases with ``synchronous`` ``NORMAL`` or
            ``OFF``, commit groups of creates (:meth:`create_group`) on a connection in
            the event loop's own thread, in one step of the loop (an insert takes
            tens of microseconds there, a hop to aiosqlite's thread about 200). When
            another writer holds the database it falls back to the thread at once.
    """

    def __init__(
        self,
        engine: AsyncEngine | str,
        *,
        sqlite_synchronous: str = "NORMAL",
        inline_reads: bool = True,
        inline_writes: bool = True,
    ) -> None:
        self._owns_engine = isinstance(engine, str)
        self.engine: AsyncEngine = (
            create_engine(engine) if isinstance(engine, str) else engine
        )
        self.dialect = self.engine.dialect.name
        if sqlite_synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"expected NORMAL or FULL, got {sqlite_synchronous!r}")
        self._sqlite_synchronous = sqlite_synchronous.upper()
        self._maps: dict[int, _Mapping] = {}
        self._keys_ready = False
        self._keys_lock = asyncio.Lock()
        self.log: SQLAlchemyChangeLog | None = None
        """The change log, once a shared broker asked for one (:meth:`enable_log`)."""
        # Reads need no transaction: on PostgreSQL one costs a BEGIN and a ROLLBACK
        # round trip around every SELECT.
        self._reads: AsyncEngine = (
            self.engine.execution_options(isolation_level="AUTOCOMMIT")
            if self.dialect == "postgresql"
            else self.engine
        )
        self._key_reader: AsyncpgKeyReader | None = None
        if inline_reads and self.engine.dialect.driver == "asyncpg":
            from websocketspec.adapters.sqlalchemy_asyncpg import AsyncpgKeyReader

            if AsyncpgKeyReader.supports(self.engine):
                self._key_reader = AsyncpgKeyReader(self.engine)
        self._inline: InlineReader | None = None
        self._inline_writer: InlineWriter | None = None
        if self.dialect == "sqlite":
            self._install_sqlite_events()
            path = file_path(self.engine.url.database)
            if path is not None and inline_reads:
                self._inline = InlineReader(path)
            # FULL syncs the disk at every commit: never in the event loop.
            if (
                path is not None
                and inline_writes
                and self._sqlite_synchronous
                in (
                    "OFF",
                    "NORMAL",
                )
            ):
                self._inline_writer = InlineWriter(
                    path, synchronous=self._sqlite_synchronous
                )

    # -- set-up -------------------------------------------------------------------

    def _install_sqlite_events(self) -> None:
        sync_engine = self.engine.sync_engine
        synchronous = self._sqlite_synchronous

        # On checkout rather than connect: the engine may already hold connections
        # pooled before this adapter existed (the caller's create_all, say).
        @event.listens_for(sync_engine, "checkout")
        def on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
            if record.info.get("websocketspec"):
                return
            record.info["websocketspec"] = True
            dbapi_connection.isolation_level = None
            dbapi_connection.create_function(
                "ws_like", 2, sqlite_like, deterministic=True
            )
            dbapi_connection.create_function(
                "ws_ilike", 2, sqlite_ilike, deterministic=True
            )
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA synchronous={synchronous}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @event.listens_for(sync_engine, "begin")
        def on_begin(conn: sa.Connection) -> None:
            immediate = conn.get_execution_options().get("websocketspec_write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    async def enable_log(
        self, entities: Sequence[EntityInfo], *, notify: str | None
    ) -> SQLAlchemyChangeLog:
        """Record every write in the transactional outbox from now on."""
        if self.log is None:
            by_key = {e.key: e for e in entities}
            log = SQLAlchemyChangeLog(self.engine, by_key.get, notify=notify)
            await log.install(entities)
            self.log = log
        return self.log

    async def start(self) -> None:
        """Build MariaDB/MySQL's case tables for ``ilike`` off the event loop."""
        if self.dialect in mysql.DIALECTS:
            await asyncio.to_thread(mysql.prepare)

    async def stop(self) -> None:
        """Dispose of the engine if this adapter created it."""
        if self._key_reader is not None:
            reader, self._key_reader = self._key_reader, None
            await reader.close()
        if self._inline is not None:
            self._inline.close()
        if self._inline_writer is not None:
            self._inline_writer.close()
        if self._owns_engine:
            await self.engine.dispose()

    def describe(self, model: Any) -> ModelDescription:
        """Describe a declarative model from its mapper."""
        mapper = sa.inspect(model, raiseerr=False)
        if mapper is None or not hasattr(mapper, "column_attrs"):
            raise TypeError(f"expected a SQLAlchemy mapped class, got {model!r}")
        table = mapper.local_table
        if not isinstance(table, sa.Table):
            raise TypeError(f"model {model!r} is not mapped to a single table")
        by_column: dict[sa.Column[Any], str] = {}
        infos: list[ColumnInfo] = []
        for prop in mapper.column_attrs:
            column = prop.columns[0]
            if not isinstance(column, sa.Column) or column.table is not table:
                continue
            by_column[column] = prop.key
            default, has_default = _default(column)
            infos.append(
                ColumnInfo(
                    name=prop.key,
                    type=_portable_type(column),
                    max_length=_max_length(column),
                    bounds=_bounds(column),
                    nullable=bool(column.nullable) and not column.primary_key,
                    primary_key=column.primary_key,
                    default=default,
                    has_default=has_default,
                )
            )
        relations: list[RelationInfo] = []
        for rel in mapper.relationships:
            if rel.secondary is not None:
                log.info(
                    "relation %s.%s goes through a secondary table: not served",
                    model.__name__,
                    rel.key,
                )
                continue
            target = rel.mapper.class_
            target_map = {p.columns[0]: p.key for p in rel.mapper.column_attrs}
            pairs = rel.local_remote_pairs or []
            try:
                local = tuple(by_column[left] for left, _ in pairs)
                remote = tuple(target_map[right] for _, right in pairs)
            except KeyError:
                continue
            relations.append(
                RelationInfo(
                    name=rel.key,
                    kind="many" if rel.uselist else "one",
                    target=target,
                    local_columns=local,
                    remote_columns=remote,
                )
            )
        self._maps[id(model)] = _Mapping(
            table,
            {by_column[c]: c for c in by_column},
            zoneless=self.dialect in mysql.DIALECTS,
        )
        return ModelDescription(columns=tuple(infos), relations=tuple(relations))

    def _map(self, entity: EntityInfo) -> _Mapping:
        mapping = entity.state.get("sqlalchemy")
        if mapping is None:
            mapping = self._maps.get(id(entity.model))
            if mapping is None:
                self.describe(entity.model)
                mapping = self._maps[id(entity.model)]
            entity.state["sqlalchemy"] = mapping
        return mapping

    # -- SQL building -------------------------------------------------------------

    def _store(self, m: _Mapping, name: str, value: Any) -> Any:
        """A value to write, decimals rounded to the column's scale (half away from zero).

        PostgreSQL rounds so on store; SQLite keeps a double of the value as sent and
        rounds only on read, so filters would compare a value that no row shows.
        """
        column_type = _stored_type(m.columns[name])
        scale = getattr(column_type, "scale", None)
        if (
            isinstance(value, Decimal)
            and isinstance(scale, int)
            and not isinstance(column_type, sa.Float)
        ):
            value = round_decimal(value, scale)
        if value is None and name not in m.json:
            return None  # plain, so that rows can be inserted many at once
        return self._bind(m, name, value)

    def _bind(self, m: _Mapping, name: str, value: Any) -> Any:
        if value is None:
            # An explicit SQL NULL: SQLAlchemy would store None in a JSON column as
            # JSON 'null', which reads back as null but is missed by is_null.
            return sa.null()
        if name in m.naive and isinstance(value, datetime):
            return to_utc(value).replace(tzinfo=None)
        return value

    def _ordered(
        self, m: _Mapping, name: str, ctype: ColumnType
    ) -> sa.ColumnElement[Any]:
        column: sa.ColumnElement[Any] = m.columns[name]
        if self.dialect == "postgresql" and ctype in TEXT_TYPES:
            return column.collate("C")
        if self.dialect in mysql.DIALECTS:
            if ctype in TEXT_TYPES:
                return mysql.binary_text(column)
            if ctype is ColumnType.UUID:
                return mysql.uuid_text(column)
        return column

    def _exact(
        self, m: _Mapping, name: str, ctype: ColumnType
    ) -> sa.ColumnElement[Any]:
        """The column as (in)equality sees it: text by its code points on MariaDB/MySQL."""
        column: sa.ColumnElement[Any] = m.columns[name]
        if self.dialect in mysql.DIALECTS and ctype in TEXT_TYPES:
            return mysql.binary_text(column)
        return column

    def _equal(
        self, m: _Mapping, name: str, ctype: ColumnType, values: list[Any]
    ) -> sa.ColumnElement[bool]:
        """``column`` equals one of ``values``, text compared by code point."""
        column = m.columns[name]
        plain = column == values[0] if len(values) == 1 else column.in_(values)
        exact = self._exact(m, name, ctype)
        if exact is column:
            return plain
        exact_test = exact == values[0] if len(values) == 1 else exact.in_(values)
        if not all(isinstance(v, str) and v.isascii() for v in values):
            # A character the column's character set lacks (latin1, utf8mb3) would
            # make the plain test an "illegal mix of collations" error.
            return exact_test
        # The plain test narrows through an index under the column's own collation;
        # the exact one drops what that collation merely deems equal ('a' = 'A ').
        return sa.and_(plain, exact_test)

    def where(self, m: _Mapping, expr: Expr | None) -> sa.ColumnElement[bool] | None:
        """Translate a filter expression into a SQL condition."""
        if expr is None:
            return None
        return self._clause(m, expr)

    def _clause(self, m: _Mapping, expr: Expr) -> sa.ColumnElement[bool]:
        if isinstance(expr, Group):
            parts = [self._clause(m, item) for item in expr.items]
            return sa.and_(*parts) if expr.kind == "and" else sa.or_(*parts)
        return self._condition(m, expr)

    def _operand(self, m: _Mapping, name: str, value: Any) -> Any:
        """A filter value, bound so that the database compares it exactly as given."""
        value = self._bind(m, name, value)
        if isinstance(value, bool):
            # SQLAlchemy allows only = and != with a bare True/False; bind it typed.
            return sa.literal(value, sa.Boolean())
        if self.dialect == "postgresql":
            # Bound with the column's type, a value would be cast to it: out of range
            # for int4 (an error) or rounded to the scale of numeric(p, s).
            if isinstance(value, int):
                return sa.literal(value, sa.BigInteger())
            if isinstance(value, Decimal):
                return sa.literal(value, sa.Numeric())
        return value

    def _condition(self, m: _Mapping, c: Condition) -> sa.ColumnElement[bool]:
        column = m.columns[c.column]
        op = c.op
        if op is Op.IS_NULL:
            return column.is_(None)
        if op is Op.IS_NOT_NULL:
            return column.is_not(None)
        if op in (Op.IN, Op.NOT_IN):
            values = [self._operand(m, c.column, v) for v in c.value]
            if op is Op.IN:
                return (
                    self._equal(m, c.column, c.type, values) if values else sa.false()
                )
            # NOT IN () is true even for NULL in SQL; the contract says NULL never matches.
            if not values:
                return column.is_not(None)
            return self._exact(m, c.column, c.type).not_in(values)
        if op in (Op.LIKE, Op.ILIKE, Op.CONTAINS, Op.STARTSWITH, Op.ENDSWITH):
            pattern = like_pattern(op, c.value)
            if self.dialect == "sqlite":
                fn = sa.func.ws_ilike if op is Op.ILIKE else sa.func.ws_like
                return fn(column, pattern) == 1
            if self.dialect in mysql.DIALECTS:
                if op is Op.ILIKE:
                    return mysql.ilike(column, pattern)
                return mysql.bin_collated(column).like(pattern, escape="\\")
            if op is Op.ILIKE:
                folded = (
                    sa.func.lower(column.collate("und-x-icu"))
                    if self.dialect == "postgresql"
                    else sa.func.lower(column)
                )
                return folded.like(pattern, escape="\\")
            return column.like(pattern, escape="\\")
        target = self._ordered(m, c.column, c.type)
        if op is Op.BETWEEN:
            low, high = (self._operand(m, c.column, v) for v in c.value)
            # Not BETWEEN: SQLAlchemy binds text bounds as `$1::VARCHAR COLLATE "C"`,
            # which PostgreSQL's grammar refuses as a lower bound of BETWEEN.
            return sa.and_(target >= low, target <= high)
        value = self._operand(m, c.column, c.value)
        clause: sa.ColumnElement[bool]
        if op is Op.EQ:
            clause = self._equal(m, c.column, c.type, [value])
        elif op is Op.NEQ:
            clause = self._exact(m, c.column, c.type) != value
        elif op is Op.GT:
            clause = target > value
        elif op is Op.GTE:
            clause = target >= value
        elif op is Op.LT:
            clause = target < value
        else:
            clause = target <= value
        return clause

    def _order(
        self, m: _Mapping, entity: EntityInfo, sort: Sequence[tuple[str, bool]]
    ) -> list[sa.ColumnElement[Any]]:
        out: list[sa.ColumnElement[Any]] = []
        for name, descending in sort:
            column = self._ordered(m, name, entity.column_types[name])
            if self.dialect in mysql.DIALECTS:
                # No NULLS FIRST/LAST there, and NULL sorts lowest: order by IS NULL first.
                if m.columns[name].nullable:
                    is_null = m.columns[name].is_(None)
                    out.append(is_null.desc() if descending else is_null.asc())
                out.append(column.desc() if descending else column.asc())
                continue
            out.append(
                column.desc().nulls_first() if descending else column.asc().nulls_last()
            )
        return out

    def _row(self, row: sa.Row[Any]) -> Record:
        return {key: normalize(value) for key, value in row._mapping.items()}

    def _key_clause(
        self, m: _Mapping, entity: EntityInfo, key: tuple[Any, ...]
    ) -> sa.ColumnElement[bool]:
        return sa.and_(
            *(
                self._equal(
                    m, name, entity.column_types[name], [self._operand(m, name, value)]
                )
                for name, value in zip(entity.primary_key, key, strict=True)
            )
        )

    # -- reads --------------------------------------------------------------------

    async def read_many(
        self, entity: EntityInfo, query: ReadQuery
    ) -> tuple[list[Record], int]:
        """Read one page of rows and the total count."""
        inline = self._inline
        if inline is not None:
            try:
                with inline.reading() as sconn:
                    return await self._page(sconn, entity, query)
            except Busy:
                pass  # through aiosqlite's thread, below
            except SQLAlchemyError as exc:
                raise _operation_error("read", exc) from exc
        try:
            async with self._reads.connect() as conn:
                return await self._page(conn, entity, query)
        except SQLAlchemyError as exc:
            raise _operation_error("read", exc) from exc

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
        try:
            async with self.engine.connect() as conn:
                if self.dialect == "postgresql":
                    conn = await conn.execution_options(
                        isolation_level="REPEATABLE READ"
                    )
                async with conn.begin():
                    if self.dialect in mysql.DIALECTS:
                        # One InnoDB read view for both reads, whatever the server's default.
                        await conn.exec_driver_sql(
                            "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"
                        )
                    position = await self.log.position(conn, entity.key)
                    rows, total = await self._page(conn, entity, query)
        except SQLAlchemyError as exc:
            raise _operation_error("read", exc) from exc
        return rows, total, position

    async def _page(
        self, conn: Any, entity: EntityInfo, query: ReadQuery
    ) -> tuple[list[Record], int]:
        m = self._map(entity)
        where = self.where(m, query.where)
        stmt = sa.select(*m.selectable).order_by(*self._order(m, entity, query.sort))
        count = sa.select(sa.func.count()).select_from(m.table)
        if where is not None:
            stmt = stmt.where(where)
            count = count.where(where)
        stmt = stmt.limit(query.limit).offset(query.offset)
        rows = [self._row(r) for r in (await conn.execute(stmt)).all()]
        total = int((await conn.execute(count)).scalar_one())
        if query.preload and rows:
            await self._preload(conn, rows, query.preload)
        return rows, total

    async def read_one(
        self, entity: EntityInfo, key: tuple[Any, ...], query: ReadQuery
    ) -> Record | None:
        """Read the row with primary key ``key`` if it matches ``query.where``."""
        m = self._map(entity)
        params: dict[str, Any] | None = None
        if query.where is None and len(entity.primary_key) == 1:
            # The hot path: one statement per entity, built once, the key bound at
            # execution (SQLAlchemy then skips building and keying a new statement).
            stmt = self._by_key(m, entity)
            name = entity.primary_key[0]
            params = {"ws_key": self._bind(m, name, key[0])}
            if self._key_reader is not None and not query.preload:
                return await self._key_reader.read(stmt, params["ws_key"])
        else:
            stmt = sa.select(*m.selectable).where(self._key_clause(m, entity, key))
            where = self.where(m, query.where)
            if where is not None:
                stmt = stmt.where(where)
        inline = self._inline
        if inline is not None:
            try:
                with inline.reading() as conn:
                    return await self._one(conn, stmt, query, params)
            except Busy:
                pass  # through aiosqlite's thread, below
            except SQLAlchemyError as exc:
                raise _operation_error("read", exc) from exc
        try:
            async with self._reads.connect() as aconn:
                return await self._one(aconn, stmt, query, params)
        except SQLAlchemyError as exc:
            raise _operation_error("read", exc) from exc

    def _by_key(self, m: _Mapping, entity: EntityInfo) -> sa.Select[Any]:
        stmt = m.by_key
        if stmt is None:
            column = m.columns[entity.primary_key[0]]
            # Integers bound as BIGINT, as in filters: a key beyond an INTEGER column's
            # range is simply not found, never a database error.
            kind = (
                sa.BigInteger() if isinstance(column.type, sa.Integer) else column.type
            )
            key = sa.bindparam("ws_key", type_=kind)
            stmt = m.by_key = sa.select(*m.selectable).where(column == key)
        return stmt

    async def _one(
        self,
        conn: Any,
        stmt: sa.Select[Any],
        query: ReadQuery,
        params: dict[str, Any] | None = None,
    ) -> Record | None:
        found = (await conn.execute(stmt, params)).first()
        if found is None:
            return None
        row = self._row(found)
        if query.preload:
            await self._preload(conn, [row], query.preload)
        return row

    async def _preload(
        self,
        conn: Any,
        rows: list[Record],
        preloads: Sequence[PreloadQuery],
    ) -> None:
        for p in preloads:
            rel = p.relation
            tm = self._map(p.target)
            keys = preload_keys(rows, rel)
            children: list[Record] = []
            if keys:
                remote = [tm.columns[c] for c in rel.remote_columns]
                match = (
                    remote[0].in_([k[0] for k in keys])
                    if len(remote) == 1
                    else sa.tuple_(*remote).in_(list(keys))
                )
                conditions: list[sa.ColumnElement[bool]] = [match]
                extra = self.where(tm, p.where)
                if extra is not None:
                    conditions.append(extra)
                order = self._order(tm, p.target, p.sort)
                if p.limit is not None and rel.kind == "many":
                    rank = (
                        sa.func.row_number()
                        .over(partition_by=remote, order_by=order)
                        .label("_ws_rank")
                    )
                    inner = (
                        sa.select(*tm.selectable, rank).where(*conditions).subquery()
                    )
                    stmt = (
                        sa.select(*(inner.c[name] for name in tm.columns))
                        .where(inner.c["_ws_rank"] <= p.limit)
                        .order_by(inner.c["_ws_rank"])
                    )
                else:
                    stmt = sa.select(*tm.selectable).where(*conditions).order_by(*order)
                children = [self._row(r) for r in (await conn.execute(stmt)).all()]
            attach_children(rows, p, children)

    # -- writes -------------------------------------------------------------------

    @asynccontextmanager
    async def _write(self, operation: str) -> AsyncIterator[AsyncConnection]:
        with _write_errors(operation):
            async with self.engine.connect() as conn:
                if self.dialect == "sqlite":
                    conn = await conn.execution_options(websocketspec_write=True)
                async with conn.begin():
                    if self.dialect in mysql.DIALECTS:
                        # As on PostgreSQL: row locks only. InnoDB's default REPEATABLE
                        # READ also locks gaps, and two writers claiming idempotency keys
                        # (delete-then-insert) deadlock on them.
                        await conn.exec_driver_sql(
                            "SET TRANSACTION ISOLATION LEVEL READ COMMITTED"
                        )
                    yield conn

    def _returning(self, m: _Mapping) -> list[sa.ColumnElement[Any]]:
        return list(m.selectable)

    async def write(
        self, entity: EntityInfo, write: Write, check: WriteCheck
    ) -> tuple[Any, list[Change]] | None:
        """Run a create, update or delete (one row or many) in one transaction."""
        m = self._map(entity)
        if write.remember is not None:
            # Before the transaction: creating the table takes a second connection,
            # which a burst of first writes holding the whole pool would wait for.
            await self._ensure_keys_table()
        async with self._write(write.operation) as conn:
            if write.remember is not None:
                await self._claim(conn, write.remember)
            if write.operation == "create":
                changes = await self._insert(conn, m, entity, write.rows)
            else:
                olds = await self._locked(conn, m, entity, write)
                if write.key is not None and not olds:
                    if write.remember is not None:
                        # Nothing is written, and this transaction commits: free the
                        # key, or it would stay claimed with no answer to replay.
                        await conn.execute(
                            sa.delete(KEYS).where(
                                KEYS.c.identity == write.remember.identity,
                                KEYS.c.key == write.remember.key,
                            )
                        )
                    return None
                changes = await self._change(conn, m, entity, write, olds)
            if write.bulk:
                changes = stamp_batch(changes)
            result = await check(changes)
            if write.remember is not None:
                await self._remember(conn, write.remember, result)
            if self.log is not None:
                changes = await self.log.append(conn, changes)
        return result, changes

    groups_creates = True

    async def create_group(
        self, entity: EntityInfo, items: Sequence[tuple[Write, WriteCheck]]
    ) -> list[tuple[Any, list[Change]]]:
        """Run single-row creates in one transaction, all or none.

        Rows naming the same columns are inserted by one statement where the dialect
        allows. On a SQLite file database the whole transaction runs in the event
        loop's thread (see ``inline_writes``): the checks must not wait on anything.
        """
        m = self._map(entity)
        writer = self._inline_writer
        if writer is not None:
            try:
                with _write_errors("create"), writer.writing() as conn:
                    return await self._create_group(conn, m, entity, items)
            except Busy:
                pass  # another writer holds the database: wait for it in the thread
        async with self._write("create") as aconn:
            return await self._create_group(aconn, m, entity, items)

    async def _create_group(
        self,
        conn: AsyncConnection | InlineConnection,
        m: _Mapping,
        entity: EntityInfo,
        items: Sequence[tuple[Write, WriteCheck]],
    ) -> list[tuple[Any, list[Change]]]:
        changes = await self._insert(conn, m, entity, [w.rows[0] for w, _ in items])
        results = [
            await check([change])
            for (_, check), change in zip(items, changes, strict=True)
        ]
        if self.log is not None:
            changes = await self.log.append(conn, changes)
        return [
            (result, [change]) for result, change in zip(results, changes, strict=True)
        ]

    async def _insert(
        self,
        conn: AsyncConnection | InlineConnection,
        m: _Mapping,
        entity: EntityInfo,
        rows: Sequence[Record],
    ) -> list[Change]:
        news: list[Record] = []
        dialect = conn.dialect
        values = [
            {m.columns[name].key: self._store(m, name, v) for name, v in data.items()}
            for data in rows
        ]
        # Consecutive rows naming the same columns go in one statement where the
        # dialect returns their rows in order (PostgreSQL, MariaDB): one round trip.
        # Not rows holding SQL expressions (a JSON column's SQL NULL): those go alone.
        many = (
            dialect.insert_returning
            and dialect.insert_executemany_returning_sort_by_parameter_order
        )
        start = 0
        while start < len(values):
            end = start + 1
            if many and _plain(values[start]):
                names = values[start].keys()
                while (
                    end < len(values)
                    and values[end].keys() == names
                    and _plain(values[end])
                ):
                    end += 1
            stmt = sa.insert(m.table)
            if end - start > 1:
                returning = stmt.returning(
                    *self._returning(m), sort_by_parameter_order=True
                )
                found = (await conn.execute(returning, values[start:end])).all()
                news.extend(self._row(r) for r in found)
            elif dialect.insert_returning:
                stmt = stmt.values(values[start]).returning(*self._returning(m))
                news.append(self._row((await conn.execute(stmt)).one()))
            else:
                # MySQL (and MariaDB before 10.5): re-read by the key the insert took,
                # auto-increment (lastrowid) or given (defaults are computed before).
                result = await conn.execute(stmt.values(values[start]))
                key = tuple(result.inserted_primary_key or ())
                news.append(await self._reread_one(conn, m, entity, key))
            start = end
        return [Change("create", entity.key, None, new) for new in news]

    async def _reread_one(
        self,
        conn: AsyncConnection | InlineConnection,
        m: _Mapping,
        entity: EntityInfo,
        key: tuple[Any, ...],
    ) -> Record:
        stmt = sa.select(*m.selectable).where(self._key_clause(m, entity, key))
        return self._row((await conn.execute(stmt)).one())

    async def _change(
        self,
        conn: AsyncConnection,
        m: _Mapping,
        entity: EntityInfo,
        write: Write,
        olds: list[Record],
    ) -> list[Change]:
        if not olds:
            return []
        keys = [tuple(old[name] for name in entity.primary_key) for old in olds]
        pk = [m.columns[name] for name in entity.primary_key]
        if len(pk) == 1:
            target = pk[0].in_(
                [self._operand(m, entity.primary_key[0], k[0]) for k in keys]
            )
        else:
            target = sa.tuple_(*pk).in_(keys)
        if write.operation == "delete":
            await conn.execute(sa.delete(m.table).where(target))
            return [Change("delete", entity.key, old, None) for old in olds]
        values = {
            m.columns[name].key: self._store(m, name, v)
            for name, v in (write.data or {}).items()
        }
        stmt = sa.update(m.table).where(target).values(values)
        if conn.dialect.update_returning:
            found = (await conn.execute(stmt.returning(*self._returning(m)))).all()
        else:
            # MariaDB/MySQL: no UPDATE ... RETURNING. The rows are locked since
            # _locked, so reading them back in this transaction shows exactly this write.
            await conn.execute(stmt)
            found = (await conn.execute(sa.select(*m.selectable).where(target))).all()
        news = {
            tuple(new[name] for name in entity.primary_key): new
            for new in (self._row(r) for r in found)
        }
        return updated(entity.key, olds, keys, news)

    async def _locked(
        self,
        conn: AsyncConnection,
        m: _Mapping,
        entity: EntityInfo,
        write: Write,
    ) -> list[Record]:
        """The rows a write changes, locked (in key order, so writers never deadlock)."""
        stmt = sa.select(*m.selectable)
        if write.key is not None:
            stmt = stmt.where(self._key_clause(m, entity, write.key))
        clause = self.where(m, write.where)
        if clause is not None:
            stmt = stmt.where(clause)
        stmt = stmt.order_by(*(m.columns[name] for name in entity.primary_key))
        if write.limit is not None:
            stmt = stmt.limit(write.limit + 1)
        if self.dialect != "sqlite":
            stmt = stmt.with_for_update()
        rows = [self._row(r) for r in (await conn.execute(stmt)).all()]
        check_row_limit(write, rows)
        return rows

    # -- idempotency ----------------------------------------------------------------

    async def _ensure_keys_table(self) -> None:
        # Concurrent first uses must not race: two deferred SQLite transactions both
        # creating it fail with "database is locked", and PostgreSQL refuses a second
        # concurrent CREATE TABLE. One at a time here; the write lock across processes.
        if self._keys_ready:
            return
        async with self._keys_lock:
            for attempt in range(2):
                if self._keys_ready:
                    return
                try:
                    async with self._write("create") as conn:
                        await conn.run_sync(KEYS.create, checkfirst=True)
                    self._keys_ready = True
                except OperationError:
                    if attempt:  # not another process creating it at the same time
                        raise

    async def remembered(self, remember: Remember) -> tuple[str, Any] | None:
        """The fingerprint and answer stored for a key, within its window."""
        await self._ensure_keys_table()
        stmt = sa.select(KEYS.c.fingerprint, KEYS.c.response).where(
            KEYS.c.identity == remember.identity,
            KEYS.c.key == remember.key,
            KEYS.c.created_at >= time.time() - remember.window,
            KEYS.c.response.is_not(None),
        )
        try:
            async with self.engine.connect() as conn:
                found = (await conn.execute(stmt)).first()
        except SQLAlchemyError as exc:
            raise _operation_error("read", exc) from exc
        if found is None:
            return None
        return str(found[0]), msgspec.json.decode(found[1])

    async def _claim(self, conn: AsyncConnection, remember: Remember) -> None:
        """Take the key in this transaction (first thing, so a twin waits on it)."""
        await conn.execute(
            sa.delete(KEYS).where(
                KEYS.c.identity == remember.identity,
                KEYS.c.key == remember.key,
                KEYS.c.created_at < time.time() - remember.window,
            )
        )
        try:
            await conn.execute(
                sa.insert(KEYS).values(
                    identity=remember.identity,
                    key=remember.key,
                    fingerprint=remember.fingerprint,
                    created_at=time.time(),
                )
            )
        except IntegrityError as exc:
            raise KeyTakenError(remember.key) from exc

    async def _remember(
        self, conn: AsyncConnection, remember: Remember, result: Any
    ) -> None:
        await conn.execute(
            sa.update(KEYS)
            .where(KEYS.c.identity == remember.identity, KEYS.c.key == remember.key)
            .values(response=dump(result))
        )


def _plain(values: dict[str, Any]) -> bool:
    """Whether a row's values are all plain (no SQL expression to render)."""
    return not any(isinstance(v, sa.ClauseElement) for v in values.values())


@contextlib.contextmanager
def _write_errors(operation: str) -> Iterator[None]:
    """Database errors of a write as :class:`OperationError` (protocol errors pass)."""
    try:
        yield
    except (ProtocolError, Busy):
        raise
    except IntegrityError as exc:
        raise refused(operation, exc.orig or exc) from exc
    except DataError as exc:
        raise refused(
            operation, exc.orig or exc, "a value did not fit its column"
        ) from exc
    except SQLAlchemyError as exc:
        raise _operation_error(operation, exc) from exc


def _operation_error(operation: str, exc: SQLAlchemyError) -> OperationError:
    if isinstance(exc, DBAPIError):
        log.error("%s failed in the database: %s", operation, exc.orig)
    else:
        log.error("%s failed: %s", operation, exc)
    return OperationError(operation, str(exc))
