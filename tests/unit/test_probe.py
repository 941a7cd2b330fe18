"""Tests for initium.probe against images made by the real mkfs/sfdisk tools.

Every image is checked twice: against the values we asked the tool to write,
and against what util-linux's libblkid reports for the same file, because
the point of the module is to name devices exactly as blkid (and therefore
the user's fstab and kernel command line) does.
"""

from __future__ import annotations

import re
import struct
import subprocess
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from initium.probe import (
    FsInfo,
    Partition,
    PartitionTable,
    ProbeError,
    printable,
    probe_filesystem,
    probe_partitions,
)

from tests.unit.disk_images import build_gpt, need, run, sparse

MiB = 1 << 20

# --------------------------------------------------------------------------
# helpers


ReadAt = Callable[[int, int], bytes]



def file_reader(f: BinaryIO) -> ReadAt:
    return lambda off, n: (f.seek(off), f.read(n))[1]


class CountingReader:
    """Counts what a probe asks of a reader: the work a hostile disk can cause.

    Bounds on calls and bytes hold whatever the machine's load, where a
    wall-clock limit would fail a correct probe on a busy test host.
    """

    def __init__(self, read: ReadAt) -> None:
        self.read = read
        self.calls = 0
        self.bytes = 0

    def __call__(self, offset: int, length: int) -> bytes:
        self.calls += 1
        self.bytes += length
        return self.read(offset, length)


def probe_file(path: Path) -> FsInfo | None:
    with path.open("rb") as f:
        return probe_filesystem(file_reader(f))


def parts_file(path: Path, sector_size: int = 512) -> PartitionTable | None:
    with path.open("rb") as f:
        return probe_partitions(file_reader(f), path.stat().st_size, sector_size)


def patch(path: Path, offset: int, data: bytes) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(data)


def peek(path: Path, offset: int, length: int) -> bytes:
    with path.open("rb") as f:
        f.seek(offset)
        return f.read(length)


def crc32c_raw(data: bytes, crc: int = 0xFFFFFFFF) -> int:
    """Bitwise CRC-32C without final inversion; independent of the module's table."""
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc


def fix_ext4_csum(path: Path) -> None:
    sb = peek(path, 1024, 1024)
    (ro_compat,) = struct.unpack_from("<I", sb, 0x64)
    if ro_compat & 0x400:
        patch(path, 1024 + 0x3FC, struct.pack("<I", crc32c_raw(sb[:0x3FC])))


def fix_erofs_csum(path: Path) -> None:
    block = bytearray(peek(path, 1024, 4096 - 1024))
    block[4:8] = bytes(4)
    patch(path, 1024 + 4, struct.pack("<I", crc32c_raw(bytes(block))))


def fix_btrfs_csum(path: Path) -> None:
    sb = peek(path, 0x10000, 4096)
    patch(path, 0x10000, struct.pack("<I", crc32c_raw(sb[0x20:]) ^ 0xFFFFFFFF))


_HEX_ESC = re.compile(rb"\\x([0-9a-fA-F]{2})|\\(.)", re.DOTALL)


def unescape(raw: bytes) -> bytes:
    """Undo blkid's \\xNN (and partx's \\" / \\\\) escaping."""
    return _HEX_ESC.sub(lambda m: bytes([int(m.group(1), 16)]) if m.group(1) else m.group(2), raw)


def blkid(path: Path) -> dict[str, bytes]:
    """Low-level probe of a file; values are the exact on-disk bytes."""
    need("blkid")
    proc = subprocess.run(
        ["blkid", "-p", "-o", "udev", str(path)], capture_output=True, check=False
    )
    assert proc.returncode in (0, 2), proc.stderr
    out: dict[str, bytes] = {}
    for line in proc.stdout.splitlines():
        key, _, value = line.partition(b"=")
        out[key.decode()] = unescape(value) if key.endswith(b"_ENC") else value
    return out


def enc(text: str | None) -> bytes | None:
    return None if text is None else text.encode("utf-8", "surrogateescape")


def assert_blkid_agrees(path: Path, info: FsInfo, *, label_key: str = "ID_FS_LABEL_ENC") -> None:
    seen = blkid(path)
    assert seen.get("ID_FS_TYPE") == info.fstype.encode()
    assert seen.get("ID_FS_UUID_ENC") == enc(info.uuid)
    assert seen.get(label_key) == enc(info.label)


def partx_rows(path: Path) -> list[dict[str, bytes]]:
    need("partx")
    out = subprocess.run(
        ["partx", "-g", "-P", "-o", "NR,START,SECTORS,UUID,NAME,TYPE", str(path)],
        capture_output=True,
        check=True,
    ).stdout
    rows = []
    for line in out.splitlines():
        pairs = re.findall(rb'(\w+)="((?:[^"\\]|\\.)*)"', line)
        rows.append({k.decode(): unescape(v) for k, v in pairs})
    return rows


def assert_partx_agrees(path: Path, table: PartitionTable) -> None:
    """libblkid's view of the partitions (partx counts 512-byte sectors)."""
    rows = partx_rows(path)
    assert len(rows) == len(table.partitions)
    by_nr = {int(r["NR"]): r for r in rows}
    for p in table.partitions:
        row = by_nr[p.number]
        assert int(row["START"]) * 512 == p.start
        assert int(row["SECTORS"]) * 512 == p.size
        assert row["UUID"].decode() == p.partuuid
        assert row["NAME"].decode() == (p.partlabel or "")
        assert row["TYPE"].decode() == p.type
    seen = blkid(path)
    assert seen["ID_PART_TABLE_TYPE"] == table.kind.encode()
    assert seen.get("ID_PART_TABLE_UUID") == enc(table.uuid)


# --------------------------------------------------------------------------
# filesystems: real images, expected values, blkid cross-check

