"""Messages to the console and to the kernel log, each line tagged with its stage.

A line goes to /dev/kmsg when it exists (so it lands in dmesg and the journal
of the real root) and straight to the console only when the kernel will not
echo it there itself, so nothing prints twice whatever ``loglevel`` says.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # typing's import cost is not paid at boot
if TYPE_CHECKING:
    from collections.abc import Callable

ERR, WARNING, INFO, DEBUG = 3, 4, 6, 7
# printk's LOG_LINE_MAX is 1024 minus the prefix; stay well below it.
KMSG_LINE_MAX = 900


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
                 kernel_echo_below: int = 0, quiet: bool = False, debug: bool = False) -> None:
        self._console = write_console
        self._kmsg = write_kmsg
        self.kernel_echo_below = kernel_echo_below
        self.quiet = quiet
        self.debug_enabled = debug

    def attach_kmsg(self, write_kmsg: Callable[[str], None], kernel_echo_below: int) -> None:
        self._kmsg = write_kmsg
        self.kernel_echo_below = kernel_echo_below

    def emit(self, level: int, message: str, stage: str = "") -> None:
        if level == DEBUG and not self.debug_enabled:
            return
        line = sanitize(f"{stage}: {message}" if stage else message)
        echoed = False
        if self._kmsg is not None:
            try:
                self._kmsg(f"<{level}>initium: {line}\n")
                echoed = level < self.kernel_echo_below
            except OSError:
                echoed = False
        if echoed:
            return
        if level <= WARNING or (level == INFO and not self.quiet) or self.debug_enabled:
            prefix = {ERR: "ERROR ", WARNING: "WARNING "}.get(level, "")
            try:
                self._console(f"initium: {prefix}{line}\n")
            except OSError:
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
        except OSError:
            pass


def fd_writer(fd: int) -> Callable[[str], None]:
    def write(text: str) -> None:
        os.write(fd, text.encode("utf-8", errors="surrogateescape"))

    return write


def open_kmsg(path: str = "/dev/kmsg") -> tuple[Callable[[str], None], int] | None:
    """A kmsg writer and the console loglevel below which the kernel echoes lines itself."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError:
        return None
    try:
        with open("/proc/sys/kernel/printk", "rb") as f:
            echo_below = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        echo_below = 7
    return fd_writer(fd), echo_below
