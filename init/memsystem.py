"""An in-memory machine for tests (never shipped in an image)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from initium import linux, ops
from initium.system import READ_LIMIT, System


@dataclass
class MemorySystem(System):
    """An in-memory machine for tests: files, disks, a mount table and a clock.

    ``on_apply`` lets a test script the world's answer to an operation (a
    loaded driver makes a disk appear); ``delays`` make a path appear only
    after some simulated time, to exercise the waits.
    """

    files: dict[str, bytes] = field(default_factory=dict)
    executables: set[str] = field(default_factory=set)
    links: dict[str, str] = field(default_factory=dict)
    kmsg: list[str] = field(default_factory=list)
    appear_at: dict[str, float] = field(default_factory=dict)
    release: str = "6.1.0-test"
    fs_magic: int = linux.RAMFS_MAGIC
    env: dict[str, str] = field(default_factory=dict)
    init_args: list[str] = field(default_factory=list)
    on_apply: Callable[[MemorySystem, ops.Op], None] | None = None
    spawn_status: int = 0
    now: float = 0.0
    applied: list[ops.Op] = field(default_factory=list)
    mounted: list[tuple[str, str, str]] = field(default_factory=list)

    def _visible(self, path: str) -> bool:
        return self.appear_at.get(path, 0.0) <= self.now

    def apply(self, op: ops.Op) -> None:
        self.applied.append(op)
        match op:
            case ops.Mount(source, target, fstype):
                self.mounted.append((source, target, fstype))
            case ops.MakeDir(path):
                self.files.setdefault(path.rstrip("/") + "/", b"")
            case ops.WriteFile(path, data):
                self.files[path] = data
            case _:
                pass
        if self.on_apply is not None:
            self.on_apply(self, op)

    def spawn(self, op: ops.Spawn) -> int:
        self.applied.append(op)
        return self.spawn_status

    def read_bytes(self, path: str, limit: int = READ_LIMIT) -> bytes:
        if path == "/proc/self/mountinfo":
            lines = [f"{i} 1 0:{i} / {t} rw - {fs} {s} rw"
                     for i, (s, t, fs) in enumerate(self.mounted, 20)]
            return "\n".join(lines).encode()
        if path not in self.files or path.endswith("/") or not self._visible(path):
            raise FileNotFoundError(2, "No such file or directory", path)
        return self.files[path][:limit]

    def read_at(self, path: str, offset: int, length: int) -> bytes:
        return self.read_bytes(path)[offset : offset + length]

    def listdir(self, path: str) -> list[str]:
        prefix = path.rstrip("/") + "/"
        names = {p[len(prefix):].split("/", 1)[0] for p in self.files
                 if p.startswith(prefix) and self._visible(p)}
        names.discard("")
        if not names and prefix not in self.files:
            raise FileNotFoundError(2, "No such file or directory", path)
        return sorted(names)

    def exists(self, path: str) -> bool:
        prefix = path.rstrip("/") + "/"
        return (path in self.files and self._visible(path)) or any(
            p.startswith(prefix) and self._visible(p) for p in self.files)

    def is_executable(self, path: str) -> bool:
        return path in self.executables

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
