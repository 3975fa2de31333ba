"""websocketspec: serve database models over one WebSocket.

CRUD with rich queries, filtered live subscriptions and lifecycle hooks, as an ASGI
application over pluggable ORM adapters.
"""

from websocketspec.adapters.base import Adapter, Change
from websocketspec.broker.base import Broker
from websocketspec.broker.memory import MemoryBroker
from websocketspec.exceptions import (
    ConfigurationError,
    HookError,
    InvalidFilterError,
    InvalidMessageError,
    InvalidModelError,
    LimitError,
    MissingDependencyError,
    ModelNotFoundError,
    NotFoundError,
    OperationError,
    ProtocolError,
    UnauthorizedError,
    ValidationError,
    WebSocketSpecError,
)
from websocketspec.hooks import Handshake, HookContext, HookRegistry, HookType
from websocketspec.protocol.messages import (
    FilterOption,
    MessageType,
    Operation,
    PreloadOption,
    QueryOptions,
    SortOption,
)
from websocketspec.protocol.values import ColumnType
from websocketspec.registry import ModelRegistry
from websocketspec.server.app import Handler
from websocketspec.server.config import Config

__version__ = "0.1.0"

__all__ = [
    "Adapter",
    "Broker",
    "Change",
    "ColumnType",
    "Config",
    "ConfigurationError",
    "FilterOption",
    "Handler",
    "Handshake",
    "HookContext",
    "HookError",
    "HookRegistry",
    "HookType",
    "InvalidFilterError",
    "InvalidMessageError",
    "InvalidModelError",
    "LimitError",
    "MemoryBroker",
    "MessageType",
    "MissingDependencyError",
    "ModelNotFoundError",
    "ModelRegistry",
    "NotFoundError",
    "Operation",
    "OperationError",
    "PreloadOption",
    "ProtocolError",
    "QueryOptions",
    "SortOption",
    "UnauthorizedError",
    "ValidationError",
    "WebSocketSpecError",
    "__version__",
]
