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
