"""Lifecycle hooks: what can be hooked, the context hooks see, and running them.

Hooks are plain or async callables taking a :class:`HookContext`. ``before`` hooks run
before an operation and may change ``ctx.options``, ``ctx.data`` or refuse it by raising;
``after`` hooks run after it and may change ``ctx.result``. Hooks of a type run in the
order they were registered; the first exception stops the chain. An exception of ours
(any :class:`~websocketspec.exceptions.ProtocolError`) reaches the client with its code;
any other becomes ``hook_error``.

An after-``READ`` hook may be declared *per identity* (``after(HookType.READ,
per_identity=True)``): a promise that what it does to a row depends only on the row and
on the identity of the connection, never on the connection or subscription itself. When
every after-read hook is so declared, a notification's hooks run once per identity and
shape of the notification rather than once per subscriber.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol, TypeAlias, TypeVar

from websocketspec.exceptions import HookError, ProtocolError
from websocketspec.protocol.messages import FilterOption, Message, QueryOptions

__all__ = [
    "ConnectionInfo",
    "Handshake",
    "Hook",
    "HookContext",
    "HookRegistry",
    "HookType",
]


class HookType(StrEnum):
    """What a hook is attached to."""

    HANDLE = "handle"
    """Every request and subscription message: its before hooks run before the
    operation's own, its after hooks after the operation's own after hooks."""
    READ = "read"
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"
    META = "meta"
    SUBSCRIBE = "subscribe"
    UNSUBSCRIBE = "unsubscribe"
    CONNECT = "connect"
    DISCONNECT = "disconnect"


class ConnectionInfo(Protocol):
    """What hooks can see of a connection (the server's connection satisfies it)."""

    @property
    def id(self) -> str:
        """The connection's unique id."""
        ...

    @property
    def metadata(self) -> dict[str, Any]:
        """Per-connection storage for hooks: identity, roles, anything."""
        ...

    @property
    def handshake(self) -> Handshake:
        """The HTTP handshake that opened the connection."""
        ...


@dataclass(frozen=True, slots=True)
class Handshake:
    """The HTTP request that opened a WebSocket connection."""

    path: str
    headers: Mapping[str, str]
    """Header names in lower case; repeated headers joined with ``, ``."""
    query_params: Mapping[str, str]
    cookies: Mapping[str, str]
    client: tuple[str, int] | None
    subprotocols: tuple[str, ...]

    @property
    def origin(self) -> str | None:
        """The ``Origin`` header, if the client sent one."""
        return self.headers.get("origin")


@dataclass(slots=True)
class HookContext:
    """Everything a hook may read or change about the operation at hand."""

    connection: ConnectionInfo
    operation: str | None = None
    schema: str | None = None
    entity: str | None = None
    record_id: Any = None
    options: QueryOptions = field(default_factory=QueryOptions)
    """A mutable working copy of the request's options; never ``None``."""
    data: Any = None
    """The row data of a create or update, as a plain dict (a list of them for a
    multi-row create)."""
    result: Any = None
    """After hooks: the data about to be sent (a dict, or a list for list reads)."""
    message: Message | None = None
    subscription_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    """Scratch space shared by the hooks of one operation."""
    security_filters: list[FilterOption] = field(default_factory=list)
    subprotocol: str | None = None
    """Connect hooks: the subprotocol to select in the handshake answer."""

    @property
    def handshake(self) -> Handshake:
        """The handshake of the connection (headers, query string, cookies)."""
        return self.connection.handshake

    def add_filter(self, option: FilterOption) -> None:
        """Restrict the operation to rows matching ``option``.

        Filters added here are ANDed around the client's whole filter expression and
        apply to list reads, single reads, updates, deletes and subscriptions alike;
        for creates and updates the written row must match them.
        """
        if not isinstance(option, FilterOption):
            raise TypeError(f"expected a FilterOption, got {type(option).__name__}")
        self.security_filters.append(option)


Hook: TypeAlias = Callable[[HookContext], Awaitable[None] | None]
H = TypeVar("H", bound=Hook)


class HookRegistry:
    """Before and after hooks for each :class:`HookType`."""

    def __init__(self) -> None:
        self._before: dict[HookType, tuple[Hook, ...]] = {}
        self._after: dict[HookType, tuple[Hook, ...]] = {}
        self._after_per_identity: dict[HookType, bool] = {}

    def before(self, hook_type: HookType) -> Callable[[H], H]:
        """Decorator registering a hook to run before ``hook_type``."""

        def register(hook: H) -> H:
            self.register_before(hook_type, hook)
            return hook

        return register

    def after(
        self, hook_type: HookType, *, per_identity: bool = False
    ) -> Callable[[H], H]:
        """Decorator registering a hook to run after ``hook_type``.

        Args:
            hook_type: what the hook runs after.
            per_identity: see :meth:`register_after`.
        """

        def register(hook: H) -> H:
            self.register_after(hook_type, hook, per_identity=per_identity)
            return hook

        return register

    def register_before(self, hook_type: HookType, hook: Hook) -> None:
        """Register a hook to run before ``hook_type``."""
        self._before[HookType(hook_type)] = (
            *self._before.get(HookType(hook_type), ()),
            _check(hook),
        )

    def register_after(
        self, hook_type: HookType, hook: Hook, *, per_identity: bool = False
    ) -> None:
        """Register a hook to run after ``hook_type``.

        Args:
            hook_type: what the hook runs after.
            hook: a plain or async callable taking a :class:`HookContext`.
            per_identity: only for :attr:`HookType.READ`: the hook promises that what
                it makes of ``ctx.result`` (and whether it withholds it) depends only on
                the row and on the connection's identity (``Config.identity``, by
                default ``metadata["user_id"]``; every connection without one counts as
                the same identity), never on ``ctx.connection`` otherwise nor on
                ``ctx.subscription_id``. While every after-read hook is so declared, a
                notification's hooks run once per identity and shape, on one of that
                group's subscribers (its connection and subscription id in ``ctx``),
                and their result reaches the whole group. Reads answered to requests
                are unaffected.

        Raises:
            ValueError: ``per_identity`` for a hook type other than ``READ``.
        """
        hook_type = HookType(hook_type)
        if per_identity and hook_type is not HookType.READ:
            raise ValueError(
                f"per_identity applies to after-read hooks only, got {hook_type.name}"
            )
        self._after[hook_type] = (*self._after.get(hook_type, ()), _check(hook))
        self._after_per_identity[hook_type] = per_identity and (
            self._after_per_identity.get(hook_type, True)
        )

    def has_before(self, hook_type: HookType) -> bool:
        """Whether any before hook is registered for ``hook_type``."""
        return bool(self._before.get(hook_type))

    def has_after(self, hook_type: HookType) -> bool:
        """Whether any after hook is registered for ``hook_type``."""
        return bool(self._after.get(hook_type))

    def is_after_per_identity(self, hook_type: HookType) -> bool:
        """Whether after hooks of ``hook_type`` exist and all were declared per identity."""
        return self._after_per_identity.get(hook_type, False)

    def clear(self) -> None:
        """Remove every hook."""
        self._before.clear()
        self._after.clear()
        self._after_per_identity.clear()

    async def run_before(self, hook_type: HookType, ctx: HookContext) -> None:
        """Run the before hooks of ``hook_type``.

        Raises:
            ProtocolError: a hook refused; foreign exceptions become :class:`HookError`.
        """
        await _run(self._before.get(hook_type, ()), ctx)

    async def run_after(self, hook_type: HookType, ctx: HookContext) -> None:
        """Run the after hooks of ``hook_type`` (same errors as :meth:`run_before`)."""
        await _run(self._after.get(hook_type, ()), ctx)


def _check(hook: Hook) -> Hook:
    if not callable(hook):
        raise TypeError(f"expected a callable hook, got {hook!r}")
    return hook


async def _run(hooks: tuple[Hook, ...], ctx: HookContext) -> None:
    for hook in hooks:
        try:
            outcome = hook(ctx)
            if inspect.isawaitable(outcome):
                await outcome
        except ProtocolError:
            raise
        except Exception as exc:
            name = getattr(hook, "__qualname__", repr(hook))
            raise HookError(f"a hook failed ({name})") from exc
