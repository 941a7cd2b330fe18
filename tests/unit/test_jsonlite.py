"""initium.jsonlite agrees with json both ways, and rejects bad input with ValueError only."""

from __future__ import annotations

import json
import os
import subprocess
import sys

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
    assert jsonlite.loads(json.dumps(value)) == value


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=64))
def test_any_text_is_a_value_or_a_value_error(text: str) -> None:
    try:
        jsonlite.loads(text)
    except ValueError:
        pass


@pytest.mark.parametrize("bad", ["{broken", "", "[1,", '{"a": 1} x', "NaN", '"\\x"'])
def test_bad_json_without_the_json_package_loaded(bad: str) -> None:
    """At boot json.decoder is not imported; the C scanner must still give a ValueError."""
    code = ("import sys; from initium import jsonlite\n"
            "try:\n    jsonlite.loads(sys.argv[1])\nexcept ValueError as e:\n"
            "    print('ValueError', 'json.decoder' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code, bad], capture_output=True, text=True,
                          check=False, env={**os.environ, "PYTHONWARNINGS": "error"})
    assert done.stdout.strip() == "ValueError False", done.stderr


def test_dumps_refuses_what_json_cannot_carry() -> None:
    with pytest.raises(ValueError):
        jsonlite.dumps(float("nan"))
    with pytest.raises(TypeError):
        jsonlite.dumps({1: "x"})
    with pytest.raises(TypeError):
        jsonlite.dumps(object())
