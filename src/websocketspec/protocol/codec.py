"""Decode inbound frames and encode outbound messages: the only place JSON is parsed.

``decode`` turns one text frame into a list of :class:`Decoded` items: a batch frame
gives one item per element. An item carries either a :class:`Message` or the error
that its element earned, with the element's ``id`` when one could be read, so that
every error can be correlated by the client.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import Enum
from typing import Any

import msgspec

from websocketspec.exceptions import (
    InvalidFilterError,
    InvalidMessageError,
    LimitError,
    ProtocolError,
)
from websocketspec.protocol.messages import ErrorInfo, Message

__all__ = [
    "Decoded",
    "decode",
    "encode",
    "error_response",
    "now",
    "pong",
    "response",
]

_FRAME = Message | list[Message]
_fast_decoder = msgspec.json.Decoder(_FRAME)
_any_decoder = msgspec.json.Decoder()


def _enc_hook(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (set, frozenset)):
        return list(value)
    raise NotImplementedError(f"cannot encode {type(value).__name__} as JSON")


_encoder = msgspec.json.Encoder(enc_hook=_enc_hook, decimal_format="string")


@dataclass(slots=True)
class Decoded:
    """One decoded element of a frame: a message, or the error it earned."""

    message: Message | None = None
    error: ProtocolError | None = None
    id: str | int | None = None


def decode(
    frame: str | bytes, *, max_batch: int = 100, max_depth: int = 32
) -> list[Decoded]:
    """Decode a text frame into messages.

    Args:
        frame: the frame's text.
        max_batch: the largest batch (JSON array) accepted.
        max_depth: the deepest nesting of arrays and objects a message may hold.

    Returns:
        One item per message. A frame that is not JSON, an empty batch, a batch
        with a non-object element or a batch over ``max_batch`` gives a single
        error item and nothing to run.
    """
    try:
        parsed = _fast_decoder.decode(frame)
    except msgspec.ValidationError:
        items = _decode_slow(frame, max_batch, max_depth)
    except msgspec.DecodeError:
        return [Decoded(error=InvalidMessageError("the frame is not valid JSON"))]
    except RecursionError:
        return [Decoded(error=_too_deep(max_depth))]
    else:
        if isinstance(parsed, Message):
            items = [Decoded(message=parsed, id=parsed.id)]
        else:
            problem = _batch_problem(len(parsed), max_batch)
            if problem is not None:
                return [Decoded(error=problem)]
            items = [Decoded(message=m, id=m.id) for m in parsed]
    for item in items:
        if item.message is not None and _deeper_than(item.message, max_depth):
            item.message, item.error = None, _too_deep(max_depth)
    return items


def _too_deep(max_depth: int) -> ProtocolError:
    return LimitError(
        f"the message nests arrays and objects deeper than {max_depth} levels",
        code="message_too_deep",
        details={"max_depth": max_depth},
    )


def _deeper_than(message: Message, limit: int) -> bool:
    """Whether the free-form parts of a message nest deeper than ``limit``.

    The envelope itself is level 1; ``data`` and the other free-form values start at
    level 2 (filter values at level 4, inside ``options.filters[i]``).
    """
    roots: list[tuple[Any, int]] = [
        (message.data, 2),
        (message.metadata, 2),
        (message.record_id, 2),
    ]
    if message.options is not None:
        roots.extend((f.value, 4) for f in message.options.filters)
        for p in message.options.preload:
            roots.extend((f.value, 6) for f in p.filters)
    stack = [
        (value, depth) for value, depth in roots if isinstance(value, (dict, list))
    ]
    while stack:
        value, depth = stack.pop()
        if depth > limit:
            return True
        children = value.values() if isinstance(value, dict) else value
        stack.extend(
            (child, depth + 1) for child in children if isinstance(child, (dict, list))
        )
    return False


def _batch_problem(length: int, max_batch: int) -> ProtocolError | None:
    if length == 0:
        return InvalidMessageError("a batch must hold at least one message")
    if length > max_batch:
        return InvalidMessageError(
            f"a batch may hold at most {max_batch} messages, got {length}",
            details={"max_batch": max_batch},
        )
    return None


def _decode_slow(frame: str | bytes, max_batch: int, max_depth: int) -> list[Decoded]:
    """Decode element by element to find which one is wrong, keeping ids."""
    try:
        obj = _any_decoder.decode(frame)
    except msgspec.DecodeError:  # pragma: no cover - the fast path caught it
        return [Decoded(error=InvalidMessageError("the frame is not valid JSON"))]
    except RecursionError:
        return [Decoded(error=_too_deep(max_depth))]
    if isinstance(obj, dict):
        return [_convert(obj, max_depth)]
    if not isinstance(obj, list):
        return [
            Decoded(
                error=InvalidMessageError("a frame must hold a JSON object or array")
            )
        ]
    problem = _batch_problem(len(obj), max_batch)
    if problem is None and not all(isinstance(e, dict) for e in obj):
        problem = InvalidMessageError("every element of a batch must be a JSON object")
    if problem is not None:
        return [Decoded(error=problem)]
    return [_convert(e, max_depth) for e in obj]


def _convert(obj: dict[str, Any], max_depth: int) -> Decoded:
    raw_id = obj.get("id")
    msg_id = (
        raw_id
        if isinstance(raw_id, (str, int)) and not isinstance(raw_id, bool)
        else None
    )
    try:
        message = msgspec.convert(obj, Message)
    except RecursionError:
        return Decoded(error=_too_deep(max_depth), id=msg_id)
    except msgspec.ValidationError as exc:
        text = str(exc)
        error: ProtocolError
        if "$.options.filters" in text or (
            "$.options.preload" in text and ".filters" in text
        ):
            error = InvalidFilterError(f"invalid filter: {text}")
        else:
            error = InvalidMessageError(f"invalid message: {text}")
        return Decoded(error=error, id=msg_id)
    return Decoded(message=message, id=msg_id)


_second: tuple[int, str] = (-1, "")


def now() -> str:
    """The current UTC time in RFC 3339 with microseconds, ending in ``Z``.

    Every response and notification carries one: the seconds are formatted once per
    second (``strftime`` alone costs more than encoding a small message).
    """
    global _second  # a one-entry cache, replaced whole
    t = time.time()
    second = int(t)
    cached = _second
    if cached[0] != second:
        cached = _second = (
            second,
            time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)),
        )
    return f"{cached[1]}.{int((t - second) * 1_000_000):06d}Z"


def encode(message: dict[str, Any]) -> str:
    """Encode an outbound message as JSON text."""
    return _encoder.encode(message).decode()


def response(
    msg_id: str | int | None,
    data: Any = None,
    metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Build a successful response."""
    out: dict[str, Any] = {"id": msg_id, "type": "response", "success": True}
    if data is not None:
        out["data"] = data
    if metadata is not None:
        out["metadata"] = metadata
    out["timestamp"] = now()
    return out


def error_response(msg_id: str | int | None, error: ErrorInfo) -> dict[str, Any]:
    """Build a failed response."""
    body: dict[str, Any] = {"code": error.code, "message": error.message}
    if error.details:
        body["details"] = error.details
    return {
        "id": msg_id,
        "type": "response",
        "success": False,
        "error": body,
        "timestamp": now(),
    }


def pong(msg_id: str | int | None) -> dict[str, Any]:
    """Build the answer to a ``ping`` message."""
    return {"id": msg_id, "type": "pong", "timestamp": now()}
