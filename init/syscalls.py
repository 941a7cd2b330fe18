"""The few system calls ``os`` lacks, behind one set of functions.

The static /init has them built in as the C module ``_initium``
(packaging/static/_initium.c); a dynamically linked interpreter (the host's)
reaches libc through ctypes in ``initium._libc`` instead.  Only the live
system imports this module, so unit tests and the builder never load libc.
Each call raises ``OSError`` with errno and the file name, like ``os``.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    import _initium as _impl
else:
    try:
        import _initium as _impl
    except ImportError:
        from initium import _libc as _impl

# True when the calls are the static interpreter's builtin ones (no ctypes).
BUILTIN = _impl.__name__ == "_initium"


def mount(source: str, target: str, fstype: str | None, flags: int = 0, data: str = "") -> None:
    _impl.mount(source, target, fstype, flags, data or None)


def umount2(target: str, flags: int = 0) -> None:
    _impl.umount2(target, flags)


def reboot(cmd: int) -> None:
    _impl.reboot(cmd)


def statfs_type(path: str) -> int:
    return _impl.statfs_type(path)


def finit_module(fd: int, params: str = "", flags: int = 0) -> None:
    _impl.finit_module(fd, params, flags)


def pivot_root(new_root: str, put_old: str) -> None:
    _impl.pivot_root(new_root, put_old)


def add_key(key_type: str, description: str, payload: bytes, keyring: int) -> int:
    """A key in ``keyring`` (a serial or a negative KEY_SPEC_* id); returns its serial."""
    return _impl.add_key(key_type, description, payload, keyring)


def keyctl(cmd: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    return _impl.keyctl(cmd, arg2, arg3, arg4, arg5)


def ioctl(fd: int, request: int, buffer: bytes) -> bytes:
    """The ioctl's structure after the call: ``buffer`` goes in, the kernel's copy comes out."""
    return _impl.ioctl(fd, request, buffer)


def reader_start(requests: int, replies: int, parent_ends: tuple[int, int]) -> int | None:
    """Start the static /init's device reader child (initium.storage.reader), or None.

    None when the interpreter has no such builtin (the host's): the caller forks.
    """
    start = getattr(_impl, "reader_start", None)
    if start is None:
        return None
    pid: int = start(requests, replies, parent_ends)
    return pid
