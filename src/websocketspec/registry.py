"""The model registry: ``"schema.entity"`` names mapped to model descriptions.

The registry interprets no ORM. It asks a :class:`ModelInspector` (the adapter) to
describe each model, and keeps the description: columns with their portable types,
primary key and relations. ``users`` and ``public.users`` name the same entity.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from websocketspec.exceptions import ConfigurationError, ModelNotFoundError
from websocketspec.protocol.values import ColumnType

__all__ = [
    "DEFAULT_SCHEMA",
    "ColumnInfo",
    "EntityInfo",
    "ModelDescription",
    "ModelInspector",
    "ModelRegistry",
    "RelationInfo",
]

DEFAULT_SCHEMA = "public"


@dataclass(frozen=True, slots=True)
class ColumnInfo:
    """One column of an entity."""

    name: str
    type: ColumnType
    nullable: bool
    primary_key: bool = False
    default: Any = None
    """A JSON-friendly description of the default (a scalar, or the SQL text)."""
    has_default: bool = False
    """True when the database or the model fills the column if it is left out."""
    max_length: int | None = None
    """The longest text the column holds, as declared (``String(200)``)."""
    bounds: tuple[Any, Any] | None = None
    """The smallest and largest number the column holds, as declared: integers, or
    decimals for a fixed-point column (``Numeric(12, 2)``)."""


@dataclass(frozen=True, slots=True)
class RelationInfo:
    """A relation from one entity to another, as described by the adapter."""

    name: str
    kind: str
    """``one`` (a single row or null) or ``many`` (a list)."""
    target: Any
    """The related model, as the adapter knows it."""
    local_columns: tuple[str, ...]
    remote_columns: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ModelDescription:
    """What an adapter says about a model."""

    columns: tuple[ColumnInfo, ...]
    relations: tuple[RelationInfo, ...] = ()


class ModelInspector(Protocol):
    """What the registry needs from an adapter."""

    def describe(self, model: Any) -> ModelDescription:
        """Describe a model's columns and relations."""
        ...


@dataclass(eq=False, slots=True)
class EntityInfo:
    """A registered entity: its names, model and columns."""

    schema: str
    name: str
    model: Any
    columns: dict[str, ColumnInfo]
    relations: dict[str, RelationInfo]
    primary_key: tuple[str, ...]
    column_types: dict[str, ColumnType] = field(default_factory=dict)
    bulk: bool = False
    """Whether updates and deletes by filters (without ``record_id``) are allowed."""
    state: dict[str, Any] = field(default_factory=dict)
    """Scratch space for the adapter (compiled tables, prepared statements)."""

    @property
    def key(self) -> str:
        """The canonical ``schema.entity`` name."""
        return f"{self.schema}.{self.name}"


class ModelRegistry:
    """Maps ``schema.entity`` names to registered models.

    Args:
        inspector: describes models; the handler passes its adapter.
        default_schema: the schema used when a name or a message has none.
    """

    def __init__(
        self, inspector: ModelInspector, default_schema: str = DEFAULT_SCHEMA
    ) -> None:
        self._inspector = inspector
        self.default_schema = default_schema
        self._entities: dict[str, EntityInfo] = {}
        self._by_model: dict[Any, EntityInfo] = {}

    def register_model(
        self, name: str, model: Any, *, bulk: bool = False
    ) -> EntityInfo:
        """Register a model under ``"schema.entity"`` (or ``"entity"`` in the default schema).

        Args:
            name: ``"public.users"``, or ``"users"`` in the default schema.
            model: the ORM model.
            bulk: allow updates and deletes by filters, without ``record_id``.

        Raises:
            ConfigurationError: the name is taken, malformed, or the model has no primary key.
        """
        schema, entity = self.split(name)
        if not entity or not schema:
            raise ConfigurationError(
                f"expected a name like 'public.users', got {name!r}"
            )
        key = f"{schema}.{entity}"
        if key in self._entities:
            raise ConfigurationError(f"a model is already registered as {key!r}")
        description = self._inspector.describe(model)
        columns = {c.name: c for c in description.columns}
        primary_key = tuple(c.name for c in description.columns if c.primary_key)
        if not primary_key:
            raise ConfigurationError(f"model {model!r} has no primary key")
        info = EntityInfo(
            schema=schema,
            name=entity,
            model=model,
            columns=columns,
            relations={r.name: r for r in description.relations},
            primary_key=primary_key,
            column_types={c.name: c.type for c in description.columns},
            bulk=bulk,
        )
        self._entities[key] = info
        self._by_model.setdefault(model, info)
        return info

    def split(self, name: str, schema: str | None = None) -> tuple[str, str]:
        """Split ``"schema.entity"`` into its parts, using defaults where absent."""
        if schema is None and "." in name:
            schema, _, name = name.partition(".")
        return (schema or self.default_schema), name

    def get(self, entity: str | None, schema: str | None = None) -> EntityInfo:
        """Find an entity by the names a message gave.

        Raises:
            ModelNotFoundError: nothing is registered under that name.
        """
        if not entity:
            raise ModelNotFoundError("no entity was named")
        s, e = self.split(entity, schema)
        info = self._entities.get(f"{s}.{e}")
        if info is None:
            raise ModelNotFoundError(
                f"no model is registered as {s}.{e}", details={"schema": s, "entity": e}
            )
        return info

    def for_model(self, model: Any) -> EntityInfo | None:
        """The entity a model was first registered as, if any."""
        return self._by_model.get(model)

    def __iter__(self) -> Iterator[EntityInfo]:
        return iter(self._entities.values())

    def __len__(self) -> int:
        return len(self._entities)

    @property
    def entities(self) -> Mapping[str, EntityInfo]:
        """All registered entities by canonical name."""
        return self._entities
