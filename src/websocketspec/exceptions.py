"""The whole error hierarchy of websocketspec and its wire codes.

::

    WebSocketSpecError
    ├── ConfigurationError           set-up mistakes: duplicate model, bad URL
    │   └── MissingDependencyError   optional extra not installed (also an ImportError)
    ├── ProtocolError                a message we refuse; ``code`` is the wire error code
    │   ├── InvalidMessageError      invalid_message, invalid_message_type, invalid_operation
    │   ├── ModelNotFoundError       model_not_found
    │   ├── InvalidModelError        invalid_model
    │   ├── ValidationError          validation_error (carries ``field``)
    │   ├── InvalidFilterError       invalid_filter, invalid_column
    │   ├── NotFoundError            not_found, subscription_not_found, missing_subscription_id
    │   ├── UnauthorizedError        unauthorized
    │   ├── HookError                hook_error
    │   └── LimitError               rate_limited, message_too_large, too_many_subscriptions, ...
    ├── OperationError               the adapter failed; code is "<operation>_error"
    ├── BrokerError                  publish or listen failed
    └── ClientError                  raised by the clients only
        ├── ConnectionClosedError
        ├── RequestTimeoutError
        └── ServerError              a success=false reply; .code .message .details

Exceptions become wire errors in one place only: ``server/dispatch.py``. Messages of
``ProtocolError`` subclasses are written for the client and are sent verbatim; messages
of every other exception stay in the server log.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "BrokerError",
    "ClientError",
    "ConfigurationError",
    "ConnectionClosedError",
    "HookError",
    "InvalidFilterError",
    "InvalidMessageError",
    "InvalidModelError",
    "LimitError",
    "MissingDependencyError",
    "ModelNotFoundError",
    "NotFoundError",
    "OperationError",
    "ProtocolError",
    "RequestTimeoutError",
    "ServerError",
    "UnauthorizedError",
    "ValidationError",
    "WebSocketSpecError",
]


class WebSocketSpecError(Exception):
    """Base class of every exception raised by websocketspec."""


class ConfigurationError(WebSocketSpecError):
    """The framework was set up wrongly (duplicate model, bad URL, ...)."""


class MissingDependencyError(ConfigurationError, ImportError):
    """An optional dependency is not installed.

    Args:
        package: the import name that failed.
        extra: the ``pip install websocketspec[extra]`` that brings it.
    """

    def __init__(self, package: str, extra: str) -> None:
        super().__init__(
            f"{package!r} is not installed; install it with "
            f"pip install 'websocketspec[{extra}]'"
        )
        self.package = package
        self.extra = extra


class ProtocolError(WebSocketSpecError):
    """A client message that the server refuses, with a stable wire code.

    Hooks raise these to refuse a request; the message is sent to the client as is.

    Args:
        message: text for the client.
        code: overrides the class's default wire code.
        details: extra JSON-serialisable facts for the client.
    """

    code: ClassVar[str] = "invalid_message"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        if code is not None:
            self.code = code  # type: ignore[misc]  # instance override of the class default


class InvalidMessageError(ProtocolError):
    """The frame or envelope is malformed (``invalid_message`` and relatives)."""

    code: ClassVar[str] = "invalid_message"


class ModelNotFoundError(ProtocolError):
    """No model is registered under the schema and entity asked for."""

    code: ClassVar[str] = "model_not_found"


class InvalidModelError(ProtocolError):
    """``data`` is missing or is not an object where a row is needed."""

    code: ClassVar[str] = "invalid_model"


class ValidationError(ProtocolError):
    """A value does not fit its column, or a hook refused the data.

    Args:
        message: text for the client.
        field: the column the problem is about; sent as ``details.field``.
    """

    code: ClassVar[str] = "validation_error"

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        code: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        merged = dict(details or {})
        if field is not None:
            merged["field"] = field
        super().__init__(message, code=code, details=merged or None)
        self.field = field


class InvalidFilterError(ProtocolError):
    """An unknown operator or a filter value that does not fit its column."""

    code: ClassVar[str] = "invalid_filter"


class NotFoundError(ProtocolError):
    """The row (or subscription) named by the request does not exist."""

    code: ClassVar[str] = "not_found"


class UnauthorizedError(ProtocolError):
    """Raised by hooks to refuse a request or a connection."""

    code: ClassVar[str] = "unauthorized"


class HookError(ProtocolError):
    """A hook raised an exception that is not one of ours."""

    code: ClassVar[str] = "hook_error"


class LimitError(ProtocolError):
    """A configured limit was exceeded."""

    code: ClassVar[str] = "limit_exceeded"


class OperationError(WebSocketSpecError):
    """The database failed during an operation; the code is ``<operation>_error``.

    The message is for the server log; clients get a neutral text.
    """

    def __init__(
        self,
        operation: str,
        message: str = "the operation failed",
        *,
        public_message: str | None = None,
        refused: bool = False,
    ) -> None:
        super().__init__(message)
        self.operation = operation
        self.code = f"{operation}_error"
        self.public_message = public_message or f"the {operation} failed"
        """Text safe to show the client (never the database's own words)."""
        self.refused = refused
        """The database refused a statement (a constraint, a value): nothing was
        written. Otherwise (a connection lost, a timeout) it may have been."""


class BrokerError(WebSocketSpecError):
    """Publishing or listening on a broker failed."""


class ClientError(WebSocketSpecError):
    """Base class of the errors raised by the clients."""


class ConnectionClosedError(ClientError):
    """The connection closed before an answer arrived."""


class RequestTimeoutError(ClientError):
    """No answer arrived in time."""


class ServerError(ClientError):
    """The server answered ``success: false``.

    Args:
        code: the wire error code.
        message: the server's message.
        details: the server's details, if any.
    """

    def __init__(
        self, code: str, message: str, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details = details
