"""The xattr list: extended attributes for files that cpio cannot carry.

Each image component holds one list at ``/.initium/xattrs/<component>``, in
the record format proposed on LKML for in-kernel support (Roberto Sassu,
"initramfs: add support for xattrs in the initial ram disk", 2019)::

    record = p_size path NUL xattr*   p_size: 10 hex digits, the record's length, these included
    xattr  = c_size name NUL value    c_size:  8 hex digits, the xattr's length, these included

The parser sits on the boot path and reads bytes the boot loader handed us,
so it is strict and bounded: every size is checked against what is left
before anything is sliced, names and values have the kernel's limits, paths
stay inside the tree, and any fault is one ``XattrListError`` with the byte
offset where it was found.  ``serialize`` is the builder's writer and obeys
the same rules, so the init never meets a list it refuses because of us.

``SetXattr`` applies one attribute without following a symbolic link
anywhere on the path (see ``SetXattr.perform``).
"""

from __future__ import annotations

import errno
import os

from initium.ops import Op
from initium.record import record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

    from initium.system import System

P_SIZE_DIGITS = 10
C_SIZE_DIGITS = 8
NAME_MAX = 255  # XATTR_NAME_MAX
VALUE_MAX = 65536  # XATTR_SIZE_MAX
PATH_MAX = 4096  # including the NUL, as the kernel counts
LIST_MAX = 16 << 20
RECORDS_MAX = 1 << 18
NAMESPACES = ("security.", "trusted.", "user.")
LIST_DIR = "/.initium/xattrs"

_HEX = b"0123456789abcdefABCDEF"


class XattrListError(ValueError):
    """A malformed list: where (byte offset into the list) and why, in one line."""

    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(f"offset {offset:#x}: {reason}")
        self.offset = offset
        self.reason = reason


@record
class XattrRecord:
    """One file's attributes; ``path`` is relative to the tree, as cpio names are."""

    path: str
    xattrs: tuple[tuple[str, bytes], ...]


def _show(raw: bytes) -> str:
    """A byte string for an error message: escaped, one line, bounded."""
    text = repr(raw[:64])[2:-1]
    return text + ("..." if len(raw) > 64 else "")


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def path_fault(raw: bytes) -> str | None:
    """Why ``raw`` cannot name a file inside the tree, or None when it can."""
    if not raw:
        return "empty path"
    if len(raw) >= PATH_MAX:
        return f"path is {len(raw)} bytes; the limit is {PATH_MAX - 1}"
    if b"\0" in raw:
        return f"path {_show(raw)!r} contains NUL"
    if raw.startswith(b"/"):
        return f"path {_show(raw)!r} is absolute; paths are relative to the initramfs root"
    for part in raw.split(b"/"):
        if part in (b"", b".", b".."):
            return f"path {_show(raw)!r} has an empty, '.' or '..' component"
    return None


def name_fault(raw: bytes, allowed: tuple[str, ...]) -> str | None:
    """Why ``raw`` is not an attribute name this list may set, or None."""
    if not raw:
        return "empty xattr name"
    if len(raw) > NAME_MAX:
        return f"xattr name is {len(raw)} bytes; the limit is {NAME_MAX}"
    if b"\0" in raw:
        return f"xattr name {_show(raw)!r} contains NUL"
    for prefix in allowed:
        raw_prefix = prefix.encode()
        if raw.startswith(raw_prefix):
            if len(raw) == len(raw_prefix):
                return f"xattr name {_show(raw)!r} is only a namespace"
            return None
    return f"xattr name {_show(raw)!r} is outside the allowed namespaces ({', '.join(allowed)})"


def _size(data: bytes, pos: int, digits: int, what: str) -> int:
    raw = data[pos : pos + digits]
    if len(raw) < digits:
        raise XattrListError(pos, f"truncated {what} size: {len(raw)} of {digits} hex digits")
    if raw.translate(None, _HEX):  # int() would also take signs, spaces, "_" and "0x"
        raise XattrListError(pos, f"{what} size {_show(raw)!r} is not {digits} hex digits")
    return int(raw, 16)


