"""The operator table: compile_filters validates and groups, matches evaluates in memory.

The SQL side of the same table is held to these results by
``tests/integration/test_filter_parity.py``.
"""

# Look-alike letters (dotless i, Greek) are the point of some of these tests.
# ruff: noqa: RUF001

from __future__ import annotations

from datetime import date
from itertools import product
from typing import Any

import pytest

from websocketspec.exceptions import InvalidFilterError, LimitError
from websocketspec.protocol.filters import (
    Condition,
    Expr,
    Group,
    Op,
    all_of,
    compile_filters,
    like_pattern,
    like_regex,
    matches,
)
from websocketspec.protocol.messages import FilterOption
from websocketspec.protocol.values import ColumnType

T = ColumnType
COLUMNS: dict[str, ColumnType] = {
    "id": T.INTEGER,
    "name": T.STRING,
    "body": T.TEXT,
    "age": T.INTEGER,
    "score": T.FLOAT,
    "active": T.BOOLEAN,
    "day": T.DATE,
    "doc": T.JSON,
    "blob": T.BYTES,
}


def compile_(*filters: FilterOption, max_in: int | None = None) -> Expr | None:
    return compile_filters(filters, COLUMNS, max_in=max_in)


def f(
    column: str, operator: str, value: Any = None, logic: str | None = None
) -> FilterOption:
    return FilterOption(column, operator, value, logic)


def match(option: FilterOption, **row: Any) -> bool:
    return matches(compile_(option), row)


# -- grouping --------------------------------------------------------------------


def test_no_filters_is_none_and_matches_everything() -> None:
    assert compile_() is None
    assert matches(None, {"age": None})


def test_or_joins_the_previous_filter_into_one_group_anded_with_the_rest() -> None:
    a, b, c = f("age", "eq", 1), f("age", "eq", 2, "OR"), f("name", "eq", "x")
    expr = compile_(a, b, c)
    cond_a = Condition("age", Op.EQ, 1, T.INTEGER)
    cond_b = Condition("age", Op.EQ, 2, T.INTEGER)
    cond_c = Condition("name", Op.EQ, "x", T.STRING)
    assert expr == Group("and", (Group("or", (cond_a, cond_b)), cond_c))


def test_grouping_truth_table_is_a_or_b_and_c() -> None:
    expr = compile_(
        f("age", "eq", 1),
        f("score", "eq", 1.0, "or"),
        f("active", "eq", True),
    )
    for a, b, c in product([False, True], repeat=3):
        row = {"age": 1 if a else 0, "score": 1.0 if b else 0.0, "active": c}
        assert matches(expr, row) is ((a or b) and c), (a, b, c)


def test_two_or_runs_are_two_groups() -> None:
    expr = compile_(
        f("age", "eq", 1),
        f("age", "eq", 2, "Or"),
        f("name", "eq", "x", "AND"),
        f("name", "eq", "y", "or"),
        f("name", "eq", "z", "OR"),
    )
    assert isinstance(expr, Group)
    assert expr.kind == "and"
    assert [type(e) for e in expr.items] == [Group, Group]
    assert matches(expr, {"age": 2, "name": "z"})
    assert not matches(expr, {"age": 3, "name": "z"})
    assert not matches(expr, {"age": 1, "name": "w"})


def test_or_on_the_first_filter_has_nothing_to_join() -> None:
    assert compile_(f("age", "eq", 1, "OR")) == Condition("age", Op.EQ, 1, T.INTEGER)


def test_all_of_drops_missing_parts() -> None:
    a = Condition("age", Op.EQ, 1, T.INTEGER)
    assert all_of() is None
    assert all_of(None, None) is None
    assert all_of(None, a) is a
    assert all_of(a, None, a) == Group("and", (a, a))


@pytest.mark.parametrize("name", ["EQ", "Eq", "eQ", "Is_Null", "NOT_IN", "StartsWith"])
def test_operator_names_are_case_insensitive(name: str) -> None:
    value = [1] if name.lower() == "not_in" else ("a" if "start" in name.lower() else 1)
    column = "name" if "start" in name.lower() else "age"
    expr = compile_(f(column, name, value))
    assert isinstance(expr, Condition)
    assert expr.op is Op(name.lower())


# -- NULL ------------------------------------------------------------------------


def test_eq_null_is_is_null_and_neq_null_is_is_not_null() -> None:
    assert compile_(f("age", "eq", None)) == Condition(
        "age", Op.IS_NULL, None, T.INTEGER
    )
    assert compile_(f("age", "NEQ", None)) == Condition(
        "age", Op.IS_NOT_NULL, None, T.INTEGER
    )


def test_is_null_ignores_its_value() -> None:
    assert compile_(f("doc", "is_null", "ignored")) == Condition(
        "doc", Op.IS_NULL, None, T.JSON
    )


