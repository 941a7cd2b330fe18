"""Checking an image against its manifest, and naming the first thing that differs.

A verifier is handed two things it should not trust: the image and the
manifest.  The manifest is checked for shape first (``ManifestError``: the
input is unusable); then the image is walked in byte order, component by
component, and the first difference is reported as a ``Mismatch`` with the
component, the byte offset in the image (and, in a compressed component, the
offset in its uncompressed archive) and the path when one is known.

Everything a manifest describes is checked, also when a component's stored
digest matches: a manifest that lies about a file's digest, mode or xattrs,
or about the component digests embedded in the image, is itself a mismatch.

Work is bounded by the inputs, never by a clock: bytes hashed are at most
three times the image plus twice what is decompressed, and decompression stops at
``slack(declared size)`` for each component (the manifest cannot declare more
than ``MAX_UNCOMPRESSED`` in all).  ``Work`` counts it,
so tests can hold the code to that bound.

Pure functions over bytes and a decoded manifest; reading the files is the
caller's job (initium.cli).
"""

from __future__ import annotations

import hashlib
import stat
from dataclasses import dataclass, field
from typing import Any

from initium import components
from initium.components import DIGESTS_COMPONENT, DIGESTS_PATH, DigestsError
from initium.probe import printable
from initium.xattrlist import LIST_DIR, NAMESPACES, XattrListError
from initium.xattrlist import parse as parse_xattr_list

from .compress import CompressionError, decompress, segment_at
from .cpio import CpioError, Entry, read_records

EXIT_OK = 0
EXIT_MISMATCH = 1
EXIT_UNUSABLE = 2
MANIFEST_FORMAT = "initium-manifest/1"
MAX_UNCOMPRESSED = 1 << 30
"""Most uncompressed bytes a manifest may declare, over all its components."""
MAX_COMPONENTS = 64
MAX_FILES = 1 << 20
KERNEL_LIST = "/.xattr-list"
SLACK = 64 << 10


def slack(declared: int) -> int:
    """How much a component may decompress to: enough past its declared size to name a
    file that was added, still linear in what the manifest declares."""
    return 2 * declared + SLACK

_COMPRESSIONS = ("none", "zstd", "gzip", "xz", "lzma", "bzip2")
_HEX = frozenset("0123456789abcdef")
_MAGIC = {"zstd": b"\x28\xb5\x2f\xfd", "gzip": b"\x1f\x8b", "xz": b"\xfd7zXZ\x00",
          "bzip2": b"BZh", "lzma": b"\x5d\x00\x00", "none": b"0707"}


class ManifestError(ValueError):
    """The manifest is not one initium wrote: nothing can be verified against it."""


@dataclass(frozen=True)
class Mismatch:
    """The first place where the image differs from its manifest."""

    reason: str
    offset: int | None = None  # in the image
    component: str | None = None
    path: str | None = None
    inner_offset: int | None = None  # in the component's uncompressed archive

    def __str__(self) -> str:
        where = []
        if self.component is not None:
            where.append(f"component {self.component}")
        if self.offset is not None:
            where.append(f"image offset {self.offset}")
        if self.inner_offset is not None:
            where.append(f"uncompressed offset {self.inner_offset}")
        if self.path is not None:  # from the image: any bytes, a newline included
            where.append(printable(self.path, limit=512))
        return (", ".join(where) + ": " if where else "") + self.reason


@dataclass
class Work:
    """What a verification cost, counted: bytes hashed and decompressed, cpio records read."""

    hashed: int = 0
    decompressed: int = 0
    records: int = 0


@dataclass(frozen=True)
class FileRef:
    path: str
    mode: int
    size: int | None = None
    sha256: str | None = None
    target: str | None = None
    rdev: str | None = None
    xattrs: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ComponentRef:
    name: str
    offset: int
    length: int
    compression: str
    sha256: str
    uncompressed_sha256: str
    uncompressed_size: int
    files: tuple[FileRef, ...]

    @property
    def end(self) -> int:
        return self.offset + self.length


@dataclass(frozen=True)
class ManifestRef:
    size: int
    sha256: str
    components: tuple[ComponentRef, ...]


# -- the manifest's shape ----------------------------------------------------


def _want(cond: bool, where: str, what: str) -> None:
    if not cond:
        raise ManifestError(f"manifest {where}: {what}")


def _obj(value: object, where: str) -> dict[str, Any]:
    _want(isinstance(value, dict), where, "is not an object")
    assert isinstance(value, dict)
    return value


def _get(item: dict[str, Any], key: str, default: Any = None) -> Any:
    return item.get(key, default)


def _is_int(value: object) -> bool:
    return type(value) is int


