"""initium.failure.decide as a case table, and carry_out through the facade."""

from __future__ import annotations

import pytest
from initium import ops
from initium.failure import SHELL, Decision, carry_out, decide
from initium.memsystem import MemorySystem
from initium.options import BootOptions
from initium.plan import Plan

NO_SHELL_IN_IMAGE = "the image has no shell (build with --shell)"
SHELL_FORBIDDEN = "rd.shell=0 forbids the shell"
SECURITY = "no shell after a security failure"

# (rd.emergency, rd.shell, plan.has_shell, plan.default_emergency, security) -> (action, why)
CASES: list[tuple[str | None, bool | None, bool, str | None, bool, str, str]] = [
    # no rd.emergency, no default: a shell when allowed, else halt, silently
    (None, None, False, None, False, "halt", ""),
    (None, None, True, None, False, "shell", ""),
    (None, True, True, None, False, "shell", ""),
    (None, True, False, None, False, "halt", ""),
    (None, False, True, None, False, "halt", ""),
    (None, None, True, None, True, "halt", ""),
    (None, True, True, None, True, "halt", ""),
    # rd.emergency=shell: halt with the reason when the shell is not possible
    ("shell", None, True, None, False, "shell", ""),
    ("shell", True, True, None, False, "shell", ""),
    ("shell", None, False, None, False, "halt", NO_SHELL_IN_IMAGE),
    ("shell", True, False, None, False, "halt", NO_SHELL_IN_IMAGE),
    ("shell", False, True, None, False, "halt", SHELL_FORBIDDEN),
    ("shell", None, True, None, True, "halt", SECURITY),
    ("shell", False, False, None, True, "halt", SECURITY),
    # machine actions are taken as asked, also after a security failure
    ("halt", None, True, None, False, "halt", ""),
    ("poweroff", None, True, None, False, "poweroff", ""),
    ("reboot", None, True, None, False, "reboot", ""),
    ("reboot", None, False, None, True, "reboot", ""),
    ("poweroff", False, True, None, True, "poweroff", ""),
    # the image's default stands in for rd.emergency ...
    (None, None, True, "poweroff", False, "poweroff", ""),
    (None, None, True, "shell", False, "shell", ""),
    (None, None, False, "shell", False, "halt", NO_SHELL_IN_IMAGE),
    (None, False, True, "shell", False, "halt", SHELL_FORBIDDEN),
    (None, None, True, "shell", True, "halt", SECURITY),
    # ... and the command line wins over it
    ("halt", None, True, "shell", False, "halt", ""),
    ("shell", None, True, "reboot", False, "shell", ""),
    ("reboot", None, True, "poweroff", False, "reboot", ""),
]


def case_id(case: tuple[str | None, bool | None, bool, str | None, bool, str, str]) -> str:
    emergency, shell, has_shell, default, security, action, _ = case
    return (f"emergency={emergency}-shell={shell}-image_shell={has_shell}-default={default}"
            f"-security={security}->{action}")


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_decide(case: tuple[str | None, bool | None, bool, str | None, bool, str, str]) -> None:
    emergency, shell, has_shell, default, security, action, why = case
    options = BootOptions(emergency=emergency, shell=shell)
    plan = Plan("6.1.0", (), has_shell, default)
    assert decide(options, plan, security=security) == Decision(action, why)


def test_security_defaults_to_false() -> None:
    plan = Plan("6.1.0", (), True, None)
    assert decide(BootOptions(), plan) == Decision("shell")


def test_carry_out_shell_spawns_it_and_returns_its_status() -> None:
    sys = MemorySystem(spawn_status=7)
    assert carry_out(sys, Decision("shell")) == 7
    assert sys.applied == [ops.Spawn((SHELL,), timeout=None, console=True)]


@pytest.mark.parametrize("action", ["halt", "poweroff", "reboot"])
def test_carry_out_machine_actions(action: str) -> None:
    sys = MemorySystem()
    assert carry_out(sys, Decision(action, "why")) is None
    assert sys.applied == [ops.PowerOff(action)]