NON_NULL_FILTERS = [
    f("age", "eq", 1),
    f("age", "neq", 1),
    f("age", "gt", 1),
    f("age", "gte", 1),
    f("age", "lt", 1),
    f("age", "lte", 1),
    f("age", "in", [1, 2]),
    f("age", "not_in", [1, 2]),
    f("age", "not_in", []),
    f("age", "between", [0, 10]),
    f("name", "like", "%"),
    f("name", "ilike", "%"),
    f("name", "contains", ""),
    f("name", "startswith", ""),
    f("name", "endswith", ""),
    f("age", "is_not_null"),
]


@pytest.mark.parametrize("option", NON_NULL_FILTERS, ids=lambda o: o.operator)
def test_null_matches_no_operator_but_is_null(option: FilterOption) -> None:
    assert not matches(compile_(option), {option.column: None})


def test_null_matches_is_null_only() -> None:
    assert match(f("age", "is_null"), age=None)
    assert not match(f("age", "is_null"), age=0)
    assert match(f("age", "is_not_null"), age=0)


def test_a_missing_key_reads_as_null() -> None:
    assert match(f("age", "is_null"))
    assert not match(f("age", "neq", 1))


def test_not_in_with_a_null_row_is_false() -> None:
    assert not match(f("age", "not_in", [1]), age=None)
    assert match(f("age", "not_in", [1]), age=2)
    assert not match(f("age", "not_in", [1]), age=1)


# -- lists and ranges ------------------------------------------------------------


def test_in_empty_matches_nothing() -> None:
    for value in (None, 0, 1, -1):
        assert not match(f("age", "in", []), age=value)


def test_not_in_empty_matches_every_non_null_value() -> None:
    assert match(f("age", "not_in", []), age=0)


def test_in_matches_members_and_drops_duplicates() -> None:
    expr = compile_(f("age", "in", [3, 1, 3]))
    assert expr == Condition("age", Op.IN, (3, 1), T.INTEGER)
    assert match(f("age", "in", [3, 1, 3]), age=1)
    assert not match(f("age", "in", [3, 1, 3]), age=2)


def test_between_is_inclusive() -> None:
    option = f("age", "between", [2, 4])
    assert [match(option, age=v) for v in range(1, 6)] == [
        False,
        True,
        True,
        True,
        False,
    ]


def test_between_with_reversed_bounds_matches_nothing() -> None:
    assert not match(f("age", "between", [4, 2]), age=3)


def test_between_keeps_its_bounds_in_order_even_when_equal() -> None:
    assert compile_(f("age", "between", [2, 2])) == Condition(
        "age", Op.BETWEEN, (2, 2), T.INTEGER
    )


def test_values_are_coerced_to_the_column_type() -> None:
    assert match(f("day", "gte", "2024-01-02"), day=date(2024, 1, 2))
    assert match(f("score", "eq", 1), score=1.0)
    assert match(f("day", "in", ["2024-01-02"]), day=date(2024, 1, 2))


COMPARISONS: list[tuple[str, Any, Any, bool]] = [
    ("eq", 1, 1, True),
    ("eq", 1, 2, False),
    ("neq", 1, 2, True),
    ("neq", 1, 1, False),
    ("gt", 2, 1, True),
    ("gt", 1, 1, False),
    ("gte", 1, 1, True),
    ("gte", 0, 1, False),
    ("lt", 0, 1, True),
    ("lt", 1, 1, False),
    ("lte", 1, 1, True),
    ("lte", 2, 1, False),
]


@pytest.mark.parametrize(("operator", "row", "value", "expected"), COMPARISONS)
def test_comparisons(operator: str, row: int, value: int, expected: bool) -> None:
    assert match(f("age", operator, value), age=row) is expected


def test_text_compares_by_code_point() -> None:
    # "Z" < "a" < "É" < "é" < "中" by code point, whatever a locale would say.
    assert match(f("name", "lt", "a"), name="Z")
    assert match(f("name", "gt", "a"), name="É")
    assert match(f("name", "lt", "é"), name="É")
    assert match(f("name", "gt", "é"), name="中")
    assert not match(f("name", "eq", "e"), name="é")


def test_booleans_are_ordered() -> None:
    assert match(f("active", "gt", False), active=True)
    assert not match(f("active", "lt", False), active=False)


# -- like, ilike and the escaping operators --------------------------------------