U = {
    "ext4": "0b5e1c2d-3f40-4a5b-8c6d-7e8f90a1b2c3",
    "ext3": "1c2d3e4f-5061-4b7c-9d8e-9fa0b1c2d3e4",
    "ext2": "2d3e4f50-6172-4c8d-ae9f-a0b1c2d3e4f5",
    "xfs": "1a2b3c4d-5e6f-4a1b-9c2d-3e4f5a6b7c8d",
    "btrfs": "2b3c4d5e-6f70-4b1c-8d2e-4f5a6b7c8d9e",
    "erofs": "3c4d5e6f-7081-4c2d-9e3f-5a6b7c8d9eaf",
    "swap": "4d5e6f70-8192-4d3e-8f40-6b7c8d9eafb0",
    "luks1": "6f708192-a3b4-4c5d-8e6f-708192a3b4c5",
    "luks2": "708192a3-b4c5-4d6e-9f70-8192a3b4c5d6",
}


def make_ext(kind: str) -> Callable[[Path], Path]:
    def build(tmp: Path) -> Path:
        need(f"mkfs.{kind}")
        img = sparse(tmp / f"{kind}.img", 16 * MiB)
        run(f"mkfs.{kind}", "-q", "-F", "-U", U[kind], "-L", f"my {kind}", img)
        return img

    return build


def make_xfs(tmp: Path) -> Path:
    need("mkfs.xfs")
    img = sparse(tmp / "xfs.img", 300 * MiB)
    run("mkfs.xfs", "-q", "-f", "-m", f"uuid={U['xfs']}", "-L", "xfs-root", img)
    return img


def make_btrfs(tmp: Path) -> Path:
    need("mkfs.btrfs")
    img = sparse(tmp / "btrfs.img", 114 * MiB)
    run("mkfs.btrfs", "-q", "-f", "-U", U["btrfs"], "-L", "pool/../0", img)
    return img


def make_vfat(bits: int, serial: str, label: str, mib: int) -> Callable[[Path], Path]:
    def build(tmp: Path) -> Path:
        need("mkfs.vfat")
        img = sparse(tmp / f"fat{bits}.img", mib * MiB)
        run("mkfs.vfat", "-F", str(bits), "-i", serial, "-n", label, img)
        return img

    return build


def make_erofs(tmp: Path) -> Path:
    need("mkfs.erofs")
    src = tmp / "tree"
    src.mkdir()
    (src / "hello").write_text("hi\n")
    img = tmp / "erofs.img"
    run("mkfs.erofs", f"-U{U['erofs']}", img, src)
    # erofs-utils 1.5 has no -L: write volume_name ourselves, then re-seal
    # the superblock checksum exactly as mkfs would have.
    patch(img, 1024 + 0x40, b"ro-image")
    fix_erofs_csum(img)
    return img


def make_squashfs(tmp: Path) -> Path:
    need("mksquashfs")
    src = tmp / "tree"
    src.mkdir()
    (src / "hello").write_text("hi\n")
    img = tmp / "sq.img"
    run("mksquashfs", src, img, "-quiet", "-noappend")
    return img


def make_swap(tmp: Path) -> Path:
    need("mkswap")
    img = sparse(tmp / "swap.img", 1 * MiB)
    img.chmod(0o600)
    run("mkswap", "-U", U["swap"], "-L", "swap-1", img)
    return img


def make_luks(version: int) -> Callable[[Path], Path]:
    def build(tmp: Path) -> Path:
        need("cryptsetup")
        img = sparse(tmp / f"luks{version}.img", 20 * MiB)
        key = tmp / "key"
        key.write_bytes(b"not a secret")
        args: list[str | Path] = [
            "cryptsetup",
            "-q",
            "luksFormat",
            "--type",
            f"luks{version}",
            "--pbkdf-force-iterations",
            "1000",
            "--key-file",
            key,
            "--uuid",
            U[f"luks{version}"],
        ]
        if version == 2:
            args += ["--pbkdf", "pbkdf2", "--label", "crypt root"]
        run(*args, img)
        return img

    return build


FS_CASES: list[tuple[str, Callable[[Path], Path], FsInfo]] = [
    ("ext4", make_ext("ext4"), FsInfo("ext4", U["ext4"], "my ext4")),
    ("ext3", make_ext("ext3"), FsInfo("ext3", U["ext3"], "my ext3")),
    ("ext2", make_ext("ext2"), FsInfo("ext2", U["ext2"], "my ext2")),
    ("xfs", make_xfs, FsInfo("xfs", U["xfs"], "xfs-root")),
    ("btrfs", make_btrfs, FsInfo("btrfs", U["btrfs"], "pool/../0")),
    ("fat12", make_vfat(12, "0000ABCD", "F12", 2), FsInfo("vfat", "0000-ABCD", "F12")),
    ("fat16", make_vfat(16, "1234abcd", "EFI16", 34), FsInfo("vfat", "1234-ABCD", "EFI16")),
    ("fat32", make_vfat(32, "DEADBEEF", "BOOT32", 40), FsInfo("vfat", "DEAD-BEEF", "BOOT32")),
    ("erofs", make_erofs, FsInfo("erofs", U["erofs"], "ro-image")),
    ("squashfs", make_squashfs, FsInfo("squashfs", None, None)),
    ("swap", make_swap, FsInfo("swap", U["swap"], "swap-1")),
    ("luks1", make_luks(1), FsInfo("crypto_LUKS", U["luks1"], None)),
    ("luks2", make_luks(2), FsInfo("crypto_LUKS", U["luks2"], "crypt root")),
]


@pytest.mark.host
@pytest.mark.parametrize(("name", "build", "expected"), FS_CASES, ids=[c[0] for c in FS_CASES])
def test_real_filesystems(
    tmp_path: Path, name: str, build: Callable[[Path], Path], expected: FsInfo
) -> None:
    img = build(tmp_path)
    info = probe_file(img)
    assert info == expected
    assert_blkid_agrees(img, info)
    # A filesystem image is not a partitioned disk.
    assert parts_file(img) is None


