"""Mount the kernel's API file systems, from a table.

Rows are ordered for the security bootstrap that later stages need (proc and
sys first, securityfs before SELinux/IMA), rows already mounted are skipped,
and each row says whether its failure stops the boot.
"""

from __future__ import annotations

from initium import linux, ops
from initium.record import record
from initium.stage import BootContext, Stage, StageError
from initium.system import System

TYPE_CHECKING = False  # typing's import cost is not paid at boot
if TYPE_CHECKING:
    from collections.abc import Callable


@record
class MountRow:
    source: str
    target: str
    fstype: str
    flags: int
    data: str = ""
    fatal: bool = True
    condition: Callable[[System], bool] | None = None

    def op(self) -> ops.Mount:
        from initium.mounts import flag_names

        return ops.Mount(self.source, self.target, self.fstype, self.flags, self.data,
                         flag_names(self.flags))


_NOSUID_NODEV_NOEXEC = linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC
# The tty group's number in Debian and every distribution systemd knows of;
# devpts gives new ptys this group (systemd's mount-setup uses GID_TTY = 5).
TTY_GID = 5

# As systemd's mount-setup table (src/shared/mount-setup.c) has them, because
# the real root's systemd finds them mounted and keeps them: /dev, /dev/shm
# and /run with strictatime, and /run bounded (size=20%,nr_inodes=800k) so a
# runaway writer cannot take half the RAM of the system that inherits it.
EARLY_MOUNTS: tuple[MountRow, ...] = (
    MountRow("proc", "/proc", "proc", _NOSUID_NODEV_NOEXEC),
    MountRow("sysfs", "/sys", "sysfs", _NOSUID_NODEV_NOEXEC),
    MountRow("devtmpfs", "/dev", "devtmpfs", linux.MS_NOSUID | linux.MS_STRICTATIME,
             "mode=0755,size=4m"),
    MountRow("tmpfs", "/dev/shm", "tmpfs",
             linux.MS_NOSUID | linux.MS_NODEV | linux.MS_STRICTATIME,
             "mode=1777,size=50%,nr_inodes=1m", fatal=False),
    MountRow("devpts", "/dev/pts", "devpts", linux.MS_NOSUID | linux.MS_NOEXEC,
             f"mode=0620,gid={TTY_GID},ptmxmode=0666", fatal=False,
             condition=lambda s: s.has_filesystem("devpts")),
    MountRow("tmpfs", "/run", "tmpfs", linux.MS_NOSUID | linux.MS_NODEV | linux.MS_STRICTATIME,
             "mode=0755,size=20%,nr_inodes=800k"),
    MountRow("securityfs", "/sys/kernel/security", "securityfs", _NOSUID_NODEV_NOEXEC,
             fatal=False, condition=lambda s: s.has_filesystem("securityfs")),
)


class EarlyMounts(Stage):
    name = "early-mounts"

    def run(self, ctx: BootContext) -> None:
        for row in EARLY_MOUNTS:
            if row.condition is not None and not row.condition(ctx.sys):
                ctx.debug(f"{row.target}: {row.fstype} not supported by this kernel, skipped")
                continue
            if ctx.sys.is_mounted(row.target):
                ctx.debug(f"{row.target} is already mounted")
            else:
                try:
                    if not ctx.sys.exists(row.target):
                        ctx.sys.apply(ops.MakeDir(row.target))
                    ctx.sys.apply(row.op())
                except OSError as err:
                    if row.fatal:
                        raise StageError(f"cannot mount {row.fstype} on {row.target}: "
                                         f"{err.strerror}",
                                         "check that the kernel has CONFIG_PROC_FS, "
                                         "CONFIG_SYSFS, CONFIG_DEVTMPFS and CONFIG_TMPFS") from None
                    ctx.warn(f"cannot mount {row.fstype} on {row.target}: {err.strerror}, "
                             "ignoring")
                    continue
            if row.target == "/proc":
                ctx.load_cmdline()
