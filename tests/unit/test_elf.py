"""ELF dynamic-section parsing and the library closure, checked on hand-built ELF images
and on the host's own binaries with ldd as the oracle."""

from __future__ import annotations

import contextlib
import glob
import os
import platform
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from initium.packaging.elf import ElfError, ElfInfo, closure, library_dirs, parse_elf

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
EM_X86_64 = 62
EM_386 = 3
EM_PPC = 20
BASE = 0x400000


def make_elf(
    *,
    elf_class: int = 2,
    big_endian: bool = False,
    machine: int = EM_X86_64,
    interp: str | None = None,
    needed: tuple[str, ...] = (),
    runpath: str | None = None,
    rpath: str | None = None,
    soname: str | None = None,
) -> bytes:
    """A minimal but well-formed ELF: one PT_LOAD over the whole file, PT_INTERP, PT_DYNAMIC."""
    order = ">" if big_endian else "<"
    is64 = elf_class == 2
    strtab = bytearray(b"\0")

    def add(text: str) -> int:
        offset = len(strtab)
        strtab.extend(text.encode() + b"\0")
        return offset

    dyn: list[tuple[int, int]] = [(1, add(name)) for name in needed]
    if soname is not None:
        dyn.append((14, add(soname)))
    if rpath is not None:
        dyn.append((15, add(rpath)))
    if runpath is not None:
        dyn.append((29, add(runpath)))
    ehsize, phentsize, dynent = (64, 56, 16) if is64 else (52, 32, 8)
    phnum = 2 + (interp is not None)
    interp_off = ehsize + phnum * phentsize
    interp_raw = b"" if interp is None else interp.encode() + b"\0"
    str_off = interp_off + len(interp_raw)
    dyn_off = (str_off + len(strtab) + 7) & ~7
    dyn += [(5, BASE + str_off), (10, len(strtab)), (0, 0)]
    size = dyn_off + len(dyn) * dynent

    def phdr(p_type: int, offset: int, filesz: int) -> bytes:
        if is64:
            return struct.pack(order + "IIQQQQQQ", p_type, 4, offset, BASE + offset,
                               BASE + offset, filesz, filesz, 8)  # fmt: skip
        return struct.pack(order + "IIIIIIII", p_type, offset, BASE + offset, BASE + offset,
                           filesz, filesz, 4, 4)  # fmt: skip

    ident = b"\x7fELF" + bytes([elf_class, 2 if big_endian else 1, 1]) + bytes(9)
    fmt = order + ("HHIQQQIHHHHHH" if is64 else "HHIIIIIHHHHHH")
    out = bytearray(ident + struct.pack(fmt, 3, machine, 1, 0, ehsize, 0, 0, ehsize, phentsize,
                                        phnum, 0, 0, 0))  # fmt: skip
    out += phdr(1, 0, size)
    if interp is not None:
        out += phdr(3, interp_off, len(interp_raw))
    out += phdr(2, dyn_off, len(dyn) * dynent)
    out += interp_raw + strtab
    out += bytes(dyn_off - len(out))
    for tag, value in dyn:
        out += struct.pack(order + ("qQ" if is64 else "iI"), tag, value)
    assert len(out) == size
    return bytes(out)


# --- parse_elf on synthetic images ---------------------------------------------------------


@pytest.mark.parametrize(("elf_class", "big_endian", "machine"),
                         [(2, False, EM_X86_64), (1, False, EM_386), (1, True, EM_PPC),
                          (2, True, 21)])  # fmt: skip
def test_parse_all_classes_and_byte_orders(elf_class: int, big_endian: bool, machine: int) -> None:
    data = make_elf(elf_class=elf_class, big_endian=big_endian, machine=machine,
                    interp="/lib/ld.so.1", needed=("libfoo.so.1", "libc.so.6"),
                    runpath="$ORIGIN/../lib:/opt/x::${ORIGIN}", soname="libme.so.3")  # fmt: skip
    assert parse_elf(data, "/usr/bin") == ElfInfo(
        interpreter="/lib/ld.so.1",
        needed=("libfoo.so.1", "libc.so.6"),
        runpath=("/usr/bin/../lib", "/opt/x", "/usr/bin"),
        soname="libme.so.3",
        machine=machine,
        elf_class=elf_class,
    )


