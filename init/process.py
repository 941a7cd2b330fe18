"""The one door for child processes, for the builder and for PID 1.

It logs a copy-pasteable ``+ argv`` line, gives the child a minimal
environment and no stdin unless it is interactive, bounds its time, reports
"not found" instead of a bare exit status 127, and always reaps.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Callable, Mapping, Sequence

MINIMAL_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


class ProcessError(RuntimeError):
    """A child failed; the message is already the one line a user needs."""


def run(argv: Sequence[str], *, timeout: float | None = 60.0, interactive: bool = False,
        log: Callable[[str], None] | None = None, env: Mapping[str, str] | None = None) -> int:
    """Run a child with inherited stdout/stderr and return its exit status."""
    if log is not None:
        log("+ " + shlex.join(argv))
    try:
        proc = subprocess.Popen(
            list(argv),
            stdin=None if interactive else subprocess.DEVNULL,
            env=dict(env if env is not None else MINIMAL_ENV),
            start_new_session=not interactive,
        )
    except FileNotFoundError:
        raise ProcessError(f"{argv[0]}: not found") from None
    except PermissionError:
        raise ProcessError(f"{argv[0]}: not executable") from None
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise ProcessError(f"{argv[0]}: still running after {timeout:g} s, killed") from None


def capture(argv: Sequence[str], *, input: bytes | None = None, timeout: float | None = 300.0,
            log: Callable[[str], None] | None = None,
            env: Mapping[str, str] | None = None, check: bool = True) -> bytes:
    """Run a child and return its stdout; a failure raises with the child's last stderr line."""
    if log is not None:
        log("+ " + shlex.join(argv))
    try:
        done = subprocess.run(list(argv), check=False, input=input, capture_output=True,
                              timeout=timeout,
                              env=dict(env if env is not None else {**os.environ}))
    except FileNotFoundError:
        raise ProcessError(f"{argv[0]}: not found") from None
    except subprocess.TimeoutExpired:
        raise ProcessError(f"{argv[0]}: still running after {timeout} s, killed") from None
    if check and done.returncode != 0:
        lines = done.stderr.decode(errors="replace").strip().splitlines()
        detail = lines[-1] if lines else f"exit status {done.returncode}"
        raise ProcessError(f"{shlex.join(argv)}: {detail}")
    return done.stdout


def watch(argv: Sequence[str], *, done: Callable[[str], bool], timeout: float,
          input: bytes | None = None, answer: Callable[[str], bytes | None] | None = None,
          ) -> tuple[str, bool]:
    """Run a child, collecting its output until ``done(output)`` or ``timeout``; always kill it.

    ``answer`` sees the output after each chunk and may return bytes to type
    into the child's stdin (a serial console waiting at a prompt). Returns the
    output and whether ``done`` was reached.
    """
    import selectors
    import time

    proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    assert proc.stdout is not None and proc.stdin is not None
    os.set_blocking(proc.stdout.fileno(), False)
    if input:
        proc.stdin.write(input)
        proc.stdin.flush()
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    finished = False
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while time.monotonic() < deadline:
                if not sel.select(timeout=min(0.2, max(deadline - time.monotonic(), 0))):
                    if proc.poll() is not None:
                        break
                    continue
                data = proc.stdout.read(65536)
                if not data:
                    break
                chunks.append(data)
                text = b"".join(chunks).decode(errors="replace")
                if done(text):
                    finished = True
                    break
                reply = answer(text) if answer else None
                if reply:
                    proc.stdin.write(reply)
                    proc.stdin.flush()
    finally:
        proc.kill()
        proc.wait()
    return b"".join(chunks).decode(errors="replace"), finished
