"""The one door for child processes, for the builder and for PID 1.

It logs a copy-pasteable ``+ argv`` line, gives the child a minimal
environment and no stdin unless it is interactive, bounds its time, reports
"not found" instead of a bare exit status 127, and always reaps.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # C module; `signal` imports enum
import os
import time

TYPE_CHECKING = False  # typing's import cost is not paid at boot
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence

    import _initium

    # posix_spawn's file actions: (OPEN, fd, path, flags, mode), (DUP2, fd, new), (CLOSE, fd)
    _Action = tuple[int, ...] | tuple[int, int, str, int, int]
else:
    try:
        import _initium  # the static interpreter's spawn: posix_spawn + prctl in the child
    except ImportError:
        _initium = None

MINIMAL_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


class ProcessError(RuntimeError):
    """A child failed; the message is already the one line a user needs."""


_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789@%+=:,./-_")
# How often a bounded wait looks at its child: short enough not to add
# latency to a quick helper, long enough not to spin.
_POLL = 0.02
# PID 1 ignores SIGINT (Ctrl-Alt-Del); its children get the default back.
_DEFAULT_SIGNALS = (_signal.SIGINT, _signal.SIGQUIT, _signal.SIGTERM, _signal.SIGPIPE)


def quote(argv: Sequence[str]) -> str:
    """A copy-pasteable shell line (shlex.join without importing shlex and re at boot)."""
    words = []
    for arg in argv:
        if arg and all(c in _SAFE for c in arg):
            words.append(arg)
        else:
            words.append("'" + arg.replace("'", "'\"'\"'") + "'")
    return " ".join(words)


CONSOLE = "/dev/console"


def console_tty() -> str:
    """The device behind /dev/console (e.g. /dev/ttyS0).

    Opening /dev/console itself never makes it a controlling terminal (the
    kernel's tty_open() forces O_NOCTTY for it), so a shell that should have
    job control must open the real device: the last one the kernel lists in
    /sys/class/tty/console/active is the one /dev/console writes to.
    """
    try:
        with open("/sys/class/tty/console/active", "rb") as f:
            names = f.read(4096).decode("ascii", "replace").split()
    except OSError:
        return CONSOLE
    name = names[-1] if names else ""
    if not name or "/" in name or name.startswith(".") or not os.path.exists(f"/dev/{name}"):
        return CONSOLE
    return f"/dev/{name}"


def capability_mask(keep: Iterable[int]) -> int:
    """The bounding-set mask ``run(keep_caps=...)`` takes: bit n keeps capability n."""
    mask = 0
    for cap in keep:
        if not 0 <= cap < 64:
            raise ValueError(f"capability {cap} out of range")
        mask |= 1 << cap
    return mask


def _spawn(argv: Sequence[str], env: dict[str, str], actions: list[_Action], *, setsid: bool,
           no_new_privs: bool, keep_caps: int | None) -> int:
    """The child's pid; with ``_initium`` it also dies with us (PR_SET_PDEATHSIG)."""
    if _initium is not None:
        return _initium.spawn(argv[0], list(argv), env, actions, setsid=setsid,
                              sigdefault=_DEFAULT_SIGNALS, pdeathsig=_signal.SIGKILL,
                              no_new_privs=no_new_privs,
                              keep_caps=-1 if keep_caps is None else keep_caps)
    if no_new_privs or keep_caps is not None:
        # Asked to confine a helper and unable to: never run it unconfined.
        raise ProcessError(f"{argv[0]}: no_new_privs and a capability bounding set need "
                           "the static interpreter's _initium.spawn")
    return os.posix_spawn(argv[0], list(argv), env, file_actions=actions, setsid=setsid,
                          setsigdef=_DEFAULT_SIGNALS)


def run(argv: Sequence[str], *, timeout: float | None = 60.0, interactive: bool = False,
        console: bool = False, log: Callable[[str], None] | None = None,
        env: Mapping[str, str] | None = None, no_new_privs: bool = False,
        keep_caps: int | None = None, output: str | None = None) -> int:
    """Run a child with inherited stdout/stderr and return its exit status.

    Built on posix_spawn and waitpid rather than subprocess, which would
    bring threading, selectors, locale and re into the init's image; in the
    static interpreter on ``_initium.spawn``, a vfork+exec that also makes
    the child die with its parent (PR_SET_PDEATHSIG) and can confine it:
    ``no_new_privs`` (PR_SET_NO_NEW_PRIVS) and ``keep_caps`` (a
    :func:`capability_mask`: every other capability leaves the bounding set,
    the ambient set is cleared). Confinement asked for where ``_initium`` is
    missing is an error, never silently skipped.
    ``argv[0]`` must be a path: PID 1 has no PATH worth searching.

    ``interactive`` shares our stdin/stdout/stderr (the builder's ``qemu``
    command); ``console`` gives the child a new session whose controlling
    terminal is the console's tty (opened after setsid, so it becomes the
    session's terminal), as ``setsid -c`` does for dracut's shell. Otherwise
    stdin is /dev/null and the child has a session of its own. ``output``
    names a file (created, truncated, mode 0600) that receives the child's
    stdout and stderr instead, for a caller that must quote what it said.
    """
    if log is not None:
        log("+ " + quote(argv))
    pid = start(argv, interactive=interactive, console=console, env=env,
                no_new_privs=no_new_privs, keep_caps=keep_caps, output=output)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, 0 if deadline is None else os.WNOHANG)
        if done == pid:
            return os.waitstatus_to_exitcode(status)
        if deadline is not None and time.monotonic() >= deadline:
            os.kill(pid, _signal.SIGKILL)
            os.waitpid(pid, 0)
            raise ProcessError(f"{argv[0]}: still running after {timeout:g} s, killed")
        time.sleep(_POLL)