def test_runpath_wins_over_rpath_and_rpath_is_the_fallback() -> None:
    both = make_elf(needed=("a.so",), runpath="/run", rpath="/rpath")
    assert parse_elf(both, "/").runpath == ("/run",)
    only_rpath = make_elf(needed=("a.so",), rpath="/rpath:$ORIGIN/x")
    assert parse_elf(only_rpath, "/o").runpath == ("/rpath", "/o/x")
    static = make_elf()
    assert parse_elf(static, "/") == ElfInfo(None, (), (), None, EM_X86_64, 2)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not an ELF"),
        (b"#!/bin/sh\n", "not an ELF"),
        (b"\x7fELF\x03\x01" + bytes(60), "class 3"),
        (b"\x7fELF\x02\x03" + bytes(60), "data encoding 3"),
        (b"\x7fELF\x02\x01" + bytes(20), "outside the file"),
    ],
)
def test_malformed_headers(data: bytes, message: str) -> None:
    with pytest.raises(ElfError, match=message):
        parse_elf(data, "/")


def test_truncations_are_errors_not_crashes() -> None:
    data = make_elf(interp="/lib/ld.so", needed=("libx.so",), soname="s")
    for cut in range(len(data)):
        with pytest.raises(ElfError):
            parse_elf(data[:cut], "/")


def test_strtab_outside_every_load_segment() -> None:
    data = bytearray(make_elf(needed=("libx.so",)))
    index = data.rindex(struct.pack("<qQ", 5, BASE + data.index(b"\0libx.so")))
    data[index + 8 : index + 16] = struct.pack("<Q", 0x10)
    with pytest.raises(ElfError, match="DT_STRTAB 0x10 is not inside any PT_LOAD"):
        parse_elf(bytes(data), "/")


@FUZZ
@given(
    st.binary(max_size=600),
    st.sampled_from(
        [b"", b"\x7fELF\x01\x01", b"\x7fELF\x02\x01", b"\x7fELF\x01\x02", b"\x7fELF\x02\x02"]
    ),
)
def test_parse_random_bytes(data: bytes, prefix: bytes) -> None:
    with contextlib.suppress(ElfError):
        info = parse_elf(prefix + data, "/x")
        assert isinstance(info, ElfInfo)


_SAMPLES = [
    make_elf(elf_class=c, big_endian=b, interp="/lib/ld.so", needed=("a.so", "b.so"),
             runpath="$ORIGIN", soname="me.so")
    for c in (1, 2)
    for b in (False, True)
]  # fmt: skip


@FUZZ
@given(st.sampled_from(_SAMPLES),
       st.lists(st.tuples(st.integers(0, 10**4), st.integers(0, 255)), max_size=8),
       st.integers(0, 400))  # fmt: skip
def test_parse_mutated_images(sample: bytes, edits: list[tuple[int, int]], cut: int) -> None:
    buf = bytearray(sample)
    for index, value in edits:
        buf[index % len(buf)] = value
    data = bytes(buf[: len(buf) - cut % (len(buf) + 1)])
    with contextlib.suppress(ElfError):
        info = parse_elf(data, "/x")
        assert isinstance(info, ElfInfo)
        assert all(isinstance(n, str) for n in info.needed)


# --- closure over a synthetic tree -------------------------------------------------------


def _tree(tmp_path: Path) -> dict[str, Path]:
    """bin/prog -> (RUNPATH $ORIGIN/../lib) libfoo -> (search) libbar -> libfoo (a cycle).

    ``wrong`` comes first in the search path and holds a 32-bit libbar that must be skipped.
    """
    paths = {name: tmp_path / name for name in ("bin", "lib", "wrong", "sys", "ld")}
    for directory in paths.values():
        directory.mkdir()
    loader = paths["ld"] / "ld-test.so.2"
    loader.write_bytes(make_elf(soname="ld-test.so.2"))
    prog = make_elf(interp=str(loader), needed=("libfoo.so.1", "ld-test.so.2"),
                    runpath="$ORIGIN/../lib")  # fmt: skip
    (paths["bin"] / "prog").write_bytes(prog)
    (paths["lib"] / "libfoo.so.1.2").write_bytes(
        make_elf(needed=("libbar.so.2",), soname="libfoo.so.1")
    )
    (paths["lib"] / "libfoo.so.1").symlink_to("libfoo.so.1.2")
    (paths["wrong"] / "libbar.so.2").write_bytes(make_elf(elf_class=1, machine=EM_386))
    (paths["sys"] / "libbar.so.2").write_bytes(
        make_elf(needed=("libfoo.so.1",), soname="libbar.so.2")
    )
    return paths


