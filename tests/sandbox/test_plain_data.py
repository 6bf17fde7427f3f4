"""groupwise.sandbox.programs.plain_data: what may cross the sandbox boundary, and nothing else."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from groupwise.sandbox.programs.plain_data import MAX_DEPTH, NotPlainData, decode, encode


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        0,
        -(10**30),
        1.5,
        "text",
        b"\x00\xff",
        [1, [2, "x"]],
        (1, (2,), ()),
        {1, "a"},
        frozenset({(1, 2)}),
        {"k": [1, (2, 3)], 5: None, (1, 2): {"n": b"x"}},
        3 + 4j,
        float("inf"),
        -float("inf"),
    ],
)
def test_round_trip_through_json_keeps_types(value: Any) -> None:
    back = decode(json.loads(json.dumps(encode(value))))
    assert back == value and type(back) is type(value)


def test_nan_round_trips() -> None:
    assert math.isnan(decode(json.loads(json.dumps(encode(float("nan"))))))


class Agreeable(int):
    def __eq__(self, other: object) -> bool:
        return True

    __hash__ = int.__hash__


@pytest.mark.parametrize("value", [Agreeable(3), object(), [1, Agreeable(0)], {"k": print}])
def test_subclasses_and_objects_are_refused(value: Any) -> None:
    with pytest.raises(NotPlainData):
        encode(value)


@pytest.mark.parametrize(
    "data",
    [{"x": 1}, {"t": 1}, {"t": [1], "s": [2]}, {"f": "1e400"}, {"d": [[1]]}, {"c": ["a", 1]}],
)
def test_unknown_or_malformed_tags_are_refused(data: Any) -> None:
    with pytest.raises(NotPlainData):
        decode(data)


def test_nesting_is_bounded_both_ways() -> None:
    deep: Any = []
    for _ in range(MAX_DEPTH + 2):
        deep = [deep]
    with pytest.raises(NotPlainData):
        encode(deep)
    with pytest.raises(NotPlainData):
        decode(deep)
