"""What happens after a stage fails or an ``rd.break`` is reached.

The decision is a pure function with a case table in the tests; carrying it
out goes through the facade like everything else.
"""

from __future__ import annotations

from initium import ops
from initium.options import BootOptions
from initium.plan import Plan
from initium.record import record
from initium.system import System

SHELL = "/usr/bin/sh"  # busybox, added by initium build --shell
# After switch-root has freed the initramfs, its busybox is gone: the shell
# then comes from the real root, where we now stand.
FALLBACK_SHELLS = ("/bin/sh",)


@record
class Decision:
    action: str  # shell, halt, poweroff, reboot
    why: str = ""


def decide(options: BootOptions, plan: Plan, *, security: bool = False) -> Decision:
    """Choose the emergency action.

    A shell needs one in the image and must not be forbidden by ``rd.shell=0``;
    after a failed security stage that was asked to enforce, no shell is
    offered at all, because from a shell the boot could go on unverified.
    """
    wanted = options.emergency or plan.default_emergency
    shell_allowed = plan.has_shell and options.shell is not False and not security
    if wanted is None:
        return Decision("shell" if shell_allowed else "halt")
    if wanted == "shell" and not shell_allowed:
        if security:
            why = "no shell after a security failure"
        elif not plan.has_shell:
            why = "the image has no shell (build with --shell)"
        else:
            why = "rd.shell=0 forbids the shell"
        return Decision("halt", why)
    return Decision(wanted)


def decide_break(plan: Plan) -> Decision:
    """What an explicit ``rd.break`` does: the shell whenever the image has one.

    As in dracut, ``rd.shell=0`` and ``rd.emergency=`` govern failures, not
    a break the user asked for on the command line; an image without a
    shell cannot honour the break and halts rather than boot on silently.
    """
    if plan.has_shell:
        return Decision("shell")
    return Decision("halt", "the image has no shell (build with --shell)")


def carry_out(sys: System, decision: Decision) -> int | None:
    """Start the shell (returning its status) or stop the machine (returning only in tests)."""
    if decision.action == "shell":
        shell = next((s for s in (SHELL, *FALLBACK_SHELLS) if sys.is_executable(s)), SHELL)
        return sys.spawn(ops.Spawn((shell,), timeout=None, console=True))
    sys.apply(ops.PowerOff(decision.action))
    return None
