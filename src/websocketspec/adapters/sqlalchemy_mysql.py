r"""MariaDB and MySQL for the SQLAlchemy adapter: the operator table in their SQL.

Their default collations fold case and accents and pad with spaces (``'a' = 'A '`` is
true), and ``LOWER()`` knows far fewer case mappings than :meth:`str.lower` (MariaDB
10.11 leaves 737 letters that Python lowers unchanged, Cherokee and Georgian among
them, and lowers ``İ`` to ``i`` where Python writes ``i̇``). So, whatever the columns'
collation:

- comparisons and sorts of text use the bytes of its UTF-8 form,
  ``CAST(CONVERT(col USING utf8mb4) AS BINARY)``, whose order is code point order
  (``eq``/``in`` also keep a plain ``col = …`` so that an index still narrows the rows);
- ``like``, ``contains``, ``startswith``, ``endswith`` run ``LIKE`` under
  ``utf8mb4_bin``: character by character, by code point, trailing spaces significant;
- ``ilike`` never lowers the value in SQL. The pattern, already folded with
  :meth:`str.lower`, becomes a regular expression over the original text in which each
  letter is the class of every character that :meth:`str.lower` turns into it
  (``k`` is ``[kKK]``, the Kelvin sign included). Two pre-passes on the value make
  that exact: ``REPLACE`` spells ``İ`` as ``i̇`` (the one character Python lowers to
  two), and, when the pattern holds ``σ`` or ``ς``, ``REGEXP_REPLACE`` writes ``ς``
  for each ``Σ`` that Python lowers as a final sigma (same context rule, with the
  Cased and Case_Ignorable classes read off Python itself);
- native ``UUID`` columns (MariaDB ≥ 10.7) compare and sort as their text: MariaDB
  orders them by swapped segments, not as the in-memory matcher does.

Text columns may use any character set that holds their text (they are converted to
``utf8mb4`` on the fly); none of these expressions can use an index except the one
kept for ``eq``/``in``.
"""

# Greek sigmas and look-alike letters are the point of several comments here.
# ruff: noqa: RUF002, RUF003

from __future__ import annotations

import functools
from typing import Any

from websocketspec.exceptions import MissingDependencyError

try:
    import sqlalchemy as sa
    from sqlalchemy.ext.compiler import compiles
    from sqlalchemy.sql.compiler import SQLCompiler
    from sqlalchemy.sql.functions import FunctionElement
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError("sqlalchemy", "sqlalchemy") from exc

__all__ = [
    "DIALECTS",
    "bin_collated",
    "binary_text",
    "ilike",
    "ilike_regex",
    "prepare",
    "uuid_text",
]

DIALECTS = frozenset({"mysql", "mariadb"})
"""SQLAlchemy's names for the MariaDB/MySQL dialect (``mariadb://`` URLs say ``mariadb``)."""

_MAX_CODE_POINT = 0x10FFFF
_DOTTED_I = "\u0130"  # LATIN CAPITAL LETTER I WITH DOT ABOVE: lowers to "i\u0307"
_SIGMA = "\u03a3"


# -- SQL constructs -------------------------------------------------------------------


class _BinaryText(FunctionElement[str]):
    """``CAST(CONVERT(x USING utf8mb4) AS BINARY)``: text ordered by code point."""

    type = sa.String()
    inherit_cache = True
    name = "ws_binary_text"


@compiles(_BinaryText)
def _compile_binary_text(element: _BinaryText, compiler: SQLCompiler, **kw: Any) -> str:
    (arg,) = element.clauses
    return f"CAST(CONVERT({compiler.process(arg, **kw)} USING utf8mb4) AS BINARY)"


class _BinCollated(FunctionElement[str]):
    """``(CONVERT(x USING utf8mb4) COLLATE utf8mb4_bin)``: compared code point by code point."""

    type = sa.String()
    inherit_cache = True
    name = "ws_bin_collated"


@compiles(_BinCollated)
def _compile_bin_collated(
    element: _BinCollated, compiler: SQLCompiler, **kw: Any
) -> str:
    (arg,) = element.clauses
    return f"(CONVERT({compiler.process(arg, **kw)} USING utf8mb4) COLLATE utf8mb4_bin)"


class _UuidText(FunctionElement[Any]):
    """A UUID column as its canonical text where the database stores a native UUID."""

    inherit_cache = True
    name = "ws_uuid_text"

    def __init__(self, column: sa.ColumnElement[Any]) -> None:
        super().__init__(column)
        self.type = column.type


@compiles(_UuidText)
def _compile_uuid_text(element: _UuidText, compiler: SQLCompiler, **kw: Any) -> str:
    (arg,) = element.clauses
    rendered = compiler.process(arg, **kw)
    native = compiler.dialect.supports_native_uuid and getattr(
        element.type, "native_uuid", False
    )
    # Bound values take the column's type: the dashed text for a native UUID, the
    # 32 hex digits of CHAR(32) otherwise, which already orders like the numbers.
    return f"CAST({rendered} AS CHAR(36))" if native else rendered


class _FinalSigma(FunctionElement[str]):
    """Writes ``ς`` for every ``Σ`` that :meth:`str.lower` lowers as a final sigma."""

    type = sa.String()
    inherit_cache = True
    name = "ws_final_sigma"


@compiles(_FinalSigma)
def _compile_final_sigma(element: _FinalSigma, compiler: SQLCompiler, **kw: Any) -> str:
    subject, regex = element.clauses
    # The group before the sigma is put back: MariaDB (PCRE) writes it \1, MySQL (ICU) $1.
    back = "\\1" if getattr(compiler.dialect, "is_mariadb", False) else "$1"
    replacement = compiler.render_literal_value(back + "\u03c2", sa.String())
    return (
        f"REGEXP_REPLACE({compiler.process(subject, **kw)}, "
        f"{compiler.process(regex, **kw)}, {replacement})"
    )


