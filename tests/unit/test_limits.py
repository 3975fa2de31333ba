"""The message-rate token bucket and the Origin check, as plain functions of their input."""

from __future__ import annotations

import time

import pytest

from websocketspec.server.limits import TokenBucket, is_origin_allowed

# -- TokenBucket ----------------------------------------------------------------------


def take_all(bucket: TokenBucket, now: float, attempts: int = 100) -> int:
    """How many tokens the bucket gives at one instant."""
    return sum(bucket.take(now) for _ in range(attempts))


def test_a_full_bucket_gives_its_burst_then_refuses() -> None:
    bucket = TokenBucket(10, burst=4)
    start = time.monotonic()
    assert take_all(bucket, start) == 4
    assert bucket.take(start) is False


def test_tokens_come_back_at_the_rate() -> None:
    bucket = TokenBucket(10, burst=4)
    start = time.monotonic()
    take_all(bucket, start)
    assert bucket.take(start + 0.05) is False  # half a token
    # (Just past each whole token: the clock is a float.)
    assert bucket.take(start + 0.101) is True  # the whole one
    assert bucket.take(start + 0.101) is False
    assert take_all(bucket, start + 0.401) == 3


def test_an_idle_bucket_never_holds_more_than_its_burst() -> None:
    bucket = TokenBucket(10, burst=4)
    start = time.monotonic()
    assert take_all(bucket, start + 3600) == 4


def test_a_refused_take_spends_nothing() -> None:
    bucket = TokenBucket(1, burst=1)
    start = time.monotonic()
    assert bucket.take(start) is True
    for step in range(1, 10):
        assert bucket.take(start + step * 0.1) is False
    assert bucket.take(start + 1.001) is True


@pytest.mark.parametrize(
    ("rate", "burst"), [(20, 20), (2.4, 2), (2.6, 3), (0.5, 1), (0.01, 1)]
)
def test_the_default_burst_is_one_seconds_worth_and_at_least_one(
    rate: float, burst: int
) -> None:
    bucket = TokenBucket(rate)
    assert bucket.burst == burst
    assert take_all(bucket, time.monotonic()) == burst


@pytest.mark.parametrize("rate", [0, -1, -0.5])
def test_a_rate_must_be_positive(rate: float) -> None:
    with pytest.raises(ValueError, match="positive rate"):
        TokenBucket(rate)


def test_take_without_a_time_uses_the_clock() -> None:
    bucket = TokenBucket(0.001, burst=2)
    assert bucket.take() is True
    assert bucket.take() is True
    assert bucket.take() is False


# -- is_origin_allowed ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("origin", "host"),
    [
        ("http://example.com", "example.com"),
        ("https://example.com", "example.com"),
        ("https://example.com", "example.com:443"),
        ("http://example.com:80", "example.com"),
        ("http://example.com:8080", "example.com:8080"),
        ("HTTP://Example.COM:8080", "example.com:8080"),
        ("http://127.0.0.1:9000", "127.0.0.1:9000"),
        ("http://[::1]:9000", "[::1]:9000"),
    ],
)
def test_same_origin_browsers_pass(origin: str, host: str) -> None:
    assert is_origin_allowed(origin, host, ()) is True


@pytest.mark.parametrize(
    ("origin", "host"),
    [
        ("https://evil.example", "example.com"),
        ("http://example.com:8080", "example.com"),
        ("http://example.com", "example.com:8080"),
        ("https://example.com", "example.com:80"),
        ("http://sub.example.com", "example.com"),
        ("http://example.com.evil.example", "example.com"),
        ("null", "example.com"),
        ("", "example.com"),
        ("example.com", "example.com"),
        ("http://example.com:99999", "example.com:99999"),
        ("http://example.com", None),
    ],
)
def test_cross_origin_browsers_are_refused(origin: str, host: str | None) -> None:
    assert is_origin_allowed(origin, host, ()) is False


def test_clients_without_an_origin_pass() -> None:
    assert is_origin_allowed(None, "example.com", ()) is True
    assert is_origin_allowed(None, None, ("https://app.example",)) is True


@pytest.mark.parametrize(
    "origin",
    ["https://app.example", "https://APP.example", "https://app.example:443"],
)
def test_allowed_origins_pass(origin: str) -> None:
    allowed = ("https://app.example", "http://admin.example:8000")
    assert is_origin_allowed(origin, "api.example", allowed) is True
    assert is_origin_allowed("http://admin.example:8000", "api.example", allowed)


@pytest.mark.parametrize(
    "origin",
    [
        "http://app.example",
        "https://app.example:8443",
        "https://other.example",
        "http://admin.example",
    ],
)
def test_origins_not_in_the_list_are_refused(origin: str) -> None:
    allowed = ("https://app.example", "http://admin.example:8000")
    assert is_origin_allowed(origin, "api.example", allowed) is False


def test_an_allowed_origin_may_be_written_with_a_trailing_slash() -> None:
    assert is_origin_allowed("https://app.example", "x", ("https://app.example/",))


def test_a_star_allows_every_origin() -> None:
    for origin in ("https://evil.example", "null", "garbage"):
        assert is_origin_allowed(origin, "example.com", ("*",)) is True
