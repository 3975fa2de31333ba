"""The codec, fed frames and built messages directly: no sockets, no event loop."""

from __future__ import annotations

import json
import re
import time as clock
import uuid
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import pytest

from websocketspec.exceptions import InvalidFilterError, InvalidMessageError
from websocketspec.protocol.codec import (
    Decoded,
    decode,
    encode,
    error_response,
    now,
    pong,
    response,
)
from websocketspec.protocol.messages import (
    ErrorInfo,
    FilterOption,
    Message,
    MessageType,
    QueryOptions,
    SortOption,
)

RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z$")


def only_error(items: list[Decoded]) -> Decoded:
    """The single item of a frame that earned one error and runs nothing."""
    assert len(items) == 1, items
    (item,) = items
    assert item.message is None
    assert item.error is not None
    return item


def assert_recent_utc(stamp: Any) -> None:
    assert isinstance(stamp, str)
    assert RFC3339_UTC.match(stamp), stamp
    parsed = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    assert abs(datetime.now(UTC) - parsed) < timedelta(minutes=1)


# -- decode: single messages ------------------------------------------------------


def test_single_message_decodes_every_envelope_field() -> None:
    frame = json.dumps(
        {
            "id": "m-1",
            "type": "request",
            "operation": "read",
            "schema": "public",
            "entity": "users",
            "record_id": "7",
            "data": {"name": "Ann"},
            "options": {
                "filters": [
                    {
                        "column": "age",
                        "operator": "gte",
                        "value": 18,
                        "logic_operator": "OR",
                    }
                ],
                "columns": ["id", "name"],
                "sort": [{"column": "name", "direction": "desc"}],
                "limit": 10,
                "offset": 20,
            },
            "subscription_id": "sub-1",
            "metadata": {"trace": "abc"},
        }
    )
    [item] = decode(frame)
    assert item.error is None
    assert item.id == "m-1"
    assert item.message == Message(
        id="m-1",
        type="request",
        operation="read",
        schema="public",
        entity="users",
        record_id="7",
        data={"name": "Ann"},
        options=QueryOptions(
            filters=[FilterOption("age", "gte", 18, "OR")],
            columns=["id", "name"],
            sort=[SortOption("name", "desc")],
            limit=10,
            offset=20,
        ),
        subscription_id="sub-1",
        metadata={"trace": "abc"},
    )


def test_integer_ids_stay_integers() -> None:
    [item] = decode('{"id": 7, "type": "ping"}')
    assert item.id == 7
    assert item.message is not None
    assert item.message.id == 7
    assert not isinstance(item.id, bool)


def test_bytes_frames_decode_like_text() -> None:
    [item] = decode(b'{"id": "b", "type": "ping"}')
    assert item.message is not None
    assert item.message.type == "ping"
    assert item.id == "b"


def test_unknown_keys_are_ignored_so_newer_clients_keep_working() -> None:
    [item] = decode('{"id": "a", "type": "ping", "added_in_v2": {"x": 1}}')
    assert item.error is None
    assert item.message == Message(id="a", type="ping")


def test_missing_fields_decode_to_none_and_are_left_to_the_dispatcher() -> None:
    # The codec does not know which fields an operation needs: `{}` is a message.
    [item] = decode("{}")
    assert item.error is None
    assert item.message == Message()
    assert item.id is None


# -- decode: frames that are not messages ----------------------------------------


@pytest.mark.parametrize(
    "frame",
    ["", "nope", "{", '{"id": "a",}', "[{}", '{"id": "a"} {"id": "b"}'],
    ids=[
        "empty",
        "word",
        "unclosed",
        "trailing-comma",
        "unclosed-batch",
        "two-objects",
    ],
)
def test_invalid_json_is_one_invalid_message_with_no_id(frame: str) -> None:
    item = only_error(decode(frame))
    assert isinstance(item.error, InvalidMessageError)
    assert item.error.code == "invalid_message"
    assert item.id is None


def test_newline_packed_objects_are_not_split_into_messages() -> None:
    # The Go implementation packed messages with "\n"; one frame is one message here.
    item = only_error(
        decode('{"id": "a", "type": "ping"}\n{"id": "b", "type": "ping"}')
    )
    assert item.error is not None
    assert item.error.code == "invalid_message"


@pytest.mark.parametrize("frame", ["42", '"ping"', "null", "true", "1.5"])
def test_json_that_is_neither_object_nor_array_is_invalid_message(frame: str) -> None:
    item = only_error(decode(frame))
    assert isinstance(item.error, InvalidMessageError)
    assert item.error.code == "invalid_message"
    assert item.id is None


# -- decode: batches ----------------------------------------------------------------


