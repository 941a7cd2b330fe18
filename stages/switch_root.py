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
        init = self._find_init(ctx, new_root)
        for path in API_MOUNTS:
            ctx.sys.apply(ops.MoveMount(path, new_root + path))
        try:
            ctx.sys.apply(ops.RemoveInitramfs("/", new_root))
        except OSError as err:
            ctx.warn(f"cannot free the initramfs ({err.strerror}), ignoring")
        ctx.sys.apply(ops.ChangeRoot(new_root))
        env = real_init_environment(ctx.sys.environ())
        ctx.log(f"starting {init}")
        try:
            ctx.sys.apply(ops.Exec(init, (init, *ctx.cmdline.init_args),
                                   tuple(sorted(env.items()))))
        except OSError as err:
            raise StageError(f"exec {init} failed: {err.strerror}",
                             "is it built for this CPU, with its libraries present?") from None

    def _find_init(self, ctx: BootContext, new_root: str) -> str:
        wanted = ctx.options.init
        candidates = (wanted,) if wanted else INIT_CANDIDATES
        for candidate in candidates:
            resolved = resolve_in_root(ctx.sys, new_root, candidate)
            if resolved is not None and ctx.sys.is_executable(resolved):
                return candidate
        where = f"{ctx.state.root_device} mounted on {new_root}"
        if wanted:
            raise StageError(f"init={wanted} is not an executable file in {where}",
                             "fix init= on the command line")
        raise StageError(f"no init in {where}: tried {', '.join(INIT_CANDIDATES)}",
                         "is root= the right file system? or give init=")
