"""The newc ("070701") cpio format the kernel unpacks into its initial rootfs.

We write archives ourselves instead of running the host's cpio so that an image is a pure
function of its inputs: no build-host uids, timestamps, inode numbers or readdir order can
leak into it, and two builds of the same tree are byte-identical.

The layout follows Documentation/driver-api/early-userspace/buffer-format.rst and, where
that document is silent, what init/initramfs.c actually does: a 110-byte header of the
magic plus 13 eight-digit hex fields, the NUL-terminated name padded so that header+name
ends on a 4-byte boundary, then the body padded to 4 bytes.  Archives may be concatenated,
with NUL bytes between them, and every header must start on a 4-byte boundary.

The reader is deliberately stricter than the kernel (which silently skips entries it
cannot make sense of): it is also used on images handed to ``initium inspect``, where
reporting "this entry would be ignored at boot" is the whole point.
"""

from __future__ import annotations

import re
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

MAGIC = b"070701"
"""newc without checksums: what we write."""
MAGIC_CRC = b"070702"
"""newc with a body checksum; the kernel verifies it, so we accept it when reading."""
HEADER_LEN = 110
PATH_MAX = 4096
"""The kernel's limit on a name *including* its NUL (``name_len > PATH_MAX`` is skipped)."""
TRAILER = "TRAILER!!!"
_TRAILER_RAW = TRAILER.encode("ascii")
_U32 = 0xFFFFFFFF

_FIELDS = (
    "ino", "mode", "uid", "gid", "nlink", "mtime", "filesize",
    "devmajor", "devminor", "rdevmajor", "rdevminor", "namesize", "check",
)  # fmt: skip
_HEX8 = re.compile(rb"[0-9A-Fa-f]{8}")
_NOT_NUL = re.compile(rb"[^\x00]")

_KNOWN_TYPES = frozenset(
    {stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK, stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO,
     stat.S_IFSOCK}
)  # fmt: skip


class CpioError(ValueError):
    """A malformed archive; ``offset`` is where in the input the problem was found."""

    def __init__(self, offset: int, message: str) -> None:
        super().__init__(f"{message} (at byte offset {offset})")
        self.offset = offset
        self.reason = message


@dataclass(frozen=True)
class Entry:
    """One archive member.

    ``path`` is relative with no leading "/" because the kernel resolves names against the
    rootfs it is populating, and "." is never written so that the archive cannot change the
    mode of the rootfs itself.  ``data`` is the body: file contents, or the target of a
    symlink.  Names are str; bytes that are not UTF-8 round-trip through surrogateescape.
    """

    path: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def _encode(path: str) -> bytes:
    # Explicit codec instead of os.fsencode: the archive must not depend on the locale.
    return path.encode("utf-8", "surrogateescape")


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _pad4(n: int) -> int:
    return -n & 3


def _check_path(path: str) -> bytes:
    try:
        raw = _encode(path)
    except UnicodeEncodeError as exc:
        raise ValueError(f"path {path!r} cannot be encoded: {exc}") from None
    if not raw:
        raise ValueError("empty path")
    if b"\0" in raw:
        raise ValueError(f"path {path!r} contains NUL")
    if raw.startswith(b"/"):
        raise ValueError(f"path {path!r} must be relative (no leading '/')")
    if len(raw) > PATH_MAX - 1:
        raise ValueError(f"path {path[:64]!r}... is {len(raw)} bytes; the limit is {PATH_MAX - 1}")
    for part in raw.split(b"/"):
        if part in (b"", b".", b".."):
            raise ValueError(f"path {path!r} has an empty, '.' or '..' component")
    return raw


def _check_entry(entry: Entry) -> bytes:
    raw = _check_path(entry.path)
    mode = entry.mode
    if not 0 <= mode <= 0o177777 or stat.S_IFMT(mode) not in _KNOWN_TYPES:
        raise ValueError(f"{entry.path!r}: mode {mode:#o} is not a valid file type and mode")
    kind = stat.S_IFMT(mode)
    if kind == stat.S_IFLNK:
        if not entry.data or b"\0" in entry.data or len(entry.data) > PATH_MAX - 1:
            raise ValueError(f"{entry.path!r}: symlink target must be 1..4095 bytes without NUL")
    elif kind != stat.S_IFREG and entry.data:
        raise ValueError(f"{entry.path!r}: only regular files and symlinks carry data")
    if len(entry.data) > _U32:
        raise ValueError(f"{entry.path!r}: newc cannot hold files of 4 GiB or more")
    major, minor = entry.rdev
    if kind in (stat.S_IFCHR, stat.S_IFBLK):
        if not (0 <= major <= _U32 and 0 <= minor <= _U32):
            raise ValueError(f"{entry.path!r}: device number {entry.rdev} out of range")
    elif entry.rdev != (0, 0):
        raise ValueError(f"{entry.path!r}: only device nodes have a device number")
    return raw


