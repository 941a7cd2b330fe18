"""Leave the initramfs: move the API mounts, free the old root, exec the real init.

Order as in systemd's switch-root with booster's guards: the API file systems
move into the new root (or are detached when it has no mount point for
them), the initramfs is emptied without crossing a mount, the new root is
moved onto / and entered, and its init replaces us as PID 1.
"""

from __future__ import annotations

import posixpath

from initium import ops
from initium.boot_env import real_init_environment
from initium.stage import BootContext, Stage, StageError
from initium.system import System

INIT_CANDIDATES = ("/sbin/init", "/etc/init", "/bin/init", "/bin/sh")
API_MOUNTS = ("/dev", "/proc", "/sys", "/run")
MAX_SYMLINKS = 40


def resolve_in_root(sys: System, root: str, path: str) -> str | None:
    """Follow ``path``'s symlinks as if ``root`` were /; None for a loop or too many links.

    An absolute link such as /sbin/init -> /lib/systemd/systemd must resolve
    inside the new root, not in the initramfs we are standing in.
    """
    parts = [p for p in path.split("/") if p]
    resolved: list[str] = []
    links = 0
    while parts:
        part = parts.pop(0)
        if part == ".":
            continue
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = "/" + "/".join([*resolved, part])
        target = sys.readlink(root.rstrip("/") + candidate)
        if target is None:
            resolved.append(part)
            continue
        links += 1
        if links > MAX_SYMLINKS:
            return None
        if target.startswith("/"):
            resolved = []
        parts = [p for p in target.split("/") if p] + parts
    return posixpath.join(root, *resolved)


class SwitchRoot(Stage):
    name = "switch-root"
    after = ("root",)
    requires = ("root",)
    final = True

    def run(self, ctx: BootContext) -> None:
        new_root = ctx.state.new_root
        if ctx.state.root_device is None:
            raise StageError(f"nothing is mounted on {new_root}", "check the root stage's log")
        candidates = self._find_inits(ctx, new_root)
        # What stages started (udevd, links, …) stops now, while a failure can
        # still be retried: nothing has moved yet.
        ctx.run_teardowns()
        for path in API_MOUNTS:
            ctx.sys.apply(ops.MoveMount(path, new_root + path))
        try:
            ctx.sys.apply(ops.RemoveInitramfs("/", new_root))
        except OSError as err:
            ctx.warn(f"cannot free the initramfs ({err.strerror}), ignoring")
        ctx.sys.apply(ops.ChangeRoot(new_root))
        env = tuple(sorted(real_init_environment(ctx.sys.environ()).items()))
        args = tuple(ctx.sys.init_arguments())
        failures = []
        # Like the kernel's kernel_init(): when one init cannot be executed,
        # try the next; only when none can is the boot lost.
        for init in candidates:
            ctx.log(f"starting {init}")
            try:
                ctx.sys.apply(ops.Exec(init, (init, *args), env))
            except OSError as err:
                failures.append(f"{init}: {err.strerror}")
                ctx.warn(f"exec {init} failed: {err.strerror}")
            else:
                return  # only a dry run (or a test) comes back from exec
        raise StageError(f"no init could be executed ({'; '.join(failures)})",
                         "is it built for this CPU, with its libraries present?", retry=False)

    def _find_inits(self, ctx: BootContext, new_root: str) -> list[str]:
        """The executable inits in the new root, in the order they are tried."""
        wanted = ctx.options.init
        candidates = (wanted,) if wanted else INIT_CANDIDATES
        found = []
        for candidate in candidates:
            resolved = resolve_in_root(ctx.sys, new_root, candidate)
            if resolved is not None and ctx.sys.is_executable(resolved):
                found.append(candidate)
        if found:
            return found
        where = f"{ctx.state.root_device} mounted on {new_root}"
        if wanted:
            raise StageError(f"init={wanted} is not an executable file in {where}",
                             "fix init= on the command line")
        raise StageError(f"no init in {where}: tried {', '.join(INIT_CANDIDATES)}",
                         "is root= the right file system? or give init=")
