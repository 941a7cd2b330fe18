"""Messages to the console and to the kernel log, each line tagged with its stage.

A line goes to /dev/kmsg when it exists (so it lands in dmesg and the journal
of the real root) and straight to the console only when the kernel will not
echo it there itself, so nothing prints twice whatever ``loglevel`` says.

The kernel drops lines written to one open /dev/kmsg past its rate limit
(10 lines per 5 s unless ``printk.devkmsg=on``) while ``write()`` still
succeeds, so an echo we counted on could silently never come.  The limit
belongs to the open file (kernel/printk/printk.c: ``devkmsg_user.rs``), so
``KmsgWriter`` opens /dev/kmsg anew before a file has used up its burst:
no line is ever dropped and the echo can be trusted.  Debug lines stay off
the kernel log unless ``initium.kmsg_debug`` asks for them.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # typing's import cost is not paid at boot
if TYPE_CHECKING:
    from collections.abc import Callable

ERR, WARNING, INFO, DEBUG = 3, 4, 6, 7
# printk's LOG_LINE_MAX is 1024 minus the prefix; stay well below it.
KMSG_LINE_MAX = 900
# DEFAULT_RATELIMIT_BURST is 10 lines per open file and interval; one fewer
# leaves a margin for a line the kernel itself counts that we did not.
KMSG_LINES_PER_OPEN = 9


def sanitize(text: str, limit: int = KMSG_LINE_MAX) -> str:
    """One safe line: control characters and undecodable bytes escaped, length bounded."""
    out: list[str] = []
    for ch in text:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:  # a surrogate-escaped raw byte
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        else:
            out.append(ch)
    line = "".join(out)
    return line if len(line) <= limit else line[: limit - 1] + "…"


class Console:
    """Routes messages by level; sinks are injected so tests see exactly what a user sees."""

    def __init__(self, write_console: Callable[[str], None],
                 write_kmsg: Callable[[str], None] | None = None,
                 kernel_echo_below: int = 0, *, quiet: bool = False, debug: bool = False,
                 kmsg_debug: bool = False) -> None:
        self._console = write_console
        self._kmsg = write_kmsg
        self.kernel_echo_below = kernel_echo_below
        self.quiet = quiet
        self.debug_enabled = debug
        self.kmsg_debug = kmsg_debug

    def attach_kmsg(self, write_kmsg: Callable[[str], None], kernel_echo_below: int) -> None:
        self._kmsg = write_kmsg
        self.kernel_echo_below = kernel_echo_below

    def emit(self, level: int, message: str, stage: str = "") -> None:
        """Never raises: a message that cannot be shown must not become a second failure."""
        try:
            self._emit(level, message, stage)
        except BaseException:  # PID 1: even a hostile str() stays here
            pass

    def _emit(self, level: int, message: str, stage: str) -> None:
        if level == DEBUG and not (self.debug_enabled or self.kmsg_debug):
            return
        line = sanitize(f"{stage}: {message}" if stage else message)
        echoed = False
        if self._kmsg is not None and (level != DEBUG or self.kmsg_debug):
            try:
                self._kmsg(f"<{level}>initium: {line}\n")
                echoed = level < self.kernel_echo_below
            except Exception:  # any failure of the log means: not echoed
                echoed = False
        if echoed:
            return
        if level <= WARNING or (level == INFO and not self.quiet) or (
                level == DEBUG and self.debug_enabled):
            prefix = {ERR: "ERROR ", WARNING: "WARNING "}.get(level, "")
            try:
                self._console(f"initium: {prefix}{line}\n")
            except Exception:  # nowhere left to report it
                pass

    def error(self, message: str, stage: str = "") -> None:
        self.emit(ERR, message, stage)

    def warn(self, message: str, stage: str = "") -> None:
        self.emit(WARNING, message, stage)

    def info(self, message: str, stage: str = "") -> None:
        self.emit(INFO, message, stage)

    def debug(self, message: str, stage: str = "") -> None:
        self.emit(DEBUG, message, stage)

    def raw(self, text: str) -> None:
        """Unprefixed output (the timeline table, a dry-run plan)."""
        try:
            self._console(text)
        except Exception:  # nowhere left to report it
            pass


def fd_writer(fd: int) -> Callable[[str], None]:
    def write(text: str) -> None:
        os.write(fd, text.encode("utf-8", errors="surrogateescape"))

    return write


class KmsgWriter:
    """Writes lines to /dev/kmsg, reopening it before the kernel's rate limit drops one.

    ``opener`` returns a new file descriptor for /dev/kmsg (injected so the
    unit tests can model the kernel's per-file limit).
    """

    def __init__(self, opener: Callable[[], int], write: Callable[[int, bytes], int] = os.write,
                 close: Callable[[int], None] = os.close,
                 lines_per_open: int = KMSG_LINES_PER_OPEN) -> None:
        self._opener = opener
        self._write = write
        self._close = close
        self._lines_per_open = lines_per_open
        self._fd = opener()
        self._written = 0
        self.reopened = 0

    def __call__(self, line: str) -> None:
        if self._written >= self._lines_per_open:
            fd = self._opener()
            old, self._fd, self._written = self._fd, fd, 0
            self.reopened += 1
            try:
                self._close(old)
            except OSError:
                pass
        self._written += 1
        self._write(self._fd, line.encode("utf-8", errors="surrogateescape"))


def open_kmsg(path: str = "/dev/kmsg") -> tuple[KmsgWriter, int] | None:
    """A kmsg writer and the console loglevel below which the kernel echoes lines itself.

    None when the kernel ignores writes (``printk.devkmsg=off``) or there is
    no /dev/kmsg: every line then goes to the console.
    """
    try:
        with open("/proc/sys/kernel/printk_devkmsg", "rb") as f:
            if f.read(16).strip() == b"off":
                return None
    except OSError:
        pass
    try:
        writer = KmsgWriter(lambda: os.open(path, os.O_WRONLY | os.O_CLOEXEC | os.O_NOCTTY))
    except OSError:
        return None
    try:
        with open("/proc/sys/kernel/printk", "rb") as f:
            echo_below = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        echo_below = 7
    return writer, echo_below
