"""PID 1: load the plan from the image, run the stages, never die.

Everything here is imported at boot, so its imports are the init's import
budget: the builder freezes exactly the modules this module and the planned
stages pull in (see packaging/freeze.py).

Failures before this module is imported (the interpreter cannot start, a
frozen module is broken) are the launcher's to report: see
packaging/interpreter.py (LAUNCHER) and docs/design-notes.md.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # `signal` imports enum: ~0.27 s in TCG
import os
import time

# Imported here, not lazily, because the initramfs is deleted before the last
# stage execs the real init: nothing may be imported after that point, and the
# failure path (console, shell, reboot) must be loaded before anything
# irreversible happens.
from initium import failure, linux, ops, process, syscalls  # noqa: F401
from initium.cmdline import Cmdline
from initium.console import Console, fd_writer
from initium.options import BootOptions
from initium.plan import PLAN_PATH, Plan, PlanError
from initium.runner import Runner, text_of
from initium.stage import BootContext
from initium.system import LiveSystem

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn


def _last_resort(console: Console, message: str) -> NoReturn:
    """When even the runner failed: say so, then halt; sleep if halting fails too."""
    console.error(message)
    try:
        os.sync()
        syscalls.reboot(linux.LINUX_REBOOT_CMD_HALT)
    except BaseException:
        pass
    while True:
        try:
            time.sleep(3600)
        except BaseException:
            continue


def boot(python_ready: float | None = None, init_args: list[str] | None = None) -> NoReturn:
    """Run the plan; ``python_ready`` is the clock when the launcher's first statement ran.

    ``init_args`` are the arguments the kernel gave /init (the launcher knows
    where they are in its own argv).
    """
    started = time.monotonic()
    # Python turns SIGINT into KeyboardInterrupt; for PID 1 it is Ctrl-Alt-Del
    # (or a stray kill) and must not interrupt a stage.
    _signal.signal(_signal.SIGINT, _signal.SIG_IGN)
    console = Console(fd_writer(1))
    try:
        sys = LiveSystem(log=console.debug, init_args=init_args)
        try:
            plan = Plan.from_bytes(sys.read_bytes(PLAN_PATH))
            stages = plan.load_stages()
        except (OSError, PlanError) as err:
            _last_resort(console, f"the image is broken: {text_of(err)}; "
                                  "rebuild it with initium build")
        ctx = BootContext(sys, Cmdline(), BootOptions(), plan, console)
        outcome = Runner(stages, ctx, started, python_ready).run()
        _last_resort(console, f"boot ended without switching root ({outcome.reason})")
    except BaseException as err:
        _last_resort(console, f"internal error: {text_of(err)}")
