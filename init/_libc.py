"""The ctypes fallback for ``_initium``: the same functions, through libc.

Used only by a dynamically linked interpreter (the host's, for
``--interpreter host`` images and the live dry run); the static interpreter
has ``_initium`` built in and never imports ctypes.  Signatures match
``_initium.pyi`` so ``initium.syscalls`` can use either.
"""

from __future__ import annotations

import ctypes
import os

# finit_module, pivot_root, add_key and keyctl have no glibc wrapper in
# every glibc this runs on, so they go through syscall(2).
_SYSCALLS = {
    "x86_64": {"finit_module": 313, "pivot_root": 155, "add_key": 248, "keyctl": 250},
    "aarch64": {"finit_module": 273, "pivot_root": 41, "add_key": 217, "keyctl": 219},
    "riscv64": {"finit_module": 273, "pivot_root": 41, "add_key": 217, "keyctl": 219},
}
MAX_IOCTL_BUFFER = 65536
_PathArg = str | bytes


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
    "ioctl": ([ctypes.c_int, ctypes.c_ulong, ctypes.c_char_p], ctypes.c_int),
    # syscall(2) is variadic: each argument is passed as a long or a pointer.
    "syscall": ([], ctypes.c_long),
}

_libc: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        lib = ctypes.CDLL(None, use_errno=True)
        for name, (argtypes, restype) in _SIGNATURES.items():
            func = getattr(lib, name)
            if argtypes:
                func.argtypes = argtypes
            func.restype = restype
        _libc = lib
    return _libc


def _check(result: int, filename: _PathArg | None = None,
           filename2: _PathArg | None = None) -> int:
    if result < 0:
        err = ctypes.get_errno()
        if filename2 is not None:
            raise OSError(err, os.strerror(err), filename, None, filename2)
        if filename is not None:
            raise OSError(err, os.strerror(err), filename)
        raise OSError(err, os.strerror(err))
    return result


def _b(text: _PathArg | None) -> bytes | None:
    return None if text is None else os.fsencode(text)


def _word(arg: int | bytes | None) -> ctypes.c_long | ctypes.c_char_p:
    return ctypes.c_long(arg) if isinstance(arg, int) else ctypes.c_char_p(arg)


def _syscall(name: str, *args: int | bytes | None) -> int:
    machine = os.uname().machine
    number = _SYSCALLS.get(machine, {}).get(name)
    if number is None:
        raise OSError(38, f"{name}: unknown syscall number on {machine}")
    return int(_lib().syscall(ctypes.c_long(number), *(_word(a) for a in args)))


def mount(source: _PathArg | None, target: _PathArg, fstype: _PathArg | None,
          flags: int = 0, data: _PathArg | None = None) -> None:
    _check(_lib().mount(_b(source), _b(target), _b(fstype), flags, _b(data)), target)


def umount2(target: _PathArg, flags: int = 0) -> None:
    _check(_lib().umount2(_b(target), flags), target)


def reboot(cmd: int) -> None:
    _check(_lib().reboot(ctypes.c_int(cmd & 0xFFFFFFFF).value))


def statfs_type(path: _PathArg) -> int:
    buf = _Statfs()
    _check(_lib().statfs(_b(path), ctypes.byref(buf)), path)
    return int(buf.f_type) & 0xFFFFFFFF


def finit_module(fd: int, params: str = "", flags: int = 0) -> None:
    _check(_syscall("finit_module", fd, params.encode(), flags))


def pivot_root(new_root: _PathArg, put_old: _PathArg) -> None:
    _check(_syscall("pivot_root", _b(new_root), _b(put_old)), new_root, put_old)


def add_key(type: str, description: str, payload: bytes, keyring: int) -> int:
    return _check(_syscall("add_key", type.encode(), description.encode(), payload or None,
                           len(payload), keyring))


def keyctl(cmd: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    return _check(_syscall("keyctl", cmd, arg2, arg3, arg4, arg5))


def ioctl(fd: int, request: int, buffer: bytes) -> bytes:
    if len(buffer) > MAX_IOCTL_BUFFER:
        raise ValueError(f"ioctl buffer of {len(buffer)} bytes, over {MAX_IOCTL_BUFFER}")
    buf = ctypes.create_string_buffer(bytes(buffer), len(buffer))
    _check(_lib().ioctl(fd, request, ctypes.cast(buf, ctypes.c_char_p)))
    return buf.raw