def parse(data: bytes, *, allowed_prefixes: tuple[str, ...] = ("security.",),
          max_total: int = LIST_MAX, max_records: int = RECORDS_MAX) -> list[XattrRecord]:
    """The records of one list, or ``XattrListError`` at the first fault.

    Work is linear in ``len(data)``, which is capped first.  A path or a name
    given twice is an error: which value should win would otherwise depend on
    the order of application.
    """
    end_all = len(data)
    if end_all > max_total:
        raise XattrListError(max_total, f"list is {end_all} bytes; the limit is {max_total}")
    records: list[XattrRecord] = []
    seen_paths: set[bytes] = set()
    pos = 0
    while pos < end_all:
        if len(records) >= max_records:
            raise XattrListError(pos, f"more than {max_records} records")
        size = _size(data, pos, P_SIZE_DIGITS, "record")
        if size < P_SIZE_DIGITS + 2:
            raise XattrListError(pos, f"record size {size} is too small for a path")
        if size > end_all - pos:
            raise XattrListError(pos, f"record size {size} runs past the end of the list "
                                      f"({end_all - pos} bytes left)")
        end = pos + size
        start = pos + P_SIZE_DIGITS
        nul = data.find(b"\0", start, end)
        if nul < 0:
            raise XattrListError(start, "path is not NUL-terminated within its record")
        raw_path = data[start:nul]
        fault = path_fault(raw_path)
        if fault is not None:
            raise XattrListError(start, fault)
        if raw_path in seen_paths:
            raise XattrListError(start, f"path {_show(raw_path)!r} has a second record")
        seen_paths.add(raw_path)
        xattrs: list[tuple[str, bytes]] = []
        names: set[bytes] = set()
        at = nul + 1
        while at < end:
            c_size = _size(data, at, C_SIZE_DIGITS, "xattr")
            if c_size < C_SIZE_DIGITS + 2:
                raise XattrListError(at, f"xattr size {c_size} is too small for a name")
            if c_size > end - at:
                raise XattrListError(at, f"xattr size {c_size} runs past the end of its record "
                                         f"({end - at} bytes left)")
            name_at = at + C_SIZE_DIGITS
            name_end = data.find(b"\0", name_at, at + c_size)
            if name_end < 0:
                raise XattrListError(name_at, "xattr name is not NUL-terminated")
            raw_name = data[name_at:name_end]
            fault = name_fault(raw_name, allowed_prefixes)
            if fault is not None:
                raise XattrListError(name_at, fault)
            if raw_name in names:
                raise XattrListError(name_at, f"xattr {_show(raw_name)!r} is given twice "
                                              f"for {_show(raw_path)!r}")
            names.add(raw_name)
            value = data[name_end + 1 : at + c_size]
            if len(value) > VALUE_MAX:
                raise XattrListError(name_end + 1, f"xattr value is {len(value)} bytes; "
                                                   f"the limit is {VALUE_MAX}")
            xattrs.append((_decode(raw_name), value))
            at += c_size
        records.append(XattrRecord(_decode(raw_path), tuple(xattrs)))
        pos = end
    return records


def canonical(records: Iterable[XattrRecord]) -> list[XattrRecord]:
    """Records sorted by path bytes, each one's xattrs by name: the order ``serialize`` writes."""
    return sorted((XattrRecord(r.path, tuple(sorted(r.xattrs, key=lambda x: _encode(x[0]))))
                   for r in records), key=lambda r: _encode(r.path))


