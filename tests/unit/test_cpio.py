"""The newc writer/reader and the image compression, checked against GNU cpio and the
zstd/gzip tools as independent implementations of the same formats."""

from __future__ import annotations

import bz2
import contextlib
import gzip
import lzma
import os
import random
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from initium.packaging.compress import (
    COMPRESSORS,
    CompressionError,
    Segment,
    compress,
    decompress,
    split_image,
)
from initium.packaging.cpio import CpioError, Entry, archive_end, read_archive, write_archive

REG = stat.S_IFREG
DIR = stat.S_IFDIR
LNK = stat.S_IFLNK

needs_cpio = pytest.mark.skipif(shutil.which("cpio") is None, reason="GNU cpio not installed")
needs_zstd = pytest.mark.skipif(shutil.which("zstd") is None, reason="zstd not installed")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="creating device nodes needs root")
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SAMPLE = [
    Entry("init", REG | 0o755, b"#!/bin/sh\nexec /usr/bin/python3\n"),
    Entry("usr/bin/python3", REG | 0o755, bytes(range(256)) * 3 + b"\x01"),
    Entry("usr/lib/empty", REG | 0o644),
    Entry("usr/lib/one", REG | 0o600, b"1"),
    Entry("usr/lib/two", REG | 0o640, b"22"),
    Entry("usr/lib/three", REG | 0o4755, b"333"),
    Entry("usr/lib/four", REG | 0o444, b"4444"),
    Entry("bin", LNK | 0o777, b"usr/bin"),
    Entry("etc", DIR | 0o700),
    Entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)),
    Entry("dev/sda", stat.S_IFBLK | 0o660, rdev=(8, 0)),
    Entry("run/initctl", stat.S_IFIFO | 0o600),
    Entry("usr/share/h\u00e9llo w\u00f6rld", REG | 0o644, b"unicode name"),
    Entry("a-b", REG | 0o644, b"sorts between a and a/"),
    Entry("a/b", REG | 0o644, b"inside a"),
]
SYNTHESISED = {"a", "dev", "run", "usr", "usr/bin", "usr/lib", "usr/share"}
EXPECTED_ORDER = [
    "a", "a-b", "a/b", "bin", "dev", "dev/console", "dev/sda", "etc", "init", "run",
    "run/initctl", "usr", "usr/bin", "usr/bin/python3", "usr/lib", "usr/lib/empty",
    "usr/lib/four", "usr/lib/one", "usr/lib/three", "usr/lib/two", "usr/share",
    "usr/share/h\u00e9llo w\u00f6rld",
]  # fmt: skip


def _expected_entries() -> list[Entry]:
    by_path = {e.path: e for e in SAMPLE}
    for path in SYNTHESISED:
        by_path[path] = Entry(path, DIR | 0o755)
    return [by_path[p] for p in EXPECTED_ORDER]


