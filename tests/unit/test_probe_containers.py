"""Containers before file systems: RAID members, jbd, usage; GPT bounded by bytes; 4K sectors.

The images are written byte by byte (tests/unit/disk_images.py) so these run
without root or the md driver; tests/host/test_probe_corpus.py checks the
same writers, and images made by mdadm where the kernel allows, against
``blkid -p``.
"""

from __future__ import annotations

import struct
import uuid
import zlib

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from initium.probe import (
    FsInfo,
    Partition,
    PartitionTable,
    ProbeError,
    probe_filesystem,
    probe_partitions,
)
from initium.probe import ext as ext_probe
from initium.probe.gpt import MAX_ARRAY_BYTES

from tests.unit.disk_images import (
    build_gpt,
    ddf_anchor,
    isw_anchor,
    md0_blkid_uuid,
    md0_offset,
    md0_superblock,
    md1_checksum,
    md1_superblock,
    place,
)

MiB = 1 << 20
ARRAY = "7b0e5a2c-1d3f-4e5a-8b6c-9d0e1f2a3b4c"
INNER = "0b5e1c2d-3f40-4a5b-8c6d-7e8f90a1b2c3"
WORDS = (0x11223344, 0x55667788, 0x99AABBCC, 0xDDEEFF00)
LINUX = "0fc63daf-8483-4772-8e79-3d69d8477de4"
GUID_A = "9e1a2b3c-4d5e-4f60-8a7b-8c9d0e1f2a3b"
GUID_B = "aaaabbbb-cccc-4ddd-8eee-ffff00001111"


class Reader:
    """Serves a bytearray and counts the work asked of it."""

    def __init__(self, disk: bytes | bytearray) -> None:
        self.disk = disk
        self.calls = 0
        self.bytes = 0

    def __call__(self, offset: int, length: int) -> bytes:
        assert offset >= 0 and 0 <= length <= MiB
        self.calls += 1
        self.bytes += length
        return bytes(self.disk[offset : offset + length])


def ext_superblock(fs_uuid: str, *, incompat: int = 0, name: bytes = b"") -> bytes:
    """A minimal ext2 superblock (no checksum feature) for offset 1024."""
    sb = bytearray(1024)
    struct.pack_into("<II", sb, 0, 128, 1024)  # inodes, blocks
    struct.pack_into("<I", sb, 0x18, 0)  # 1 KiB blocks
    sb[0x38:0x3A] = b"\x53\xef"
    struct.pack_into("<III", sb, 0x5C, 0, incompat, 0)
    sb[0x68:0x78] = uuid.UUID(fs_uuid).bytes
    sb[0x78 : 0x78 + len(name)] = name
    return bytes(sb)


def probe(
    disk: bytearray, *, partition: bool = False, disk_table: PartitionTable | None = None
) -> FsInfo | None:
    return probe_filesystem(Reader(disk), len(disk), partition=partition, disk_table=disk_table)


# --------------------------------------------------------------------------
# md


@pytest.mark.parametrize("version", ["1.0", "1.1", "1.2"])
def test_md1_members(version: str) -> None:
    size = 16 * MiB
    off = {"1.0": (size & ~0xFFF) - 0x2000, "1.1": 0, "1.2": 4096}[version]
    disk = bytearray(size)
    place(disk, off, md1_superblock(off, ARRAY, b"host:root"))
    info = probe(disk)
    assert info == FsInfo("linux_raid_member", ARRAY, "host:root")
    assert info is not None and info.usage == "raid"


@pytest.mark.parametrize("big_endian", [False, True])
def test_md090_member(big_endian: bool) -> None:
    size = 16 * MiB + 5000  # not a multiple of 64 KiB: the offset is rounded down
    disk = bytearray(size)
    place(disk, md0_offset(size), md0_superblock(WORDS, 8 * 1024, big_endian=big_endian))
    info = probe(disk)
    assert info == FsInfo("linux_raid_member", md0_blkid_uuid(WORDS), None)
    assert md0_blkid_uuid(WORDS) == "11223344-5566-7788-99aa-bbccddeeff00"


