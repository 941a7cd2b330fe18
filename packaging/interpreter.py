"""The Python that runs /init, chosen and packed by one function.

Today this is the host's dynamically linked CPython with its shared-library
closure (read from the ELF dynamic sections) and a zip of sourceless
bytecode; a single static ELF replaces it later behind the same
``python_payload`` function, without the rest of the builder noticing.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from initium import process
from initium.boot_env import LAUNCHER_ENV, LIBRARY_PATH_KEY

from .elf import closure
from .freeze import freeze

IMAGE_PYTHON = "/usr/bin/python3"
ENV_TOOL = "/usr/bin/env"
LAUNCHER_PATH = "/usr/lib/initium/launch.py"
# What the launcher does when the init cannot even be imported: the
# configured emergency action, where it can be done without the init (a
# shell cannot: halt instead).
LAUNCHER_ACTIONS = {"reboot": 0x01234567, "poweroff": 0x4321FEDC, "halt": 0xCDEF0123}
# The host interpreter's launcher.  Built-in modules only: the frozen zip may
# be what is broken.  The first clock reading tells interpreter start-up
# apart from importing the init.  sys.argv is [this file, "/init", ARGS…].
LAUNCHER = '''"""initium's /init launcher (host interpreter), written by initium build.

If the init cannot even be imported, say why on the console and in the
kernel log and stop the machine as configured: PID 1 must never exit.
"""
import sys
import time

_started = time.monotonic()
try:
    from initium.boot import boot

    boot(_started, sys.argv[2:])
except BaseException as _err:
    import os

    try:
        _what = type(_err).__name__ + ": " + str(_err)
    except BaseException:
        _what = "an error that cannot be printed"
    _line = ("initium: cannot import the init: " + _what.replace("\\n", " ")[:600]
             + "; %(verb)s\\n")
    _data = _line.encode("utf-8", "replace")
    for _fd in (1, 2):
        try:
            os.write(_fd, _data)
            break
        except BaseException:
            pass
    try:
        _kmsg = os.open("/dev/kmsg", os.O_WRONLY)
        os.write(_kmsg, b"<2>" + _data)
        os.close(_kmsg)
    except BaseException:
        pass
    try:
        import ctypes

        os.sync()
        ctypes.CDLL(None).reboot(%(command)d)
    except BaseException:
        pass
    while True:
        try:
            time.sleep(3600)
        except BaseException:
            pass
'''
# The kernel reads at most BINPRM_BUF_SIZE (256 since Linux 5.1) bytes of a #! line.
MAX_SHEBANG = 255


class InterpreterError(ValueError):
    pass


@dataclass
class PythonPayload:
    """Files (image path → host path or bytes) that make /init run."""

    files: dict[str, str | bytes] = field(default_factory=dict)
    modes: dict[str, int] = field(default_factory=dict)
    version: str = ""
    modules: tuple[str, ...] = ()
    kind: str = "host"
    interpreter_size: int = 0  # bytes of the interpreter ELF (static) or executable (host)


def _version(interpreter: str) -> tuple[int, int]:
    out = process.capture([interpreter, "-I", "-S", "-c",
                           "import sys; print(*sys.version_info[:2])"], timeout=30)
    major, minor = (int(x) for x in out.split())
    return major, minor


def choose_interpreter(configured: str | None) -> str:
    """The configured interpreter, else Debian's /usr/bin/python3 when new enough, else ours."""
    candidates = [configured] if configured else ["/usr/bin/python3", sys.executable]
    for candidate in candidates:
        real = os.path.realpath(candidate)
        if not os.path.isfile(real):
            continue
        try:
            if _version(real) >= (3, 11):
                return real
        except (process.ProcessError, ValueError):
            continue
    raise InterpreterError(f"no Python 3.11+ interpreter found (tried {', '.join(candidates)})")


def canonical(path: str) -> str:
    """Where a host file lands in the image: its directory resolved (merged /usr), same name."""
    return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))


def merged_usr_links() -> dict[str, str]:
    """The host's top-level symlinks into /usr (/lib → usr/lib …), repeated in the image."""
    links = {}
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = os.path.join("/", name)
        if os.path.islink(path):
            target = os.readlink(path)
            if target.lstrip("/").startswith("usr/"):
                links[path] = target.lstrip("/")
    return links


def launcher_script(emergency: str | None) -> bytes:
    """The launcher, stopping the machine the configured way when the init cannot start."""
    action = emergency if emergency in LAUNCHER_ACTIONS else "halt"
    verb = {"reboot": "rebooting", "poweroff": "powering off"}.get(action, "halting")
    return (LAUNCHER % {"verb": verb, "command": LAUNCHER_ACTIONS[action]}).encode()


def launcher(library_dirs: list[str]) -> bytes:
    """The /init script: env -S sets the interpreter's environment, then the launcher runs."""
    env = dict(LAUNCHER_ENV)
    if library_dirs:
        env[LIBRARY_PATH_KEY] = ":".join(library_dirs)
    words = [f"{k}={v}" for k, v in env.items()]
    line = f"#!{ENV_TOOL} -S {' '.join(words)} {IMAGE_PYTHON} -S {shlex.quote(LAUNCHER_PATH)}"
    if len(line) > MAX_SHEBANG:
        raise InterpreterError(f"the /init line is {len(line)} bytes, over the kernel's "
                               f"{MAX_SHEBANG}: {line}")
    return (line + "\n").encode()