LIKE_CASES: list[tuple[str, str, bool]] = [
    ("ann", "ann", True),
    ("ann", "Ann", False),  # like is case-sensitive
    ("a%", "ann", True),
    ("a%", "a", True),
    ("%", "", True),
    ("a%b", "a\nb", True),  # % spans newlines
    ("a_", "an", True),
    ("a_", "a", False),
    ("a_", "ann", False),
    ("_", "é", True),  # _ is one code point
    ("_", "中", True),
    ("__", "中文", True),
    ("50\\%", "50%", True),
    ("50\\%", "500", False),
    ("a\\_b", "a_b", True),
    ("a\\_b", "axb", False),
    ("a\\\\b", "a\\b", True),
    ("a\\\\%", "a\\xyz", True),
    ("a\\b", "ab", True),  # an escaped ordinary character is itself
    ("a\\", "a\\", True),  # a trailing lone escape is a backslash
    ("a\\", "a", False),
    ("a.c", "abc", False),  # regex characters are literal
    ("(a)*", "(a)*", True),
]


@pytest.mark.parametrize(("pattern", "value", "expected"), LIKE_CASES)
def test_like(pattern: str, value: str, expected: bool) -> None:
    assert match(f("name", "like", pattern), name=value) is expected
    assert (like_regex(pattern).fullmatch(value) is not None) is expected


ILIKE_CASES: list[tuple[str, str, bool]] = [
    ("ann", "ANN", True),
    ("ANN", "ann", True),
    ("émile", "ÉMILE", True),
    ("ÉM%", "émile", True),
    ("ΣΟΦΟΣ", "σοφος", True),  # both fold to a final sigma
    ("σοφοσ", "ΣΟΦΟΣ", False),  # str.lower() gives "σοφος"
    ("İstanbul", "i̇stanbul", True),  # İ lower-cases to i + combining dot
    ("İstanbul", "istanbul", False),
    ("ı", "I", False),  # dotless i is its own letter
    ("STRASSE", "straße", False),  # lower-casing, not case folding
    ("straße", "STRAẞE", True),  # capital sharp s lower-cases to ß
    ("50\\%", "50%", True),
    ("a\\_%", "A_B", True),
    ("a\\_%", "AXB", False),
]


@pytest.mark.parametrize(("pattern", "value", "expected"), ILIKE_CASES)
def test_ilike_folds_both_sides_with_str_lower(
    pattern: str, value: str, expected: bool
) -> None:
    assert match(f("name", "ilike", pattern), name=value) is expected


def test_ilike_keeps_the_folded_pattern() -> None:
    assert compile_(f("name", "ILIKE", "ÉMILE%")) == Condition(
        "name", Op.ILIKE, "émile%", T.STRING
    )


ESCAPING_CASES: list[tuple[str, str, str, bool]] = [
    ("contains", "%", "50%", True),
    ("contains", "%", "50", False),
    ("contains", "_", "a_b", True),
    ("contains", "_", "ab", False),
    ("contains", "\\", "a\\b", True),
    ("contains", "", "", True),
    ("contains", "nn", "Ann", True),
    ("contains", "NN", "Ann", False),  # case-sensitive
    ("startswith", "5%", "5%0", True),
    ("startswith", "5%", "50", False),
    ("startswith", "a_", "a_b", True),
    ("startswith", "a_", "abb", False),
    ("endswith", "_b", "a_b", True),
    ("endswith", "_b", "aab", False),
    ("endswith", "%", "100%", True),
    ("endswith", "\\", "a\\", True),
]


@pytest.mark.parametrize(("operator", "value", "row", "expected"), ESCAPING_CASES)
def test_contains_startswith_endswith_take_the_value_literally(
    operator: str, value: str, row: str, expected: bool
) -> None:
    assert match(f("body", operator, value), body=row) is expected
    # The SQL pattern means the same thing.
    pattern = like_pattern(Op(operator), value)
    assert (like_regex(pattern).fullmatch(row) is not None) is expected


def test_like_pattern_escapes_for_sql() -> None:
    assert like_pattern(Op.CONTAINS, "5%_\\") == "%5\\%\\_\\\\%"
    assert like_pattern(Op.STARTSWITH, "a_") == "a\\_%"
    assert like_pattern(Op.ENDSWITH, "%b") == "%\\%b"
    assert like_pattern(Op.LIKE, "a%\\_") == "a%\\_"
    assert like_pattern(Op.ILIKE, "a\\\\") == "a\\\\"


def test_like_pattern_spells_out_a_trailing_lone_escape() -> None:
    # SQL databases refuse a pattern ending in its escape character.
    assert like_pattern(Op.LIKE, "a\\") == "a\\\\"
    assert like_pattern(Op.ILIKE, "\\") == "\\\\"
    assert like_pattern(Op.LIKE, "a\\\\\\") == "a\\\\\\\\"
    for pattern in ("a\\", "\\", "a\\\\\\"):
        value = pattern.replace("\\\\", "\\")
        assert like_regex(like_pattern(Op.LIKE, pattern)).fullmatch(value)
        assert like_regex(pattern).fullmatch(value)


