"""Disk metadata written byte by byte, independently of initium.probe.

mdadm needs the kernel's md driver to create an array, and IMSM and DDF
need firmware or a controller; these writers lay out the same on-disk
structures (from the kernel's md_p.h, SNIA DDF 2.0 and Intel's IMSM
signature) so the probes can be tested without them, and the host tests
check every writer against ``blkid -p``.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import uuid
import zlib
from pathlib import Path

import pytest

MD_MAGIC = 0xA92B4EFC
KiB = 1024


def _fold(total: int) -> int:
    return ((total & 0xFFFFFFFF) + (total >> 32)) & 0xFFFFFFFF


def md1_checksum(sb: bytes) -> int:
    """The kernel's calc_sb_1_csum(), written out word by word."""
    body = bytearray(sb)
    body[216:220] = bytes(4)
    total = 0
    pos = 0
    while pos + 4 <= len(body):
        total += int.from_bytes(body[pos : pos + 4], "little")
        pos += 4
    if pos + 2 <= len(body):
        total += int.from_bytes(body[pos : pos + 2], "little")
    return _fold(total)


def md1_superblock(
    super_offset: int,
    array_uuid: str,
    name: bytes = b"",
    *,
    data_offset: int = 0,
    data_sectors: int = 0,
    max_dev: int = 2,
    dev_number: int = 0,
) -> bytes:
    """A 1.x superblock for a two-disk RAID1, sealed with its checksum."""
    sb = bytearray(256 + 2 * max_dev)
    struct.pack_into("<IIII", sb, 0, MD_MAGIC, 1, 0, 0)
    sb[16:32] = uuid.UUID(array_uuid).bytes
    sb[32 : 32 + len(name)] = name
    struct.pack_into("<QIIQ", sb, 64, 1_700_000_000, 1, 0, data_sectors)
    struct.pack_into("<IIi", sb, 88, 0, 2, 0)
    struct.pack_into("<QQQQ", sb, 128, data_offset, data_sectors, super_offset >> 9, 0)
    struct.pack_into("<II", sb, 160, dev_number, 0)
    sb[168:184] = uuid.UUID(int=0x0123456789ABCDEF0123456789ABCDEF ^ dev_number).bytes
    struct.pack_into("<QQQ", sb, 192, 1_700_000_000, 7, 0xFFFFFFFFFFFFFFFF)
    struct.pack_into("<I", sb, 220, max_dev)
    for i in range(min(max_dev, 2)):
        struct.pack_into("<H", sb, 256 + 2 * i, i)
    for i in range(2, max_dev):
        struct.pack_into("<H", sb, 256 + 2 * i, 0xFFFF)
    struct.pack_into("<I", sb, 216, md1_checksum(bytes(sb)))
    return bytes(sb)


def md0_offset(size: int) -> int:
    return (size & ~0xFFFF) - 0x10000


def md0_superblock(
    words: tuple[int, int, int, int], used_kib: int, *, big_endian: bool = False
) -> bytes:
    """A 0.90 superblock (4 KiB, host-endian) for a two-disk RAID1."""
    order = ">" if big_endian else "<"
    sb = bytearray(4096)
    w0, w1, w2, w3 = words
    struct.pack_into(order + "16I", sb, 0,
                     MD_MAGIC, 0, 90, 0, 0, w0, 1_700_000_000, 1, used_kib, 2, 2, 0, 0,
                     w1, w2, w3)  # fmt: skip
    total = sum(struct.unpack_from(order + "1024I", sb))
    struct.pack_into(order + "I", sb, 38 * 4, _fold(total))
    return bytes(sb)


def md0_blkid_uuid(words: tuple[int, int, int, int]) -> str:
    """How blkid prints a 0.90 array UUID: the four words as big-endian hex."""
    h = "".join(f"{w:08x}" for w in words)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def place(disk: bytearray, offset: int, data: bytes | bytearray) -> None:
    disk[offset : offset + len(data)] = data


def isw_anchor(version: bytes = b"1.3.00") -> bytes:
    return b"Intel Raid ISM Cfg Sig. " + version + bytes(2)


def ddf_anchor(guid: bytes, *, big_endian: bool = True) -> bytes:
    hdr = bytearray(512)
    struct.pack_into(">I" if big_endian else "<I", hdr, 0, 0xDE11DE11)
    hdr[8:32] = guid.ljust(24, b"\0")[:24]
    hdr[32:40] = b"02.00.00"
    return bytes(hdr)


def build_gpt(
    ss: int,
    total: int,
    disk_guid: str,
    parts: list[tuple[int, int, str, str, str]],
    count: int = 128,
) -> bytearray:
    """A minimal, spec-conforming GPT writer for sector sizes sfdisk 2.38 can't do."""
    disk = bytearray(total * ss)
    disk[446 + 4] = 0xEE
    disk[446 + 8 : 446 + 16] = struct.pack("<II", 1, min(total - 1, 0xFFFFFFFF))
    disk[510:512] = b"\x55\xaa"
    array = bytearray(count * 128)
    for i, (first, last, ptype, puuid, name) in enumerate(parts):
        e = 128 * i
        array[e : e + 16] = uuid.UUID(ptype).bytes_le
        array[e + 16 : e + 32] = uuid.UUID(puuid).bytes_le
        struct.pack_into("<QQ", array, e + 32, first, last)
        array[e + 56 : e + 56 + 2 * len(name)] = name.encode("utf-16-le", "surrogatepass")
    array_sectors = -(-len(array) // ss)
    last = total - 1
    for my, alt, ents in ((1, last, 2), (last, 1, last - array_sectors)):
        hdr = bytearray(92)
        hdr[:8] = b"EFI PART"
        struct.pack_into("<II", hdr, 8, 0x10000, 92)
        struct.pack_into("<QQQQ", hdr, 24, my, alt, 2 + array_sectors, last - array_sectors - 1)
        hdr[56:72] = uuid.UUID(disk_guid).bytes_le
        struct.pack_into("<QIII", hdr, 72, ents, count, 128, zlib.crc32(array))
        struct.pack_into("<I", hdr, 16, zlib.crc32(hdr))
        disk[my * ss : my * ss + 92] = hdr
        disk[ents * ss : ents * ss + len(array)] = array
    return disk


def need(*tools: str) -> None:
    """Skip the test, naming the tool, when the host lacks one of ``tools``."""
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (scripts/setup-host installs it)")


def run(*args: str | Path, stdin: str | None = None) -> str:
    """Run a tool that makes an image; its stderr in the failure."""
    proc = subprocess.run(
        [str(a) for a in args], input=stdin, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def sparse(path: Path, size: int) -> Path:
    with path.open("wb") as f:
        f.truncate(size)
    return path