@pytest.mark.host
def test_lvm2_physical_volume(tmp_path: Path) -> None:
    need("losetup", "pvcreate")
    img = sparse(tmp_path / "pv.img", 16 * MiB)
    attach = subprocess.run(
        ["losetup", "--show", "-f", str(img)], capture_output=True, text=True, check=False
    )
    if attach.returncode != 0:
        pytest.skip(f"cannot attach a loop device: {attach.stderr.strip()}")
    loop = attach.stdout.strip()
    try:
        # Keep the host's LVM devices file (if any) from learning about the loop device.
        run(
            "pvcreate", "-q", "--config", "devices { use_devicesfile = 0 }",
            "-u", "5e6f7081-92a3-4b4c-9d5e-6f708192a3b4", "--norestorefile", loop,
        )  # fmt: skip
    finally:
        subprocess.run(["losetup", "-d", loop], check=False)
    info = probe_file(img)
    assert info == FsInfo("LVM2_member", "5e6f70-8192-a34b-4c9d-5e6f-7081-92a3b4", None)
    assert_blkid_agrees(img, info)
    # The label is CRC-protected: one flipped bit in the PV UUID is an error.
    patch(img, 512 + 32, b"X")
    with pytest.raises(ProbeError, match="LVM2 label checksum"):
        probe_file(img)


@pytest.mark.host
def test_luks2_secondary_header_used_when_primary_wiped(tmp_path: Path) -> None:
    img = make_luks(2)(tmp_path)
    patch(img, 0, bytes(512))
    info = probe_file(img)
    assert info == FsInfo("crypto_LUKS", U["luks2"], "crypt root")
    assert_blkid_agrees(img, info)


@pytest.mark.host
def test_no_uuid_and_no_label_are_none(tmp_path: Path) -> None:
    need("mkfs.ext4", "mkfs.vfat")
    ext = sparse(tmp_path / "e.img", 8 * MiB)
    run("mkfs.ext4", "-q", "-F", "-U", "clear", ext)
    info = probe_file(ext)
    assert info == FsInfo("ext4", None, None)
    assert_blkid_agrees(ext, info)

    fat = sparse(tmp_path / "f.img", 34 * MiB)
    run("mkfs.vfat", "-F", "16", "-i", "00000000", fat)  # label defaults to "NO NAME"
    assert peek(fat, 0x2B, 11) == b"NO NAME    "
    info = probe_file(fat)
    assert info == FsInfo("vfat", None, None)
    assert_blkid_agrees(fat, info)


@pytest.mark.host
def test_blank_and_random_devices_are_nothing(tmp_path: Path) -> None:
    img = sparse(tmp_path / "zero.img", 4 * MiB)
    assert probe_file(img) is None
    assert parts_file(img) is None
    assert "ID_FS_TYPE" not in blkid(img)


@pytest.mark.host
def test_erofs_uuid_carrying_ext_magic_is_still_erofs(tmp_path: Path) -> None:
    # UUID bytes 8..9 land on 1080, where ext keeps 0xEF53: the probe order
    # has to put erofs first.
    need("mkfs.erofs")
    src = tmp_path / "tree"
    src.mkdir()
    img = tmp_path / "e.img"
    run("mkfs.erofs", "-U3c4d5e6f-7081-4c2d-53ef-5a6b7c8d9eaf", img, src)
    assert peek(img, 1080, 2) == b"\x53\xef"
    # A zero build time reads as 1 KiB ext blocks, so the ext sanity check
    # alone would not save us; only the order does.
    patch(img, 1024 + 24, bytes(8))
    fix_erofs_csum(img)
    info = probe_file(img)
    assert info == FsInfo("erofs", "3c4d5e6f-7081-4c2d-53ef-5a6b7c8d9eaf", None)


# --------------------------------------------------------------------------
# hostile and maximal labels written straight into the superblock


HOSTILE = [
    b"/",
    b"..",
    b"../../etc/shadow",  # exactly 16 bytes: no NUL terminator on disk
    b"\xff\xfe\x80 bad",
    b"\x1b[2J\x1b[31mred",
    b"back\\slash",
    b"lbl\x00junk after",
    b"trailing   ",
]


@pytest.mark.host
@pytest.mark.parametrize("raw", HOSTILE, ids=lambda r: repr(r)[2:-1])
def test_hostile_ext4_labels(tmp_path: Path, raw: bytes) -> None:
    need("mkfs.ext4")
    img = sparse(tmp_path / "e.img", 8 * MiB)
    run("mkfs.ext4", "-q", "-F", "-U", U["ext4"], img)
    patch(img, 1024 + 0x78, raw.ljust(16, b"\0")[:16])
    fix_ext4_csum(img)
    info = probe_file(img)
    assert info is not None
    expect = raw.split(b"\0")[0].rstrip(b" ")
    assert enc(info.label) == expect
    assert_blkid_agrees(img, info)
    shown = printable(info.label)
    assert shown.isprintable()
    assert "\x1b" not in shown


@pytest.mark.host
def test_hostile_label_rendering(tmp_path: Path) -> None:
    need("mkfs.ext4")
    img = sparse(tmp_path / "e.img", 8 * MiB)
    run("mkfs.ext4", "-q", "-F", img)
    patch(img, 1024 + 0x78, b"\xff/..\\\x1b[1m\xe2\x80\xaeab\xc3\xa4")
    fix_ext4_csum(img)
    info = probe_file(img)
    assert info is not None
    assert info.label == "\udcff/..\\\x1b[1m\u202eab\xe4"
    assert printable(info.label) == "\\xff/..\\\\\\x1b[1m\\xe2\\x80\\xaeabä"


