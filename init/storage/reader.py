"""Device reads with a deadline, so that no disk can stall PID 1.

A read from a disk stuck in error recovery sleeps in the kernel
(uninterruptibly) for as long as the driver retries: O_NONBLOCK does not
apply to block devices, and a thread stuck that way would also block the
final ``execve`` of the real init, which waits for every other thread to
die. So the reads happen in a child process, one for the whole loop: the
parent sends it (path, offset, length) over a pipe and waits for the answer
with ``poll`` and a deadline. A child that does not answer in time is killed
(it dies when the kernel lets go of it; nobody waits for it) and a new one
serves the other devices.

Under the static /init the child is a clone(CLONE_VM) of PID 1 running a
small loop in C (``_initium.reader_start``); elsewhere a fork running
``_serve``. Under QEMU's TCG the plain root's probe (24 reads of vda, page
cache dropped) took 10 ms in-process, 23 ms through the clone and 37 ms
through the first fork of a boot (medians of 6 boots): the fork's page
tables and copy-on-write faults were half the reader's cost; what is left
is two context switches per read (benchmarks/README.md, "The device reader").

Tests and dry runs read in-process (``SimulatedReader``): there a read
counts as stalled when the system's clock says it took longer than the
deadline, which is how the in-memory machine models a stuck disk.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # `signal` imports enum
import errno
import math
import os
import select
import time

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


# The protocol, the same for both children (packaging/static/_initium.c speaks it
# too): a request is offset (u64), length (u32), path length (u32) and the path;
# the reply is frames, each an i32: n > 0 announces n bytes of data, 0 ends the
# reply, -errno ends it with an error. All little-endian.
_CHUNK = 256 << 10  # the most one frame carries
MAX_PATH = 4095


def _frame(code: int) -> bytes:
    return code.to_bytes(4, "little", signed=True)


def _serve(requests: int, replies: int) -> None:
    """The forked child: answer read requests until the parent closes the pipe."""
    fds: dict[str, int] = {}
    while True:
        head = _read_exactly(requests, 16)
        if head is None:
            os._exit(0)
        offset = int.from_bytes(head[:8], "little")
        length = int.from_bytes(head[8:12], "little")
        size = int.from_bytes(head[12:], "little")
        name = _read_exactly(requests, size) if 0 < size <= MAX_PATH else None
        if name is None:
            os._exit(0)
        path = os.fsdecode(name)
        try:
            fd = fds.get(path)
            if fd is None:
                fd = fds[path] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            while True:  # the last data frame and the end go out in one write
                data = os.pread(fd, min(length, _CHUNK), offset) if length else b""
                offset += len(data)
                length -= len(data)
                last = not data or not length
                os.write(replies, (_frame(len(data)) + data if data else b"")
                         + (_frame(0) if last else b""))
                if last:
                    break
        except OSError as err:
            os.write(replies, _frame(-(err.errno or errno.EIO)))


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


class ChildReader(Reader):
    """Reads in a child process; a child that misses the deadline is abandoned.

    Under the static /init the child is _initium.reader_start's: made with
    clone(CLONE_VM), it shares PID 1's memory and runs a loop of raw system
    calls in C, so starting it copies no page tables and costs no
    copy-on-write faults afterwards. A dynamically linked interpreter (the
    host's: dry runs, tests) forks one that runs ``_serve``.
    """

    def __init__(self, deadline: float = READ_DEADLINE) -> None:
        super().__init__(deadline)
        self.pid = 0
        self.requests = self.replies = -1
        self.abandoned: list[int] = []
        self.poller = select.poll()

    def _start(self) -> None:
        from initium import syscalls

        req_r, req_w = os.pipe()
        rep_r, rep_w = os.pipe()
        try:
            pid = syscalls.reader_start(req_r, rep_w, (req_w, rep_r))
        except OSError:
            pid = None  # no memory for its stack: fork, which needs none
        if pid is None:
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
        self.poller = select.poll()
        self.poller.register(rep_r, select.POLLIN)

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
        name = os.fsencode(path)
        if not 0 < len(name) <= MAX_PATH or b"\0" in name or not 0 <= offset < 1 << 63 \
                or not 0 <= length <= MAX_REPLY:
            raise OSError(errno.EINVAL, f"no read of {length} bytes at {offset}", path)
        if not self.pid:
            self._start()
        request = (offset.to_bytes(8, "little") + length.to_bytes(4, "little")
                   + len(name).to_bytes(4, "little") + name)
        try:
            os.write(self.requests, request)
        except BrokenPipeError:
            self._abandon()
            raise OSError(errno.EIO, "the device reader died", path) from None
        until = time.monotonic() + self.deadline
        pending = b""  # what the child sent that is not parsed yet
        data: list[bytes] = []
        got = 0
        while True:
            while len(pending) >= 4:
                code = int.from_bytes(pending[:4], "little", signed=True)
                if code <= 0:
                    if len(pending) > 4:  # nothing follows the end of a reply
                        self._abandon()
                        raise OSError(errno.EIO, "the device reader sent more than asked", path)
                    if code:
                        raise OSError(-code, os.strerror(-code), path)
                    return b"".join(data)
                if got + code > length:  # before waiting for that much
                    self._abandon()
                    raise OSError(errno.EIO, "the device reader sent more than asked", path)
                if len(pending) < 4 + code:
                    break
                got += code
                data.append(pending[4:4 + code])
                pending = pending[4 + code:]
            pending += self._receive(until, path)

    def _receive(self, until: float, path: str) -> bytes:
        """What the child has sent so far, waiting for it no later than ``until``."""
        while True:
            left = max(until - time.monotonic(), 0.0)
            if not self.poller.poll(math.ceil(left * 1000)):
                self._abandon()
                self.stalled.add(path)
                raise ReadStalled(path, self.deadline)
            try:
                chunk = os.read(self.replies, 1 << 20)
            except InterruptedError:
                continue
            if not chunk:
                self._abandon()
                raise OSError(errno.EIO, "the device reader died", path)
            return chunk

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
    """Start the reader that probes devices with a deadline (a child process when live)."""

    deadline: float = READ_DEADLINE

    def describe(self) -> str:
        return f"start the device reader (deadline {self.deadline:g} s per read)"

    def perform(self, sys: System) -> Reader:
        return ChildReader(self.deadline)

    def simulate(self, sys: System) -> Reader:
        return SimulatedReader(sys, self.deadline)