def add_elf(payload: PythonPayload, host_paths: list[str]) -> None:
    """Add ELF files and every library they need, each at its canonical image path."""
    for loader_path, real in sorted(closure(host_paths).items()):
        payload.files.setdefault(canonical(loader_path), real)
        payload.modes.setdefault(canonical(loader_path), 0o755)


def python_payload(configured: str | None, stage_modules: list[str],
                   emergency: str | None = None) -> PythonPayload:
    interpreter = choose_interpreter(configured)
    major, minor = _version(interpreter)
    frozen = freeze(interpreter, stage_modules)
    payload = PythonPayload(version=f"{major}.{minor}", modules=frozen.modules)
    payload.files[IMAGE_PYTHON] = interpreter
    payload.modes[IMAGE_PYTHON] = 0o755
    dynload = f"/usr/lib/python{major}.{minor}/lib-dynload"
    for ext in frozen.extensions:
        payload.files[f"{dynload}/{os.path.basename(ext)}"] = ext
        payload.modes[f"{dynload}/{os.path.basename(ext)}"] = 0o644
    add_elf(payload, [interpreter, ENV_TOOL, *frozen.extensions])
    for stored_elsewhere in (interpreter, *frozen.extensions):  # stored once, above
        if canonical(stored_elsewhere) not in (IMAGE_PYTHON, f"{dynload}/"
                                               f"{os.path.basename(stored_elsewhere)}"):
            payload.files.pop(canonical(stored_elsewhere), None)
    payload.files[IMAGE_PYTHON] = interpreter
    payload.files[f"/usr/lib/python{major}{minor}.zip"] = frozen.zip_bytes
    payload.modes[f"/usr/lib/python{major}{minor}.zip"] = 0o644
    lib_dirs = sorted({os.path.dirname(p) for p in payload.files
                       if ".so" in os.path.basename(p) and not p.startswith(dynload)
                       and not os.path.basename(p).startswith("ld-")})
    payload.files["/init"] = launcher(lib_dirs)
    payload.modes["/init"] = 0o755
    payload.files[LAUNCHER_PATH] = launcher_script(emergency)
    payload.modes[LAUNCHER_PATH] = 0o644
    return payload


# --- the static interpreter (packaging/static_python.py) -------------------

INTERPRETER_KINDS = ("host", "static")
# The launcher's own last resort cannot start a shell: it halts, powers off
# or reboots; an image whose emergency action is a shell halts there.
_LAUNCHER_ACTION = {"reboot": "reboot", "poweroff": "poweroff"}


def static_payload(stage_modules: list[str], emergency: str | None = None,
                   log: Callable[[str], None] | None = None,
                   extras: tuple[str, ...] = ()) -> PythonPayload:
    """/init = the static ELF with the init's bytecode appended as a zip (its sys.path)."""
    from . import static_python

    entry = static_python.ensure(log=log, extras=extras)
    with static_python.trace_interpreter(entry) as trace:
        frozen = freeze(trace, stage_modules, ("--hash-seed=0",),
                        cache=os.path.join(static_python.cache_root(), "freeze"))
    if frozen.extensions:
        raise InterpreterError("the static interpreter loaded shared extension modules: "
                               f"{', '.join(frozen.extensions)}")
    with open(entry.python, "rb") as f:
        elf = static_python.set_emergency(f.read(), _LAUNCHER_ACTION.get(emergency or "", "halt"))
    payload = PythonPayload(version=entry.version.rsplit(".", 1)[0], modules=frozen.modules)
    payload.files["/init"] = elf + frozen.zip_bytes
    payload.modes["/init"] = 0o755
    payload.kind = "static"
    payload.interpreter_size = len(elf)
    return payload


def payload_for(kind: str, configured: str | None, stage_modules: list[str],
                emergency: str | None = None, extras: tuple[str, ...] = ()) -> PythonPayload:
    if kind == "static":
        return static_payload(stage_modules, emergency, extras=extras)
    if kind != "host":
        raise InterpreterError(f"interpreter kind must be one of {', '.join(INTERPRETER_KINDS)}")
    payload = python_payload(configured, stage_modules, emergency)
    host = payload.files.get(IMAGE_PYTHON)
    payload.interpreter_size = os.path.getsize(host) if isinstance(host, str) else 0
    return payload


def elf_length(data: bytes) -> int:
    """Where an ELF64 file ends: its section header table, which strip places last."""
    import struct

    if data[:4] != b"\x7fELF" or data[4:5] != b"\x02" or len(data) < 64:
        return len(data)
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    end = shoff + shentsize * shnum
    return end if 0 < end <= len(data) else len(data)


def describe_interpreter(files: dict[str, bytes]) -> tuple[str, int, list[str]]:
    """(kind, interpreter bytes, frozen modules) of an image's /init, read from its files."""
    import io
    import zipfile

    init = files.get("/init", b"")
    if init.startswith(b"\x7fELF"):
        kind, size, archive = "static", elf_length(init), init
    elif init.startswith(b"#!"):
        zips = [p for p in files if p.startswith("/usr/lib/python") and p.endswith(".zip")]
        kind, size = "host", len(files.get(IMAGE_PYTHON, b""))
        archive = files[zips[0]] if zips else b""
    else:
        return "unknown", len(init), []
    try:
        names = zipfile.ZipFile(io.BytesIO(archive)).namelist()
    except (zipfile.BadZipFile, ValueError, OSError):
        names = []
    modules = [n[:-4].replace("/", ".").removesuffix(".__init__") for n in names
               if n.endswith(".pyc")]
    return kind, size, modules