def test_batch_gives_one_item_per_element_in_order() -> None:
    frame = json.dumps(
        [
            {"id": "a", "type": "ping"},
            {"id": 2, "type": "request", "operation": "read", "entity": "users"},
            {"id": "c", "type": "request", "operation": "meta", "entity": "posts"},
        ]
    )
    items = decode(frame)
    assert [i.id for i in items] == ["a", 2, "c"]
    assert all(i.error is None for i in items)
    assert [i.message.operation for i in items if i.message is not None] == [
        None,
        "read",
        "meta",
    ]


def test_empty_batch_is_one_invalid_message() -> None:
    item = only_error(decode("[]"))
    assert isinstance(item.error, InvalidMessageError)
    assert item.error.code == "invalid_message"
    assert item.id is None


def test_batch_of_exactly_max_batch_is_accepted() -> None:
    frame = json.dumps([{"id": i, "type": "ping"} for i in range(3)])
    items = decode(frame, max_batch=3)
    assert [i.id for i in items] == [0, 1, 2]
    assert all(i.message is not None for i in items)


def test_batch_over_max_batch_is_one_invalid_message_and_nothing_runs() -> None:
    frame = json.dumps([{"id": i, "type": "ping"} for i in range(4)])
    item = only_error(decode(frame, max_batch=3))
    assert item.error is not None
    assert item.error.code == "invalid_message"
    assert item.error.details == {"max_batch": 3}
    assert "3" in item.error.message
    assert item.id is None


def test_default_max_batch_is_one_hundred() -> None:
    ok = decode(json.dumps([{"id": i, "type": "ping"} for i in range(100)]))
    assert len(ok) == 100
    only_error(decode(json.dumps([{"id": i, "type": "ping"} for i in range(101)])))


def test_batch_over_max_batch_with_a_malformed_element_is_still_one_error() -> None:
    frame = json.dumps([{"id": 1, "type": "ping"}, {"id": 2, "operation": 5}, 3, {}])
    item = only_error(decode(frame, max_batch=3))
    assert item.error is not None
    assert item.error.code == "invalid_message"


@pytest.mark.parametrize(
    "element", [1, "ping", None, [], [{"id": "x", "type": "ping"}], True]
)
def test_non_object_batch_element_rejects_the_whole_batch(element: Any) -> None:
    frame = json.dumps([{"id": "a", "type": "ping"}, element, {"id": "b"}])
    item = only_error(decode(frame))
    assert isinstance(item.error, InvalidMessageError)
    assert item.error.code == "invalid_message"
    assert item.id is None


def test_malformed_element_of_a_batch_keeps_its_id_and_spares_the_others() -> None:
    frame = json.dumps(
        [
            {"id": "good", "type": "ping"},
            {"id": "bad", "type": "request", "operation": ["read"]},
        ]
    )
    good, bad = decode(frame)
    assert good.message == Message(id="good", type="ping")
    assert bad.message is None
    assert bad.id == "bad"
    assert bad.error is not None
    assert bad.error.code == "invalid_message"


# -- decode: fields of the wrong type ----------------------------------------------


@pytest.mark.parametrize(
    ("msg_id", "fields", "path"),
    [
        ("s", {"operation": 5}, "$.operation"),
        (9, {"type": ["request"]}, "$.type"),
        ("s", {"entity": {"name": "users"}}, "$.entity"),
        ("s", {"schema": 1}, "$.schema"),
        (3, {"record_id": [1, 2]}, "$.record_id"),
        ("s", {"options": "all"}, "$.options"),
        ("s", {"options": {"limit": "ten"}}, "$.options.limit"),
        ("s", {"options": {"columns": "name"}}, "$.options.columns"),
        ("s", {"options": {"sort": [{"direction": "asc"}]}}, "$.options.sort[0]"),
        ("s", {"subscription_id": 12}, "$.subscription_id"),
    ],
)
def test_wrong_field_type_is_invalid_message_that_keeps_the_id(
    msg_id: str | int, fields: dict[str, Any], path: str
) -> None:
    frame = json.dumps({"id": msg_id, "type": "request", **fields})
    item = only_error(decode(frame))
    assert isinstance(item.error, InvalidMessageError)
    assert item.error.code == "invalid_message"
    assert item.id == msg_id
    assert path in item.error.message


@pytest.mark.parametrize(
    "options",
    [
        {"filters": "age > 3"},
        {"filters": [{"column": 1, "operator": "eq", "value": 1}]},
        {"filters": [{"column": "age", "value": 1}]},
        {"filters": [{"column": "age", "operator": None, "value": 1}]},
        {"preload": [{"relation": "user", "filters": [{"column": "id"}]}]},
    ],
)
def test_malformed_filter_is_invalid_filter_that_keeps_the_id(
    options: dict[str, Any],
) -> None:
    frame = json.dumps({"id": "f", "type": "request", "options": options})
    item = only_error(decode(frame))
    assert isinstance(item.error, InvalidFilterError)
    assert item.error.code == "invalid_filter"
    assert item.id == "f"


