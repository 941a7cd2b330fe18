"""initium.jsonlite writes what json reads back, and refuses what JSON cannot carry."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from initium import jsonlite

VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text()
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(VALUES)
def test_round_trip_with_json(value: object) -> None:
    assert json.loads(jsonlite.dumps(value)) == value


def test_dumps_refuses_what_json_cannot_carry() -> None:
    with pytest.raises(ValueError):
        jsonlite.dumps(float("nan"))
    with pytest.raises(TypeError):
        jsonlite.dumps({1: "x"})
    with pytest.raises(TypeError):
        jsonlite.dumps(object())