@pytest.mark.host
def test_ext4_superblock_checksum_is_enforced(tmp_path: Path) -> None:
    need("mkfs.ext4")
    img = sparse(tmp_path / "e.img", 8 * MiB)
    run("mkfs.ext4", "-q", "-F", "-O", "metadata_csum", img)
    patch(img, 1024 + 0x78, b"evil")
    with pytest.raises(ProbeError, match="ext4 superblock checksum") as exc:
        probe_file(img)
    assert exc.value.offset == 1024
    assert isinstance(exc.value, ValueError)


@pytest.mark.host
def test_max_length_labels(tmp_path: Path) -> None:
    need("mkfs.xfs", "mkfs.btrfs", "mkfs.vfat", "mkswap", "mkfs.erofs")
    xfs = make_xfs(tmp_path)
    patch(xfs, 108, b"\xffABCDEFGHIJ/")  # 12 bytes, no NUL
    info = probe_file(xfs)
    assert info == FsInfo("xfs", U["xfs"], "\udcffABCDEFGHIJ/")
    assert_blkid_agrees(xfs, info)

    btrfs = make_btrfs(tmp_path)
    long = b"b" * 200 + b"\xc3\xa4" * 27 + b"z"  # 255 bytes + the NUL that ends the field
    patch(btrfs, 0x1012B, long + b"\0")
    fix_btrfs_csum(btrfs)
    info = probe_file(btrfs)
    assert info is not None
    assert enc(info.label) == long
    assert_blkid_agrees(btrfs, info)

    fat = make_vfat(32, "01234567", "ABCDEFGHIJK", 40)(tmp_path)
    info = probe_file(fat)
    assert info == FsInfo("vfat", "0123-4567", "ABCDEFGHIJK")
    assert_blkid_agrees(fat, info)
    # blkid prefers the root-directory label; the boot-sector copy is ours.
    patch(fat, 0x47, b"..\xe9/SLASH/.")
    info = probe_file(fat)
    assert info == FsInfo("vfat", "0123-4567", "..\udce9/SLASH/.")
    assert_blkid_agrees(fat, info, label_key="ID_FS_LABEL_FATBOOT_ENC")

    swap = make_swap(tmp_path)
    patch(swap, 1024 + 28, b"0123456789abcdef")
    info = probe_file(swap)
    assert info == FsInfo("swap", U["swap"], "0123456789abcdef")
    assert_blkid_agrees(swap, info)

    ero_dir = tmp_path / "ero"
    ero_dir.mkdir()
    ero_img = make_erofs(ero_dir)
    patch(ero_img, 1024 + 0x40, b"sixteen-bytes-..")
    fix_erofs_csum(ero_img)
    info = probe_file(ero_img)
    assert info == FsInfo("erofs", U["erofs"], "sixteen-bytes-..")
    assert_blkid_agrees(ero_img, info)
    patch(ero_img, 1024 + 0x40, b"X")  # checksum now stale
    with pytest.raises(ProbeError, match="erofs superblock checksum"):
        probe_file(ero_img)


# --------------------------------------------------------------------------
# truncated devices


def truncated(path: Path, length: int) -> ReadAt:
    data = path.read_bytes()[:length]
    return lambda off, n: data[off : off + n]


@pytest.mark.host
def test_truncated_filesystems(tmp_path: Path) -> None:
    ext = make_ext("ext4")(tmp_path)
    assert probe_filesystem(truncated(ext, 0)) is None
    assert probe_filesystem(truncated(ext, 1024)) is None
    assert probe_filesystem(truncated(ext, 1079)) is None  # magic itself cut
    with pytest.raises(ProbeError, match="ext superblock truncated") as exc:
        probe_filesystem(truncated(ext, 1024 + 0x3A))
    assert exc.value.offset == 1024
    assert probe_filesystem(truncated(ext, 2048)) == FsInfo("ext4", U["ext4"], "my ext4")

    xfs = make_xfs(tmp_path)
    with pytest.raises(ProbeError, match="xfs superblock truncated"):
        probe_filesystem(truncated(xfs, 100))

    btrfs = make_btrfs(tmp_path)
    with pytest.raises(ProbeError, match="btrfs superblock truncated"):
        probe_filesystem(truncated(btrfs, 0x10000 + 0x100))


# --------------------------------------------------------------------------
# GPT


GPT_TYPES = {
    "esp": "c12a7328-f81f-11d2-ba4b-00a0c93ec93b",
    "linux": "0fc63daf-8483-4772-8e79-3d69d8477de4",
    "swap": "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f",
}
LONG_NAME = "n" * 30 + "äöü/.."  # 36 UTF-16 code units: the whole field


def make_gpt(tmp: Path, name: str = "gpt.img", mib: int = 16) -> tuple[Path, PartitionTable]:
    need("sfdisk")
    img = sparse(tmp / name, mib * MiB)
    script = f"""label: gpt
label-id: 01234567-89AB-CDEF-0123-456789ABCDEF
first-lba: 2048
{img}1 : start=2048, size=2048, type={GPT_TYPES["esp"].upper()}, uuid=11111111-2222-4333-8444-555555555555, name="EFI System"
{img}2 : start=4096, size=8192, type={GPT_TYPES["linux"]}, uuid=AABBCCDD-EEFF-4011-8233-445566778899, name="root ÄÖ"
{img}4 : start=12288, size=2048, type={GPT_TYPES["swap"]}, uuid=00112233-4455-4677-8899-aabbccddeeff, name="{LONG_NAME}"
"""  # noqa: E501
    run("sfdisk", "-q", img, stdin=script)
    expected = PartitionTable(
        "gpt",
        "01234567-89ab-cdef-0123-456789abcdef",
        (
            Partition(
                1,
                2048 * 512,
                2048 * 512,
                "11111111-2222-4333-8444-555555555555",
                "EFI System",
                GPT_TYPES["esp"],
            ),
            Partition(
                2,
                4096 * 512,
                8192 * 512,
                "aabbccdd-eeff-4011-8233-445566778899",
                "root ÄÖ",
                GPT_TYPES["linux"],
            ),
            Partition(
                4,
                12288 * 512,
                2048 * 512,
                "00112233-4455-4677-8899-aabbccddeeff",
                LONG_NAME,
                GPT_TYPES["swap"],
            ),
        ),
    )
    return img, expected