@pytest.mark.parametrize("version", ["0.90", "1.0"])
def test_raid1_member_wins_over_the_file_system_inside(version: str) -> None:
    # Metadata at the end: the member starts with the array's own ext2,
    # which must never answer for root=UUID= as a raw half of the mirror.
    size = 8 * MiB
    disk = bytearray(size)
    place(disk, 1024, ext_superblock(INNER, name=b"root"))
    if version == "0.90":
        place(disk, md0_offset(size), md0_superblock(WORDS, 4 * 1024))
    else:
        off = (size & ~0xFFF) - 0x2000
        place(disk, off, md1_superblock(off, ARRAY, b"h:0"))
    assert ext_probe.probe(Reader(disk)) == FsInfo("ext2", INNER, "root")  # it is there
    info = probe(disk)
    assert info is not None and info.fstype == "linux_raid_member"
    assert INNER not in (info.uuid, info.label)
    # Without the device size the end cannot be seen: callers must pass it.
    assert probe_filesystem(Reader(disk)) == FsInfo("ext2", INNER, "root")


def test_md1_checksum_is_enforced() -> None:
    disk = bytearray(4 * MiB)
    place(disk, 4096, md1_superblock(4096, ARRAY, b"x"))
    disk[4096 + 40] ^= 1  # inside the name
    with pytest.raises(ProbeError, match="md superblock checksum mismatch") as exc:
        probe(disk)
    assert exc.value.offset == 4096


def test_md1_role_table_is_bounded() -> None:
    disk = bytearray(4 * MiB)
    sb = bytearray(md1_superblock(0, ARRAY))
    struct.pack_into("<I", sb, 220, 0xFFFFFFFF)
    place(disk, 0, sb)
    read = Reader(disk)
    with pytest.raises(ProbeError, match="4294967295 device roles"):
        probe_filesystem(read, len(disk))
    assert read.bytes < 64 * 1024


def test_md1_largest_role_table_is_read() -> None:
    disk = bytearray(4 * MiB)
    place(disk, 0, md1_superblock(0, ARRAY, max_dev=1920))
    assert probe(disk) == FsInfo("linux_raid_member", ARRAY, None)


def test_md1_copy_made_for_another_offset_is_ignored() -> None:
    # A 1.2 superblock found at 0 (say, an image of a member written at
    # the wrong place) names super_offset 8, not 0: not this device's.
    disk = bytearray(4 * MiB)
    place(disk, 0, md1_superblock(4096, ARRAY))
    assert probe(disk) is None


def test_md090_claiming_more_than_the_device_is_nothing() -> None:
    size = 4 * MiB
    disk = bytearray(size)
    place(disk, md0_offset(size), md0_superblock(WORDS, 16 * 1024))
    assert probe(disk) is None


def test_md090_of_the_last_partition_is_not_the_whole_disks() -> None:
    size = 16 * MiB
    disk = bytearray(size)
    place(disk, md0_offset(size), md0_superblock(WORDS, 4 * 1024))
    last = Partition(2, 8 * MiB, 8 * MiB, None, None, LINUX)
    table = PartitionTable("gpt", GUID_A, (last,))
    assert probe(disk, disk_table=table) is None
    # The partition itself is the member.
    window = disk[last.start :]
    assert probe(window, partition=True) == FsInfo("linux_raid_member", md0_blkid_uuid(WORDS), None)


# --------------------------------------------------------------------------
# IMSM and DDF


def test_isw_member_on_whole_disks_only() -> None:
    size = 8 * MiB
    disk = bytearray(size)
    place(disk, size - 1024, isw_anchor())
    assert probe(disk) == FsInfo("isw_raid_member", None, None)
    assert probe(disk, partition=True) is None


