"""The system facade: the one door through which stages touch the machine.

Stages read through queries (``read_bytes``, ``listdir``, ``read_at`` …) and
change things only by handing an :mod:`initium.ops` value to ``apply``.  Three
implementations share that contract:

* ``LiveSystem`` performs the calls (PID 1 in the initramfs);
* ``DryRunSystem`` reads the live host, records every operation instead of
  performing it, and answers reads below a would-be mount from the host's own
  mount of the same device when there is one;
* ``MemorySystem`` (initium.memsystem, never in an image) keeps a small file
  tree, disks and a clock in memory, so unit tests run the real stage code
  without root and without waiting.
"""

from __future__ import annotations

import os
import sys
import time

from initium import ops, syscalls
from initium.console import open_kmsg
from initium.mounts import MountEntry, parse_mountinfo
from initium.record import record

TYPE_CHECKING = False  # typing's import cost is not paid at boot
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any

# Reads through the facade are bounded: a query must never pull a whole disk
# or a hostile sysfs file into memory.
READ_LIMIT = 16 << 20


class System:
    """Interface shared by the three implementations (see the module docstring)."""

    dry_run = False
    # What the first irreversible operation was (None: nothing yet); from then
    # on a failure cannot be retried as if nothing had happened.
    point_of_no_return: str | None = None

    def apply(self, op: ops.Op) -> Any:
        """Carry out ``op`` (or record it); its reply, for operations that have one."""
        raise NotImplementedError

    def spawn(self, op: ops.Spawn) -> int:
        """Run a helper to its end; its exit status."""
        status: int = self.apply(op)
        return status

    def _crossing(self, op: ops.Op) -> None:
        """Note the first irreversible operation, before it is attempted."""
        if op.irreversible and self.point_of_no_return is None:
            self.point_of_no_return = op.describe()

    def read_bytes(self, path: str, limit: int = READ_LIMIT) -> bytes:
        raise NotImplementedError

    def read_at(self, path: str, offset: int, length: int) -> bytes:
        raise NotImplementedError

    def listdir(self, path: str) -> list[str]:
        raise NotImplementedError

    def exists(self, path: str) -> bool:
        raise NotImplementedError

    def is_executable(self, path: str) -> bool:
        raise NotImplementedError

    def readlink(self, path: str) -> str | None:
        """The target of a symbolic link, or None when ``path`` is not one."""
        raise NotImplementedError

    def open_log(self) -> tuple[Callable[[str], None], int] | None:
        """A writer for the kernel log and the console loglevel, once /dev/kmsg exists."""
        raise NotImplementedError

    def size(self, path: str) -> int:
        raise NotImplementedError

    def statfs_type(self, path: str) -> int:
        raise NotImplementedError

    def monotonic(self) -> float:
        raise NotImplementedError

    def sleep(self, seconds: float) -> None:
        raise NotImplementedError

    def kernel_release(self) -> str:
        raise NotImplementedError

    def pid(self) -> int:
        raise NotImplementedError

    def environ(self) -> dict[str, str]:
        raise NotImplementedError

    def init_arguments(self) -> list[str]:
        """The arguments the kernel gave /init, to pass on to the real init.

        The kernel's own list (unknown bare words such as ``single``, then the
        words after ``--``) is the truth; the parser can only approximate it.
        """
        raise NotImplementedError

    # Derived queries, written once in terms of the primitives above.

    def read_text(self, path: str, limit: int = READ_LIMIT) -> str:
        return self.read_bytes(path, limit).decode("utf-8", errors="surrogateescape")

    def mounts(self) -> list[MountEntry]:
        try:
            return parse_mountinfo(self.read_text("/proc/self/mountinfo"))
        except OSError:
            return []

    def is_mounted(self, path: str) -> bool:
        return any(m.mount_point == path for m in self.mounts())

    def has_filesystem(self, fstype: str) -> bool:
        """Whether the kernel knows ``fstype`` now (/proc/filesystems)."""
        try:
            text = self.read_text("/proc/filesystems")
        except OSError:
            return False
        return any(line.split()[-1:] == [fstype] for line in text.splitlines())