def gpt_fix_header_crc(img: Path, lba: int, ss: int = 512) -> None:
    hdr = bytearray(peek(img, lba * ss, ss))
    (hsz,) = struct.unpack_from("<I", hdr, 12)
    hdr[16:20] = bytes(4)
    patch(img, lba * ss + 16, struct.pack("<I", zlib.crc32(bytes(hdr[:hsz]))))


def last_lba(img: Path, ss: int = 512) -> int:
    return img.stat().st_size // ss - 1


@pytest.mark.host
def test_gpt(tmp_path: Path) -> None:
    img, expected = make_gpt(tmp_path)
    table = parts_file(img)
    assert table == expected
    assert_partx_agrees(img, expected)
    assert probe_file(img) is None  # a protective MBR is not a FAT boot sector


@pytest.mark.host
def test_gpt_partition_holds_filesystem(tmp_path: Path) -> None:
    need("mkfs.ext4")
    img, expected = make_gpt(tmp_path)
    root = expected.partitions[1]
    fs = sparse(tmp_path / "root.img", root.size)
    run("mkfs.ext4", "-q", "-F", "-U", U["ext4"], "-L", "inner", fs)
    patch(img, root.start, fs.read_bytes())
    with img.open("rb") as f:
        table = probe_partitions(file_reader(f), img.stat().st_size)
        assert table == expected
        window = next(p for p in table.partitions if p.number == 2)

        def read(off: int, n: int) -> bytes:
            n = max(0, min(n, window.size - off))
            return file_reader(f)(window.start + off, n)

        assert probe_filesystem(read) == FsInfo("ext4", U["ext4"], "inner")


@pytest.mark.host
def test_gpt_corrupt_primary_header_uses_backup(tmp_path: Path) -> None:
    img, expected = make_gpt(tmp_path)
    patch(img, 512 + 56, b"\x99")  # inside the disk GUID: header CRC now wrong
    assert parts_file(img) == expected
    assert_partx_agrees(img, expected)  # blkid falls back the same way


@pytest.mark.host
def test_gpt_corrupt_primary_entries_uses_backup(tmp_path: Path) -> None:
    img, expected = make_gpt(tmp_path)
    patch(img, 2 * 512 + 56, b"X")  # first entry's name: array CRC now wrong
    assert parts_file(img) == expected


@pytest.mark.host
def test_gpt_claiming_2_31_entries(tmp_path: Path) -> None:
    img, expected = make_gpt(tmp_path)
    patch(img, 512 + 80, struct.pack("<I", 2**31))
    gpt_fix_header_crc(img, 1)
    size = img.stat().st_size
    with img.open("rb") as f:
        read = CountingReader(file_reader(f))
        # CRC-valid but absurd primary: backup used
        assert probe_partitions(read, size) == expected
    # MBR, two headers and the backup's 16 KiB array: the claim drove no read.
    assert read.calls == 4
    assert read.bytes == 3 * 512 + 128 * 128
    end = last_lba(img)
    patch(img, end * 512 + 80, struct.pack("<I", 2**31))
    gpt_fix_header_crc(img, end)
    with img.open("rb") as f:
        read = CountingReader(file_reader(f))
        with pytest.raises(ProbeError, match="2147483648 entries") as exc:
            probe_partitions(read, size)
    assert exc.value.offset == 512
    assert (read.calls, read.bytes) == (3, 3 * 512)


@pytest.mark.host
@pytest.mark.parametrize("esz", [0, 64, 130, 4104, 0xFFFFFFF8])
def test_gpt_bad_entry_size(tmp_path: Path, esz: int) -> None:
    img, _ = make_gpt(tmp_path)
    for lba in (1, last_lba(img)):
        patch(img, lba * 512 + 84, struct.pack("<I", esz))
        gpt_fix_header_crc(img, lba)
    with pytest.raises(ProbeError, match=f"entry size {esz} "):
        parts_file(img)


@pytest.mark.host
def test_gpt_both_headers_broken_is_an_error(tmp_path: Path) -> None:
    img, _ = make_gpt(tmp_path)
    patch(img, 512 + 56, b"\x99")
    patch(img, last_lba(img) * 512 + 56, b"\x99")
    with pytest.raises(ProbeError, match=r"header CRC mismatch.*backup: GPT header CRC mismatch"):
        parts_file(img)


@pytest.mark.host
def test_gpt_needs_protective_mbr(tmp_path: Path) -> None:
    img, _ = make_gpt(tmp_path)
    patch(img, 510, b"\0\0")
    assert parts_file(img) is None
    assert "ID_PART_TABLE_TYPE" not in blkid(img)


@pytest.mark.host
def test_gpt_truncated_device(tmp_path: Path) -> None:
    img, _ = make_gpt(tmp_path)
    size = img.stat().st_size
    # The device claims its full size but reads stop after the header.
    with pytest.raises(ProbeError, match="entry array truncated"):
        probe_partitions(truncated(img, 1024), size)
    assert probe_partitions(truncated(img, 1024), 1024) is None  # too small for GPT
    assert probe_partitions(truncated(img, 100), size) is None