def test_closure_of_a_synthetic_tree(tmp_path: Path) -> None:
    paths = _tree(tmp_path)
    search = [str(paths["wrong"]), str(paths["sys"])]
    result = closure([str(paths["bin"] / "prog")], search)
    ld = str(paths["ld"] / "ld-test.so.2")
    assert result == {
        str(paths["bin"] / "prog"): str(paths["bin"] / "prog"),
        ld: ld,
        # the RUNPATH entry is "$ORIGIN/../lib": the key is normalised for the image
        str(paths["lib"] / "libfoo.so.1"): str(paths["lib"] / "libfoo.so.1.2"),
        str(paths["sys"] / "libbar.so.2"): str(paths["sys"] / "libbar.so.2"),
    }
    assert list(result)[:2] == [str(paths["bin"] / "prog"), ld]


def test_closure_ignores_runpath_of_other_objects(tmp_path: Path) -> None:
    # libbar needs libfoo too, but libbar has no RUNPATH: only prog's RUNPATH found it.
    # A fresh program that needs libbar directly must fail to find libfoo.
    paths = _tree(tmp_path)
    loader = str(paths["ld"] / "ld-test.so.2")
    other = paths["bin"] / "other"
    other.write_bytes(make_elf(interp=loader, needed=("libbar.so.2",)))
    message = r"libfoo\.so\.1 \(needed by .*/sys/libbar\.so\.2\) not found"
    with pytest.raises(ElfError, match=message):
        closure([str(other)], [str(paths["sys"])])


def test_missing_library_and_missing_interpreter_are_named(tmp_path: Path) -> None:
    prog = tmp_path / "prog"
    prog.write_bytes(make_elf(needed=("libnope.so.9",)))
    with pytest.raises(ElfError, match=re.escape(f"libnope.so.9 (needed by {prog}) not found")):
        closure([str(prog)], [str(tmp_path)])
    prog.write_bytes(make_elf(interp=str(tmp_path / "no-ld.so")))
    with pytest.raises(ElfError, match=r"interpreter .*no-ld\.so"):
        closure([str(prog)], [])
    script = tmp_path / "script"
    script.write_bytes(b"#!/bin/sh\n")
    with pytest.raises(ElfError, match="script: not an ELF file"):
        closure([str(script)], [])
    with pytest.raises(ElfError, match="no such file"):
        closure([str(tmp_path / "absent")], [])


def test_non_elf_candidate_is_fatal_like_ld_so(tmp_path: Path) -> None:
    (tmp_path / "libx.so").write_bytes(b"/* GNU ld script */")
    prog = tmp_path / "prog"
    prog.write_bytes(make_elf(needed=("libx.so",)))
    with pytest.raises(ElfError, match=r"libx\.so: not an ELF file"):
        closure([str(prog)], [str(tmp_path)])


# --- library_dirs -----------------------------------------------------------------------------


def test_library_dirs_follows_includes_under_a_root(tmp_path: Path) -> None:
    for directory in ("etc/ld.so.conf.d", "opt/a", "opt/b", "opt/c", "usr/lib", "lib64"):
        (tmp_path / directory).mkdir(parents=True)
    (tmp_path / "etc/ld.so.conf").write_text(
        "# comment\n/opt/c/  # trailing comment\ninclude ld.so.conf.d/*.conf\n/opt/missing\n"
        "hwcap 0 nosegneg\n"
    )
    (tmp_path / "etc/ld.so.conf.d/20-b.conf").write_text("/opt/b\ninclude /etc/ld.so.conf\n")
    (tmp_path / "etc/ld.so.conf.d/10-a.conf").write_text("/opt/a=libc6\n/opt/c\n")
    result = library_dirs(str(tmp_path))
    assert result[:3] == [str(tmp_path / "opt/c"), str(tmp_path / "opt/a"),
                          str(tmp_path / "opt/b")]  # fmt: skip
    assert result[3:] == [str(tmp_path / "lib64"), str(tmp_path / "usr/lib")]