def binary_text(column: sa.ColumnElement[Any]) -> sa.ColumnElement[str]:
    """The column's text as UTF-8 bytes: compares and sorts by code point, no padding."""
    return _BinaryText(column)


def bin_collated(column: sa.ColumnElement[Any]) -> sa.ColumnElement[str]:
    """The column's text under ``utf8mb4_bin``, for a case-sensitive ``LIKE``."""
    return _BinCollated(column)


def uuid_text(column: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
    """A UUID column in the order of its text (the in-memory matcher's order)."""
    return _UuidText(column)


def ilike(column: sa.ColumnElement[Any], pattern: str) -> sa.ColumnElement[bool]:
    r"""Whether the column's text, folded with :meth:`str.lower`, matches ``pattern``.

    ``pattern`` is a LIKE pattern (``%``, ``_``, ``\`` escapes) already folded so.
    """
    subject: sa.ColumnElement[Any] = sa.func.replace(
        _BinCollated(column), _DOTTED_I, _DOTTED_I.lower()
    )
    if "\u03c3" in pattern or "\u03c2" in pattern:
        # Only a literal σ or ς tells a final sigma from another: skip the pass otherwise.
        subject = _FinalSigma(subject, sa.literal(_final_sigma_regex(), sa.String()))
    return subject.regexp_match(ilike_regex(pattern))


# -- the ilike regular expression --------------------------------------------------------


def ilike_regex(pattern: str) -> str:
    r"""A full-match regular expression (PCRE and ICU syntax) for a folded LIKE pattern.

    It runs on the value with ``İ`` spelled ``i̇`` and final sigmas written ``ς`` (see
    :func:`ilike`), where each character lowers to exactly one: a pattern letter then
    matches any character that lowers to it. The pattern's parts between ``%`` are
    matched leftmost-first inside atomic groups, which gives the same answer as
    backtracking (each part has a fixed length) in time linear in the value per part.
    """
    parts: list[list[str]] = [[]]
    chars = iter(pattern)
    for ch in chars:
        if ch == "\\":
            parts[-1].append(_letter(next(chars, "\\")))
        elif ch == "%":
            parts.append([])
        elif ch == "_":
            parts[-1].append(".")
        else:
            parts[-1].append(_letter(ch))
    body = "".join(parts[0])
    if len(parts) > 1:
        middle = "".join(f"(?>.*?{''.join(p)})" for p in parts[1:-1] if p)
        body += f"{middle}.*{''.join(parts[-1])}"
    # Flags spelled out: the server's default_regex_flags must not change the meaning.
    return f"(?s-imx)\\A{body}\\z"


def _letter(ch: str) -> str:
    """A class of every character that :meth:`str.lower` turns into ``ch``."""
    sources = _preimages().get(ch, ())
    if ch.lower() == ch:
        sources = (ch, *sources)
    if not sources:
        return "(?!)"  # nothing lowers to it: the pattern can never match
    if len(sources) == 1:
        return _hex(sources[0])
    return "[" + "".join(_hex(c) for c in sources) + "]"


def _hex(ch: str) -> str:
    return f"\\x{{{ord(ch):X}}}"


def _code_points() -> range:
    return range(_MAX_CODE_POINT + 1)


def _is_surrogate(cp: int) -> bool:
    return 0xD800 <= cp <= 0xDFFF


@functools.cache
def _preimages() -> dict[str, tuple[str, ...]]:
    """For each lowered character, the other characters that lower to it."""
    out: dict[str, list[str]] = {}
    for cp in _code_points():
        if _is_surrogate(cp):
            continue
        ch = chr(cp)
        low = ch.lower()
        if low != ch and len(low) == 1:
            out.setdefault(low, []).append(ch)
    return {k: tuple(v) for k, v in out.items()}


@functools.cache
def _final_sigma_regex() -> str:
    """Python's Final_Sigma context as a regex capturing what precedes the sigma.

    Python lowers ``Σ`` to ``ς`` when, skipping case-ignorable characters, a cased
    character comes before it and none comes after it. The two classes are read off
    :meth:`str.lower` itself (so they follow Python's Unicode version, not the
    server's): ``x`` is case-ignorable when ``"AΣx"`` and ``"AxΣ"`` both end their
    sigma as ``ς``, and cased (not ignorable) when only ``"AxΣ"`` does.
    """
    ignorable: list[int] = []
    cased: list[int] = []
    for cp in _code_points():
        if _is_surrogate(cp):
            continue
        ch = chr(cp)
        if ("A" + ch + _SIGMA).lower()[-1] != "\u03c2":
            continue  # neither ignorable nor cased
        if ("A" + _SIGMA + ch).lower()[1] == "\u03c2":
            ignorable.append(cp)
        else:
            cased.append(cp)
    ci, cnc = _char_class(ignorable), _char_class(cased)
    return f"(?s-imx)({cnc}{ci}*){_hex(_SIGMA)}(?!{ci}*{cnc})"


def _char_class(cps: list[int]) -> str:
    ranges: list[list[int]] = []
    for cp in cps:
        if ranges and ranges[-1][1] == cp - 1:
            ranges[-1][1] = cp
        else:
            ranges.append([cp, cp])
    spans = (
        _hex(chr(a)) if a == b else f"{_hex(chr(a))}-{_hex(chr(b))}" for a, b in ranges
    )
    return "[" + "".join(spans) + "]"


def prepare() -> None:
    """Build the case tables now (about a second of CPU): call it off the event loop."""
    _preimages()
    _final_sigma_regex()
