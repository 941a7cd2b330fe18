"""The device reader's child process on this host (a fork: the host's interpreter has no
_initium.reader_start; tests/host/test_static_interpreter.py runs the same checks on the
static /init, whose child is the C clone).

Regular files stand in for disks, and a FIFO with no writer for a disk that never
answers: opening it blocks the child until the deadline.
"""

from __future__ import annotations

import errno
import os
import select
import time
from pathlib import Path

import pytest
from initium.storage.reader import (
    _CHUNK,
    MAX_REPLY,
    ChildReader,
    ReadStalled,
    StartReader,
)
from initium.system import LiveSystem


@pytest.fixture
def disk(tmp_path: Path) -> tuple[str, bytes]:
    data = os.urandom(3 * _CHUNK + 12345)
    path = tmp_path / "disk.img"
    path.write_bytes(data)
    return str(path), data


def test_reads_what_the_file_holds_at_any_offset_and_length(disk: tuple[str, bytes]) -> None:
    path, data = disk
    reader = ChildReader(deadline=10.0)
    try:
        for offset, length in ((0, 512), (4096, 256), (1, 1), (len(data) - 7, 32),
                               (len(data), 10), (_CHUNK - 3, 2 * _CHUNK + 9), (0, len(data))):
            assert reader.read(path, offset, length) == data[offset:offset + length]
        assert reader.read(path, 0, 0) == b""
        first = reader.pid
        assert first and reader.read(path, 10, 10) == data[10:20]
        assert reader.pid == first, "one child serves every read"
    finally:
        reader.close()
    assert reader.pid == 0


def test_errors_come_back_as_oserror_and_the_child_keeps_serving(
        disk: tuple[str, bytes], tmp_path: Path) -> None:
    path, data = disk
    reader = ChildReader(deadline=10.0)
    try:
        with pytest.raises(FileNotFoundError) as missing:
            reader.read(str(tmp_path / "absent"), 0, 512)
        assert missing.value.filename == str(tmp_path / "absent")
        with pytest.raises(IsADirectoryError):
            reader.read(str(tmp_path), 0, 512)
        pid = reader.pid
        assert reader.read(path, 100, 50) == data[100:150]
        assert reader.pid == pid
    finally:
        reader.close()


def test_bad_requests_are_refused_before_any_child_is_started(disk: tuple[str, bytes]) -> None:
    path, _ = disk
    reader = ChildReader()
    for args in ((path, -1, 10), (path, 1 << 64, 1), (path, 0, MAX_REPLY + 1), ("", 0, 10),
                 ("/" * 5000, 0, 1), (path + "\0x", 0, 1)):
        with pytest.raises(OSError) as err:
            reader.read(*args)
        assert err.value.errno == errno.EINVAL
    assert reader.pid == 0


def test_a_device_that_never_answers_is_reported_stalled_within_the_deadline(
        disk: tuple[str, bytes], tmp_path: Path) -> None:
    path, data = disk
    stuck = tmp_path / "stuck"
    os.mkfifo(stuck)  # no writer: the child's open never returns
    reader = ChildReader(deadline=0.3)
    try:
        assert reader.read(path, 0, 16) == data[:16]
        first = reader.pid
        started = time.monotonic()
        with pytest.raises(ReadStalled) as err:
            reader.read(str(stuck), 0, 512)
        waited = time.monotonic() - started
        assert 0.3 <= waited < 3.0
        assert err.value.errno == errno.ETIMEDOUT and "within 0.3 s" in str(err.value)
        assert reader.abandoned == [first] and reader.pid == 0
        # The device is failed at once from now on, until forgiven ...
        started = time.monotonic()
        with pytest.raises(ReadStalled):
            reader.read(str(stuck), 0, 512)
        assert time.monotonic() - started < 0.2
        # ... and the other devices are served by a new child.
        assert reader.read(path, 5, 5) == data[5:10]
        assert reader.pid not in (0, first)
    finally:
        reader.close()
    # The abandoned child was killed (it slept interruptibly): reaped by close(), or
    # dying of SIGKILL still.
    try:
        pid, status = os.waitpid(first, 0)
    except ChildProcessError:
        pass
    else:
        assert pid == first and os.WIFSIGNALED(status) and os.WTERMSIG(status) == 9


def test_the_live_system_starts_a_child_reader() -> None:
    reader = StartReader(deadline=1.5).perform(LiveSystem())
    assert isinstance(reader, ChildReader) and reader.deadline == 1.5 and reader.pid == 0


class ScriptedChild(ChildReader):
    """A child that answers the first request with ``reply`` and then sleeps."""

    def __init__(self, reply: bytes) -> None:
        super().__init__(deadline=0.3)
        self.reply = reply

    def _start(self) -> None:
        req_r, req_w = os.pipe()
        rep_r, rep_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(req_w)
                os.close(rep_r)
                os.read(req_r, 1 << 16)
                os.write(rep_w, self.reply)
                time.sleep(30)
            finally:
                os._exit(0)
        os.close(req_r)
        os.close(rep_w)
        self.pid, self.requests, self.replies = pid, req_w, rep_r
        self.poller = select.poll()
        self.poller.register(rep_r, select.POLLIN)


def _frame(n: int) -> bytes:
    return n.to_bytes(4, "little", signed=True)


@pytest.mark.parametrize("reply", [
    _frame(10) + b"x" * 10 + _frame(0),  # more data than asked
    _frame(5) + b"x" * 5 + _frame(0) + _frame(0),  # something after the end
    _frame(1 << 30),  # announces more than asked, and is not waited for
])
def test_a_child_that_sends_more_than_asked_is_abandoned(reply: bytes) -> None:
    reader = ScriptedChild(reply)
    try:
        with pytest.raises(OSError, match="sent more than asked"):
            reader.read("/dev/null", 0, 5)
        assert reader.pid == 0 and len(reader.abandoned) == 1
    finally:
        reader.close()


@pytest.mark.parametrize("reply", [b"", _frame(100) + b"x" * 50, _frame(3)[:2]])
def test_a_reply_that_stops_halfway_is_a_stall_within_the_deadline(reply: bytes) -> None:
    reader = ScriptedChild(reply)
    started = time.monotonic()
    try:
        with pytest.raises(ReadStalled):
            reader.read("/dev/null", 0, 100)
        assert time.monotonic() - started < 3.0
        assert "/dev/null" in reader.stalled
    finally:
        reader.close()


def test_an_error_frame_is_the_errno_it_carries() -> None:
    reader = ScriptedChild(_frame(-errno.EIO))
    try:
        with pytest.raises(OSError) as err:
            reader.read("/dev/null", 0, 5)
        assert err.value.errno == errno.EIO and err.value.filename == "/dev/null"
        assert reader.pid != 0, "an error is an answer: the child keeps serving"
    finally:
        os.kill(reader.pid, 9)
        reader.close()
