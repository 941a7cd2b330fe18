"""Side effects as values that perform and describe themselves.

Every change a stage makes to the machine is one of these frozen objects.
The live system asks the operation to ``perform`` itself, the dry-run system
records it and asks for a ``simulate``d reply, and both print it with the
same ``describe()``: the plan that ``initium run --dry-run`` shows is, word
for word, what a boot with ``rd.debug`` logs.

The set is open: a stage or a plugin defines its own ``Op`` subclass
(setxattr, a device-mapper ioctl, a netlink request, a TPM command) in its
own module, and the facade needs no change to run, print or simulate it.
An operation that returns a reply returns it from ``perform`` (live) and
``simulate`` (dry run, tests).
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # `signal` imports enum: ~0.27 s in TCG
import os

from initium import linux, process, syscalls
from initium.initramfs import remove_initramfs
from initium.record import record

TYPE_CHECKING = False  # typing's import cost is not paid at boot
if TYPE_CHECKING:
    from typing import Any, ClassVar

    from initium.system import System


class Op:
    """Base of all operations; subclasses are frozen records.

    ``irreversible``: once such an operation has been attempted, a failure
    can no longer be retried as if nothing had happened (the runner reads
    this through the facade's ``point_of_no_return``).
    """

    irreversible: ClassVar[bool] = False

    def describe(self) -> str:
        raise NotImplementedError

    def perform(self, sys: System) -> Any:
        """Do it on the real machine; the reply, if the operation has one."""
        raise NotImplementedError(f"{type(self).__name__} cannot be performed")

    def simulate(self, sys: System) -> Any:
        """The reply a dry run or a test machine gives in place of ``perform``'s."""
        return None


def simulates(op: Op) -> bool:
    """Whether ``op``'s class models its effect for a test machine (overrides ``simulate``)."""
    return type(op).simulate is not Op.simulate


@record
class MakeDir(Op):
    path: str
    mode: int = 0o755

    def describe(self) -> str:
        return f"mkdir {self.path} (mode {self.mode:o})"

    def perform(self, sys: System) -> None:
        os.makedirs(self.path, self.mode, exist_ok=True)


@record
class Mount(Op):
    source: str
    target: str
    fstype: str
    flags: int = 0
    data: str = ""
    # Words for the plan, e.g. "ro,nosuid"; the integer flags are for the syscall.
    flag_names: tuple[str, ...] = ()

    def describe(self) -> str:
        opts = ",".join((*self.flag_names, *(filter(None, [self.data]))))
        return f"mount -t {self.fstype} {self.source} {self.target}" + (
            f" -o {opts}" if opts else ""
        )

    def perform(self, sys: System) -> None:
        syscalls.mount(self.source, self.target, self.fstype, self.flags, self.data)


@record
class MoveMount(Op):
    """``mount --move``; when the target is missing the source is detached instead."""

    irreversible = True
    source: str
    target: str

    def describe(self) -> str:
        return f"mount --move {self.source} {self.target}"

    def perform(self, sys: System) -> None:
        if os.path.isdir(self.target):
            syscalls.mount(self.source, self.target, None, linux.MS_MOVE)
        else:
            syscalls.umount2(self.source, linux.MNT_DETACH)


@record
class Unmount(Op):
    target: str
    detach: bool = False

    def describe(self) -> str:
        return f"umount {'-l ' if self.detach else ''}{self.target}"

    def perform(self, sys: System) -> None:
        syscalls.umount2(self.target, linux.MNT_DETACH if self.detach else 0)


@record
class LoadModule(Op):
    name: str
    path: str
    params: str = ""

    def describe(self) -> str:
        return f"load module {self.name} from {self.path}" + (
            f" ({self.params})" if self.params else ""
        )

    def perform(self, sys: System) -> None:
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            syscalls.finit_module(fd, self.params)
        finally:
            os.close(fd)


@record
class WriteFile(Op):
    path: str
    data: bytes
    mode: int = 0o644

    def describe(self) -> str:
        return f"write {len(self.data)} bytes to {self.path}"

    def perform(self, sys: System) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, self.mode)
        try:
            os.write(fd, self.data)
        finally:
            os.close(fd)


