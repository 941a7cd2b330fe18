"""Which shared objects an ELF program needs, read from its dynamic section.

``ldd`` runs the program's dynamic loader, which is wrong for a builder: it executes code
from the inputs, fails for foreign architectures, and its output format is not an
interface.  Instead we read PT_INTERP and the DT_NEEDED / DT_RUNPATH / DT_RPATH / DT_SONAME
entries ourselves and repeat the loader's search (glibc ld.so(8)): the needing object's
RUNPATH (or RPATH), then the system library directories, skipping objects of another ELF
class, byte order or machine, and treating a name as satisfied once an object loaded
earlier answers to it (which is how libc's DT_NEEDED on the loader resolves to the
PT_INTERP object).

Known simplifications: DT_RPATH is only searched for the object that carries it (ld.so
also searches the RPATH of the objects that loaded it), $LIB and $PLATFORM are not
expanded, glibc-hwcaps subdirectories and /etc/ld.so.cache are not consulted (the
directories ld.so.conf names stand in for the cache), and LD_LIBRARY_PATH is ignored, as
it will not be set at boot.
"""

from __future__ import annotations

import glob
import os
import struct
import sysconfig
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

ELFCLASS32 = 1
ELFCLASS64 = 2
_ELFDATA2LSB = 1
_ELFDATA2MSB = 2
_PT_LOAD = 1
_PT_DYNAMIC = 2
_PT_INTERP = 3
_PN_XNUM = 0xFFFF
_DT_NULL = 0
_DT_NEEDED = 1
_DT_STRTAB = 5
_DT_STRSZ = 10
_DT_SONAME = 14
_DT_RPATH = 15
_DT_RUNPATH = 29
_MAX_CONF_DEPTH = 8
_STANDARD_DIRS = ("/lib64", "/usr/lib64", "/lib", "/usr/lib")


class ElfError(ValueError):
    """Malformed ELF data, or a dependency that cannot be resolved."""


@dataclass(frozen=True)
class ElfInfo:
    """What the dynamic loader needs to know about one object."""

    interpreter: str | None
    needed: tuple[str, ...]
    runpath: tuple[str, ...]
    soname: str | None
    machine: int
    elf_class: int


@dataclass(frozen=True)
class _Layout:
    """struct formats for one ELF class and byte order."""

    elf_class: int
    ehdr: str  # e_type .. e_shstrndx, from offset 16
    phdr: str
    dyn: str
    shdr_info: str  # sh_info of section header 0, for PN_XNUM
    shdr_info_offset: int

    def phdr_fields(self, raw: tuple[int, ...]) -> tuple[int, int, int, int]:
        """(p_type, p_offset, p_vaddr, p_filesz) whatever the class's field order."""
        if self.elf_class == ELFCLASS64:  # p_flags moved up to keep 64-bit fields aligned
            return raw[0], raw[2], raw[3], raw[5]
        return raw[0], raw[1], raw[2], raw[4]


def _layout(elf_class: int, order: str) -> _Layout:
    if elf_class == ELFCLASS64:
        return _Layout(elf_class, order + "HHIQQQIHHHHHH", order + "IIQQQQQQ", order + "qQ",
                       order + "I", 44)  # fmt: skip
    return _Layout(elf_class, order + "HHIIIIIHHHHHH", order + "IIIIIIII", order + "iI",
                   order + "I", 28)  # fmt: skip


def _unpack(fmt: str, data: bytes, offset: int, what: str) -> tuple[int, ...]:
    size = struct.calcsize(fmt)
    if offset < 0 or offset + size > len(data):
        raise ElfError(f"{what} at offset {offset} lies outside the file ({len(data)} bytes)")
    return struct.unpack_from(fmt, data, offset)