def test_library_dirs_of_this_host() -> None:
    result = library_dirs()
    assert result and all(os.path.isdir(d) for d in result)
    assert len(result) == len(set(result))
    triplet = f"{platform.machine()}-linux-gnu"
    if os.path.isdir(f"/usr/lib/{triplet}"):
        assert f"/usr/lib/{triplet}" in result


# --- real binaries, with ldd as the oracle ---------------------------------------------------

_LDD_LINE = re.compile(r"^\s*(?:(\S+) => )?(\S+) \(0x[0-9a-f]+\)$")


def _ldd(path: str) -> dict[str, str]:
    """soname or loader path -> path, as printed by ldd (vdso dropped)."""
    out = subprocess.run(["ldd", path], capture_output=True, text=True, check=True).stdout
    result = {}
    for line in out.splitlines():
        match = _LDD_LINE.match(line)
        assert match, f"unexpected ldd line {line!r}"
        name, where = match.groups()
        if where.startswith("/"):
            result[name or where] = where
    return result


_PYTHON = "/usr/bin/python3.11"
_CTYPES = next(iter(sorted(glob.glob("/usr/lib/python3.11/lib-dynload/_ctypes.cpython-*.so"))),
               "/nonexistent")  # fmt: skip
needs_host = pytest.mark.skipif(
    shutil.which("ldd") is None or not os.path.exists(_PYTHON) or platform.machine() != "x86_64",
    reason="needs the Debian x86_64 python3.11 and ldd",
)


@needs_host
def test_parse_real_python() -> None:
    with open(_PYTHON, "rb") as handle:
        info = parse_elf(handle.read(), "/usr/bin")
    assert info.interpreter == "/lib64/ld-linux-x86-64.so.2"
    assert info.needed == ("libm.so.6", "libz.so.1", "libexpat.so.1", "libc.so.6")
    assert (info.elf_class, info.machine, info.soname, info.runpath) == (2, EM_X86_64, None, ())
    with open(os.path.realpath("/lib/x86_64-linux-gnu/libc.so.6"), "rb") as handle:
        libc = parse_elf(handle.read(), "/usr/lib/x86_64-linux-gnu")
    assert libc.soname == "libc.so.6"
    assert libc.needed == ("ld-linux-x86-64.so.2",)


@needs_host
@pytest.mark.parametrize("program", [_PYTHON, "/usr/bin/env", "/usr/bin/python3"])
def test_closure_matches_ldd_for_programs(program: str) -> None:
    result = closure([program])
    expected = {program: os.path.realpath(program)}
    expected.update({where: os.path.realpath(where) for where in _ldd(program).values()})
    assert result == expected


@needs_host
def test_python_closure_concretely() -> None:
    result = closure([_PYTHON])
    assert set(result) == {
        _PYTHON, "/lib64/ld-linux-x86-64.so.2", "/lib/x86_64-linux-gnu/libm.so.6",
        "/lib/x86_64-linux-gnu/libz.so.1", "/lib/x86_64-linux-gnu/libexpat.so.1",
        "/lib/x86_64-linux-gnu/libc.so.6",
    }  # fmt: skip
    assert all(os.path.isfile(real) and not os.path.islink(real) for real in result.values())


@needs_host
@pytest.mark.skipif(not os.path.exists(_CTYPES), reason="no _ctypes extension")
def test_closure_of_an_extension_module_matches_ldd() -> None:
    result = closure([_CTYPES])
    assert result[_CTYPES] == _CTYPES
    assert result["/lib/x86_64-linux-gnu/libffi.so.8"] == os.path.realpath(
        "/lib/x86_64-linux-gnu/libffi.so.8"
    )
    ldd = _ldd(_CTYPES)
    # ldd runs the system loader for a library; our closure finds libc's DT_NEEDED loader
    # through the search path instead.  Same files, so compare what they resolve to.
    assert set(result.values()) == {_CTYPES} | {os.path.realpath(p) for p in ldd.values()}
    for soname, where in ldd.items():
        if not soname.startswith("/"):
            assert result[where] == os.path.realpath(where)


@needs_host
def test_closure_of_several_programs_is_the_union() -> None:
    together = closure([_PYTHON, "/usr/bin/env", _CTYPES])
    separate = {**closure([_PYTHON]), **closure(["/usr/bin/env"]), **closure([_CTYPES])}
    assert together == separate
