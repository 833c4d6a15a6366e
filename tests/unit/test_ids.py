"""Event ids are compared as (ms, seq) pairs, never as strings."""

from __future__ import annotations

import pytest

from tasks.events import format_id, parse_id


@pytest.mark.parametrize(
    ("low", "high"),
    [
        ("9-0", "10-0"),  # as strings "9-0" > "10-0"
        ("1700000000000-9", "1700000000000-10"),
        ("1700000000000-99", "1700000000001-0"),
    ],
)
def test_ids_order_numerically(low: str, high: str) -> None:
    """Numeric order holds where string order would be wrong."""
    assert parse_id(low) < parse_id(high)  # type: ignore[operator]


@pytest.mark.parametrize(
    "raw", ["", "abc", "1-", "-1", "1-2-3", "1 -2", "１-2", "1-2\n", "1" * 21 + "-0", None]
)
def test_malformed_ids_are_rejected(raw: str | None) -> None:
    """Anything but digits-dash-digits (bounded) is not an id."""
    assert parse_id(raw) is None


def test_round_trip_and_bytes() -> None:
    """Ids parse from bytes as Redis returns them and format back unchanged."""
    assert parse_id(b"1763900000000-3") == (1763900000000, 3)
    assert format_id((1763900000000, 3)) == "1763900000000-3"