def start(argv: Sequence[str], *, interactive: bool = False, console: bool = False,
          env: Mapping[str, str] | None = None, no_new_privs: bool = False,
          keep_caps: int | None = None, output: str | None = None) -> int:
    """Start a child as ``run`` does and return its pid without waiting (a daemon: udevd).

    The caller owns the child: it must reap it (``stop``), or PID 1's orphan
    reaping will.
    """
    actions: list[_Action]
    if console:
        actions = [(os.POSIX_SPAWN_OPEN, 0, console_tty(), os.O_RDWR, 0),
                   (os.POSIX_SPAWN_DUP2, 0, 1), (os.POSIX_SPAWN_DUP2, 0, 2)]
    elif interactive:
        actions = []
    else:
        actions = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0)]
    if output is not None and not console and not interactive:
        actions += [(os.POSIX_SPAWN_OPEN, 1, output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                     0o600), (os.POSIX_SPAWN_DUP2, 1, 2)]
    try:
        pid = _spawn(argv, dict(env if env is not None else MINIMAL_ENV), actions,
                     setsid=not interactive, no_new_privs=no_new_privs, keep_caps=keep_caps)
    except (FileNotFoundError, PermissionError) as err:
        if err.filename is None and _initium is not None:
            # The child stopped before its exec (a file action, the prctl calls): say where.
            raise ProcessError(f"{argv[0]}: {err.strerror}") from None
        what = "not found" if isinstance(err, FileNotFoundError) else "not executable"
        raise ProcessError(f"{argv[0]}: {what}") from None
    return pid


def stop(pid: int, timeout: float) -> str:
    """Wait up to ``timeout`` for a started child to end, then kill it; how it ended.

    A child that someone else already reaped (PID 1 collects orphans after
    each helper) counts as ended.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return "exited"
        if done == pid:
            return f"exited with status {os.waitstatus_to_exitcode(status)}"
        if time.monotonic() >= deadline:
            break
        time.sleep(_POLL)
    try:
        os.kill(pid, _signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        return "exited"
    return f"still running after {timeout:g} s, killed"


def capture(argv: Sequence[str], *, input: bytes | None = None, timeout: float | None = 300.0,
            log: Callable[[str], None] | None = None,
            env: Mapping[str, str] | None = None, check: bool = True) -> bytes:
    """Run a child and return its stdout; a failure raises with the child's last stderr line."""
    import subprocess

    if log is not None:
        log("+ " + quote(argv))
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
        raise ProcessError(f"{quote(argv)}: {detail}")
    return done.stdout


def watch(argv: Sequence[str], *, done: Callable[[str], bool], timeout: float,
          answer: Callable[[str], bytes | None] | None = None) -> tuple[str, bool]:
    """Run a child, collecting its output until ``done(output)`` or ``timeout``; always kill it.

    ``answer`` sees the output after each chunk and may return bytes to type
    into the child's stdin (a serial console waiting at a prompt). Returns the
    output and whether ``done`` was reached.
    """
    import selectors
    import subprocess

    proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    assert proc.stdout is not None and proc.stdin is not None
    os.set_blocking(proc.stdout.fileno(), False)
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