def _ident(data: bytes) -> tuple[int, int, str]:
    """(class, data encoding, struct byte-order prefix) from e_ident, validated."""
    if len(data) < 16 or data[:4] != b"\x7fELF":
        raise ElfError("not an ELF file (bad magic)")
    elf_class, encoding = data[4], data[5]
    if elf_class not in (ELFCLASS32, ELFCLASS64):
        raise ElfError(f"unknown ELF class {elf_class}")
    if encoding not in (_ELFDATA2LSB, _ELFDATA2MSB):
        raise ElfError(f"unknown ELF data encoding {encoding}")
    return elf_class, encoding, "<" if encoding == _ELFDATA2LSB else ">"


def _cstring(data: bytes, start: int, stop: int, what: str) -> str:
    stop = min(stop, len(data))
    if not 0 <= start < stop:
        raise ElfError(f"{what} at offset {start} lies outside its table")
    end = data.find(b"\0", start, stop)
    if end < 0:
        raise ElfError(f"{what} at offset {start} is not NUL-terminated")
    return data[start:end].decode("utf-8", "surrogateescape")


def _expand_origin(entry: str, origin_dir: str) -> str:
    return entry.replace("${ORIGIN}", origin_dir).replace("$ORIGIN", origin_dir)


def parse_elf(data: bytes, origin_dir: str) -> ElfInfo:
    """Read the loader-relevant facts of an ELF image held in memory.

    Pure and bounded: every offset is checked against ``data`` before use, so arbitrary
    bytes give an ElfInfo or an ElfError.  ``origin_dir`` is what $ORIGIN in RUNPATH
    stands for: the directory of the file.
    """
    elf_class, _encoding, order = _ident(data)
    layout = _layout(elf_class, order)
    (_type, machine, _version, _entry, phoff, shoff, _flags, _ehsize, phentsize, phnum,
     shentsize, _shnum, _shstrndx) = _unpack(layout.ehdr, data, 16, "ELF header")  # fmt: skip
    if phnum == _PN_XNUM:
        # More than 0xfffe program headers: the real count lives in section header 0.
        if shentsize < layout.shdr_info_offset + 4:
            raise ElfError("PN_XNUM with a section header too small to hold the count")
        (phnum,) = _unpack(layout.shdr_info, data, shoff + layout.shdr_info_offset, "sh_info")
    phdr_size = struct.calcsize(layout.phdr)
    if phnum and phentsize < phdr_size:
        raise ElfError(f"program header entry size {phentsize} < {phdr_size}")
    if phoff + phnum * phentsize > len(data):
        raise ElfError("program header table runs past the end of the file")

    loads: list[tuple[int, int, int]] = []  # (vaddr, offset, filesz)
    dynamic: tuple[int, int] | None = None
    interp: tuple[int, int] | None = None
    for index in range(phnum):
        raw = _unpack(layout.phdr, data, phoff + index * phentsize, "program header")
        p_type, p_offset, p_vaddr, p_filesz = layout.phdr_fields(raw)
        if p_type == _PT_LOAD:
            loads.append((p_vaddr, p_offset, p_filesz))
        elif p_type == _PT_DYNAMIC and dynamic is None:
            dynamic = (p_offset, p_filesz)
        elif p_type == _PT_INTERP and interp is None:
            interp = (p_offset, p_filesz)

    interpreter = None
    if interp is not None:
        start, size = interp
        if start + size > len(data):
            raise ElfError("PT_INTERP runs past the end of the file")
        interpreter = _cstring(data, start, start + size, "PT_INTERP")
        if not interpreter:
            raise ElfError("empty PT_INTERP")

    needed_at: list[int] = []
    soname_at = rpath_at = runpath_at = None
    strtab_addr = None
    strsz = None
    if dynamic is not None:
        start, size = dynamic
        if start + size > len(data):
            raise ElfError("PT_DYNAMIC runs past the end of the file")
        entry_size = struct.calcsize(layout.dyn)
        for offset in range(start, start + size - entry_size + 1, entry_size):
            tag, value = struct.unpack_from(layout.dyn, data, offset)
            if tag == _DT_NULL:
                break
            if tag == _DT_NEEDED:
                needed_at.append(value)
            elif tag == _DT_STRTAB:
                strtab_addr = value
            elif tag == _DT_STRSZ:
                strsz = value
            elif tag == _DT_SONAME:
                soname_at = value
            elif tag == _DT_RPATH:
                rpath_at = value
            elif tag == _DT_RUNPATH:
                runpath_at = value

    named = (soname_at, rpath_at, runpath_at)
    uses_strings = bool(needed_at) or any(at is not None for at in named)
    strtab = 0
    if uses_strings:
        if strtab_addr is None:
            raise ElfError("dynamic section names strings but has no DT_STRTAB")
        for vaddr, offset, filesz in loads:
            if vaddr <= strtab_addr < vaddr + filesz:
                strtab = strtab_addr - vaddr + offset
                break
        else:
            raise ElfError(f"DT_STRTAB {strtab_addr:#x} is not inside any PT_LOAD segment")
    strtab_end = len(data) if strsz is None else strtab + strsz

    def string(index: int, what: str) -> str:
        return _cstring(data, strtab + index, strtab_end, what)

    needed = tuple(string(i, "DT_NEEDED") for i in needed_at)
    path_at = runpath_at if runpath_at is not None else rpath_at
    runpath: tuple[str, ...] = ()
    if path_at is not None:
        runpath = tuple(
            _expand_origin(part, origin_dir)
            for part in string(path_at, "DT_RUNPATH").split(":")
            if part  # an empty entry would mean the current directory: never wanted here
        )
    soname = string(soname_at, "DT_SONAME") if soname_at is not None else None
    return ElfInfo(interpreter, needed, runpath, soname, machine, elf_class)


