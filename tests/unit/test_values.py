"""Coercion of JSON values to column types, and normalisation of stored values."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from websocketspec.protocol.values import ColumnType, coerce, coerce_key, normalize

T = ColumnType
UID = "12345678-1234-5678-1234-567812345678"

GOOD: list[tuple[ColumnType, Any, Any]] = [
    (T.INTEGER, 0, 0),
    (T.INTEGER, -42, -42),
    (T.INTEGER, 2**53 + 1, 2**53 + 1),
    (T.FLOAT, 1.5, 1.5),
    (T.FLOAT, 3, 3.0),
    (T.FLOAT, -0.25, -0.25),
    (T.DECIMAL, "12.50", Decimal("12.50")),
    (T.DECIMAL, " 3.1 ", Decimal("3.1")),
    (T.DECIMAL, "-0.001", Decimal("-0.001")),
    (T.DECIMAL, 7, Decimal(7)),
    (T.DECIMAL, 1.1, Decimal("1.1")),
    (T.DECIMAL, Decimal("9.99"), Decimal("9.99")),
    (T.STRING, "héllo ✓", "héllo ✓"),
    (T.STRING, "", ""),
    (T.TEXT, "line\nline", "line\nline"),
    (T.BOOLEAN, True, True),
    (T.BOOLEAN, False, False),
    (T.DATE, "2024-02-29", date(2024, 2, 29)),
    (T.DATE, date(2024, 1, 2), date(2024, 1, 2)),
    (
        T.DATETIME,
        "2024-05-06T07:08:09Z",
        datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC),
    ),
    (
        T.DATETIME,
        "2024-05-06T07:08:09.250000Z",
        datetime(2024, 5, 6, 7, 8, 9, 250000, tzinfo=UTC),
    ),
    (
        T.DATETIME,
        "2024-05-06T09:08:09+02:00",
        datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC),
    ),
    (
        T.DATETIME,
        "2024-05-06T00:30:00-05:00",
        datetime(2024, 5, 6, 5, 30, tzinfo=UTC),
    ),
    (
        T.DATETIME,
        "2024-05-06t07:08:09z",
        datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC),
    ),
    (T.TIME, "07:08:09", time(7, 8, 9)),
    (T.TIME, "07:08:09.5", time(7, 8, 9, 500000)),
    (T.TIME, time(23, 59), time(23, 59)),
    (T.UUID, UID, uuid.UUID(UID)),
    (T.UUID, UID.upper(), uuid.UUID(UID)),
    (T.UUID, UID.replace("-", ""), uuid.UUID(UID)),
    (T.UUID, uuid.UUID(UID), uuid.UUID(UID)),
    (T.JSON, {"a": [1, None, "x"]}, {"a": [1, None, "x"]}),
    (T.JSON, [1, 2], [1, 2]),
    (T.JSON, "text", "text"),
    (T.JSON, 0, 0),
    (T.JSON, False, False),
    (T.BYTES, "aGk=", b"hi"),
    (T.BYTES, "AP9oaQ==", b"\x00\xffhi"),
    (T.BYTES, "", b""),
    (T.BYTES, b"raw", b"raw"),
]


@pytest.mark.parametrize(("ctype", "value", "expected"), GOOD)
def test_good_values_coerce_to_the_column_type(
    ctype: ColumnType, value: Any, expected: Any
) -> None:
    result = coerce(value, ctype)
    assert result == expected
    assert type(result) is type(expected)


def test_every_column_type_has_good_and_bad_cases() -> None:
    assert {c for c, _, _ in GOOD} == set(ColumnType)
    assert {c for c, _ in BAD} == set(ColumnType) - {ColumnType.JSON}


@pytest.mark.parametrize("ctype", list(ColumnType))
def test_none_passes_through_every_type(ctype: ColumnType) -> None:
    assert coerce(None, ctype) is None


BAD: list[tuple[ColumnType, Any]] = [
    (T.INTEGER, True),
    (T.INTEGER, False),
    (T.INTEGER, 1.0),
    (T.INTEGER, 1.5),
    (T.INTEGER, "1"),
    (T.INTEGER, [1]),
    (T.INTEGER, {"v": 1}),
    (T.FLOAT, True),
    (T.FLOAT, "1.5"),
    (T.FLOAT, [1.5]),
    (T.DECIMAL, True),
    (T.DECIMAL, "abc"),
    (T.DECIMAL, ""),
    (T.DECIMAL, "NaN"),
    (T.DECIMAL, "Infinity"),
    (T.DECIMAL, "-inf"),
    (T.DECIMAL, ["1"]),
    (T.STRING, 1),
    (T.STRING, True),
    (T.STRING, ["a"]),
    (T.STRING, "nul\x00inside"),
    (T.TEXT, {"a": "b"}),
    (T.BOOLEAN, 1),
    (T.BOOLEAN, 0),
    (T.BOOLEAN, "true"),
    (T.BOOLEAN, "false"),
    (T.DATE, "2024-02-30"),
    (T.DATE, "2024/01/02"),
    (T.DATE, "2024-01-02T03:04:05"),
    (T.DATE, 20240102),
    (T.DATE, datetime(2024, 1, 2, 3, 4)),
    (T.DATETIME, "yesterday"),
    (T.DATETIME, "07:08:09"),
    (T.DATETIME, "2024-13-01T00:00:00Z"),
    (T.DATETIME, 1_700_000_000),
    (T.DATETIME, True),
    (T.TIME, "25:00:00"),
    (T.TIME, "noon"),
    (T.TIME, 700),
    (T.UUID, "not-a-uuid"),
    (T.UUID, UID[:-1]),
    (T.UUID, 5),
    (T.BYTES, "aGk"),
    (T.BYTES, "a*k="),
    (T.BYTES, 5),
    (T.BYTES, ["aGk="]),
]


@pytest.mark.parametrize(("ctype", "value"), BAD)
def test_bad_values_raise_value_error_saying_what_was_expected(
    ctype: ColumnType, value: Any
) -> None:
    with pytest.raises(ValueError, match=r"^expected .+, got .+") as info:
        coerce(value, ctype)
    # No traceback text or exception class names reach the message.
    assert "Error" not in str(info.value)


def test_bool_is_not_an_integer_nor_a_number() -> None:
    for ctype in (T.INTEGER, T.FLOAT, T.DECIMAL):
        with pytest.raises(ValueError, match="got a boolean"):
            coerce(True, ctype)


def test_naive_datetime_is_taken_as_utc() -> None:
    result = coerce("2024-05-06T07:08:09", T.DATETIME)
    assert result == datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
    assert result.utcoffset() == timedelta(0)
    naive = coerce(datetime(2024, 5, 6, 7, 8, 9), T.DATETIME)
    assert naive == datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
    assert naive.utcoffset() == timedelta(0)


def test_datetime_with_an_offset_is_converted_to_utc() -> None:
    result = coerce("2024-05-06T09:08:09+02:00", T.DATETIME)
    assert result.tzinfo is UTC
    assert (result.hour, result.minute) == (7, 8)
    aware = datetime(2024, 1, 1, 1, tzinfo=timezone(timedelta(hours=3)))
    converted = coerce(aware, T.DATETIME)
    assert converted.tzinfo is UTC
    assert converted == datetime(2023, 12, 31, 22, tzinfo=UTC)


def test_decimal_from_string_keeps_its_digits() -> None:
    value = coerce("0.10", T.DECIMAL)
    assert isinstance(value, Decimal)
    assert str(value) == "0.10"
    # A float goes through its shortest repr, not its binary expansion.
    assert str(coerce(0.1, T.DECIMAL)) == "0.1"


def test_bytes_are_strict_base64() -> None:
    assert coerce("aGVsbG8gd29ybGQ=", T.BYTES) == b"hello world"
    with pytest.raises(ValueError, match="base64"):
        coerce("aGVs bG8=", T.BYTES)


def test_long_strings_are_not_echoed_in_the_message() -> None:
    with pytest.raises(ValueError) as info:
        coerce("x" * 500, T.INTEGER)
    assert "x" * 50 not in str(info.value)
    assert "a string" in str(info.value)


# -- coerce_key: record ids sent as strings or numbers ----------------------------


@pytest.mark.parametrize(
    ("value", "ctype", "expected"),
    [
        ("42", T.INTEGER, 42),
        (" 42 ", T.INTEGER, 42),
        ("-3", T.INTEGER, -3),
        (42, T.INTEGER, 42),
        (42, T.STRING, "42"),
        ("abc", T.STRING, "abc"),
        ("1.5", T.FLOAT, 1.5),
        (1.5, T.FLOAT, 1.5),
        ("1.50", T.DECIMAL, Decimal("1.50")),
        (UID, T.UUID, uuid.UUID(UID)),
        ("2024-01-02", T.DATE, date(2024, 1, 2)),
    ],
)
def test_record_ids_coerce_to_the_key_type(
    value: Any, ctype: ColumnType, expected: Any
) -> None:
    result = coerce_key(value, ctype)
    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize(
    ("value", "ctype"),
    [
        ("4.2", T.INTEGER),
        ("", T.INTEGER),
        ("12abc", T.INTEGER),
        ("٤٢", T.INTEGER),  # non-ASCII digits are not an id
        (True, T.INTEGER),
        (4.2, T.INTEGER),
        ("x", T.DECIMAL),
        ("x", T.FLOAT),
        ("abc", T.UUID),
        (True, T.STRING),
    ],
)
def test_record_ids_that_cannot_name_a_row_raise(value: Any, ctype: ColumnType) -> None:
    with pytest.raises(ValueError, match="expected"):
        coerce_key(value, ctype)


# -- normalize: values read back from a database ----------------------------------


def test_normalize_makes_naive_datetimes_utc() -> None:
    result = normalize(datetime(2024, 5, 6, 7, 8, 9))
    assert result == datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
    assert result.utcoffset() == timedelta(0)


def test_normalize_converts_aware_datetimes_to_utc() -> None:
    result = normalize(datetime(2024, 5, 6, 9, tzinfo=timezone(timedelta(hours=2))))
    assert result == datetime(2024, 5, 6, 7, tzinfo=UTC)
    assert result.utcoffset() == timedelta(0)
    assert result.hour == 7


def test_normalize_turns_memoryview_into_bytes() -> None:
    result = normalize(memoryview(b"\x00\x01"))
    assert result == b"\x00\x01"
    assert type(result) is bytes


@pytest.mark.parametrize(
    "value",
    [
        1,
        1.5,
        "x",
        True,
        None,
        Decimal("1.50"),
        date(2024, 1, 2),
        time(1, 2),
        uuid.UUID(UID),
        b"x",
        {"a": 1},
    ],
)
def test_normalize_leaves_other_values_alone(value: Any) -> None:
    assert normalize(value) is value


def test_column_type_names_are_the_wire_names() -> None:
    assert sorted(t.value for t in ColumnType) == sorted(
        [
            "integer",
            "float",
            "decimal",
            "string",
            "text",
            "boolean",
            "date",
            "datetime",
            "time",
            "uuid",
            "json",
            "bytes",
        ]
    )
    assert ColumnType("datetime") is ColumnType.DATETIME
