"""An in-memory machine for tests (never shipped in an image).

It models what the built-in operations do (mounts, moves, chroot, freeing
the initramfs, module loads) closely enough that a test can assert the
resulting machine, not only the list of operations.  An operation it does
not model is an error unless the operation's class models itself
(``Op.simulate``): a test must never pass because the machine silently
ignored what a stage asked for.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from initium import linux, ops
from initium.system import READ_LIMIT, System


def _under(path: str, top: str) -> bool:
    top = top.rstrip("/")
    return path == top or path.startswith(top + "/") or top == ""


@dataclass
class MemorySystem(System):
    """Files, disks, a mount table and a clock, in memory.

    ``on_apply`` lets a test script the world's answer to an operation (a
    loaded driver makes a disk appear; raising refuses it before anything
    changes); ``appear_at`` makes a path appear only after some simulated
    time; ``read_delays`` make every read of a path take that long (a disk
    stuck in error recovery) and ``read_errors`` make it fail.
    """

    files: dict[str, bytes] = field(default_factory=dict)
    executables: set[str] = field(default_factory=set)
    links: dict[str, str] = field(default_factory=dict)
    kmsg: list[str] = field(default_factory=list)
    appear_at: dict[str, float] = field(default_factory=dict)
    read_delays: dict[str, float] = field(default_factory=dict)
    read_errors: dict[str, int] = field(default_factory=dict)
    module_errors: dict[str, int] = field(default_factory=dict)
    release: str = "6.1.0-test"
    fs_magic: int = linux.RAMFS_MAGIC
    env: dict[str, str] = field(default_factory=dict)
    init_args: list[str] = field(default_factory=list)
    on_apply: Callable[[MemorySystem, ops.Op], None] | None = None
    spawn_status: int = 0
    now: float = 0.0
    reads: int = 0
    applied: list[ops.Op] = field(default_factory=list)
    mounted: list[tuple[str, str, str]] = field(default_factory=list)
    loaded: list[tuple[str, str]] = field(default_factory=list)
    root: str = ""  # the chroot, as a prefix of ``files`` paths
    powered_off: str | None = None
    strict_mounts: bool = True  # a mount needs its target directory, as mount(2) does

    # -- operations --------------------------------------------------------

    def apply(self, op: ops.Op) -> Any:
        self.applied.append(op)
        self._crossing(op)
        if self.on_apply is not None:
            self.on_apply(self, op)
        match op:
            case ops.Mount(source, target, fstype):
                if self.strict_mounts and not self.exists(target):
                    raise FileNotFoundError(errno.ENOENT, "No such file or directory", target)
                self.mounted.append((source, target, fstype))
            case ops.MakeDir(path):
                self.files.setdefault(self._real(path).rstrip("/") + "/", b"")
            case ops.WriteFile(path, data):
                self.files[self._real(path)] = data
            case ops.MoveMount(source, target):
                self._move(source, target)
            case ops.Unmount(target):
                self._unmount(target)
            case ops.ChangeRoot(path):
                self._chroot(path)
            case ops.RemoveInitramfs(root, keep):
                self._remove_initramfs(root, keep)
            case ops.LoadModule(name, _, params):
                code = self.module_errors.get(name)
                if code is not None:
                    raise OSError(code, os.strerror(code), name)
                self.loaded.append((name, params))
                self.files.setdefault(f"/sys/module/{name}/", b"")
            case ops.Exec():
                pass  # coming back means the exec "failed" or a dry run; tests say which
            case ops.PowerOff(action):
                self.powered_off = action
            case ops.Spawn():
                return self.spawn_status
            case _:
                if not ops.simulates(op):
                    raise TypeError(f"MemorySystem does not model {type(op).__name__}; "
                                    "give the operation a simulate()")
                return op.simulate(self)
        return None

    def _real(self, path: str) -> str:
        return self.root + path if self.root else path

    def _mount_at(self, target: str) -> int:
        for i in range(len(self.mounted) - 1, -1, -1):
            if self.mounted[i][1] == target:
                return i
        raise OSError(errno.EINVAL, "Invalid argument (not a mount point)", target)

    def _move(self, source: str, target: str) -> None:
        self._mount_at(source)
        moving = [i for i, m in enumerate(self.mounted) if _under(m[1], source)]
        # Files live on the mounts that move: they go where their mount goes.
        old = self._real(source.rstrip("/"))
        carried = {p: d for p, d in self.files.items() if _under(p, old) and p != old + "/"}
        for p in carried:
            del self.files[p]
        if not self.exists(target):  # the live system detaches it instead
            self.mounted = [m for i, m in enumerate(self.mounted) if i not in moving]
            return
        new = self._real(target.rstrip("/"))
        self.files.update({new + p[len(old):]: d for p, d in carried.items()})
        for i in moving:
            src, tgt, fs = self.mounted[i]
            self.mounted[i] = (src, target + tgt[len(source.rstrip("/")):], fs)

    def _unmount(self, target: str) -> None:
        del self.mounted[self._mount_at(target)]

    def _chroot(self, path: str) -> None:
        self._mount_at(path)
        top = path.rstrip("/")
        self.mounted = [(s, t[len(top):] or "/", f) for s, t, f in self.mounted
                        if _under(t, top)]
        self.root = self._real(top)

    def _remove_initramfs(self, root: str, keep: str) -> None:
        """As initium.initramfs does: guards first, then never cross a mount or enter keep."""
        if self.fs_magic not in (linux.RAMFS_MAGIC, linux.TMPFS_MAGIC):
            raise OSError(errno.EINVAL, f"refusing to remove files: {root} is not a ramfs "
                                        "or tmpfs")
        if not self.exists(root.rstrip("/") + "/etc/initrd-release"):
            raise OSError(errno.ENOENT, "refusing to remove files: no /etc/initrd-release "
                                        "marker")
        spared = [keep] + [t for _, t, _ in self.mounted if t != root]
        top = self._real(root.rstrip("/"))
        self.files = {p: d for p, d in self.files.items()
                      if not _under(p, top)
                      or any(_under(p, self._real(s)) for s in spared)}

    # -- queries -----------------------------------------------------------

    def _visible(self, path: str) -> bool:
        return self.appear_at.get(path, 0.0) <= self.now

    def _reading(self, path: str) -> None:
        self.reads += 1
        self.now += self.read_delays.get(path, 0.0)
        code = self.read_errors.get(path)
        if code is not None:
            raise OSError(code, os.strerror(code), path)

    def read_bytes(self, path: str, limit: int = READ_LIMIT) -> bytes:
        if path == "/proc/self/mountinfo":
            lines = [f"{i} 1 0:{i} / {t} rw - {fs} {s} rw"
                     for i, (s, t, fs) in enumerate(self.mounted, 20)]
            return "\n".join(lines).encode()
        self._reading(path)
        real = self._real(path)
        if real not in self.files or real.endswith("/") or not self._visible(path):
            raise FileNotFoundError(2, "No such file or directory", path)
        return self.files[real][:limit]

    def read_at(self, path: str, offset: int, length: int) -> bytes:
        return self.read_bytes(path)[offset : offset + length]

    def listdir(self, path: str) -> list[str]:
        prefix = self._real(path).rstrip("/") + "/"
        names = {p[len(prefix):].split("/", 1)[0] for p in self.files
                 if p.startswith(prefix) and self._visible(p)}
        names.discard("")
        if not names and prefix not in self.files:
            raise FileNotFoundError(2, "No such file or directory", path)
        return sorted(names)

    def exists(self, path: str) -> bool:
        real = self._real(path)
        prefix = real.rstrip("/") + "/"
        return (real in self.files and self._visible(path)) or any(
            p.startswith(prefix) and self._visible(p) for p in self.files)

    def is_executable(self, path: str) -> bool:
        return self._real(path) in self.executables or (
            path in self.executables and not self.root)

    def readlink(self, path: str) -> str | None:
        return self.links.get(path)

    def open_log(self) -> tuple[Callable[[str], None], int] | None:
        return self.kmsg.append, 0

    def size(self, path: str) -> int:
        return len(self.read_bytes(path))

    def statfs_type(self, path: str) -> int:
        return self.fs_magic

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def kernel_release(self) -> str:
        return self.release

    def pid(self) -> int:
        return 1

    def environ(self) -> dict[str, str]:
        return dict(self.env)

    def init_arguments(self) -> list[str]:
        return list(self.init_args)