def _host(root: str, path: str) -> str:
    return os.path.normpath(os.path.join(root, path.lstrip("/")))


def _read_ld_conf(root: str, conf: str, depth: int, seen: set[str], out: list[str]) -> None:
    """Collect directories from one ld.so.conf-style file, following ``include``."""
    host_conf = _host(root, conf)
    real = os.path.realpath(host_conf)
    if depth > _MAX_CONF_DEPTH or real in seen:
        return
    seen.add(real)
    try:
        with open(host_conf, encoding="utf-8", errors="replace") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return
    for line in lines:
        line = line.split("#", 1)[0].strip()  # noqa: PLW2901
        words = line.split()
        if not words or words[0] == "hwcap":
            continue
        if words[0] == "include" and len(words) > 1:
            for pattern in words[1:]:
                if not pattern.startswith("/"):  # relative to the including file, as ldconfig
                    pattern = os.path.join(os.path.dirname(conf), pattern)  # noqa: PLW2901
                for match in sorted(glob.glob(_host(root, pattern))):
                    inner = "/" + os.path.relpath(match, _host(root, "/"))
                    _read_ld_conf(root, inner, depth + 1, seen, out)
            continue
        directory = line.split("=", 1)[0].strip().rstrip("/")  # "dir=libc6" is legacy syntax
        if directory.startswith("/"):
            out.append(directory)


def library_dirs(root: str = "/") -> list[str]:
    """The directories ld.so would search after RUNPATH, as host paths under ``root``.

    ld.so.conf order first (what ldconfig puts in the cache), then the multiarch and
    built-in directories.  Only directories that exist are returned; with a ``root`` other
    than "/" they carry the root prefix, so they can be passed to ``closure`` directly.
    """
    configured: list[str] = []
    _read_ld_conf(root, "/etc/ld.so.conf", 0, set(), configured)
    triplet = sysconfig.get_config_var("MULTIARCH")
    multiarch = (f"/lib/{triplet}", f"/usr/lib/{triplet}") if isinstance(triplet, str) else ()
    result: list[str] = []
    for directory in (*configured, *multiarch, *_STANDARD_DIRS):
        host = _host(root, directory)
        if host not in result and os.path.isdir(host):
            result.append(host)
    return result