# -- refusals --------------------------------------------------------------------


def refused(*filters: FilterOption, max_in: int | None = None) -> InvalidFilterError:
    with pytest.raises(InvalidFilterError) as info:
        compile_(*filters, max_in=max_in)
    return info.value


def test_unknown_column_is_invalid_column() -> None:
    error = refused(f("age", "eq", 1), f("nope", "eq", 1))
    assert error.code == "invalid_column"
    assert error.details == {"field": "nope", "index": 1}


@pytest.mark.parametrize("operator", ["equals", "", "=", "like ", "in_list"])
def test_unknown_operator_is_invalid_filter(operator: str) -> None:
    error = refused(f("age", operator, 1))
    assert error.code == "invalid_filter"
    assert error.details == {"field": "age", "index": 0}


def test_an_operator_that_is_not_a_string_is_invalid_filter() -> None:
    error = refused(FilterOption("age", 1, 1))  # type: ignore[arg-type]
    assert error.code == "invalid_filter"


@pytest.mark.parametrize("logic", ["XOR", "NOT", "AND NOT", "||"])
def test_bad_logic_operator_is_invalid_filter(logic: str) -> None:
    error = refused(f("age", "eq", 1), f("age", "eq", 2, logic))
    assert error.code == "invalid_filter"
    assert error.details == {"index": 1}


BAD_VALUES = [
    pytest.param(f("age", "eq", "1"), id="string for integer"),
    pytest.param(f("age", "eq", 1.5), id="float for integer"),
    pytest.param(f("age", "eq", True), id="boolean for integer"),
    pytest.param(f("age", "gt", 2**63), id="integer past 64 bits"),
    pytest.param(f("age", "in", [-(2**63) - 1]), id="integer past 64 bits in a list"),
    pytest.param(f("score", "lt", "1"), id="string for float"),
    pytest.param(f("active", "eq", 1), id="number for boolean"),
    pytest.param(f("day", "eq", "yesterday"), id="bad date"),
    pytest.param(f("name", "eq", 1), id="number for string"),
    pytest.param(f("name", "eq", "a\x00b"), id="NUL in string"),
    pytest.param(f("age", "in", 1), id="in not a list"),
    pytest.param(f("age", "not_in", "1,2"), id="not_in not a list"),
    pytest.param(f("age", "in", [1, "2"]), id="bad item in list"),
    pytest.param(f("age", "between", [1]), id="between one value"),
    pytest.param(f("age", "between", [1, 2, 3]), id="between three values"),
    pytest.param(f("age", "between", 1), id="between not a list"),
    pytest.param(f("age", "in", [1, None]), id="null in in"),
    pytest.param(f("age", "not_in", [None]), id="null in not_in"),
    pytest.param(f("age", "between", [None, 2]), id="null in between"),
    pytest.param(f("age", "gt", None), id="null for gt"),
    pytest.param(f("name", "like", None), id="null for like"),
    pytest.param(f("age", "like", "1%"), id="like on integer"),
    pytest.param(f("active", "ilike", "t%"), id="ilike on boolean"),
    pytest.param(f("day", "contains", "2024"), id="contains on date"),
    pytest.param(f("doc", "gt", 1), id="gt on JSON"),
    pytest.param(f("doc", "between", [1, 2]), id="between on JSON"),
    pytest.param(f("doc", "eq", {"a": 1}), id="eq on JSON"),
    pytest.param(f("blob", "lt", "AA=="), id="lt on bytes"),
]


@pytest.mark.parametrize("option", BAD_VALUES)
def test_bad_values_are_invalid_filter(option: FilterOption) -> None:
    error = refused(option)
    assert error.code == "invalid_filter"
    assert error.details is not None
    assert error.details["field"] == option.column


def test_lists_longer_than_max_in_are_a_limit_error() -> None:
    assert compile_(f("age", "in", [1, 2]), max_in=2) is not None
    for option, max_in in (
        (f("age", "in", [1, 2, 3]), 2),
        (f("age", "between", [1, 2]), 1),
    ):
        with pytest.raises(LimitError) as info:
            compile_(option, max_in=max_in)
        assert info.value.code == "too_many_values"


def test_empty_logic_operator_means_and() -> None:
    expr = compile_(f("age", "eq", 1), f("age", "eq", 2, ""))
    assert isinstance(expr, Group)
    assert expr.kind == "and"


def test_sixty_four_bit_integers_are_accepted() -> None:
    expr = compile_(f("age", "between", [-(2**63), 2**63 - 1]))
    assert expr == Condition("age", Op.BETWEEN, (-(2**63), 2**63 - 1), T.INTEGER)