@pytest.mark.parametrize("back", [1, 257])
@pytest.mark.parametrize("big_endian", [True, False])
def test_ddf_member(back: int, big_endian: bool) -> None:
    size = 8 * MiB
    disk = bytearray(size)
    place(disk, size - 512 * back, ddf_anchor(b"Linux-MD-test-guid-1234", big_endian=big_endian))
    info = probe(disk)
    assert info == FsInfo("ddf_raid_member", "Linux-MD-test-guid-1234", None)
    assert info is not None and info.usage == "raid"


def test_tiny_devices_have_no_trailing_metadata() -> None:
    disk = bytearray(0x8000)
    place(disk, len(disk) - 1024, isw_anchor())
    assert probe(disk) is None


# --------------------------------------------------------------------------
# jbd and usage


def test_external_journal_is_jbd() -> None:
    disk = bytearray(1 * MiB)
    place(disk, 1024, ext_superblock(INNER, incompat=0x0008, name=b"journal"))
    info = probe(disk)
    assert info == FsInfo("jbd", INNER, "journal")
    assert info is not None and info.usage == "other"


@pytest.mark.parametrize(
    ("fstype", "usage"),
    [
        ("ext4", "filesystem"),
        ("vfat", "filesystem"),
        ("linux_raid_member", "raid"),
        ("isw_raid_member", "raid"),
        ("ddf_raid_member", "raid"),
        ("LVM2_member", "raid"),
        ("crypto_LUKS", "crypto"),
        ("swap", "other"),
        ("jbd", "other"),
    ],
)
def test_usage_as_blkid_names_it(fstype: str, usage: str) -> None:
    assert FsInfo(fstype, None, None).usage == usage


# --------------------------------------------------------------------------
# GPT bounded by bytes, and 4K sectors


def test_gpt_with_1024_entries() -> None:
    disk = build_gpt(512, 16384, GUID_A, [(2048, 4095, LINUX, GUID_B, "big")], count=1024)
    read = Reader(disk)
    table = probe_partitions(read, len(disk))
    assert table == PartitionTable(
        "gpt", GUID_A, (Partition(1, 2048 * 512, 2048 * 512, GUID_B, "big", LINUX),)
    )
    assert read.bytes == 2 * 512 + 1024 * 128


def test_gpt_entry_number_past_256_is_kept() -> None:
    parts = [(0, 0, "", "", "")] * 299 + [(2048, 4095, LINUX, GUID_B, "p300")]
    disk = build_gpt(512, 16384, GUID_A, [p for p in parts if p[2]], count=1024)
    # build_gpt fills slots in order; move the one entry to slot 300.
    ents = 2 * 512
    disk[ents + 299 * 128 : ents + 300 * 128] = disk[ents : ents + 128]
    disk[ents : ents + 128] = bytes(128)
    fix_gpt_crcs(disk, 512)
    table = probe_partitions(Reader(disk), len(disk))
    assert table is not None and [p.number for p in table.partitions] == [300]