@pytest.mark.parametrize("bad_id", [True, 1.5, {"n": 1}, [1]])
def test_id_of_a_wrong_type_cannot_be_echoed(bad_id: Any) -> None:
    item = only_error(decode(json.dumps({"id": bad_id, "type": "ping"})))
    assert item.error is not None
    assert item.error.code == "invalid_message"
    assert item.id is None


# -- encode and the messages the server builds -----------------------------------


def test_response_carries_id_type_success_data_metadata_and_timestamp() -> None:
    out = response("r-1", [{"id": 1}], {"total": 1, "count": 1})
    assert set(out) == {"id", "type", "success", "data", "metadata", "timestamp"}
    assert out["id"] == "r-1"
    assert out["type"] == "response"
    assert out["success"] is True
    assert out["data"] == [{"id": 1}]
    assert out["metadata"] == {"total": 1, "count": 1}
    assert_recent_utc(out["timestamp"])


def test_response_keeps_falsy_data() -> None:
    assert response(1, [])["data"] == []
    assert response(1, {})["data"] == {}


def test_response_and_pong_echo_integer_ids_as_numbers() -> None:
    assert json.loads(encode(response(41, {"ok": True})))["id"] == 41
    assert json.loads(encode(error_response(42, ErrorInfo("x", "y"))))["id"] == 42
    assert json.loads(encode(pong(43)))["id"] == 43


def test_error_response_shape() -> None:
    out = json.loads(
        encode(
            error_response(
                "e-1",
                ErrorInfo("validation_error", "name is required", {"field": "name"}),
            )
        )
    )
    assert set(out) == {"id", "type", "success", "error", "timestamp"}
    assert out["id"] == "e-1"
    assert out["type"] == "response"
    assert out["success"] is False
    assert out["error"] == {
        "code": "validation_error",
        "message": "name is required",
        "details": {"field": "name"},
    }
    assert_recent_utc(out["timestamp"])


def test_error_response_without_details_has_no_details_key() -> None:
    out = json.loads(encode(error_response(None, ErrorInfo("invalid_message", "bad"))))
    assert out["id"] is None
    assert out["error"] == {"code": "invalid_message", "message": "bad"}


def test_pong_is_id_type_and_timestamp_only() -> None:
    out = json.loads(encode(pong("p-1")))
    assert set(out) == {"id", "type", "timestamp"}
    assert out["id"] == "p-1"
    assert out["type"] == "pong"
    assert_recent_utc(out["timestamp"])


def test_now_is_rfc3339_utc_ending_in_z() -> None:
    assert_recent_utc(now())


def test_now_is_the_current_time_across_a_second_boundary() -> None:
    # The seconds are cached: the stamps around a boundary must still be exact.
    clock.sleep(max(0.0, 1 - clock.time() % 1 - 0.02))
    stamps: list[str] = []
    deadline = clock.monotonic() + 3
    while len({s[:19] for s in stamps}) < 2 or len(stamps) % 100:
        assert clock.monotonic() < deadline
        before = datetime.now(UTC).replace(tzinfo=None)
        stamp = now()
        after = datetime.now(UTC).replace(tzinfo=None)
        parsed = datetime.fromisoformat(stamp.removesuffix("Z"))
        assert before - timedelta(microseconds=1) <= parsed <= after, (before, stamp)
        stamps.append(stamp)
    assert stamps == sorted(stamps)


def test_encode_writes_values_as_the_wire_contract_says() -> None:
    text = encode(
        {
            "moment": datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC),
            "precise": datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC),
            "day": date(2024, 5, 6),
            "clock": time(7, 8, 9),
            "price": Decimal("12.50"),
            "id": uuid.UUID("12345678-1234-5678-1234-567812345678"),
            "blob": b"\x00\xffhi",
            "doc": {"a": [1, None, "x"]},
            "kind": MessageType.NOTIFICATION,
        }
    )
    assert json.loads(text) == {
        "moment": "2024-05-06T07:08:09Z",
        "precise": "2024-05-06T07:08:09.123456Z",
        "day": "2024-05-06",
        "clock": "07:08:09",
        "price": "12.50",
        "id": "12345678-1234-5678-1234-567812345678",
        "blob": "AP9oaQ==",
        "doc": {"a": [1, None, "x"]},
        "kind": "notification",
    }


def test_encode_is_one_json_object_on_one_line() -> None:
    text = encode(response("x", {"text": "line one\nline two"}))
    assert "\n" not in text
    assert json.loads(text)["data"] == {"text": "line one\nline two"}
