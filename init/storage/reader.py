"""Device reads with a deadline, so that no disk can stall PID 1.

A read from a disk stuck in error recovery sleeps in the kernel
(uninterruptibly) for as long as the driver retries: O_NONBLOCK does not
apply to block devices, and a thread stuck that way would also block the
final ``execve`` of the real init, which waits for every other thread to
die. So the reads happen in a forked child, one for the whole loop: the
parent sends it (path, offset, length) over a pipe and waits for the answer
with ``poll`` and a deadline. A child that does not answer in time is killed
(it dies when the kernel lets go of it; nobody waits for it) and a new one
serves the other devices. One fork per boot costs about 1.5 ms natively,
and a round trip per read a few microseconds.

Tests and dry runs read in-process (``SimulatedReader``): there a read
counts as stalled when the system's clock says it took longer than the
deadline, which is how the in-memory machine models a stuck disk.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # `signal` imports enum
import errno
import marshal
import os
import select

from initium import ops
from initium.record import record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from initium.system import System

# How long one read may take before its device is called stalled. A healthy
# disk answers a 4 KiB read in milliseconds, even under QEMU's TCG.
READ_DEADLINE = 2.0
# A reply is never larger than what a probe asks for (a few MiB at most).
MAX_REPLY = 64 << 20


class ReadStalled(OSError):
    """A device did not answer a read within the deadline."""

    def __init__(self, path: str, seconds: float) -> None:
        super().__init__(errno.ETIMEDOUT, f"stalled: no answer to a read within {seconds:g} s",
                         path)
        self.seconds = seconds

    def __str__(self) -> str:
        return str(self.strerror)


class Reader:
    """Reads devices; remembers the ones that stalled and fails them at once."""

    def __init__(self, deadline: float = READ_DEADLINE) -> None:
        self.deadline = deadline
        self.stalled: set[str] = set()

    def read(self, path: str, offset: int, length: int) -> bytes:
        if path in self.stalled:
            raise ReadStalled(path, self.deadline)
        return self._read(path, offset, length)

    def forgive(self, path: str) -> None:
        """Let a stalled device be tried again (the loop does so after a while)."""
        self.stalled.discard(path)

    def _read(self, path: str, offset: int, length: int) -> bytes:
        raise NotImplementedError

    def close(self) -> None:
        """Stop the helper, if there is one."""


class SimulatedReader(Reader):
    """In-process reads through the facade; the facade's clock decides what stalled."""

    def __init__(self, sys: System, deadline: float = READ_DEADLINE) -> None:
        super().__init__(deadline)
        self.sys = sys

    def _read(self, path: str, offset: int, length: int) -> bytes:
        start = self.sys.monotonic()
        data = self.sys.read_at(path, offset, length)
        if self.sys.monotonic() - start > self.deadline:
            self.stalled.add(path)
            raise ReadStalled(path, self.deadline)
        return data


def _serve(requests: int, replies: int) -> None:
    """The child: answer read requests until the parent closes the pipe."""
    fds: dict[str, int] = {}
    while True:
        head = _read_exactly(requests, 4)
        if head is None:
            os._exit(0)
        body = _read_exactly(requests, int.from_bytes(head, "little"))
        if body is None:
            os._exit(0)
        path, offset, length = marshal.loads(body)
        try:
            fd = fds.get(path)
            if fd is None:
                fd = fds[path] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            reply = marshal.dumps((0, os.pread(fd, length, offset)))
        except OSError as err:
            reply = marshal.dumps((err.errno or errno.EIO, err.strerror or "I/O error"))
        os.write(replies, len(reply).to_bytes(4, "little") + reply)


def _read_exactly(fd: int, size: int) -> bytes | None:
    """``size`` bytes from a pipe, None at its end."""
    chunks = []
    while size:
        try:
            chunk = os.read(fd, min(size, 1 << 20))
        except InterruptedError:
            continue
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


class ForkedReader(Reader):
    """Reads in a forked child; a child that misses the deadline is abandoned."""

    def __init__(self, deadline: float = READ_DEADLINE) -> None:
        super().__init__(deadline)
        self.pid = 0
        self.requests = self.replies = -1
        self.abandoned: list[int] = []

    def _start(self) -> None:
        req_r, req_w = os.pipe()
        rep_r, rep_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: nothing but reads, never back into the init
            try:
                os.close(req_w)
                os.close(rep_r)
                _serve(req_r, rep_w)
            finally:
                os._exit(0)
        os.close(req_r)
        os.close(rep_w)
        self.pid, self.requests, self.replies = pid, req_w, rep_r

    def _abandon(self) -> None:
        os.close(self.requests)
        os.close(self.replies)
        try:
            os.kill(self.pid, _signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.abandoned.append(self.pid)
        self.pid = 0

    def _read(self, path: str, offset: int, length: int) -> bytes:
        if not self.pid:
            self._start()
        body = marshal.dumps((path, offset, length))
        try:
            os.write(self.requests, len(body).to_bytes(4, "little") + body)
        except BrokenPipeError:
            self._abandon()
            raise OSError(errno.EIO, "the device reader died", path) from None
        poller = select.poll()
        poller.register(self.replies, select.POLLIN)
        if not poller.poll(int(self.deadline * 1000)):
            self._abandon()
            self.stalled.add(path)
            raise ReadStalled(path, self.deadline)
        head = _read_exactly(self.replies, 4)
        size = int.from_bytes(head or b"", "little")
        reply = _read_exactly(self.replies, size) if head and size <= MAX_REPLY else None
        if reply is None:
            self._abandon()
            raise OSError(errno.EIO, "the device reader died", path)
        code, value = marshal.loads(reply)
        if code:
            raise OSError(code, value, path)
        data: bytes = value
        return data

    def close(self) -> None:
        if self.pid:
            os.close(self.requests)
            os.close(self.replies)
            try:
                os.waitpid(self.pid, 0)
            except ChildProcessError:
                pass
            self.pid = 0
        for pid in self.abandoned:  # reap those the kernel has let go of by now
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass


@record
class StartReader(ops.Op):
    """Start the reader that probes devices with a deadline (a forked child when live)."""

    deadline: float = READ_DEADLINE

    def describe(self) -> str:
        return f"start the device reader (deadline {self.deadline:g} s per read)"

    def perform(self, sys: System) -> Reader:
        return ForkedReader(self.deadline)

    def simulate(self, sys: System) -> Reader:
        return SimulatedReader(sys, self.deadline)
