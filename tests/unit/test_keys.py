"""Key names of the lines: the default queue's are the old ones; others are documented."""

from __future__ import annotations

import re

import pytest

from tasks.keys import DEFAULT_QUEUE, Keys, check_queue, new_job_id


def test_the_default_line_keeps_the_key_names_it_always_had() -> None:
    """None and the default queue's name both give the keys a single-line Jobcast used."""
    for name in (None, DEFAULT_QUEUE):
        line = Keys("p:").line(name)
        assert (line.name, line.queue, line.ticket, line.version, line.running, line.stats) == (
            "jobcast", "p:queue", "p:queue:ticket", "p:queue:version", "p:running", "p:stats",
        )  # fmt: skip


def test_another_queue_gets_keys_under_its_own_hash_tag() -> None:
    """Queue "gpu" lives under ``line:{gpu}:``, with the same key suffixes as the default."""
    line = Keys("p:").line("gpu")
    assert (line.queue, line.ticket, line.version, line.running, line.stats) == (
        "p:line:{gpu}:queue", "p:line:{gpu}:queue:ticket", "p:line:{gpu}:queue:version",
        "p:line:{gpu}:running", "p:line:{gpu}:stats",
    )  # fmt: skip
    assert Keys("p:").lines == "p:lines"


@pytest.mark.parametrize("bad", ["", "two words", "a" * 65, "x}{y", "a:b", "é"])
def test_a_name_that_cannot_be_a_line_is_refused(bad: str) -> None:
    """Names outside ``[A-Za-z0-9_.-]{1,64}`` raise a ValueError quoting the name."""
    with pytest.raises(ValueError, match="queue name"):
        Keys().line(bad)
    assert check_queue("a" * 64) == "a" * 64


def test_every_line_is_the_default_then_the_named_ones_once_in_order() -> None:
    """The members of ``lines`` (bytes from Redis) give the default line first, then each
    other name once, sorted; names that cannot be lines are skipped."""
    lines = Keys().all_lines([b"b", b"jobcast", b"a", b"bad name", "a"])
    assert [line.name for line in lines] == ["jobcast", "a", "b"]


def test_a_new_job_id_never_starts_with_a_dash() -> None:
    """Generated ids are 22 URL-safe characters and never begin with ``-`` (a command line
    would take such an id for an option: ``jobcast watch -abc`` fails)."""
    ids = [new_job_id() for _ in range(5000)]  # about 78 would start with '-' otherwise
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{22}", i) and i[0] != "-" for i in ids)
    assert len(set(ids)) == len(ids)