def _is_sha256(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and set(value) <= _HEX


def _file_ref(value: object, where: str) -> FileRef:
    item = _obj(value, where)
    path, mode = _get(item, "path"), _get(item, "mode")
    _want(isinstance(path, str) and path.startswith("/") and len(path) < 4096, where,
          "path is not an absolute string")
    assert isinstance(path, str)
    parts = path[1:].split("/")
    _want(all(p not in ("", ".", "..") for p in parts), where,
          f"path {path!r} has an empty, '.' or '..' component")
    where = f"{where} ({path})"
    _want(isinstance(mode, str) and 0 < len(mode) <= 6 and set(mode) <= set("01234567"),
          where, "mode is not an octal string")
    assert isinstance(mode, str)
    mode_int = int(mode, 8)
    xattrs = _get(item, "xattrs", {})
    _want(isinstance(xattrs, dict) and all(
        isinstance(k, str) and isinstance(v, str) and len(v) % 2 == 0 and set(v) <= _HEX
        for k, v in xattrs.items()), where, "xattrs are not name → hex value")
    if stat.S_ISREG(mode_int):
        size, digest = _get(item, "size"), _get(item, "sha256")
        _want(_is_int(size) and size >= 0 and _is_sha256(digest), where,
              "a regular file needs size and sha256")
        return FileRef(path, mode_int, size=size, sha256=digest, xattrs=xattrs)
    if stat.S_ISLNK(mode_int):
        target = _get(item, "target")
        _want(isinstance(target, str) and target != "", where, "a symlink needs its target")
        return FileRef(path, mode_int, target=target, xattrs=xattrs)
    if stat.S_ISCHR(mode_int) or stat.S_ISBLK(mode_int):
        rdev = _get(item, "rdev")
        _want(isinstance(rdev, str) and rdev.count(":") == 1
              and all(p.isdigit() for p in rdev.split(":")), where, "a device needs rdev M:m")
        return FileRef(path, mode_int, rdev=rdev, xattrs=xattrs)
    _want(stat.S_IFMT(mode_int) in (stat.S_IFDIR, stat.S_IFIFO, stat.S_IFSOCK), where,
          f"mode {mode} is no file type")
    return FileRef(path, mode_int, xattrs=xattrs)


def _component_ref(value: object, index: int, previous_end: int) -> ComponentRef:
    where = f"component #{index}"
    item = _obj(value, where)
    name = _get(item, "name")
    _want(isinstance(name, str) and 0 < len(name) <= 32 and name.isprintable(), where,
          "name is not a short string")
    where = f"component {name}"
    offset, length = _get(item, "offset"), _get(item, "length")
    size = _get(item, "uncompressed_size")
    _want(_is_int(offset) and _is_int(length) and offset >= previous_end and length > 0,
          where, f"offset/length must be integers, after the previous component "
                 f"(which ends at {previous_end}), length > 0")
    _want(_get(item, "compression") in _COMPRESSIONS, where,
          f"compression is not one of {', '.join(_COMPRESSIONS)}")
    _want(_is_sha256(_get(item, "sha256")) and _is_sha256(_get(item, "uncompressed_sha256")),
          where, "sha256 and uncompressed_sha256 must be 64 lower-case hex digits")
    _want(_is_int(size) and 0 < size <= MAX_UNCOMPRESSED, where,
          f"uncompressed_size must be 1..{MAX_UNCOMPRESSED}")
    files = _get(item, "files")
    _want(isinstance(files, list) and len(files) <= MAX_FILES, where,
          f"files must be a list of at most {MAX_FILES}")
    assert isinstance(files, list)
    refs = tuple(_file_ref(f, f"{where} file #{i}") for i, f in enumerate(files))
    paths = [f.path for f in refs]
    _want(len(set(paths)) == len(paths), where, "lists a path twice")
    return ComponentRef(name, offset, length, item["compression"], item["sha256"],
                        item["uncompressed_sha256"], size, refs)


def parse_manifest(doc: object) -> ManifestRef:
    """The manifest's content, checked for shape; ``ManifestError`` says what is wrong."""
    doc = _obj(doc, "top level")
    _want(_get(doc, "format") == MANIFEST_FORMAT, "format", f"is not {MANIFEST_FORMAT!r}")
    size, digest, comps = _get(doc, "size"), _get(doc, "sha256"), _get(doc, "components")
    _want(_is_int(size) and size >= 0 and _is_sha256(digest), "top level",
          "size and sha256 are missing or malformed")
    _want(isinstance(comps, list) and 0 < len(comps) <= MAX_COMPONENTS, "components",
          f"must be a list of 1..{MAX_COMPONENTS}")
    assert isinstance(comps, list)
    refs: list[ComponentRef] = []
    for index, item in enumerate(comps):
        refs.append(_component_ref(item, index, refs[-1].end if refs else 0))
    names = [c.name for c in refs]
    _want(len(set(names)) == len(names), "components", "a name appears twice")
    _want(sum(c.uncompressed_size for c in refs) <= MAX_UNCOMPRESSED, "components",
          f"declare more than {MAX_UNCOMPRESSED} uncompressed bytes")
    return ManifestRef(size, digest, tuple(refs))


# -- the image against it ------------------------------------------------------


def _sha256(data: bytes, work: Work) -> str:
    work.hashed += len(data)
    return hashlib.sha256(data).hexdigest()


def _first_not_nul(data: bytes, start: int, end: int) -> int | None:
    stripped = data[start:end].lstrip(b"\0")
    return end - len(stripped) if stripped else None


class _Found(Exception):
    """Carries the first mismatch out of the nested checks."""

    def __init__(self, mismatch: Mismatch) -> None:
        super().__init__(str(mismatch))
        self.mismatch = mismatch


class _Component:
    """Checks of one component; ``where`` places offsets of its archive in the image."""

    def __init__(self, ref: ComponentRef, work: Work) -> None:
        self.ref, self.work = ref, work
        self.stream_end: int | None = None  # where the stream really ends, when not at ref.end

    def fail(self, reason: str, inner: int | None = None, path: str | None = None) -> _Found:
        ref = self.ref
        if inner is not None and ref.compression == "none":
            return _Found(Mismatch(reason, ref.offset + inner, ref.name, path))
        return _Found(Mismatch(reason, ref.offset, ref.name, path, inner))

    def archive(self, image: bytes, data: bytes, stored_ok: bool) -> bytes:
        ref = self.ref
        differs = "" if stored_ok else "stored bytes differ from the manifest's sha256 and "
        magic = _MAGIC[ref.compression]
        if not data.startswith(magic):
            raise self.fail(f"{differs}the component does not start as {ref.compression} "
                            f"data (found {data[:6].hex(' ')})")
        if ref.compression == "none":
            return data
        limit = slack(ref.uncompressed_size)
        try:
            out = decompress(data, limit=limit)
        except CompressionError as err:
            # A component that grew or shrank: read the stream where the kernel would,
            # so the file that changed can still be named.
            try:
                segment = segment_at(image, ref.offset, limit=limit)
            except (CompressionError, CpioError):
                raise self.fail(f"{differs}{ref.compression} data within the component: "
                                f"{err}") from None
            out = segment.payload_uncompressed
            self.stream_end = ref.offset + segment.length
        self.work.decompressed += len(out)
        return out

    def entries(self, archive: bytes) -> list[tuple[int, Entry]]:
        found = []
        try:
            for offset, entry in read_records(archive):
                self.work.records += 1
                found.append((offset, entry))
        except CpioError as err:
            raise self.fail(f"malformed cpio: {err.reason}", err.offset) from None
        return found

    def files(self, entries: list[tuple[int, Entry]]) -> dict[str, Entry]:
        expected = {f.path: f for f in self.ref.files}
        seen: dict[str, Entry] = {}
        for offset, entry in entries:
            path = "/" + entry.path
            if path in seen:
                raise self.fail("the archive holds this path twice", offset, path)
            seen[path] = entry
            ref = expected.get(path)
            if ref is None:
                raise self.fail("not in the manifest (a file was added)", offset, path)
            problem = self._compare(ref, entry)
            if problem:
                raise self.fail(problem, offset, path)
        for path in sorted(expected):
            if path not in seen:
                raise self.fail("in the manifest but not in the image (a file was removed)",
                                None, path)
        return seen

    def _compare(self, ref: FileRef, entry: Entry) -> str | None:
        if entry.mode != ref.mode:
            return f"mode {entry.mode:o}, the manifest says {ref.mode:o}"
        if stat.S_ISREG(entry.mode):
            if len(entry.data) != ref.size:
                return f"size {len(entry.data)}, the manifest says {ref.size}"
            digest = _sha256(entry.data, self.work)
            if digest != ref.sha256:
                return f"sha256 {digest}, the manifest says {ref.sha256}"
        elif stat.S_ISLNK(entry.mode):
            target = entry.data.decode(errors="surrogateescape")
            if target != ref.target:
                return f"symlink to {target!r}, the manifest says {ref.target!r}"
        elif stat.S_ISCHR(entry.mode) or stat.S_ISBLK(entry.mode):
            rdev = f"{entry.rdev[0]}:{entry.rdev[1]}"
            if rdev != ref.rdev:
                return f"device {rdev}, the manifest says {ref.rdev}"
        return None

    def xattrs(self, entries: list[tuple[int, Entry]], files: dict[str, Entry]) -> None:
        list_path = f"{LIST_DIR}/{self.ref.name}"
        offsets = {"/" + e.path: o for o, e in entries}
        actual: dict[str, dict[str, str]] = {}
        listed = files.get(list_path)
        if listed is not None:
            try:
                records = parse_xattr_list(listed.data, allowed_prefixes=NAMESPACES)
            except XattrListError as err:
                raise self.fail(f"xattr list: {err}", offsets[list_path], list_path) from None
            actual = {"/" + r.path: {n: v.hex() for n, v in r.xattrs} for r in records}
        kernel = files.get(KERNEL_LIST)
        if kernel is not None and (listed is None or kernel.data != listed.data):
            raise self.fail(f"differs from {list_path}", offsets[KERNEL_LIST], KERNEL_LIST)
        wanted = {f.path: f.xattrs for f in self.ref.files if f.xattrs}
        for path in sorted(set(actual) | set(wanted)):
            have, want = actual.get(path, {}), wanted.get(path, {})
            if have != want:
                names = sorted(set(have) ^ set(want)) or sorted(
                    n for n in have if have[n] != want.get(n))
                raise self.fail(f"xattrs differ ({', '.join(names)}): the list has "
                                f"{sorted(have)}, the manifest {sorted(want)}",
                                offsets.get(list_path), path)


def _check_embedded(check: _Component, files: dict[str, Entry],
                    earlier: tuple[ComponentRef, ...]) -> None:
    """The digests component must agree with the manifest about every earlier component."""
    entry = files.get(DIGESTS_PATH)
    if entry is None:
        raise check.fail(f"no {DIGESTS_PATH} in the digests component")
    try:
        embedded = components.from_bytes(entry.data)
    except DigestsError as err:
        raise check.fail(str(err), None, DIGESTS_PATH) from None
    listed = [(c.name, c.offset, c.length, c.compression, c.sha256, c.uncompressed_sha256)
              for c in earlier]
    held = [(d.name, d.offset, d.length, d.compression, d.sha256, d.uncompressed_sha256)
            for d in embedded]
    for index in range(max(len(listed), len(held))):
        mine = held[index] if index < len(held) else None
        theirs = listed[index] if index < len(listed) else None
        if mine != theirs:
            name = (theirs or mine or ("?",))[0]
            raise check.fail(f"the embedded digests of component {name} ({mine}) disagree "
                             f"with the manifest ({theirs})", None, DIGESTS_PATH)


def _verify_component(image: bytes, ref: ComponentRef, earlier: tuple[ComponentRef, ...],
                      work: Work) -> None:
    check = _Component(ref, work)
    if ref.end > len(image):
        raise _Found(Mismatch(f"the image ends at byte {len(image)}, inside this component "
                              f"(bytes {ref.offset}..{ref.end}): truncated",
                              len(image), ref.name))
    data = image[ref.offset : ref.end]
    stored_ok = _sha256(data, work) == ref.sha256
    archive = check.archive(image, data, stored_ok)
    unpacked_ok = len(archive) == ref.uncompressed_size and \
        _sha256(archive, work) == ref.uncompressed_sha256
    entries = check.entries(archive)
    files = check.files(entries)
    check.xattrs(entries, files)
    if ref.name == DIGESTS_COMPONENT:
        _check_embedded(check, files, earlier)
    if check.stream_end is not None:
        raise check.fail(f"the {ref.compression} stream ends at image offset "
                         f"{check.stream_end}, the manifest says {ref.end}")
    if not stored_ok:
        raise check.fail(f"stored bytes' sha256 differs from the manifest's {ref.sha256}, "
                         "yet every file matches")
    if not unpacked_ok:
        raise check.fail("uncompressed archive's size or sha256 differs from the manifest, "
                         "yet every file matches")


def verify(image: bytes, doc: object, work: Work | None = None) -> Mismatch | None:
    """None when ``image`` is exactly what the manifest ``doc`` describes, else the first
    difference in image order.  ``ManifestError`` when ``doc`` is not a usable manifest."""
    manifest = parse_manifest(doc)
    work = work if work is not None else Work()
    end = 0
    try:
        for index, ref in enumerate(manifest.components):
            junk = _first_not_nul(image, end, min(ref.offset, len(image)))
            if junk is not None:
                raise _Found(Mismatch(f"byte {image[junk]:#04x} where only NUL padding "
                                      f"belongs before component {ref.name}", junk))
            _verify_component(image, ref, manifest.components[:index], work)
            end = ref.end
        junk = _first_not_nul(image, end, len(image))
        if junk is not None:
            raise _Found(Mismatch("data after the last component", junk))
        if len(image) != manifest.size:
            raise _Found(Mismatch(f"the image is {len(image)} bytes, the manifest says "
                                  f"{manifest.size}", min(len(image), manifest.size)))
        if _sha256(image, work) != manifest.sha256:
            raise _Found(Mismatch("the image's sha256 differs from the manifest's although "
                                  "every component matches", 0))
    except _Found as found:
        return found.mismatch
    return None


def file_count(doc: dict[str, Any]) -> int:
    return sum(len(c.get("files", [])) for c in doc.get("components", []))