def _load(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise ElfError(f"cannot read {path}: {exc.strerror}") from None


def _header_ident(path: str) -> tuple[int, int, int]:
    """(class, data encoding, e_machine): what ld.so compares before accepting a candidate."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(20)
    except OSError as exc:
        raise ElfError(f"cannot read {path}: {exc.strerror}") from None
    try:
        elf_class, encoding, order = _ident(head)
        (machine,) = _unpack(order + "H", head, 18, "e_machine")
    except ElfError as exc:
        raise ElfError(f"{path}: {exc}") from None
    return elf_class, encoding, machine


class _Resolver:
    """Parses each host file once and remembers it, across all programs of one closure."""

    def __init__(self, search: list[str]) -> None:
        self.search = search
        self.infos: dict[str, ElfInfo] = {}
        self.idents: dict[str, tuple[int, int, int]] = {}

    def info(self, real: str) -> ElfInfo:
        if real not in self.infos:
            try:
                self.infos[real] = parse_elf(_load(real), os.path.dirname(real))
            except ElfError as exc:
                raise ElfError(f"{real}: {exc}") from None
        return self.infos[real]

    def ident(self, real: str) -> tuple[int, int, int]:
        if real not in self.idents:
            self.idents[real] = _header_ident(real)
        return self.idents[real]

    def find(self, soname: str, needer_key: str, needer_real: str) -> str:
        info = self.info(needer_real)
        if "/" in soname:  # ld.so takes such a name as a path, not a soname
            candidates = [os.path.abspath(soname)]
        else:
            candidates = [os.path.join(d, soname) for d in (*info.runpath, *self.search)]
        want = self.ident(needer_real)
        for candidate in candidates:
            if os.path.isfile(candidate) and self.ident(os.path.realpath(candidate)) == want:
                return os.path.normpath(candidate)
        raise ElfError(
            f"{soname} (needed by {needer_key}) not found in "
            f"{':'.join((*info.runpath, *self.search)) or 'any directory'}"
        )

    def program(self, path: str, result: dict[str, str]) -> None:
        """Add one program's closure, in the order ld.so would load it (breadth first)."""
        key = os.path.normpath(os.path.abspath(path))
        real = os.path.realpath(path)
        if not os.path.isfile(real):
            raise ElfError(f"{path}: no such file")
        info = self.info(real)
        result.setdefault(key, real)
        provides: dict[str, str] = {}  # names already answered by a loaded object → key
        if info.soname:
            provides[info.soname] = key
        if info.interpreter is not None:
            interp_key = os.path.normpath(os.path.abspath(info.interpreter))
            interp_real = os.path.realpath(info.interpreter)
            if not os.path.isfile(interp_real):
                raise ElfError(f"interpreter {info.interpreter} of {key} does not exist")
            interp_info = self.info(interp_real)
            result.setdefault(interp_key, interp_real)
            provides[interp_key] = interp_key
            if interp_info.soname:
                provides[interp_info.soname] = interp_key
        queue: deque[tuple[str, str]] = deque([(key, real)])
        done: set[str] = {key}
        while queue:
            needer_key, needer_real = queue.popleft()
            for soname in self.info(needer_real).needed:
                if soname in provides:
                    continue
                found_key = self.find(soname, needer_key, needer_real)
                found_real = os.path.realpath(found_key)
                provides[soname] = found_key
                found_soname = self.info(found_real).soname
                if found_soname:
                    provides.setdefault(found_soname, found_key)
                result.setdefault(found_key, found_real)
                if found_key not in done:
                    done.add(found_key)
                    queue.append((found_key, found_real))


def closure(paths: Iterable[str], search: list[str] | None = None) -> dict[str, str]:
    """Every ELF object needed to run ``paths``: loader path → real host file.

    The keys are where the program's loader will look (the PT_INTERP path, or the search
    directory joined with the soname), which is where the image must provide the file;
    values are the ``os.path.realpath`` of what is found there on the host.  Each input is
    resolved as its own process would resolve it, and the results are merged in a
    deterministic order.  A missing dependency raises ElfError naming it and its user.
    """
    resolver = _Resolver(library_dirs() if search is None else list(search))
    result: dict[str, str] = {}
    for path in paths:
        resolver.program(path, result)
    return result
