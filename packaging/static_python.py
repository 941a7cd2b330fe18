"""The static /init interpreter: built once from CPython's source, then reused.

The recipe is packaging/static/build.sh; this module picks its inputs (the
source tarball, configure flags, the builtin module list, our launcher and
``_initium``, the compiler) and keys a cache directory on a digest of all of
them, so a warm ``initium build`` only copies the ELF and a change to any
input builds anew (about a minute and a half on two cores).

A cache entry holds the stripped ELF ``python`` and ``stdlib.zip``, the
pure-Python stdlib as sources: appended to the ELF it makes the *trace*
interpreter with which the builder imports the init and compiles exactly the
modules it loads, so the bytecode always matches the interpreter that runs it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import stat
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from initium import process

RECIPE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
RECIPE_FILES = ("build.sh", "launcher.c", "_initium.c", "_selinux_min.c")

# The CPython release the static interpreter is built from, and the sha256 of
# its source tarball: python.org's Python-3.11.2.tgz, which is also Debian
# bookworm's python3.11_3.11.2.orig.tar.gz (`apt-get source --download-only
# python3.11` with a deb-src line fetches it).
CPYTHON_VERSION = "3.11.2"
CPYTHON_SHA256 = "2411c74bda5bbcfcddaf4531f66d1adc73f247f529aee981b029513aefdbf849"
CPYTHON_NAMES = (f"Python-{CPYTHON_VERSION}.tgz", f"python3.11_{CPYTHON_VERSION}.orig.tar.gz")
# Debian's mirror first: the build hosts reach it (apt does) where python.org
# may be closed to them; the digest is checked whichever answers.
CPYTHON_URLS = (
    f"http://deb.debian.org/debian/pool/main/p/python3.11/{CPYTHON_NAMES[1]}",
    f"https://www.python.org/ftp/python/{CPYTHON_VERSION}/Python-{CPYTHON_VERSION}.tgz",
)

CONFIGURE_FLAGS = (
    "--disable-shared",          # one ELF: libpython linked in
    "--without-ensurepip",
    "--without-doc-strings",     # nobody reads help() in PID 1: ~0.4 MB
    "--disable-test-modules",
    "LDFLAGS=-static",
)

# Extension modules compiled into the binary beyond the core ones CPython
# always builds in (posix, errno, _io, _signal, _stat, time, _thread,
# _collections, _functools, _operator, _abc, _codecs, _sre, _weakref,
# itertools, atexit, pwd, _locale, faulthandler, _tracemalloc, _symtable).
# name -> Setup.local source list; why each is here is in the comment.
BUILTIN_MODULES: dict[str, str] = {
    "_initium": "_initium.c",                # mount, reboot, finit_module, ... (ours)
    "_json": "_json.c",                      # initium.jsonlite: the timeline
    "_struct": "_struct.c",                  # initium.probe: superblocks
    "math": "mathmodule.c",                  # initium.jsonlite
    "zlib": "zlibmodule.c",                  # initium.probe (crc32); the trace's zip
    "binascii": "binascii.c",                # zipfile in the trace interpreter
    "_heapq": "_heapqmodule.c",              # initium.runner
    "select": "selectmodule.c",              # poll for helpers and netlink (pyroute2)
    "fcntl": "fcntlmodule.c",                # flock/ioctl on devices
    "_socket": "socketmodule.c",             # netlink: uevents, pyroute2
    "array": "arraymodule.c",                # pyroute2, socket.recvmsg fds
    "_posixsubprocess": "_posixsubprocess.c",  # subprocess in the trace interpreter
}
# Builtin modules an image asks for (config interpreter_extras), each a
# separate cached build. Not in every image: "selinux" costs 0.25 MB of
# `core` (pcre2 is most of it) and the built-in selinux stage needs none of
# it (it loads the policy through selinuxfs and matches contexts computed at
# build time); it is there for stages that want libselinux's own lookups.
OPTIONAL_MODULES: dict[str, dict[str, str]] = {
    # libselinux.a and libpcre2-8.a from libselinux1-dev and libpcre2-dev, no libsepol
    "selinux": {"_selinux_min": "_selinux_min.c -lselinux -lpcre2-8"},
}
# Left out on purpose (measured or judged not needed by the init): _ctypes
# (cannot resolve libc symbols in a static ELF; _initium replaces it), _ssl
# and _hashlib (OpenSSL, ~4 MB), _sha256/_sha512/_blake2 (for the measure
# stage when it exists), _sqlite3, _decimal, _datetime, pyexpat,
# _elementtree, unicodedata, the CJK codecs, _bz2, _lzma, _pickle, _random,
# _asyncio, readline, curses, termios, mmap, resource.

EMERGENCY_MARKER = b"INITIUM-EMERGENCY="
EMERGENCY_FIELD = 32  # bytes of the launcher's initium_emergency[] array
LAUNCHER_ACTIONS = ("halt", "poweroff", "reboot")
BUILD_TIMEOUT = 3600.0
# Not needed to trace the init, and large: kept out of the trace stdlib.
_TRACE_EXCLUDE = ("test", "idlelib", "tkinter", "turtledemo", "lib2to3", "ensurepip",
                  "pydoc_data", "distutils", "site-packages", "venv")


class StaticPythonError(RuntimeError):
    pass


@dataclass(frozen=True)
class StaticPython:
    """A cache entry: the interpreter ELF and the stdlib sources it was built with."""

    directory: str
    key: str
    version: str

    @property
    def python(self) -> str:
        return os.path.join(self.directory, "python")

    @property
    def stdlib_zip(self) -> str:
        return os.path.join(self.directory, "stdlib.zip")


def cache_root() -> str:
    base = os.environ.get("INITIUM_CACHE")
    if not base:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        base = os.path.join(xdg, "initium")
    return os.path.join(base, "static-python")


def setup_local(modules: dict[str, str] = BUILTIN_MODULES) -> str:
    """Modules/Setup.local: every listed module static (makesetup's first definition wins)."""
    lines = ["# initium: compiled into the static /init", "*static*"]
    lines += [f"{name} {sources}" for name, sources in sorted(modules.items())]
    return "\n".join(lines) + "\n"


def compiler_version() -> str:
    return process.capture(["gcc", "--version"], timeout=30).decode(errors="replace")


def _sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_key(source_sha256: str, configure_flags: tuple[str, ...], setup: str,
              recipe: dict[str, bytes], compiler: str) -> str:
    """The digest of everything the ELF depends on: any change is a new build."""
    doc = {"source": source_sha256, "configure": list(configure_flags), "setup": setup,
           "recipe": {name: hashlib.sha256(data).hexdigest()
                      for name, data in sorted(recipe.items())},
           "compiler": compiler}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def recipe_contents() -> dict[str, bytes]:
    contents = {}
    for name in RECIPE_FILES:
        with open(os.path.join(RECIPE_DIR, name), "rb") as f:
            contents[name] = f.read()
    return contents


def find_source(root: str) -> str:
    """The pinned CPython tarball: $INITIUM_CPYTHON_SOURCE, the cache, or a download."""
    candidates = [os.environ.get("INITIUM_CPYTHON_SOURCE", "")]
    candidates += [os.path.join(root, "sources", name) for name in CPYTHON_NAMES]
    for path in candidates:
        if path and os.path.isfile(path):
            if _sha256_file(path) != CPYTHON_SHA256:
                raise StaticPythonError(f"{path}: not CPython {CPYTHON_VERSION}'s source "
                                        f"(sha256 differs from {CPYTHON_SHA256})")
            return path
    return _download(os.path.join(root, "sources", CPYTHON_NAMES[0]))


def _download(dest: str) -> str:
    import urllib.request

    os.makedirs(os.path.dirname(dest), exist_ok=True)
    data = b""
    err: OSError | None = None
    for url in CPYTHON_URLS:
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                data = response.read()
        except OSError as failure:
            err = failure
            continue
        if hashlib.sha256(data).hexdigest() == CPYTHON_SHA256:
            break
        err = OSError(f"{url}: digest mismatch, not used")
        data = b""
    if not data:
        raise StaticPythonError(
            f"no CPython {CPYTHON_VERSION} source tarball and the download failed ({err}); "
            f"put {CPYTHON_NAMES[0]} (or Debian's {CPYTHON_NAMES[1]}, from `apt-get source "
            f"--download-only python3.11`) in {os.path.dirname(dest)} or set "
            "INITIUM_CPYTHON_SOURCE")
    with open(dest + ".part", "wb") as f:
        f.write(data)
    os.replace(dest + ".part", dest)
    return dest


@contextmanager
def _locked(root: str, key: str) -> Iterator[None]:
    """One build at a time per key (parallel test sessions share the cache).

    Per key, so a build that finds its interpreter cached never waits for an
    unrelated build of another key.
    """
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, f".lock-{key}"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _write_stdlib_zip(lib_dir: str, dest: str) -> None:
    """The pure-Python stdlib as sources, sorted and timestamp-free."""
    entries = []
    for dirpath, dirnames, names in os.walk(lib_dir):
        rel_dir = os.path.relpath(dirpath, lib_dir)
        dirnames[:] = sorted(d for d in dirnames
                             if not (rel_dir == "." and d in _TRACE_EXCLUDE)
                             and d not in ("__pycache__", "tests"))
        entries += [os.path.normpath(os.path.join(rel_dir, n)) for n in names if n.endswith(".py")]
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as archive:
        for rel in sorted(entries):
            info = zipfile.ZipInfo(rel, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with open(os.path.join(lib_dir, rel), "rb") as f:
                archive.writestr(info, f.read())


def build(source: str, directory: str, *, jobs: int = 2,
          configure_flags: tuple[str, ...] = CONFIGURE_FLAGS,
          modules: dict[str, str] = BUILTIN_MODULES,
          log: Callable[[str], None] | None = None) -> float:
    """Run the recipe into ``directory``; returns the seconds it took."""
    started = time.monotonic()
    work = directory + ".build"
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(directory)
    setup_path = os.path.join(directory, "Setup.local")
    with open(setup_path, "w") as f:
        f.write(setup_local(modules))
    try:
        process.capture([os.path.join(RECIPE_DIR, "build.sh"), source, work, directory,
                         str(jobs), setup_path, *configure_flags], timeout=BUILD_TIMEOUT,
                        log=log, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                                      "LC_ALL": "C", "SOURCE_DATE_EPOCH": "0"})
        _write_stdlib_zip(os.path.join(work, "Lib"), os.path.join(directory, "stdlib.zip"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return time.monotonic() - started


def modules_with(extras: tuple[str, ...] = ()) -> dict[str, str]:
    """The builtin modules of a build with the named optional groups."""
    modules = dict(BUILTIN_MODULES)
    for extra in extras:
        if extra not in OPTIONAL_MODULES:
            raise StaticPythonError(f"no optional interpreter module group {extra!r} "
                                    f"(known: {', '.join(sorted(OPTIONAL_MODULES))})")
        modules.update(OPTIONAL_MODULES[extra])
    return modules


def ensure(*, jobs: int = 2, log: Callable[[str], None] | None = None,
           extras: tuple[str, ...] = ()) -> StaticPython:
    """The cached interpreter for today's inputs, built first when there is none."""
    root = cache_root()
    source = find_source(os.path.dirname(root))
    modules = modules_with(tuple(sorted(set(extras))))
    key = cache_key(CPYTHON_SHA256, CONFIGURE_FLAGS, setup_local(modules), recipe_contents(),
                    compiler_version())
    final = os.path.join(root, key)
    entry = StaticPython(final, key, CPYTHON_VERSION)
    if os.path.isfile(os.path.join(final, "info.json")):
        return entry  # renamed into place complete: no lock needed to use it
    with _locked(root, key):
        if os.path.isfile(os.path.join(final, "info.json")):
            return entry
        partial = os.path.join(root, f"{key}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        if log is not None:
            log(f"building the static interpreter (CPython {CPYTHON_VERSION}) in {final}")
        try:
            seconds = build(source, partial, jobs=jobs, modules=modules, log=log)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        info = {"key": key, "version": CPYTHON_VERSION, "configure": list(CONFIGURE_FLAGS),
                "modules": sorted(modules), "build_seconds": round(seconds, 1),
                "size": os.path.getsize(os.path.join(partial, "python"))}
        with open(os.path.join(partial, "info.json"), "w") as f:
            json.dump(info, f, indent=1, sort_keys=True)
        shutil.rmtree(final, ignore_errors=True)
        os.rename(partial, final)
    return entry


def set_emergency(elf: bytes, action: str) -> bytes:
    """The launcher with its emergency action (halt, poweroff, reboot) written in."""
    if action not in LAUNCHER_ACTIONS:
        raise StaticPythonError(f"the launcher can {', '.join(LAUNCHER_ACTIONS)}, not {action}")
    at = elf.find(EMERGENCY_MARKER)
    if at < 0 or elf.find(EMERGENCY_MARKER, at + 1) >= 0:
        raise StaticPythonError("the launcher's emergency field is missing or not unique")
    field = (EMERGENCY_MARKER + action.encode()).ljust(EMERGENCY_FIELD, b"\0")
    return elf[:at] + field + elf[at + EMERGENCY_FIELD:]


@contextmanager
def trace_interpreter(entry: StaticPython) -> Iterator[str]:
    """A temporary executable: the ELF with the stdlib sources appended (its sys.path)."""
    with tempfile.TemporaryDirectory(prefix="initium-trace-") as tmp:
        path = os.path.join(tmp, "python")
        with open(path, "wb") as out:
            for part in (entry.python, entry.stdlib_zip):
                with open(part, "rb") as f:
                    shutil.copyfileobj(f, out)
        os.chmod(path, stat.S_IRWXU)
        yield path
