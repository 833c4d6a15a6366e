"""The funnel frames a call's keys and arguments as redis-py's own encoder would, hiredis's
packer or not: the bytes Redis gets from a call through the funnel are a direct call's."""

from __future__ import annotations

import enum
from typing import Any

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

from web.funnel import pack_values

ENCODER = redis.Redis().get_encoder()


def by_redis_py(values: tuple[Any, ...]) -> bytes:
    packed = [ENCODER.encode(v) for v in values]
    return b"".join(b"$%d\r\n%s\r\n" % (len(v), v) for v in packed)


plain = st.one_of(
    st.text(), st.binary(), st.integers(), st.floats(allow_nan=False), st.just(float("inf"))
)


@given(st.lists(plain, max_size=40).map(tuple))
def test_plain_values_pack_as_redis_py_encodes_them(values: tuple[Any, ...]) -> None:
    assert pack_values(values, ENCODER.encode) == by_redis_py(values)
    assert pack_values(values, ENCODER.encode, plain_hiredis=False) == by_redis_py(values)


class Colour(enum.IntEnum):
    RED = 1


class Name(str):
    pass


def test_a_subclass_takes_redis_py_s_path() -> None:
    values = ("key", Colour.RED, Name("n"), 2.5)
    assert pack_values(values, ENCODER.encode) == by_redis_py(values)


@pytest.mark.parametrize("bad", [None, True, ["a"]])
def test_a_value_redis_py_rejects_is_rejected_as_it_would(bad: object) -> None:
    with pytest.raises(redis.DataError):
        pack_values(("key", bad), ENCODER.encode)


def test_a_lone_surrogate_fails_as_redis_py_fails() -> None:
    with pytest.raises(UnicodeEncodeError):
        pack_values(("key", "\udc80"), ENCODER.encode)
    with pytest.raises(UnicodeEncodeError):
        ENCODER.encode("\udc80")


def test_an_int_past_64_bits_takes_redis_py_s_path() -> None:
    """hiredis formats ints itself, without Python's limit on digits (and crashed on an
    int of 4,301 digits); past 64 bits the encoder frames them, or refuses as it would."""
    big = (2**63, -(2**63) - 1, 10**40)
    assert pack_values(big, ENCODER.encode) == by_redis_py(big)
    with pytest.raises(ValueError):
        pack_values((10**4301,), ENCODER.encode)
