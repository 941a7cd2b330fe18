"""initium.plan: the marshal plan round-trips, and anything else is one PlanError."""

from __future__ import annotations

import marshal
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from initium.plan import MAX_DEPTH, Plan, PlanError, StageEntry

PLAN = Plan("6.1.0-test", (
    StageEntry("modules", "initium.stages.modules:Modules",
               {"modules": [{"name": "virtio_blk", "path": "/lib/modules/x/virtio_blk.ko",
                             "required": True, "params": "a=1"}]}),
    StageEntry("root", "initium.stages.root:Root")), has_shell=True, default_emergency="halt")


def test_round_trip() -> None:
    assert Plan.from_bytes(PLAN.to_bytes()) == PLAN


def test_same_plan_same_bytes() -> None:
    assert PLAN.to_bytes() == Plan.from_bytes(PLAN.to_bytes()).to_bytes()


@pytest.mark.parametrize(("data", "message"), [
    (b"", "plan is not readable"),
    (b"{broken", "plan is not readable"),
    (marshal.dumps({"version": 1, "kver": "x", "stages": []}), "plan version is not 2"),
    (marshal.dumps([1, 2]), "plan version is not 2"),
    (marshal.dumps({"version": 2, "kver": 5, "stages": []}), "plan lacks kver or stages"),
    (marshal.dumps({"version": 2, "kver": "x", "stages": [{"name": "a", "ref": "nocolon"}]}),
     "bad stage entry in plan"),
    (marshal.dumps({"version": 2, "code": compile("1", "x", "eval")}), "plan holds a code"),
    (marshal.dumps({"version": 2, "s": frozenset({1})}), "plan holds a frozenset"),
    (marshal.dumps({1: 2}), "plan holds a key of type int"),
])
def test_bad_plans_are_one_clear_error(data: bytes, message: str) -> None:
    with pytest.raises(PlanError, match=message):
        Plan.from_bytes(data)


def test_deep_nesting_is_refused() -> None:
    deep: object = "leaf"
    for _ in range(MAX_DEPTH + 2):
        deep = [deep]
    with pytest.raises(PlanError, match="nested deeper"):
        Plan.from_bytes(marshal.dumps({"version": 2, "x": deep}))


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=512))
def test_any_bytes_give_a_plan_or_a_plan_error(data: bytes) -> None:
    try:
        Plan.from_bytes(data)
    except PlanError as err:
        assert "\n" not in str(err)


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0), st.integers(min_value=0, max_value=255))
def test_any_flipped_byte_gives_a_plan_or_a_plan_error(where: int, value: int) -> None:
    data = bytearray(PLAN.to_bytes())
    data[where % len(data)] = value
    try:
        Plan.from_bytes(bytes(data))
    except PlanError:
        pass


def test_reading_needs_nothing_but_the_interpreter() -> None:
    """No json, no _json, no parser of ours: what a broken image meets at boot."""
    code = ("import sys\nfrom initium.plan import Plan, PlanError\n"
            "try:\n    Plan.from_bytes(b'{broken')\nexcept PlanError as e:\n    print(e)\n"
            "print(sorted(m for m in ('json', '_json', 'json.decoder') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.splitlines()[-1] == "[]"
    assert done.stdout.startswith("plan is not readable")