def _headers(archive: bytes) -> list[tuple[list[int], bytes, int]]:
    """Walk an archive by hand (not with read_archive): (fields, name, header offset)."""
    out = []
    pos = 0
    while True:
        assert archive[pos : pos + 6] == b"070701"
        fields = [int(archive[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        namesize, filesize = fields[11], fields[6]
        name = archive[pos + 110 : pos + 110 + namesize]
        assert name.endswith(b"\0")
        out.append((fields, name[:-1], pos))
        pos += 110 + namesize
        assert archive[pos : pos + (-pos & 3)] == b"\0" * (-pos & 3)
        pos += (-pos & 3) + filesize
        pos += -pos & 3
        if name == b"TRAILER!!!\0":
            assert pos == len(archive)
            return out


# --- writer -----------------------------------------------------------------------------


def test_round_trip_adds_parents_and_sorts() -> None:
    archive = write_archive(SAMPLE)
    assert list(read_archive(archive)) == _expected_entries()


def test_header_fields_parsed_by_hand() -> None:
    archive = write_archive(SAMPLE, mtime=1_700_000_000)
    headers = _headers(archive)
    names = [name.decode() for _, name, _ in headers]
    assert names == [*EXPECTED_ORDER, "TRAILER!!!"]
    expected = _expected_entries()
    for ino, ((fields, _name, offset), entry) in enumerate(zip(headers, expected, strict=False), 1):
        assert offset % 4 == 0
        (f_ino, mode, uid, gid, nlink, mtime, size, devmaj, devmin, rmaj, rmin, namesize,
         check) = fields  # fmt: skip
        assert f_ino == ino
        assert mode == entry.mode
        assert (uid, gid, devmaj, devmin, check) == (0, 0, 0, 0, 0)
        assert nlink == (2 if stat.S_ISDIR(mode) else 1)
        assert mtime == 1_700_000_000
        assert size == len(entry.data)
        assert (rmaj, rmin) == entry.rdev
        assert namesize == len(entry.path.encode()) + 1
    trailer_fields = headers[-1][0]
    assert trailer_fields[11] == 11 and trailer_fields[6] == 0 and trailer_fields[4] == 1
    # The console node, field by field in the raw text.
    console = next(off for _, name, off in headers if name == b"dev/console")
    assert archive[console : console + 110] == (
        b"070701" + b"00000006" + b"00002180" + b"00000000" * 2 + b"00000001"
        + b"6553F100" + b"00000000" * 3 + b"00000005" + b"00000001" + b"0000000C" + b"00000000"
    )  # fmt: skip


def test_directories_precede_contents_and_inodes_are_sequential() -> None:
    entries = list(read_archive(write_archive(SAMPLE)))
    seen: set[str] = set()
    for entry in entries:
        parent = entry.path.rpartition("/")[0]
        assert not parent or parent in seen, f"{entry.path} before its directory"
        seen.add(entry.path)
    inodes = [fields[0] for fields, _, _ in _headers(write_archive(SAMPLE))]
    assert inodes == [*range(1, len(EXPECTED_ORDER) + 1), 0]


def test_shuffled_input_gives_identical_bytes() -> None:
    first = write_archive(SAMPLE, mtime=42)
    for seed in range(5):
        shuffled = SAMPLE[:]
        random.Random(seed).shuffle(shuffled)
        assert write_archive(shuffled, mtime=42) == first
    assert write_archive(SAMPLE, mtime=43) != first


def test_empty_archive_is_only_a_trailer() -> None:
    archive = write_archive([])
    assert archive == (
        b"070701" + b"0" * 8 * 4 + b"00000001" + b"0" * 8 * 6 + b"0000000B" + b"0" * 8
        + b"TRAILER!!!\0" + b"\0" * 3
    )  # fmt: skip
    assert len(archive) == 124
    assert list(read_archive(archive)) == []


def test_identical_duplicates_collapse_and_conflicts_are_named() -> None:
    twice = write_archive([*SAMPLE, SAMPLE[0]])
    assert twice == write_archive(SAMPLE)
    explicit_parent = write_archive([*SAMPLE, Entry("usr", DIR | 0o755)])
    assert explicit_parent == twice
    with pytest.raises(ValueError, match="usr/lib/one"):
        write_archive([*SAMPLE, Entry("usr/lib/one", REG | 0o600, b"other")])
    with pytest.raises(ValueError, match="'init' is not a directory"):
        write_archive([*SAMPLE, Entry("init/x", REG | 0o644)])
    # An explicit directory keeps its mode; only missing parents get 0755.
    modes = {
        e.path: e.mode
        for e in read_archive(write_archive([Entry("etc/x", REG), Entry("etc", DIR | 0o700)]))
    }
    assert modes == {"etc": DIR | 0o700, "etc/x": REG}


@pytest.mark.parametrize(
    "path",
    ["", "/abs", "..", "a/../b", "a/..", "a//b", "a/", ".", "./a", "a/./b", "a\0b", "x" * 4096,
     "a/" + "y" * 4094],
)  # fmt: skip
def test_bad_paths_are_rejected(path: str) -> None:
    with pytest.raises(ValueError):
        write_archive([Entry(path, REG | 0o644)])


def test_longest_path_is_accepted() -> None:
    path = "d/" + "x" * 4093
    assert len(path) == 4095
    assert [e.path for e in read_archive(write_archive([Entry(path, REG | 0o644)]))] == ["d", path]


@pytest.mark.parametrize(
    "entry",
    [
        Entry("d", DIR | 0o755, b"data"),
        Entry("l", LNK | 0o777, b""),
        Entry("l", LNK | 0o777, b"a\0b"),
        Entry("f", REG | 0o644, rdev=(1, 3)),
        Entry("f", 0o644),
        Entry("f", 0o170644),
        Entry("f", REG | 0o644 | 0o1000000),
        Entry("c", stat.S_IFCHR | 0o600, rdev=(-1, 0)),
        Entry("c", stat.S_IFCHR | 0o600, rdev=(0, 2**32)),
    ],
)
def test_bad_entries_are_rejected(entry: Entry) -> None:
    with pytest.raises(ValueError):
        write_archive([entry])


@pytest.mark.parametrize("mtime", [-1, 2**32])
def test_mtime_must_fit(mtime: int) -> None:
    with pytest.raises(ValueError, match="mtime"):
        write_archive(SAMPLE, mtime=mtime)


_names = st.text(st.characters(exclude_characters="/\0", exclude_categories=["Cs"]),
                 min_size=1, max_size=8).filter(lambda s: s not in (".", ".."))  # fmt: skip
_trees = st.dictionaries(
    st.lists(_names, min_size=1, max_size=4).map("/".join),
    st.binary(max_size=64),
    max_size=12,
)


@FUZZ
@given(_trees, st.integers(0, 2**32 - 1))
def test_any_file_tree_round_trips(tree: dict[str, bytes], mtime: int) -> None:
    entries = [Entry(p, REG | 0o644, d) for p, d in tree.items()]
    if any(q.startswith(p + "/") for p in tree for q in tree):
        with pytest.raises(ValueError, match="is not a directory"):
            write_archive(entries)
        return
    archive = write_archive(entries, mtime)
    files = {e.path: e.data for e in read_archive(archive) if stat.S_ISREG(e.mode)}
    assert files == tree


# --- GNU cpio as the oracle ---------------------------------------------------------------


@needs_cpio
def test_gnu_cpio_lists_exactly_our_names_in_order() -> None:
    proc = subprocess.run(["cpio", "-t", "--quiet"], input=write_archive(SAMPLE),
                          capture_output=True, check=True)  # fmt: skip
    assert proc.stdout.decode().splitlines() == EXPECTED_ORDER


@needs_cpio
@needs_root
def test_gnu_cpio_extracts_contents_modes_links_and_nodes(tmp_path: Path) -> None:
    mtime = 1_600_000_000
    subprocess.run(["cpio", "-idm", "--quiet", "--no-absolute-filenames"], cwd=tmp_path,
                   input=write_archive(SAMPLE, mtime), check=True)  # fmt: skip
    for entry in _expected_entries():
        path = tmp_path / entry.path
        st_ = path.lstat()
        assert stat.S_IFMT(st_.st_mode) == stat.S_IFMT(entry.mode), entry.path
        assert stat.S_IMODE(st_.st_mode) == stat.S_IMODE(entry.mode), entry.path
        if stat.S_ISREG(entry.mode):
            assert path.read_bytes() == entry.data
            assert st_.st_mtime == mtime
        elif stat.S_ISLNK(entry.mode):
            assert os.readlink(path) == entry.data.decode()
        elif stat.S_ISCHR(entry.mode) or stat.S_ISBLK(entry.mode):
            assert (os.major(st_.st_rdev), os.minor(st_.st_rdev)) == entry.rdev
    assert (tmp_path / "bin").is_symlink() and (tmp_path / "bin" / "python3").is_file()


@needs_cpio
def test_archives_made_by_gnu_cpio_are_read(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "f").write_bytes(b"gnu data")
    (tmp_path / "link").symlink_to("sub/f")
    names = b".\nsub\nsub/f\nlink\n"
    newc = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=tmp_path, input=names,
                          capture_output=True, check=True).stdout  # fmt: skip
    entries = {e.path: e for e in read_archive(newc)}
    assert list(entries) == [".", "sub", "sub/f", "link"]
    assert entries["sub/f"].data == b"gnu data"
    assert entries["link"].data == b"sub/f" and stat.S_ISLNK(entries["link"].mode)
    assert archive_end(newc) < len(newc)  # GNU pads to 512-byte blocks; we stop at the trailer
    assert newc[archive_end(newc) :].strip(b"\0") == b""

    crc = subprocess.run(["cpio", "-o", "-H", "crc", "--quiet"], cwd=tmp_path, input=names,
                         capture_output=True, check=True).stdout  # fmt: skip
    assert crc.startswith(b"070702")
    assert [e.data for e in read_archive(crc)] == [e.data for e in entries.values()]
    corrupt = crc.replace(b"gnu data", b"gnu dat!")
    with pytest.raises(CpioError, match="checksum"):
        list(read_archive(corrupt))


# --- reader strictness ----------------------------------------------------------------------


def test_concatenated_archives_with_nul_padding() -> None:
    first = write_archive([Entry("a", REG | 0o644, b"1")])
    second = write_archive([Entry("b", REG | 0o644, b"2")])
    paths = [e.path for e in read_archive(first + b"\0" * 512 + second + b"\0" * 3)]
    assert paths == ["a", "b"]
    assert archive_end(first + b"\0" * 4 + second) == len(first)


def test_reader_errors_carry_offsets() -> None:
    archive = write_archive([Entry("a", REG | 0o644, b"12345")])
    with pytest.raises(CpioError, match="aligned") as info:
        list(read_archive(b"\0" * 2 + archive))
    assert info.value.offset == 2
    with pytest.raises(CpioError, match="bad cpio magic") as info:
        list(read_archive(archive + b"junk"))
    assert info.value.offset == len(archive)
    with pytest.raises(CpioError, match="truncated cpio header") as info:
        list(read_archive(archive[:50]))
    assert info.value.offset == 0
    with pytest.raises(CpioError, match="name of 2 bytes") as info:
        list(read_archive(archive[:111]))
    assert info.value.offset == 110
    with pytest.raises(CpioError, match="body of 5 bytes") as info:
        list(read_archive(archive[:116]))
    assert info.value.offset == 112
    with pytest.raises(CpioError, match="filesize is not 8 hex digits") as info:
        list(read_archive(archive[:54] + b"0000001x" + archive[62:]))
    assert info.value.offset == 54
    with pytest.raises(CpioError, match="old portable format"):
        list(read_archive(b"070707" + archive[6:]))
    with pytest.raises(CpioError, match="not a single NUL-terminated"):
        list(read_archive(archive.replace(b"a\0", b"ab", 1)))


def test_reader_rejects_what_the_kernel_would_skip() -> None:
    archive = bytearray(write_archive([Entry("d", DIR | 0o755)]))
    archive[54:62] = b"00000004"  # a directory with a body
    archive[112:112] = b"body"
    with pytest.raises(CpioError, match="non-regular"):
        list(read_archive(bytes(archive)))


@FUZZ
@given(st.binary(max_size=1024))
def test_reader_on_random_bytes(data: bytes) -> None:
    try:
        entries = list(read_archive(data))
    except CpioError as exc:
        assert 0 <= exc.offset <= len(data)
    else:
        assert all(isinstance(e, Entry) for e in entries)


_VALID = write_archive(SAMPLE[:6], mtime=7)


def _mutate(data: bytes, edits: list[tuple[int, int]], cut: int) -> bytes:
    buf = bytearray(data)
    for index, value in edits:
        buf[index % len(buf)] = value
    return bytes(buf[: len(buf) - cut % (len(buf) + 1)])


_edits = st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=6)


@FUZZ
@given(_edits, st.integers(0, 2000), st.sampled_from(b"0123456789abcdefABCDEF\0/g"))
def test_reader_on_mutated_archives(edits: list[tuple[int, int]], cut: int, hexish: int) -> None:
    # Half of the edits write plausible header characters, to get past the magic check.
    edits = [(i, hexish if n % 2 else v) for n, (i, v) in enumerate(edits)]
    data = _mutate(_VALID, edits, cut)
    try:
        list(read_archive(data))
        archive_end(data)
    except CpioError:
        pass


# --- compression ------------------------------------------------------------------------------


@pytest.mark.parametrize("method", COMPRESSORS)
def test_compress_round_trip_and_determinism(method: str) -> None:
    if method == "zstd" and shutil.which("zstd") is None:
        pytest.skip("zstd not installed")
    archive = write_archive(SAMPLE)
    first = compress(archive, method)
    assert compress(archive, method) == first
    assert decompress(first) == archive
    if method != "none":
        assert len(first) < len(archive)


def test_gzip_has_no_timestamp_or_name_and_gunzip_agrees() -> None:
    archive = write_archive(SAMPLE)
    packed = compress(archive, "gzip")
    assert packed[:4] == b"\x1f\x8b\x08\x00"  # deflate, no FNAME/FEXTRA/FCOMMENT flags
    assert packed[4:8] == b"\0\0\0\0"  # MTIME
    assert gzip.decompress(packed) == archive
    if shutil.which("gzip"):
        assert subprocess.run(["gzip", "-dc"], input=packed, capture_output=True,
                              check=True).stdout == archive  # fmt: skip
    assert compress(archive, "gzip", 1) != packed
    assert decompress(compress(archive, "gzip", 1)) == archive


@needs_zstd
def test_zstd_output_is_what_the_tool_decodes() -> None:
    archive = write_archive(SAMPLE) * 50
    packed = compress(archive, "zstd")
    assert packed[:4] == b"\x28\xb5\x2f\xfd"
    assert subprocess.run(["zstd", "-dqc"], input=packed, capture_output=True,
                          check=True).stdout == archive  # fmt: skip
    assert compress(archive, "zstd", 19) != packed
    assert decompress(compress(archive, "zstd", 1)) == archive


@needs_zstd
def test_zstd_is_deterministic_whatever_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    data = os.urandom(1 << 16) + bytes(1 << 20)
    plain = compress(data, "zstd")
    monkeypatch.setenv("ZSTD_CLEVEL", "1")
    monkeypatch.setenv("ZSTD_NBTHREADS", "4")
    assert compress(data, "zstd") == plain


@pytest.mark.parametrize(
    ("method", "level"), [("gzip", 10), ("gzip", -1), ("zstd", 0), ("zstd", 20), ("none", 3)]
)
def test_bad_levels_are_rejected(method: str, level: int) -> None:
    with pytest.raises(ValueError):
        compress(b"x", method, level)


def test_unknown_method() -> None:
    with pytest.raises(CompressionError, match="unknown compression 'lz4'"):
        compress(b"x", "lz4")


def test_missing_zstd_is_a_clear_error(monkeypatch: pytest.MonkeyPatch,
                                       tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH with no zstd on it
    message = "zstd not found; install zstd or use --compress gzip"
    with pytest.raises(CompressionError, match=f"^{re.escape(message)}$"):
        compress(b"x", "zstd")


@needs_zstd
def test_failing_zstd_reports_its_stderr() -> None:
    packed = bytearray(compress(os.urandom(4096), "zstd"))
    packed[-2] ^= 0xFF  # the content checksum: the frame still parses, decoding fails
    with pytest.raises(CompressionError, match=r"^zstd failed: .*(checksum|rror)"):
        decompress(bytes(packed))


def test_decompress_handles_concatenation_and_other_formats() -> None:
    a, b = b"first" * 100, b"second" * 100
    members = gzip.compress(a, mtime=0) + b"\0" * 7 + gzip.compress(b, mtime=0)
    assert decompress(members) == a + b
    assert decompress(lzma.compress(a) + lzma.compress(b)) == a + b
    assert decompress(lzma.compress(a, format=lzma.FORMAT_ALONE)) == a
    assert decompress(bz2.compress(a) + bz2.compress(b)) == a + b
    with pytest.raises(CompressionError, match="unexpected data at offset"):
        decompress(gzip.compress(a) + bz2.compress(b))
    with pytest.raises(CompressionError, match="unknown magic 6a 75 6e 6b at offset 0"):
        decompress(b"junk")
    with pytest.raises(CompressionError, match="no data"):
        decompress(b"")
    with pytest.raises(CompressionError, match="truncated gzip stream"):
        decompress(gzip.compress(a)[:-9])
    with pytest.raises(CompressionError, match="exceeds the limit of 100 bytes"):
        decompress(gzip.compress(a), limit=100)
    with pytest.raises(CompressionError, match="lz4 compressed data is not supported"):
        decompress(b"\x02\x21\x4c\x18" + b"\0" * 20)


@needs_zstd
def test_decompress_concatenated_zstd_frames() -> None:
    a, b = b"first" * 100, b"second" * 100
    assert decompress(compress(a, "zstd") + b"\0" * 3 + compress(b, "zstd")) == a + b
    with pytest.raises(CompressionError, match="exceeds the limit"):
        decompress(compress(a, "zstd"), limit=10)


@needs_zstd
def test_split_image_finds_every_stream() -> None:
    early = write_archive([Entry("kernel/x86/microcode/GenuineIntel.bin", REG | 0o644, b"uc")])
    core = write_archive(SAMPLE)
    modules = write_archive([Entry("lib/modules/m.ko", REG | 0o644, b"\x7fELF" * 64)])
    z, g = compress(core, "zstd"), compress(modules, "gzip")
    image = early + b"\0" * 8 + z + g + b"\0" * 5
    segments = split_image(image)
    assert segments == [
        Segment(0, len(early), "none", early),
        Segment(len(early) + 8, len(z), "zstd", core),
        Segment(len(early) + 8 + len(z), len(g), "gzip", modules),
    ]
    paths = [e.path for s in segments for e in read_archive(s.payload_uncompressed)]
    assert paths[:5] == ["kernel", "kernel/x86", "kernel/x86/microcode",
                         "kernel/x86/microcode/GenuineIntel.bin", "a"]  # fmt: skip
    assert paths[-1] == "lib/modules/m.ko"
    # A raw archive may follow a compressed one, on a 4-byte boundary of the image.
    tail = g + b"\0" * (-len(g) % 4) + early
    assert [s.compression for s in split_image(tail)] == ["gzip", "none"]
    with pytest.raises(CompressionError, match="not 4-byte aligned"):
        split_image(g + b"\0" * (-len(g) % 4 + 1) + early)
    with pytest.raises(CompressionError, match=f"unknown magic 4d 5a at offset {len(early)}"):
        split_image(early + b"MZ")


@FUZZ
@given(
    st.binary(max_size=512),
    st.sampled_from(
        [b"", b"\x28\xb5\x2f\xfd", b"\x1f\x8b\x08", b"\xfd7zXZ\x00", b"BZh9", b"\x5d\0\0", b"0707"]
    ),
)
def test_split_and_decompress_on_random_bytes(data: bytes, magic: bytes) -> None:
    data = magic + data
    for function in (split_image, decompress):
        with contextlib.suppress(CpioError, CompressionError):
            function(data, limit=1 << 20)


def _image() -> bytes:
    core = write_archive(SAMPLE[:5])
    parts = [_VALID, gzip.compress(core, mtime=0), lzma.compress(core)]
    if shutil.which("zstd"):
        parts.append(compress(core, "zstd"))
    return b"".join(p + b"\0" * (-len(p) % 4) for p in parts)


_IMAGE = _image()


@FUZZ
@given(_edits, st.integers(0, 5000))
def test_split_and_decompress_on_mutated_images(edits: list[tuple[int, int]], cut: int) -> None:
    data = _mutate(_IMAGE, edits, cut)
    try:
        for segment in split_image(data, limit=1 << 20):
            if segment.compression == "none":
                list(read_archive(segment.payload_uncompressed))
    except (CpioError, CompressionError):
        pass
    start = _IMAGE.index(b"\x1f\x8b")
    with contextlib.suppress(CompressionError):
        decompress(data[start:], limit=1 << 20)