def test_protective_mbr_without_gpt_is_nothing() -> None:
    disk = bytearray(4 * MiB)
    disk[446 + 4] = 0xEE
    disk[446 + 8 : 446 + 16] = struct.pack("<II", 1, len(disk) // 512 - 1)
    disk[510:512] = b"\x55\xaa"
    assert probe_partitions(lambda o, n: bytes(disk[o : o + n]), len(disk)) is None


GUID_A = "9e1a2b3c-4d5e-4f60-8a7b-8c9d0e1f2a3b"
GUID_B = "aaaabbbb-cccc-4ddd-8eee-ffff00001111"


@pytest.mark.host
def test_gpt_writer_matches_blkid(tmp_path: Path) -> None:
    disk = build_gpt(512, 8192, GUID_A, [(2048, 4095, GPT_TYPES["linux"], GUID_B, "w")])
    img = tmp_path / "w.img"
    img.write_bytes(disk)
    expected = PartitionTable(
        "gpt", GUID_A, (Partition(1, 2048 * 512, 2048 * 512, GUID_B, "w", GPT_TYPES["linux"]),)
    )
    assert parts_file(img) == expected
    assert_partx_agrees(img, expected)


def test_gpt_4k_sectors() -> None:
    disk = build_gpt(4096, 2048, GUID_A, [(256, 1279, GPT_TYPES["linux"], GUID_B, "four k")])

    def read(o: int, n: int) -> bytes:
        return bytes(disk[o : o + n])

    table = probe_partitions(read, len(disk), 4096)
    assert table == PartitionTable(
        "gpt",
        GUID_A,
        (Partition(1, 256 * 4096, 1024 * 4096, GUID_B, "four k", GPT_TYPES["linux"]),),
    )
    # Probed with the wrong sector size there is no header at LBA 1.
    assert probe_partitions(read, len(disk), 512) is None
    with pytest.raises(ValueError, match="sector size"):
        probe_partitions(read, len(disk), 1000)


def test_gpt_entries_outside_disk_are_skipped_but_keep_numbers() -> None:
    total = 8192
    disk = build_gpt(
        512,
        total,
        GUID_A,
        [
            (2048, 1000, GPT_TYPES["linux"], GUID_B, "reversed"),
            (4096, total + 5, GPT_TYPES["linux"], GUID_B, "beyond end"),
            (6000, 6999, GPT_TYPES["linux"], GUID_B, "\ud800odd"),
        ],
    )
    table = probe_partitions(lambda o, n: bytes(disk[o : o + n]), len(disk))
    assert table is not None
    assert [(p.number, p.partlabel) for p in table.partitions] == [(3, "\ud800odd")]
    assert printable(table.partitions[0].partlabel) == "\\xed\\xa0\\x80odd"


# --------------------------------------------------------------------------
# DOS / MBR


DOS_SCRIPT = """label: dos
label-id: 0xdeadbeef
start=2048, size=4096, type=83, bootable
start=6144, size=40960, type={ext}
start=8192, size=4096, type=82
start=14336, size=8192, type=83
start=24576, size=2048, type=c
start=47104, size=4096, type=7
"""


def make_dos(tmp: Path, ext: str = "5") -> tuple[Path, PartitionTable]:
    need("sfdisk")
    img = sparse(tmp / "dos.img", 32 * MiB)
    run("sfdisk", "-q", img, stdin=DOS_SCRIPT.format(ext=ext))

    def part(nr: int, start: int, size: int, ptype: str) -> Partition:
        return Partition(nr, start * 512, size * 512, f"deadbeef-{nr:02x}", None, ptype)

    expected = PartitionTable(
        "dos",
        "deadbeef",
        (
            part(1, 2048, 4096, "0x83"),
            part(2, 6144, 40960, f"0x{int(ext, 16):x}"),
            part(3, 47104, 4096, "0x7"),
            part(5, 8192, 4096, "0x82"),
            part(6, 14336, 8192, "0x83"),
            part(7, 24576, 2048, "0xc"),
        ),
    )
    return img, expected


def ebr_chain(img: Path, ext_start: int = 6144) -> list[int]:
    """Sectors of the EBRs, found independently of the module under test."""
    out, cur = [], ext_start
    while True:
        out.append(cur)
        ebr = peek(img, cur * 512, 512)
        rel, count = struct.unpack_from("<II", ebr, 446 + 16 + 8)
        if not count:
            return out
        cur = ext_start + rel


@pytest.mark.host
@pytest.mark.parametrize("ext", ["5", "f", "85"])
def test_dos_with_logical_partitions(tmp_path: Path, ext: str) -> None:
    img, expected = make_dos(tmp_path, ext)
    assert parts_file(img) == expected
    assert_partx_agrees(img, expected)
    assert probe_file(img) is None


@pytest.mark.host
def test_dos_ebr_chain_loop_terminates(tmp_path: Path) -> None:
    img, expected = make_dos(tmp_path)
    chain = ebr_chain(img)
    assert len(chain) == 3
    # Make the last EBR link back to the first one.
    patch(
        img,
        chain[-1] * 512 + 446 + 16,
        bytes([0, 0, 0, 0, 5, 0, 0, 0]) + struct.pack("<II", 0, 2048),
    )
    size = img.stat().st_size
    with img.open("rb") as f:
        read = CountingReader(file_reader(f))
        assert probe_partitions(read, size) == expected
        # The MBR and each of the three EBRs once: the loop is noticed, not walked.
        assert read.calls == 4
        # And an EBR that links to itself.
        patch(img, chain[0] * 512 + 446 + 16 + 8, struct.pack("<II", 0, 2048))
        read = CountingReader(file_reader(f))
        table = probe_partitions(read, size)
    assert table is not None
    assert [p.number for p in table.partitions] == [1, 2, 3, 5]
    assert read.calls == 2


def test_dos_logical_partitions_are_capped() -> None:
    ext_start, hops = 2048, 200
    disk = bytearray((ext_start + 2 * hops + 8) * 512)

    def entry(sector: int, slot: int, ptype: int, lba: int, count: int) -> None:
        o = sector * 512 + 446 + 16 * slot
        disk[o + 4] = ptype
        disk[o + 8 : o + 16] = struct.pack("<II", lba, count)
        disk[sector * 512 + 510 : sector * 512 + 512] = b"\x55\xaa"

    struct.pack_into("<I", disk, 440, 0x0BADCAFE)
    entry(0, 0, 0x0F, ext_start, 2 * hops + 4)
    for k in range(hops):
        ebr = ext_start + 2 * k
        entry(ebr, 0, 0x83, 1, 1)
        entry(ebr, 1, 0x05, 2 * (k + 1), 2)
    table = probe_partitions(lambda o, n: bytes(disk[o : o + n]), len(disk))
    assert table is not None
    logical = table.partitions[1:]
    assert len(logical) == 128
    assert logical[0] == Partition(5, (ext_start + 1) * 512, 512, "0badcafe-05", None, "0x83")
    assert logical[-1].number == 132
    assert logical[-1].partuuid == "0badcafe-84"


@pytest.mark.host
def test_fat_superfloppy_is_not_a_partition_table(tmp_path: Path) -> None:
    fat = make_vfat(16, "1234ABCD", "EFI16", 34)(tmp_path)
    assert peek(fat, 510, 2) == b"\x55\xaa"
    assert parts_file(fat) is None
    assert "ID_PART_TABLE_TYPE" not in blkid(fat)


def test_dos_without_signature_or_bad_boot_flag() -> None:
    mbr = bytearray(512)
    mbr[446 + 4] = 0x83
    mbr[446 + 8 : 446 + 16] = struct.pack("<II", 1, 100)
    assert probe_partitions(lambda o, n: bytes(mbr[o : o + n]), 512 * 200) is None
    mbr[510:512] = b"\x55\xaa"
    table = probe_partitions(lambda o, n: bytes(mbr[o : o + n]), 512 * 200)
    # No disk signature: no PTUUID (blkid), PARTUUID as the kernel prints it.
    assert table == PartitionTable(
        "dos", None, (Partition(1, 512, 51200, "00000000-01", None, "0x83"),)
    )
    mbr[446] = 0x7F
    assert probe_partitions(lambda o, n: bytes(mbr[o : o + n]), 512 * 200) is None


# --------------------------------------------------------------------------
# printable()


@pytest.mark.parametrize(
    ("text", "limit", "shown"),
    [
        (None, 64, ""),
        ("root", 64, "root"),
        ("a b/..", 64, "a b/.."),
        ("tab\there", 64, "tab\\x09here"),
        ("\x1b[31m", 64, "\\x1b[31m"),
        ("back\\slash", 64, "back\\\\slash"),
        ("\udcff\udc80", 64, "\\xff\\x80"),
        ("\u202eevil", 64, "\\xe2\\x80\\xaeevil"),
        ("ÄÖ✓", 64, "ÄÖ✓"),
        ("x" * 64, 64, "x" * 64),
        ("x" * 65, 64, "x" * 63 + "…"),
        ("abc\x00def", 6, "abc…"),  # never cut an escape in half
        ("\x00", 1, "…"),
    ],
)
def test_printable(text: str | None, limit: int, shown: str) -> None:
    assert printable(text, limit) == shown
    assert len(printable(text, limit)) <= limit


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.integers(1, 80))
def test_printable_properties(raw: bytes, limit: int) -> None:
    text = raw.decode("utf-8", "surrogateescape")
    shown = printable(text, limit)
    assert len(shown) <= limit
    assert shown.isprintable()
    # Untruncated, the rendering is lossless: undoing the escapes gives the bytes back.
    assert unescape(printable(text, 10_000).encode()) == raw