def fix_gpt_crcs(disk: bytearray, ss: int) -> None:
    for lba in (1, len(disk) // ss - 1):
        off = lba * ss
        ents, count, esz = struct.unpack_from("<QII", disk, off + 72)
        arr = bytes(disk[ents * ss : ents * ss + count * esz])
        if lba == 1:
            primary = arr
        else:
            arr = primary
            disk[ents * ss : ents * ss + count * esz] = arr
        struct.pack_into("<I", disk, off + 88, zlib.crc32(arr))
        struct.pack_into("<I", disk, off + 16, 0)
        struct.pack_into("<I", disk, off + 16, zlib.crc32(bytes(disk[off : off + 92])))


@pytest.mark.parametrize(("count", "esz"), [(8193, 128), (4097, 256), (257, 4096)])
def test_gpt_array_over_a_mebibyte_is_refused(count: int, esz: int) -> None:
    assert count * esz > MAX_ARRAY_BYTES
    disk = build_gpt(512, 16384, GUID_A, [(2048, 4095, LINUX, GUID_B, "x")])
    for lba in (1, len(disk) // 512 - 1):
        off = lba * 512
        struct.pack_into("<II", disk, off + 80, count, esz)
        struct.pack_into("<I", disk, off + 16, 0)
        struct.pack_into("<I", disk, off + 16, zlib.crc32(bytes(disk[off : off + 92])))
    read = Reader(disk)
    with pytest.raises(ProbeError, match=f"{count} entries of {esz} bytes"):
        probe_partitions(read, len(disk))
    assert read.bytes == 3 * 512  # MBR and both headers; no array was read


def test_gpt_4k_with_many_entries() -> None:
    disk = build_gpt(4096, 4096, GUID_A, [(256, 1279, LINUX, GUID_B, "four k")], count=512)
    table = probe_partitions(Reader(disk), len(disk), 4096)
    assert table == PartitionTable(
        "gpt", GUID_A, (Partition(1, 256 * 4096, 1024 * 4096, GUID_B, "four k", LINUX),)
    )


def dos_4k() -> bytearray:
    ss = 4096
    disk = bytearray(4096 * ss)
    mbr = bytearray(512)
    struct.pack_into("<I", mbr, 440, 0x12345678)

    def slot(sector: bytearray, i: int, ptype: int, lba: int, count: int) -> None:
        o = 446 + 16 * i
        sector[o + 4] = ptype
        struct.pack_into("<II", sector, o + 8, lba, count)
        sector[510:512] = b"\x55\xaa"

    slot(mbr, 0, 0x83, 256, 512)
    slot(mbr, 1, 0x05, 1024, 2048)
    ebr = bytearray(512)
    slot(ebr, 0, 0x82, 256, 256)  # relative to this EBR, in 4 KiB units
    place(disk, 0, mbr)
    place(disk, 1024 * ss, ebr)
    return disk


def test_dos_4k_sectors() -> None:
    disk = dos_4k()
    table = probe_partitions(Reader(disk), len(disk), 4096)
    ss = 4096
    assert table == PartitionTable(
        "dos",
        "12345678",
        (
            Partition(1, 256 * ss, 512 * ss, "12345678-01", None, "0x83"),
            Partition(2, 1024 * ss, 2048 * ss, "12345678-02", None, "0x5"),
            Partition(5, 1280 * ss, 256 * ss, "12345678-05", None, "0x82"),
        ),
    )
    # Read as 512-byte sectors the EBR is looked for in the wrong place.
    small = probe_partitions(Reader(disk), len(disk), 512)
    assert small is not None and [p.number for p in small.partitions] == [1, 2]


# --------------------------------------------------------------------------
# hypothesis: RAID metadata, jbd and GPT arrays from arbitrary bytes

FS_MAX_CALLS = 40
FS_MAX_BYTES = 128 * 1024


def outcome(read: Reader, size: int) -> FsInfo | None:
    try:
        info = probe_filesystem(read, size)
    except ProbeError as exc:
        assert str(exc) and exc.offset >= 0
        event(f"ProbeError: {exc.reason.split(':')[0][:40]}")
        info = None
    else:
        event(f"{info.fstype if info else None}")
    assert read.calls <= FS_MAX_CALLS and read.bytes <= FS_MAX_BYTES
    return info


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["1.0", "1.1", "1.2"]),
    st.lists(st.tuples(st.integers(0, 300), st.integers(0, 255)), max_size=16),
    st.integers(0, 3000),
    st.booleans(),
    st.integers(0, 64 * 1024),
)
def test_fuzz_md1(
    version: str, muts: list[tuple[int, int]], max_dev: int, reseal: bool, cut: int
) -> None:
    size = 2 * MiB
    off = {"1.0": (size & ~0xFFF) - 0x2000, "1.1": 0, "1.2": 4096}[version]
    sb = bytearray(md1_superblock(off, ARRAY, b"n", max_dev=min(max_dev, 1920)))
    struct.pack_into("<I", sb, 220, max_dev)
    for pos, value in muts:
        if pos < len(sb):
            sb[pos] = value
    if reseal:
        struct.pack_into("<I", sb, 216, md1_checksum(bytes(sb)))
    disk = bytearray(size)
    place(disk, off, sb)
    # A device that claims its size but stops answering part-way.
    read = Reader(disk[: size - cut] if version == "1.0" else disk[: max(0, off + len(sb) - cut)])
    outcome(read, size)