class LiveSystem(System):
    """The real machine."""

    def __init__(self, log: Callable[[str], None] | None = None,
                 init_args: list[str] | None = None) -> None:
        self._log = log
        self._init_args = init_args

    def _announce(self, op: ops.Op) -> None:
        """The debug trace (live) and the printed plan (dry run) use the same words."""
        if self._log is not None:
            self._log(op.describe())

    def apply(self, op: ops.Op) -> Any:
        self._announce(op)
        self._crossing(op)
        return op.perform(self)

    def read_bytes(self, path: str, limit: int = READ_LIMIT) -> bytes:
        with open(path, "rb") as f:
            return f.read(limit)

    def read_at(self, path: str, offset: int, length: int) -> bytes:
        with open(path, "rb", buffering=0) as f:
            f.seek(offset)
            return f.read(length)

    def listdir(self, path: str) -> list[str]:
        return sorted(os.listdir(path))

    def exists(self, path: str) -> bool:
        return os.path.lexists(path)

    def is_executable(self, path: str) -> bool:
        return os.path.isfile(path) and os.access(path, os.X_OK)

    def readlink(self, path: str) -> str | None:
        try:
            return os.readlink(path)
        except OSError:
            return None

    def open_log(self) -> tuple[Callable[[str], None], int] | None:
        return open_kmsg()

    def size(self, path: str) -> int:
        with open(path, "rb", buffering=0) as f:
            return f.seek(0, os.SEEK_END)

    def statfs_type(self, path: str) -> int:
        return syscalls.statfs_type(path)

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def kernel_release(self) -> str:
        return os.uname().release

    def pid(self) -> int:
        return os.getpid()

    def environ(self) -> dict[str, str]:
        return dict(os.environ)

    def init_arguments(self) -> list[str]:
        if self._init_args is not None:
            return list(self._init_args)
        return sys.argv[1:]


@record(frozen=False)
class _View:
    """Where reads below a dry-run mount are answered from on the host (or nowhere)."""

    target: str
    host_path: str | None


class DryRunSystem(LiveSystem):
    """Reads the host, changes nothing, and keeps the plan.

    ``overlay`` holds the image's own files (read from the image with
    ``--image``): reads of those paths are answered from the image, as they
    would be inside the initramfs.  ``/proc``, ``/sys`` and ``/dev`` are
    always the host's.
    """

    dry_run = True
    _HOST_ONLY = ("/proc/", "/sys/", "/dev/", "/run/")

    def __init__(self, overlay: Mapping[str, bytes] | None = None,
                 log: Callable[[str], None] | None = None,
                 init_args: list[str] | None = None) -> None:
        super().__init__(log, list(init_args or []))
        self.plan: list[ops.Op] = []
        self.notes: list[str] = []
        self._overlay = dict(overlay or {})
        self._views: list[_View] = []
        self._clock = time.monotonic()

    def apply(self, op: ops.Op) -> Any:
        self.plan.append(op)
        self._announce(op)
        self._crossing(op)
        if isinstance(op, ops.Mount) and op.source.startswith("/dev/"):
            self._views.append(_View(op.target, self._host_mount_of(op.source)))
        return op.simulate(self)

    def _host_mount_of(self, device: str) -> str | None:
        try:
            rdev = os.stat(device).st_rdev
        except OSError:
            return None
        for m in self.mounts():
            if (m.major, m.minor) == (os.major(rdev), os.minor(rdev)) and m.root == "/":
                return m.mount_point
        return None

    def _translate(self, path: str) -> str | None:
        for view in reversed(self._views):
            if path == view.target or path.startswith(view.target.rstrip("/") + "/"):
                if view.host_path is None:
                    return None
                return view.host_path.rstrip("/") + path[len(view.target.rstrip("/")):]
        return path

    def _from_overlay(self, path: str) -> bytes | None:
        if path.startswith(self._HOST_ONLY):
            return None
        return self._overlay.get(path)

    def read_bytes(self, path: str, limit: int = READ_LIMIT) -> bytes:
        data = self._from_overlay(path)
        if data is not None:
            return data[:limit]
        host = self._translate(path)
        if host is None:
            raise FileNotFoundError(2, "not visible from this host", path)
        return super().read_bytes(host, limit)

    def exists(self, path: str) -> bool:
        if self._from_overlay(path) is not None:
            return True
        host = self._translate(path)
        return host is not None and super().exists(host)

    def is_executable(self, path: str) -> bool:
        host = self._translate(path)
        if host is None:
            note = f"cannot check {path}: its file system is not mounted on this host"
            if note not in self.notes:
                self.notes.append(note)
            return True
        return super().is_executable(host)

    def readlink(self, path: str) -> str | None:
        host = self._translate(path)
        return None if host is None else super().readlink(host)

    def open_log(self) -> tuple[Callable[[str], None], int] | None:
        return None  # a dry run never writes to the host's kernel log

    def monotonic(self) -> float:
        return self._clock

    def sleep(self, seconds: float) -> None:
        self._clock += seconds