def test_printable_rejects_nonpositive_limit() -> None:
    with pytest.raises(ValueError, match="limit"):
        printable("x", 0)


def test_probe_error_carries_offset() -> None:
    err = ProbeError(4096, "something odd")
    assert isinstance(err, ValueError)
    assert (err.offset, err.reason) == (4096, "something odd")
    assert str(err) == "something odd (at byte offset 4096)"


# --------------------------------------------------------------------------
# fuzzing: anything at all must give a result, None or ProbeError, quickly


# The most work any input may cause, counted rather than timed.  A file
# system probe asks every format once (about 36 reads, under 100 KiB with a
# 64 KiB erofs block); a partition probe reads the MBR, then either two GPT
# headers with their arrays (1 MiB each at most) or up to four EBR chains of
# 256 hops each.
FS_MAX_CALLS = 40
FS_MAX_BYTES = 128 * 1024
PT_MAX_CALLS = 1 + 4 * 256
PT_MAX_BYTES = 512 + 2 * (65536 + (1 << 20)) + 4 * 256 * 512


class GuardedReader:
    """Serves bytes from memory, counting calls and bytes, refusing unbounded reads."""

    def __init__(self, data: bytes | bytearray, limit: int | None = None) -> None:
        self.data = data
        self.limit = len(data) if limit is None else min(limit, len(data))
        self.calls = 0
        self.bytes = 0

    def __call__(self, offset: int, length: int) -> bytes:
        assert offset >= 0, offset
        assert 0 <= length <= 1 << 20, length
        self.calls += 1
        self.bytes += length
        end = min(offset + length, self.limit)
        return bytes(self.data[offset:end]) if end > offset else b""