def _record(out: list[bytes], raw_name: bytes, *, ino: int, mode: int, nlink: int,
            mtime: int, body: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:  # fmt: skip
    namesize = len(raw_name) + 1
    fields = (ino, mode, 0, 0, nlink, mtime, len(body), 0, 0, rdev[0], rdev[1], namesize, 0)
    out.append(MAGIC + b"".join(b"%08X" % value for value in fields))
    out.append(raw_name + b"\0" * (1 + _pad4(HEADER_LEN + namesize)))
    if body:
        out.append(body + b"\0" * _pad4(len(body)))


def write_archive(entries: Iterable[Entry], mtime: int = 0) -> bytes:
    """Serialise ``entries`` as one newc archive, ending with the TRAILER!!! record.

    Everything that could vary between builds is fixed here: owner root:root, one mtime
    for all (the caller's SOURCE_DATE_EPOCH), inode numbers from output order and order by
    path bytes.  Missing parent directories are added (0755) because the kernel does not
    create them and a file in a missing directory would silently not be unpacked.
    Repeating an identical entry is harmless; repeating a path with different content is a
    conflict in the caller's plan and raises ValueError rather than letting one silently win.
    """
    if not 0 <= mtime <= _U32:
        raise ValueError(f"mtime {mtime} does not fit the 32-bit newc field")
    by_path: dict[bytes, Entry] = {}
    for entry in entries:
        raw = _check_entry(entry)
        previous = by_path.get(raw)
        if previous is None:
            by_path[raw] = entry
        elif (previous.mode, previous.data, previous.rdev) != (entry.mode, entry.data, entry.rdev):
            raise ValueError(f"duplicate path {entry.path!r} with differing content")

    for raw in list(by_path):
        child = raw
        while b"/" in child:
            parent = child.rsplit(b"/", 1)[0]
            existing = by_path.get(parent)
            if existing is None:
                by_path[parent] = Entry(_decode(parent), stat.S_IFDIR | 0o755)
            elif not stat.S_ISDIR(existing.mode):
                inside = _decode(raw)
                raise ValueError(f"{existing.path!r} is not a directory, yet {inside!r} is in it")
            else:
                break  # an existing directory's own ancestors are handled when we reach it
            child = parent

    # With every ancestor present, plain byte order already puts a directory (a prefix)
    # before anything inside it.
    out: list[bytes] = []
    for ino, (raw, entry) in enumerate(sorted(by_path.items()), start=1):
        nlink = 2 if stat.S_ISDIR(entry.mode) else 1
        _record(out, raw, ino=ino, mode=entry.mode, nlink=nlink, mtime=mtime,
                body=entry.data, rdev=entry.rdev)  # fmt: skip
    _record(out, _TRAILER_RAW, ino=0, mode=0, nlink=1, mtime=0)
    return b"".join(out)


@dataclass(frozen=True)
class _Record:
    offset: int
    end: int  # just past the body's padding (clamped to the end of the input)
    fields: tuple[int, ...]
    name: bytes
    body: bytes

    @property
    def is_trailer(self) -> bool:
        return self.name == _TRAILER_RAW


def _parse_record(data: bytes, pos: int) -> _Record:
    size = len(data)
    magic = data[pos : pos + 6]
    if not (MAGIC.startswith(magic) or MAGIC_CRC.startswith(magic)):
        hint = " (old portable format; use newc)" if magic == b"070707" else ""
        raise CpioError(pos, f"bad cpio magic {magic!r}{hint}")
    if size - pos < HEADER_LEN:
        raise CpioError(pos, f"truncated cpio header ({size - pos} of {HEADER_LEN} bytes)")
    values: list[int] = []
    for i, field in enumerate(_FIELDS):
        start = pos + 6 + 8 * i
        text = data[start : start + 8]
        if not _HEX8.fullmatch(text):
            raise CpioError(start, f"cpio header field {field} is not 8 hex digits: {text!r}")
        values.append(int(text, 16))
    mode, filesize, namesize, check = values[1], values[6], values[11], values[12]

    name_start = pos + HEADER_LEN
    if not 1 <= namesize <= PATH_MAX:
        raise CpioError(pos, f"name size {namesize} outside 1..{PATH_MAX}")
    name_end = name_start + namesize
    if name_end > size:
        raise CpioError(name_start, f"name of {namesize} bytes runs past the end of the data")
    raw_name = data[name_start : name_end - 1]
    if data[name_end - 1] != 0 or b"\0" in raw_name:
        raise CpioError(name_start, "name is not a single NUL-terminated string")
    body_start = name_end + _pad4(name_end)
    body_end = body_start + filesize
    if body_end > size:
        raise CpioError(body_start, f"body of {filesize} bytes runs past the end of the data")
    body = data[body_start:body_end]

    if raw_name != _TRAILER_RAW:
        kind = stat.S_IFMT(mode)
        if kind == stat.S_IFLNK:
            if not 1 <= filesize < PATH_MAX or b"\0" in body:
                raise CpioError(body_start, "symlink target must be 1..4095 bytes without NUL")
        elif kind != stat.S_IFREG and filesize:
            # The kernel skips such an entry entirely; say so instead.
            raise CpioError(pos, f"non-regular entry {raw_name!r} carries {filesize} bytes")
        if magic == MAGIC_CRC and kind == stat.S_IFREG and sum(body) & _U32 != check:
            raise CpioError(pos, f"bad body checksum for {raw_name!r}")
    # The kernel needs no padding after the last body of its input, and neither do we.
    return _Record(pos, min(body_end + _pad4(body_end), size), tuple(values), raw_name, body)


def _skip_nuls(data: bytes, pos: int) -> int:
    found = _NOT_NUL.search(data, pos)
    return len(data) if found is None else found.start()


def _to_entry(record: _Record) -> Entry:
    v = record.fields
    return Entry(_decode(record.name), v[1], record.body, (v[9], v[10]))


def read_archive(data: bytes) -> Iterator[Entry]:
    """Yield the members of one or more concatenated uncompressed newc archives.

    NUL bytes are skipped between records and between archives, as the kernel does, but a
    header must then start on a 4-byte boundary of ``data`` (the kernel's "broken padding").
    TRAILER!!! records are consumed, not yielded.  Names are yielded as stored, so an
    archive made by ``find . | cpio`` yields "." and "./x" paths.  Hard links are not
    resolved: a link group's members are yielded as separate entries.
    """
    for _offset, entry in read_records(data):
        yield entry


def read_records(data: bytes) -> Iterator[tuple[int, Entry]]:
    """``read_archive`` with the byte offset of each member's header in ``data``.

    Work is linear in ``len(data)``: every record consumes at least its
    110-byte header, and sizes are checked against the data before slicing.
    """
    pos = _skip_nuls(data, 0)
    while pos < len(data):
        if pos & 3:
            raise CpioError(pos, "cpio header is not 4-byte aligned (broken padding)")
        record = _parse_record(data, pos)
        if not record.is_trailer:
            yield pos, _to_entry(record)
        pos = _skip_nuls(data, record.end)


def archive_end(data: bytes, offset: int = 0) -> int:
    """Where the uncompressed archive starting at ``offset`` ends, as the kernel sees it.

    That is just past the padding of its TRAILER!!! record; without a trailer, just past
    the last record before the data ends or before something that is not a cpio header
    (which the kernel would then treat as the start of a compressed stream).  NULs after
    the archive are not included.  Raises CpioError for anything the kernel would reject.
    """
    pos = offset
    while True:
        if pos & 3:
            raise CpioError(pos, "cpio header is not 4-byte aligned (broken padding)")
        record = _parse_record(data, pos)
        if record.is_trailer:
            return record.end
        pos = _skip_nuls(data, record.end)
        if pos >= len(data) or data[pos] != ord("0"):
            if pos < len(data) and pos & 3:
                raise CpioError(pos, "data after a cpio record is not 4-byte aligned")
            return record.end
