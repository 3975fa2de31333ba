"""Column types of the wire contract and the coercion of JSON values to them.

Every value a client sends for a column (in ``data``, a filter or a ``record_id``) is
coerced here to the Python type that the adapters store and that the in-memory
matcher compares, so that both paths see the same values. Rows going out are
normalised with :func:`normalize` (datetimes become timezone-aware UTC).
"""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import UTC, date, datetime, time
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any

__all__ = ["ColumnType", "coerce", "coerce_key", "coerce_row", "normalize"]


class ColumnType(StrEnum):
    """The portable type of a column, as reported by ``meta``."""

    INTEGER = "integer"
    FLOAT = "float"
    DECIMAL = "decimal"
    STRING = "string"
    TEXT = "text"
    BOOLEAN = "boolean"
    DATE = "date"
    DATETIME = "datetime"
    TIME = "time"
    UUID = "uuid"
    JSON = "json"
    BYTES = "bytes"


TEXT_TYPES = frozenset({ColumnType.STRING, ColumnType.TEXT})
ORDERED_TYPES = frozenset(
    {
        ColumnType.INTEGER,
        ColumnType.FLOAT,
        ColumnType.DECIMAL,
        ColumnType.STRING,
        ColumnType.TEXT,
        ColumnType.BOOLEAN,
        ColumnType.DATE,
        ColumnType.DATETIME,
        ColumnType.TIME,
        ColumnType.UUID,
    }
)


def _expected(ctype: ColumnType) -> str:
    return {
        ColumnType.INTEGER: "an integer",
        ColumnType.FLOAT: "a number",
        ColumnType.DECIMAL: "a decimal number or a string holding one",
        ColumnType.STRING: "a string",
        ColumnType.TEXT: "a string",
        ColumnType.BOOLEAN: "true or false",
        ColumnType.DATE: "a date as 'YYYY-MM-DD'",
        ColumnType.DATETIME: "an RFC 3339 date-time string",
        ColumnType.TIME: "a time as 'HH:MM:SS'",
        ColumnType.UUID: "a UUID string",
        ColumnType.JSON: "any JSON value",
        ColumnType.BYTES: "a base64 string",
    }[ctype]


def coerce(value: Any, ctype: ColumnType) -> Any:
    """Coerce a JSON value to the Python value of a column type.

    ``None`` passes through; whether it is allowed is the caller's business.

    Raises:
        ValueError: the value does not fit; the message says what was expected.
    """
    if value is None:
        return None
    try:
        result = _COERCERS[ctype](value)
    except _UnfitError as exc:
        raise ValueError(str(exc)) from None
    except (ValueError, TypeError, InvalidOperation, binascii.Error, OverflowError):
        result = _FAIL
    if result is _FAIL:
        raise ValueError(f"expected {_expected(ctype)}, got {_describe(value)}")
    return result


def coerce_key(value: Any, ctype: ColumnType) -> Any:
    """Coerce a ``record_id`` (sent as a string or a number) to a key value.

    Raises:
        ValueError: the value cannot name a row of that key type.
    """
    if ctype is ColumnType.INTEGER and isinstance(value, str):
        text = value.strip()
        if text.lstrip("-").isdigit() and text.isascii():
            # Through coerce, so that an id of more than 64 bits is refused as a
            # number would be, before a driver overflows on it.
            return coerce(int(text), ctype)
        raise ValueError(f"expected an integer id, got {value!r}")
    if ctype in (ColumnType.FLOAT, ColumnType.DECIMAL) and isinstance(value, str):
        try:
            return (
                coerce(Decimal(value), ctype)
                if ctype is ColumnType.DECIMAL
                else float(value)
            )
        except (InvalidOperation, ValueError):
            raise ValueError(f"expected a numeric id, got {value!r}") from None
    if ctype in TEXT_TYPES and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return coerce(value, ctype)