@record
class RemoveInitramfs(Op):
    """Free the initramfs before leaving it: its pages are otherwise lost until reboot.

    Only files on the device of ``root`` are removed; ``keep`` (the new root's
    mount point) and anything mounted below are never entered.
    """

    irreversible = True
    root: str
    keep: str

    def describe(self) -> str:
        return f"remove the initramfs contents under {self.root} (not crossing mounts)"

    def perform(self, sys: System) -> None:
        remove_initramfs(self.root, self.keep, syscalls.statfs_type(self.root))


@record
class ChangeRoot(Op):
    """Make ``path`` the new ``/``: move its mount onto / and chroot into it."""

    irreversible = True
    path: str

    def describe(self) -> str:
        return f"mount --move {self.path} / && chroot ."

    def perform(self, sys: System) -> None:
        os.chdir(self.path)
        syscalls.mount(".", "/", None, linux.MS_MOVE)
        os.chroot(".")
        os.chdir("/")


def reset_signals() -> None:
    """Every signal back to its default, none blocked: ``execve`` keeps ignored signals.

    PID 1 ignores SIGINT and CPython ignores SIGPIPE and SIGXFSZ; an init
    that does not reset them itself (``init=/bin/sh``, a simple init) would
    inherit those.  For PID 1 the kernel drops signals whose action is the
    default, so this is safe even when the exec then fails.
    """
    for signum in range(1, _signal.NSIG):
        if signum in (_signal.SIGKILL, _signal.SIGSTOP):
            continue
        try:
            _signal.signal(signum, _signal.SIG_DFL)
        except (OSError, ValueError, RuntimeError):
            continue  # real-time signals glibc reserves for itself
    _signal.pthread_sigmask(_signal.SIG_SETMASK, [])


@record
class Exec(Op):
    path: str
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()

    def describe(self) -> str:
        return "exec " + " ".join(self.argv)

    def perform(self, sys: System) -> None:
        reset_signals()
        try:
            os.execve(self.path, list(self.argv), dict(self.env))
        finally:
            # Still here: the exec failed and we are PID 1 again.
            _signal.signal(_signal.SIGINT, _signal.SIG_IGN)


@record
class Spawn(Op):
    """Run a helper and wait for it; the reply is its exit status.

    ``timeout`` None means as long as it takes (a shell). ``console``: the
    child gets the console's tty as its controlling terminal in a session of
    its own, so an emergency shell has job control and Ctrl-C.
    ``no_new_privs`` and ``keep_caps`` (a bounding-set mask, see
    process.capability_mask) confine a helper; process.run explains both.
    """

    argv: tuple[str, ...]
    timeout: float | None = 30.0
    console: bool = False
    no_new_privs: bool = False
    keep_caps: int | None = None

    def describe(self) -> str:
        confined = []
        if self.no_new_privs:
            confined.append("no_new_privs")
        if self.keep_caps is not None:
            confined.append(f"caps={self.keep_caps:#x}")
        return "+ " + " ".join(self.argv) + (f"  [{', '.join(confined)}]" if confined else "")

    def perform(self, sys: System) -> int:
        status = process.run(self.argv, timeout=self.timeout, console=self.console,
                             no_new_privs=self.no_new_privs, keep_caps=self.keep_caps)
        if os.getpid() == 1:
            reap_orphans()
        return status

    def simulate(self, sys: System) -> int:
        return 0


def reap_orphans() -> None:
    """Collect children that a helper or the shell left behind: PID 1 inherits them."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


REBOOT_COMMANDS = {
    "halt": linux.LINUX_REBOOT_CMD_HALT,
    "poweroff": linux.LINUX_REBOOT_CMD_POWER_OFF,
    "reboot": linux.LINUX_REBOOT_CMD_RESTART,
}


@record
class PowerOff(Op):
    """The end of every failed boot: ``action`` is halt, poweroff or reboot."""

    action: str

    def describe(self) -> str:
        return self.action

    def perform(self, sys: System) -> None:
        os.sync()
        syscalls.reboot(REBOOT_COMMANDS[self.action])
