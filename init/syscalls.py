"""The few system calls ``os`` lacks, declared once as data.

Only the live system imports this module, so unit tests and the builder never
load libc through ctypes.  Each call raises ``OSError`` with errno and the
file name, like the ``os`` functions beside it.
"""

from __future__ import annotations

import ctypes
import os

# x86_64 syscall numbers; finit_module has no glibc wrapper before 2.37's
# headers, so it goes through syscall(2).
_SYS_FINIT_MODULE = {"x86_64": 313, "aarch64": 273, "riscv64": 273}


class _Statfs(ctypes.Structure):
    _fields_ = (
        ("f_type", ctypes.c_long),
        ("f_bsize", ctypes.c_long),
        ("f_blocks", ctypes.c_ulong),
        ("f_bfree", ctypes.c_ulong),
        ("f_bavail", ctypes.c_ulong),
        ("f_files", ctypes.c_ulong),
        ("f_ffree", ctypes.c_ulong),
        ("f_fsid", ctypes.c_int * 2),
        ("f_namelen", ctypes.c_long),
        ("f_frsize", ctypes.c_long),
        ("f_flags", ctypes.c_long),
        ("f_spare", ctypes.c_long * 4),
    )


_SIGNATURES: dict[str, tuple[list[object], object]] = {
    "mount": ([ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
               ctypes.c_char_p], ctypes.c_int),
    "umount2": ([ctypes.c_char_p, ctypes.c_int], ctypes.c_int),
    "reboot": ([ctypes.c_int], ctypes.c_int),
    "statfs": ([ctypes.c_char_p, ctypes.POINTER(_Statfs)], ctypes.c_int),
    "syscall": ([ctypes.c_long, ctypes.c_int, ctypes.c_char_p, ctypes.c_int], ctypes.c_long),
}

_libc: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        lib = ctypes.CDLL(None, use_errno=True)
        for name, (argtypes, restype) in _SIGNATURES.items():
            func = getattr(lib, name)
            func.argtypes = argtypes
            func.restype = restype
        _libc = lib
    return _libc


def _check(result: int, filename: str | None = None) -> None:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), filename)


def _b(text: str | None) -> bytes | None:
    return None if text is None else os.fsencode(text)


def mount(source: str, target: str, fstype: str | None, flags: int = 0, data: str = "") -> None:
    _check(_lib().mount(_b(source), _b(target), _b(fstype), flags, _b(data or None)), target)


def umount2(target: str, flags: int = 0) -> None:
    _check(_lib().umount2(_b(target), flags), target)


def reboot(cmd: int) -> None:
    _check(_lib().reboot(cmd))


def statfs_type(path: str) -> int:
    buf = _Statfs()
    _check(_lib().statfs(_b(path), ctypes.byref(buf)), path)
    return int(buf.f_type) & 0xFFFFFFFF


def finit_module(fd: int, params: str = "", flags: int = 0) -> None:
    number = _SYS_FINIT_MODULE.get(os.uname().machine)
    if number is None:
        raise OSError(38, f"finit_module: unknown syscall number on {os.uname().machine}")
    _check(_lib().syscall(number, fd, params.encode(), flags))