def check_both(read: GuardedReader, size: int) -> None:
    for probe, max_calls, max_bytes in (
        (lambda: probe_filesystem(read, size), FS_MAX_CALLS, FS_MAX_BYTES),
        (lambda: probe_partitions(read, size), PT_MAX_CALLS, PT_MAX_BYTES),
    ):
        read.calls = read.bytes = 0
        try:
            result = probe()
        except ProbeError as exc:
            assert str(exc)
            event(f"ProbeError: {exc.reason.split(':')[0]}")
        else:
            assert result is None or isinstance(result, FsInfo | PartitionTable)
            if isinstance(result, PartitionTable):
                assert len(result.partitions) <= (4 + 128 if result.kind == "dos" else 8192)
                numbers = [p.number for p in result.partitions]
                assert len(set(numbers)) == len(numbers)
            event(f"{type(result).__name__}: {getattr(result, 'fstype', '')}")
        assert read.calls <= max_calls, read.calls
        assert read.bytes <= max_bytes, read.bytes


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=70000), st.integers(min_value=0, max_value=1 << 40))
def test_fuzz_random_bytes(data: bytes, size: int) -> None:
    check_both(GuardedReader(data), size)
    check_both(GuardedReader(data), len(data))


SECTORS = 64
mbr_entry = st.tuples(
    st.integers(0, 3),  # slot
    st.sampled_from([0x00, 0x80, 0x80, 0x00, 0x7F]),  # boot indicator
    st.sampled_from([0x83, 0x05, 0x0F, 0x85, 0xEE, 0x00, 0x07]),  # type
    st.one_of(st.integers(0, SECTORS + 2), st.integers(0, 2**32 - 1)),  # first LBA
    st.one_of(st.integers(0, SECTORS + 2), st.integers(0, 2**32 - 1)),  # sector count
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, SECTORS - 1), st.lists(mbr_entry, max_size=4)), max_size=12),
    st.binary(max_size=512),
    st.one_of(st.just(SECTORS * 512), st.integers(0, 1 << 44)),
)
def test_fuzz_random_mbr_and_ebr_chains(
    tables: list[tuple[int, list[tuple[int, int, int, int, int]]]], noise: bytes, size: int
) -> None:
    # Random bytes almost never form a table, so build sectors that do
    # (MBR and EBRs, linking anywhere, loops included) over random noise.
    disk = bytearray(SECTORS * 512)
    disk[: len(noise)] = noise
    for sector, entries in [(0, []), *tables]:
        base = sector * 512
        for slot, boot, ptype, lba, count in entries:
            o = base + 446 + 16 * slot
            disk[o] = boot
            disk[o + 4] = ptype
            disk[o + 8 : o + 16] = struct.pack("<II", lba, count)
        disk[base + 510 : base + 512] = b"\x55\xaa"
    check_both(GuardedReader(disk), size)


@pytest.fixture(scope="module")
def ext4_image(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    need("mkfs.ext4")
    img = sparse(tmp_path_factory.mktemp("ext") / "e.img", 4 * MiB)
    run("mkfs.ext4", "-q", "-F", "-U", U["ext4"], "-L", "fuzz", img)
    return img.read_bytes()[: 128 * 1024]


@pytest.fixture(scope="module")
def gpt_image(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    img, _ = make_gpt(tmp_path_factory.mktemp("gpt"), mib=8)
    return img.read_bytes()


mutations = st.lists(st.tuples(st.integers(0, 4095), st.integers(0, 255)), max_size=24)


@pytest.mark.host
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutations, st.booleans(), st.one_of(st.none(), st.integers(0, 4096)))
def test_fuzz_mutated_ext4(
    ext4_image: bytes, muts: list[tuple[int, int]], reseal: bool, cut: int | None
) -> None:
    disk = bytearray(ext4_image)
    for pos, value in muts:
        disk[pos] = value  # the boot block and the superblock
    if reseal:
        disk[1024 + 0x3FC : 1024 + 0x400] = struct.pack(
            "<I", crc32c_raw(bytes(disk[1024 : 1024 + 0x3FC]))
        )
    check_both(GuardedReader(disk, cut), len(disk))


def reseal_gpt(disk: bytearray, lba: int) -> None:
    """Recompute both CRCs of a (mutated) header so the field checks run."""
    off = lba * 512
    (hsz,) = struct.unpack_from("<I", disk, off + 12)
    ents, count, esz = struct.unpack_from("<QII", disk, off + 72)
    if count * esz <= 1 << 20 and ents * 512 + count * esz <= len(disk):
        arr = bytes(disk[ents * 512 : ents * 512 + count * esz])
        struct.pack_into("<I", disk, off + 88, zlib.crc32(arr))
    if 92 <= hsz <= 512:
        struct.pack_into("<I", disk, off + 16, 0)
        struct.pack_into("<I", disk, off + 16, zlib.crc32(bytes(disk[off : off + hsz])))


@pytest.mark.host
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.one_of(st.integers(0, 2 * 512 + 4 * 128), st.integers(-34 * 512, -1)),
            st.integers(0, 255),
        ),
        max_size=24,
    ),
    st.booleans(),
    st.one_of(st.none(), st.integers(0, 2 * MiB)),
    st.sampled_from([512, 512, 512, 4096]),
)
def test_fuzz_mutated_gpt(
    gpt_image: bytes, muts: list[tuple[int, int]], reseal: bool, cut: int | None, ss: int
) -> None:
    disk = bytearray(gpt_image)
    for pos, value in muts:
        disk[pos] = value  # MBR, primary header and entries, backup area
    if reseal:
        reseal_gpt(disk, 1)
        reseal_gpt(disk, len(disk) // 512 - 1)
    read = GuardedReader(disk, cut)
    try:
        table = probe_partitions(read, len(disk), ss)
    except ProbeError as exc:
        event(f"ProbeError: {exc.reason.split(':')[0]}")
    else:
        event(f"table with {len(table.partitions)} partitions" if table else "None")
        if table is not None:
            for p in table.partitions:
                assert p.start >= 0 and p.size > 0
                assert 1 <= p.number <= (1 << 20) // 128
    assert read.calls <= PT_MAX_CALLS
    assert read.bytes <= PT_MAX_BYTES