def serialize(records: Iterable[XattrRecord],
              allowed_prefixes: tuple[str, ...] = NAMESPACES) -> bytes:
    """The list for ``records`` in canonical order; ValueError for anything ``parse`` refuses.

    ``parse(serialize(rs), allowed_prefixes=NAMESPACES) == canonical(rs)``.
    """
    out: list[bytes] = []
    seen: set[bytes] = set()
    for rec in canonical(records):
        raw_path = _encode(rec.path)
        fault = path_fault(raw_path)
        if fault is None and raw_path in seen:
            fault = "path has a second record"
        if fault is not None:
            raise ValueError(f"cannot write the xattrs of {rec.path!r}: {fault}")
        seen.add(raw_path)
        parts = [raw_path, b"\0"]
        names: set[bytes] = set()
        for name, value in rec.xattrs:
            raw_name = _encode(name)
            fault = name_fault(raw_name, allowed_prefixes)
            if fault is None and raw_name in names:
                fault = f"xattr {name!r} is given twice"
            if fault is None and len(value) > VALUE_MAX:
                fault = f"xattr {name!r} is {len(value)} bytes; the limit is {VALUE_MAX}"
            if fault is not None:
                raise ValueError(f"cannot write the xattrs of {rec.path!r}: {fault}")
            names.add(raw_name)
            size = C_SIZE_DIGITS + len(raw_name) + 1 + len(value)
            parts += [b"%08x" % size, raw_name, b"\0", value]
        body = b"".join(parts)
        out += [b"%010x" % (P_SIZE_DIGITS + len(body)), body]
    data = b"".join(out)
    if len(data) > LIST_MAX or len(seen) > RECORDS_MAX:
        raise ValueError(f"the xattr list would be {len(data)} bytes in {len(seen)} records; "
                         f"the limits are {LIST_MAX} bytes and {RECORDS_MAX} records")
    return data


def show_value(value: bytes) -> str:
    """A value for a log line: the text of a NUL-terminated printable label, else hex."""
    if value.endswith(b"\0") and all(0x20 <= b < 0x7F for b in value[:-1]):
        return '"' + value[:-1].decode("ascii") + '"'
    head = value[:16].hex()
    return f"0x{head}{'...' if len(value) > 16 else ''} ({len(value)} bytes)"


@record
class SetXattr(Op):
    """Set one extended attribute on ``root``/``path`` without following any symbolic link.

    Every directory below ``root`` is opened with O_NOFOLLOW|O_DIRECTORY,
    one component at a time from the previous one's descriptor, so a link
    anywhere in the path is refused (ELOOP or ENOTDIR) instead of
    followed, and no check-then-use race is possible.  The last component
    is then reached as ``/proc/self/fd/N/name`` with ``follow_symlinks=False``
    (l*setxattr): the kernel resolves the magic fd link to exactly the
    directory we opened and does not follow ``name``, so a symlink itself
    gets the attribute (as SELinux labels symlinks), never its target.
    Needs /proc, which early-mounts provides.
    """

    path: str  # relative to root, as in the list
    name: str
    value: bytes
    root: str = "/"

    def describe(self) -> str:
        where = self.root.rstrip("/") + "/" + self.path
        return f"setxattr {self.name}={show_value(self.value)} {where}"

    def _refuse(self, code: int, why: str) -> OSError:
        return OSError(code, f"refusing to set {self.name}: {why}", self.path)

    def perform(self, sys: System | None = None) -> None:
        fault = path_fault(_encode(self.path))
        if fault is not None:
            raise self._refuse(errno.EINVAL, fault)
        *parents, leaf = self.path.split("/")
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for part in parents:
                flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
                try:
                    child = os.open(part, flags, dir_fd=fd)
                except OSError as err:
                    if err.errno in (errno.ELOOP, errno.ENOTDIR):  # a link or a file on the way
                        raise self._refuse(err.errno, _NOT_A_DIRECTORY % part) from None
                    raise OSError(err.errno, err.strerror, self.path) from None
                os.close(fd)
                fd = child
            os.setxattr(f"/proc/self/fd/{fd}/{leaf}", self.name, self.value,
                        follow_symlinks=False)
        except OSError as err:
            if err.filename == self.path:
                raise
            raise OSError(err.errno, err.strerror, self.path) from None
        finally:
            os.close(fd)

    def simulate(self, sys: System) -> None:
        """The same refusals through the facade's queries: a link on the way, a missing file."""
        fault = path_fault(_encode(self.path))
        if fault is not None:
            raise self._refuse(errno.EINVAL, fault)
        base = self.root.rstrip("/")
        parts = self.path.split("/")
        for i in range(1, len(parts)):
            if sys.readlink(base + "/" + "/".join(parts[:i])) is not None:
                raise self._refuse(errno.ELOOP, _NOT_A_DIRECTORY % parts[i - 1])
        if not sys.exists(f"{base}/{self.path}"):
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", self.path)


_NOT_A_DIRECTORY = "%r in the path is not a directory (a symlink is never followed)"
