"""RAID members: Linux md (0.90 and 1.x), Intel IMSM and SNIA DDF.

A member of a RAID1 holds a complete copy of the file system inside it, so
without this probe the raw half of a mirror would answer to the array's
root=UUID= and be mounted behind md's back.  These formats are therefore
looked for before any file system (as blkid does, which stops at the first
RAID signature), and several of them live at the end of the device: the
caller has to say how big the device is.

Positions and fields follow the kernel's md_p.h and blkid's linux_raid.c,
isw_raid.c and ddf_raid.c; the UUID reported is the array's, formatted the
way ``blkid -p`` prints it, because that is what a user copies.
"""

from __future__ import annotations

import struct

from initium.probe.common import FsInfo, ProbeError, label, need, take, text_id, uuid

TYPE_CHECKING = False
if TYPE_CHECKING:
    from initium.probe.common import PartitionTable, ReadAt

MD_MAGIC = 0xA92B4EFC
_MD_RESERVED = 0x10000  # 0.90 keeps the last 64 KiB (aligned) for itself
_MD1_CSUM_AT = 216  # sb_csum inside the 1.x superblock
# The kernel refuses a 1.x superblock whose device-role table would not fit
# in 4 KiB with the 256-byte header ((4096 - 256) / 2 entries).
_MD1_MAX_DEV = (4096 - 256) // 2
_ISW_SIGNATURE = b"Intel Raid ISM Cfg Sig. "
_DDF_MAGIC = 0xDE11DE11


def md0_offset(size: int) -> int:
    return (size & ~(_MD_RESERVED - 1)) - _MD_RESERVED


def md10_offset(size: int) -> int:
    return (size & ~0xFFF) - 0x2000


def _covered(table: PartitionTable | None, start: int, length: int) -> bool:
    if table is None:
        return False
    return any(p.start <= start and start + length <= p.start + p.size for p in table.partitions)


def _md0(read: ReadAt, size: int, table: PartitionTable | None) -> FsInfo | None:
    off = md0_offset(size)
    sb = take(read, off, 64)
    if len(sb) < 4:
        return None
    if struct.unpack_from("<I", sb)[0] == MD_MAGIC:
        order = "<"
    elif struct.unpack_from(">I", sb)[0] == MD_MAGIC:
        order = ">"  # made on a big-endian machine: 0.90 is host-endian
    else:
        return None
    need(sb, 64, off, "md 0.90 superblock")
    (minor,) = struct.unpack_from(order + "I", sb, 8)
    (used_kib,) = struct.unpack_from(order + "I", sb, 32)
    used = used_kib << 10
    # blkid's sanity checks: the member must hold the data it claims
    # before the superblock, else the magic is a coincidence.
    if size < used + _MD_RESERVED or off < used:
        return None
    # A superblock inside a partition belongs to that partition, not to
    # the whole disk that happens to end at the same place.
    if _covered(table, off - used, used + _MD_RESERVED):
        return None
    words = [sb[20:24]]
    words += [sb[52:56], sb[56:60], sb[60:64]] if minor >= 90 else [bytes(4)] * 3
    if order == "<":
        # blkid prints each 32-bit word in big-endian byte order.
        words = [w[::-1] for w in words]
    return FsInfo("linux_raid_member", uuid(b"".join(words)), None)


def _md1_csum(sb: bytes) -> int:
    body = sb[:_MD1_CSUM_AT] + bytes(4) + sb[_MD1_CSUM_AT + 4 :]
    whole = len(body) // 4 * 4
    total: int = sum(struct.unpack_from(f"<{whole // 4}I", body))
    if len(body) - whole >= 2:
        total += int.from_bytes(body[whole : whole + 2], "little")
    return ((total & 0xFFFFFFFF) + (total >> 32)) & 0xFFFFFFFF


def _md1(read: ReadAt, off: int) -> FsInfo | None:
    sb = take(read, off, 256)
    if len(sb) < 8:
        return None
    magic, major = struct.unpack_from("<II", sb)
    if magic != MD_MAGIC or major != 1:
        return None
    need(sb, 256, off, "md 1.x superblock")
    (super_offset,) = struct.unpack_from("<Q", sb, 144)
    if super_offset != off >> 9:
        return None  # a copy that was made for another place (e.g. an image of a member)
    stored, max_dev = struct.unpack_from("<II", sb, _MD1_CSUM_AT)
    if max_dev > _MD1_MAX_DEV:
        raise ProbeError(off, f"md superblock claims {max_dev} device roles, limit {_MD1_MAX_DEV}")
    full = take(read, off, 256 + 2 * max_dev)
    need(full, 256 + 2 * max_dev, off, "md 1.x device roles")
    if _md1_csum(full) != stored:
        # The kernel will not assemble it either; still a member, never a file system.
        raise ProbeError(off, "md superblock checksum mismatch")
    return FsInfo("linux_raid_member", uuid(sb[16:32]), label(sb[32:64]))


def _isw(read: ReadAt, size: int) -> FsInfo | None:
    off = (size // 512 - 2) * 512
    sig = take(read, off, len(_ISW_SIGNATURE))
    if sig != _ISW_SIGNATURE:
        return None
    # IMSM names its arrays in the metadata's body; blkid reports no UUID.
    return FsInfo("isw_raid_member", None, None)


def _ddf(read: ReadAt, size: int) -> FsInfo | None:
    # The anchor header is in the last sector; blkid also accepts one 256
    # sectors earlier.
    for back in (1, 257):
        off = (size // 512 - back) * 512
        hdr = take(read, off, 32)
        if len(hdr) < 4 or _DDF_MAGIC not in (
            struct.unpack_from("<I", hdr)[0],
            struct.unpack_from(">I", hdr)[0],
        ):
            continue
        need(hdr, 32, off, "DDF header")
        # The GUID is 24 bytes that blkid copies as a string.
        return FsInfo("ddf_raid_member", text_id(hdr[8:32]), None)
    return None


def probe(
    read: ReadAt,
    size: int | None = None,
    *,
    partition: bool = False,
    disk_table: PartitionTable | None = None,
) -> FsInfo | None:
    """The RAID member at ``read``, in blkid's order: md, DDF, IMSM.

    Without ``size`` only the md formats at the start of the device (1.1,
    1.2) can be seen.  ``partition`` says the device is a partition (IMSM
    lives on whole disks only); ``disk_table`` is the partition table of a
    whole disk, so that a 0.90 superblock belonging to its last partition
    is not taken for the disk's own.
    """
    if size is not None and size > _MD_RESERVED:
        info = _md0(read, size, None if partition else disk_table)
        if info is not None:
            return info
        info = _md1(read, md10_offset(size))
        if info is not None:
            return info
    for off in (0, 0x1000):  # 1.1, then 1.2
        info = _md1(read, off)
        if info is not None:
            return info
    if size is None:
        return None
    if size >= 0x30000:
        info = _ddf(read, size)
        if info is not None:
            return info
    if size >= 0x10000 and not partition:
        return _isw(read, size)
    return None
