"""fsck before a read-write root mount, with exit statuses read as fsck(8) defines them.

Only a root mounted read-write is checked here: a read-only root is the
booted system's to check (systemd-fsck-root, or the distribution's
checkroot script), and checking a file system twice costs a boot a
second read of its metadata. The checker is whatever ``initium build
--fsck`` put in the image (e2fsck for ext2/3/4); a file system without one
is mounted unchecked, as the kernel's own root mount would.

The status is a bit mask (util-linux fsck(8), e2fsck(8)): 1 errors
corrected, 2 corrected but the system should be rebooted, 4 errors left
uncorrected, 8 operational error, 16 usage error, 32 cancelled, 128 shared
library error. Uncorrected errors and operational failures stop the boot
with the checker's own output; "reboot" reboots (the kernel may hold a
stale view of what was repaired); "corrected" is logged and the boot goes on.
"""

from __future__ import annotations

import os

from initium import ops, process
from initium.options import Option, boolean, choice
from initium.record import record
from initium.stage import StageError

TYPE_CHECKING = False
if TYPE_CHECKING:

    from initium.stage import BootContext
    from initium.system import System

# File system type -> the checker's name; the builder adds the tool under its host path.
CHECKERS = {"ext2": "e2fsck", "ext3": "e2fsck", "ext4": "e2fsck"}
# A large disk takes minutes; a checker stuck for longer than this is killed and reported.
TIMEOUT = 900.0
OUTPUT = "/run/initium/fsck.log"
# Lines of the checker's output quoted in a failure (the whole of it goes to the log).
QUOTED = 20
MODES = ("auto", "force", "skip")
REPAIRS = {"preen": "-p", "yes": "-y", "no": "-n"}

CORRECTED, REBOOT, UNCORRECTED, OPERATIONAL = 1, 2, 4, 8


SKIPFSCK = Option("rd.skipfsck", "skipfsck", "Do not check the root before mounting it "
                  "read-write.", "dracut: rd.skipfsck; systemd: fsck.mode=skip",
                  boolean, flag=True, metavar="[0|1]", default=False, owner="root")
MODE = Option("fsck.mode", "fsck_mode", "auto: let the checker decide (it checks a file system "
              "that is marked dirty or due); force: check it fully; skip: do not check. Only a "
              "root mounted rw is checked, and only with a checker in the image "
              "(initium build --fsck).", "systemd: fsck.mode=",
              choice(MODES), metavar="auto|force|skip", default="auto",
              owner="root")
REPAIR = Option("fsck.repair", "fsck_repair", "preen: fix only what is safe to fix unattended "
                "(e2fsck -p); yes: fix everything (-y); no: change nothing (-n), so any error "
                "stops the boot.", "systemd: fsck.repair=", choice(tuple(REPAIRS)),
                metavar="preen|yes|no", default="preen", owner="root")
OPTIONS = (SKIPFSCK, MODE, REPAIR)


@record
class RunChecker(ops.Op):
    """Run a file system checker, its stdout and stderr to ``output``; the reply is its status."""

    argv: tuple[str, ...]
    output: str
    timeout: float = TIMEOUT

    def describe(self) -> str:
        return "+ " + " ".join(self.argv) + f"  [output to {self.output}]"

    def perform(self, sys: System) -> int:
        status = process.run(self.argv, timeout=self.timeout, output=self.output)
        if os.getpid() == 1:
            ops.reap_orphans()
        return status

    def simulate(self, sys: System) -> int:
        return int(getattr(sys, "spawn_status", 0))


def verdict(status: int) -> str:
    """What an exit status means: ok, corrected, reboot, uncorrected or failed.

    Uncorrected errors win over "reboot" (rebooting into a damaged file
    system would loop); a negative status (killed by a signal) is a failure.
    """
    if status < 0 or status & ~(CORRECTED | REBOOT | UNCORRECTED):
        return "failed"
    if status & UNCORRECTED:
        return "uncorrected"
    if status & REBOOT:
        return "reboot"
    if status & CORRECTED:
        return "corrected"
    return "ok"


def argv(tool: str, device: str, mode: str, repair: str) -> tuple[str, ...]:
    return (tool, REPAIRS[repair], *(("-f",) if mode == "force" else ()), device)


def check(ctx: BootContext, device: str, fstype: str, tools: dict[str, str]) -> None:
    """Check ``device`` before its read-write mount, as the options and the image allow."""
    mode = ctx.value(MODE)
    if ctx.value(SKIPFSCK) or mode == "skip":
        ctx.log(f"{device}: not checked (rd.skipfsck or fsck.mode=skip)")
        return
    tool = tools.get(fstype)
    if tool is None:
        if mode == "force":
            ctx.warn(f"fsck.mode=force, but this image has no checker for {fstype}: "
                     f"{device} is mounted unchecked (initium build --fsck adds e2fsck)")
        return
    command = argv(tool, device, mode, ctx.value(REPAIR))
    directory = os.path.dirname(OUTPUT)
    if not ctx.sys.exists(directory):
        ctx.sys.apply(ops.MakeDir(directory))
    try:
        status = int(ctx.sys.apply(RunChecker(command, OUTPUT)))
    except process.ProcessError as err:
        raise StageError(f"cannot check {device}: {err}",
                         "boot with rd.skipfsck to mount it unchecked") from None
    lines = _output(ctx)
    for line in lines:
        ctx.log(f"fsck: {line}")
    result = verdict(status)
    said = "; ".join(lines[-QUOTED:]) or "no output"
    if result == "ok":
        ctx.log(f"{device}: {fstype} checked, clean")
    elif result == "corrected":
        ctx.log(f"{device}: the checker corrected errors (exit status {status})")
    elif result == "reboot":
        ctx.warn(f"{device}: the checker corrected errors and asks for a reboot "
                 f"(exit status {status}); rebooting")
        ctx.sys.apply(ops.PowerOff("reboot"))
        raise StageError(f"{device}: reboot after fsck did not happen")
    elif result == "uncorrected":
        raise StageError(f"{device}: {fstype} has errors the checker left uncorrected "
                         f"(exit status {status}): {said}",
                         f"repair it by hand from the shell ({tool} {device}), or boot "
                         "with fsck.repair=yes")
    else:
        raise StageError(f"{device}: the checker failed (exit status {status}): {said}",
                         "boot with rd.skipfsck to mount it unchecked, then look at the "
                         "file system")


def _output(ctx: BootContext) -> list[str]:
    try:
        text = ctx.sys.read_text(OUTPUT, 1 << 16)
    except OSError:
        return []
    return [line.rstrip() for line in text.splitlines() if line.strip()]
