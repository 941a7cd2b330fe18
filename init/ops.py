"""Side effects as values.

Every change a stage makes to the machine is one of these frozen objects.  The
live system executes it, the dry-run system records it, and both print it with
the same ``describe()``: the plan that ``initium run --dry-run`` shows is, word
for word, what a boot with ``rd.debug`` logs.
"""

from __future__ import annotations

from initium.record import record


class Op:
    """Base of all operations; subclasses are frozen dataclasses."""

    def describe(self) -> str:
        raise NotImplementedError


@record
class MakeDir(Op):
    path: str
    mode: int = 0o755

    def describe(self) -> str:
        return f"mkdir {self.path} (mode {self.mode:o})"


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


@record
class MoveMount(Op):
    """``mount --move``; when the target is missing the source is detached instead."""

    source: str
    target: str

    def describe(self) -> str:
        return f"mount --move {self.source} {self.target}"


@record
class Unmount(Op):
    target: str
    detach: bool = False

    def describe(self) -> str:
        return f"umount {'-l ' if self.detach else ''}{self.target}"


@record
class LoadModule(Op):
    name: str
    path: str
    params: str = ""

    def describe(self) -> str:
        return f"load module {self.name} from {self.path}" + (
            f" ({self.params})" if self.params else ""
        )


@record
class WriteFile(Op):
    path: str
    data: bytes
    mode: int = 0o644

    def describe(self) -> str:
        return f"write {len(self.data)} bytes to {self.path}"


@record
class RemoveInitramfs(Op):
    """Free the initramfs before leaving it: its pages are otherwise lost until reboot.

    Only files on the device of ``root`` are removed; ``keep`` (the new root's
    mount point) and anything mounted below are never entered.
    """

    root: str
    keep: str

    def describe(self) -> str:
        return f"remove the initramfs contents under {self.root} (not crossing mounts)"


@record
class ChangeRoot(Op):
    """Make ``path`` the new ``/``: move its mount onto / and chroot into it."""

    path: str

    def describe(self) -> str:
        return f"mount --move {self.path} / && chroot ."


@record
class Exec(Op):
    path: str
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()

    def describe(self) -> str:
        return "exec " + " ".join(self.argv)


@record
class Spawn(Op):
    """Run a helper and wait for it; ``timeout`` None means as long as it takes (a shell).

    ``console``: the child gets /dev/console as its controlling terminal in a
    session of its own, so an emergency shell has job control and Ctrl-C.
    """

    argv: tuple[str, ...]
    timeout: float | None = 30.0
    console: bool = False

    def describe(self) -> str:
        return "+ " + " ".join(self.argv)


@record
class PowerOff(Op):
    """The end of every failed boot: ``action`` is halt, poweroff or reboot."""

    action: str

    def describe(self) -> str:
        return self.action
