"""The per-kind table's arithmetic (tasks/kindstats.py): fields split per kind, minutes
added up, quantiles interpolated inside histogram buckets, rows ordered busiest first."""

from __future__ import annotations

import pytest

from tasks.kindstats import merged, quantile, split, table
from tasks.monitor import RUNTIME_BUCKETS, bucket_of


def test_fields_split_per_kind_and_minutes_add_up() -> None:
    """``<kind>|<name>`` fields become per-kind numbers; a kind name may hold dots and
    colons; fields of another shape or value are left out; minutes add up."""
    fields = {"a.b:c|succeeded": "2", "a.b:c|le:0.5": "2", "x|failed": "1", "junk": "3"}
    assert split({**fields, "y|failed": "nan", "z|failed": "many"}) == {
        "a.b:c": {"succeeded": 2.0, "le:0.5": 2.0},
        "x": {"failed": 1.0},
    }
    assert merged([fields, {"x|failed": "4"}])["x"] == {"failed": 5.0}


@pytest.mark.parametrize(
    ("runtimes", "q", "expected"),
    [
        ([], 0.5, None),
        ([0.3, 0.4], 0.5, 0.375),  # both in (0.25, 0.5]: halfway through that bucket
        ([0.05] * 9 + [7.0], 0.5, 0.056),  # rank 5 of 9 in (0, 0.1]
        ([0.05] * 9 + [7.0], 0.95, 7.5),  # rank 9.5: halfway into (5, 10]
        ([400.0], 0.5, 300.0),  # past the last bound: the last finite bound
    ],
)
def test_quantile_interpolates_inside_its_bucket(
    runtimes: list[float], q: float, expected: float | None
) -> None:
    """A quantile is placed linearly inside the bucket its rank falls in."""
    buckets: dict[str, float] = {}
    for seconds in runtimes:
        buckets[bucket_of(seconds)] = buckets.get(bucket_of(seconds), 0.0) + 1
    assert quantile(buckets, RUNTIME_BUCKETS, q) == expected


def test_rows_have_rates_and_go_busiest_first() -> None:
    """Finished per minute over the span, failure rate of successes and failures only
    (cancelled do not count), a kind with only waiting jobs listed, busiest first."""
    recent = {
        "render": {"succeeded": 3.0, "failed": 1.0, "cancelled": 1.0, "le:0.5": 3.0},
        "mail": {"succeeded": 1.0},
    }
    rows = table(recent, {"render": {"succeeded": 10.0}}, {"idle": "4", "gone": "0"},
                 RUNTIME_BUCKETS)  # fmt: skip
    assert [r["kind"] for r in rows] == ["idle", "render", "mail"]
    render = rows[1]
    assert render["rate"] == 1.0 and render["failRate"] == 0.25 and render["done"] == 10
    assert render["p50"] == 0.375 and rows[0] == {
        "kind": "idle", "waiting": 4, "rate": 0.0, "failRate": None, "p50": None,
        "p95": None, "done": 0,
    }  # fmt: skip