@settings(max_examples=300, deadline=None)
@given(
    st.binary(min_size=64, max_size=4096),
    st.integers(0x10000, 1 << 42),
    st.sampled_from(["md0le", "md0be", "ddf", "isw", "none"]),
)
def test_fuzz_trailing_metadata(noise: bytes, size: int, kind: str) -> None:
    # A sparse device: noise at the places the end-of-device probes look,
    # with the signature they look for planted in it.
    spots = {
        "md0": md0_offset(size),
        "md10": (size & ~0xFFF) - 0x2000,
        "ddf1": (size // 512 - 1) * 512,
        "ddf257": (size // 512 - 257) * 512,
        "isw": (size // 512 - 2) * 512,
    }
    blob = bytearray(noise)
    if kind.startswith("md0"):
        struct.pack_into(">I" if kind == "md0be" else "<I", blob, 0, 0xA92B4EFC)
        target = spots["md0"]
    elif kind == "ddf":
        struct.pack_into(">I", blob, 0, 0xDE11DE11)
        target = spots["ddf1"]
    elif kind == "isw":
        blob[:24] = b"Intel Raid ISM Cfg Sig. "
        target = spots["isw"]
    else:
        target = spots["md10"]
    chunks = {target: bytes(blob)}

    def read_at(offset: int, length: int) -> bytes:
        out = bytearray(max(0, min(length, size - offset)))
        for start, data in chunks.items():
            lo, hi = max(offset, start), min(offset + len(out), start + len(data))
            if lo < hi:
                out[lo - offset : hi - offset] = data[lo - start : hi - start]
        return bytes(out)

    class Sparse(Reader):
        def __call__(self, offset: int, length: int) -> bytes:
            assert offset >= 0 and 0 <= length <= MiB
            self.calls += 1
            self.bytes += length
            return read_at(offset, length)

    outcome(Sparse(b""), size)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=1024), st.integers(0, 0xFFFFFFFF), st.booleans())
def test_fuzz_jbd(raw: bytes, incompat: int, csum: bool) -> None:
    sb = bytearray(ext_superblock(INNER, incompat=incompat | 0x8))
    sb[: len(raw)] = raw
    sb[0x38:0x3A] = b"\x53\xef"
    struct.pack_into("<I", sb, 0x60, incompat | 0x8)
    if csum:
        struct.pack_into("<I", sb, 0x64, 0x400)
    disk = bytearray(64 * 1024)
    place(disk, 1024, sb)
    info = outcome(Reader(disk), len(disk))
    assert info is None or info.fstype == "jbd"


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, 20000),
    st.sampled_from([128, 256, 512, 4096, 136, 0]),
    st.sampled_from([512, 4096]),
    st.booleans(),
)
def test_fuzz_gpt_array_size(count: int, esz: int, ss: int, reseal: bool) -> None:
    total = 8192 if ss == 512 else 1024
    disk = build_gpt(ss, total, GUID_A, [(100, 199, LINUX, GUID_B, "f")], count=128)
    for lba in (1, total - 1):
        off = lba * ss
        struct.pack_into("<II", disk, off + 80, count, esz)
        if reseal:
            struct.pack_into("<I", disk, off + 16, 0)
            struct.pack_into("<I", disk, off + 16, zlib.crc32(bytes(disk[off : off + 92])))
    read = Reader(disk)
    try:
        table = probe_partitions(read, len(disk), ss)
    except ProbeError as exc:
        event(f"ProbeError: {exc.reason.split(':')[0][:40]}")
    else:
        event("table" if table else "None")
        assert table is None or len(table.partitions) <= MAX_ARRAY_BYTES // 128
    assert read.calls <= 5
    assert read.bytes <= 512 + 2 * (ss + MAX_ARRAY_BYTES)