_FAIL = object()


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string" if len(value) > 40 else f"{value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


_INT64 = (-(2**63), 2**63 - 1)


class _UnfitError(Exception):
    """A value of the right kind that still does not fit; its message says why."""


def _integer(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int):
        return _FAIL
    if not _INT64[0] <= value <= _INT64[1]:
        raise _UnfitError(f"{value} is out of range: integers have 64 bits at most")
    return value


def _float(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return _FAIL
    return float(value)


def _decimal(value: Any) -> Any:
    if isinstance(value, bool):
        return _FAIL
    if isinstance(value, Decimal):
        result = value
    elif isinstance(value, str):
        result = Decimal(value.strip())
    elif isinstance(value, int):
        result = Decimal(value)
    elif isinstance(value, float):
        result = Decimal(repr(value))
    else:
        return _FAIL
    if not result.is_finite():
        return _FAIL
    exponent = result.as_tuple().exponent
    if result.adjusted() >= 131072 or (isinstance(exponent, int) and exponent < -16383):
        # PostgreSQL's NUMERIC range (digits before and after the point), the widest of
        # any database: past it the driver cannot even send the value.
        raise _UnfitError("the number is out of range for a decimal")
    return result


def _string(value: Any) -> Any:
    return value if isinstance(value, str) and "\x00" not in value else _FAIL


def _boolean(value: Any) -> Any:
    return value if isinstance(value, bool) else _FAIL


def _date(value: Any) -> Any:
    if isinstance(value, datetime):
        return _FAIL
    if isinstance(value, date):
        return value
    if not isinstance(value, str):
        return _FAIL
    return date.fromisoformat(value)


def _datetime(value: Any) -> Any:
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        if len(value) < 10:
            return _FAIL
        parsed = datetime.fromisoformat(value.replace("z", "Z"))
    else:
        return _FAIL
    return to_utc(parsed)


def _time(value: Any) -> Any:
    if isinstance(value, time):
        return value
    if not isinstance(value, str):
        return _FAIL
    parsed = time.fromisoformat(value)
    if parsed.tzinfo is not None:
        raise _UnfitError(f"expected a time without a UTC offset, got {value!r}")
    return parsed


def _uuid(value: Any) -> Any:
    if isinstance(value, uuid.UUID):
        return value
    if not isinstance(value, str):
        return _FAIL
    return uuid.UUID(value)


def _json(value: Any) -> Any:
    return value


def _bytes(value: Any) -> Any:
    if isinstance(value, bytes):
        return value
    if not isinstance(value, str):
        return _FAIL
    return base64.b64decode(value, validate=True)


_COERCERS = {
    ColumnType.INTEGER: _integer,
    ColumnType.FLOAT: _float,
    ColumnType.DECIMAL: _decimal,
    ColumnType.STRING: _string,
    ColumnType.TEXT: _string,
    ColumnType.BOOLEAN: _boolean,
    ColumnType.DATE: _date,
    ColumnType.DATETIME: _datetime,
    ColumnType.TIME: _time,
    ColumnType.UUID: _uuid,
    ColumnType.JSON: _json,
    ColumnType.BYTES: _bytes,
}


def to_utc(value: datetime) -> datetime:
    """Make a datetime timezone-aware UTC; a naive one is taken as UTC."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def normalize(value: Any) -> Any:
    """Normalise a value read from a database for the wire and for matching."""
    if isinstance(value, datetime):
        return to_utc(value)
    if isinstance(value, memoryview):
        return value.tobytes()
    return value


def coerce_row(raw: dict[str, Any], types: dict[str, ColumnType]) -> dict[str, Any]:
    r"""Turn a row read back from JSON into the Python values the adapters produce.

    The JSON comes from a change log, a broker message or a capture trigger's
    ``to_jsonb``. Columns without a known type, and values that do not fit, are kept as they are.
    PostgreSQL's hex form of ``bytea`` (``"\x…"``) is understood too.
    """
    row: dict[str, Any] = {}
    # In the model's column order (to_jsonb sorts keys), then any others.
    ordered = [name for name in types if name in raw]
    ordered += [name for name in raw if name not in types]
    for name in ordered:
        value = raw[name]
        ctype = types.get(name)
        if ctype is None or value is None:
            row[name] = value
        elif (
            ctype is ColumnType.BYTES
            and isinstance(value, str)
            and value.startswith("\\x")
        ):
            row[name] = bytes.fromhex(value[2:])
        else:
            try:
                row[name] = coerce(value, ctype)
            except ValueError:
                row[name] = value
    return row
