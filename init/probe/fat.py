"""FAT12/16/32 (blkid TYPE vfat).

FAT has no real magic, so blkid's fat_valid_superblock() judges the BIOS
parameter block instead; the DOS partition-table probe asks the same
question to tell a superfloppy from an MBR.
"""

from __future__ import annotations

import struct

from initium.probe.common import FsInfo, is_pow2, label, take

TYPE_CHECKING = False
if TYPE_CHECKING:
    from initium.probe.common import ReadAt

_FAT12_MAX = 0xFF4
_FAT16_MAX = 0xFFF4
_FAT32_MAX = 0x0FFFFFF6


def geometry(bs: bytes) -> tuple[bool, int] | None:
    """Return (is_fat32, sector_size) when the boot sector passes blkid's checks.

    An MBR or another filesystem's boot block must not pass.
    """
    strong = (
        bs[0x52:0x57] == b"MSWIN"
        or bs[0x52:0x5A] == b"FAT32   "
        or bs[0x36:0x3B] == b"MSDOS"
        or bs[0x36:0x3E] in (b"FAT16   ", b"FAT12   ", b"FAT     ")
    )
    # Without a FAT string blkid accepts a bare jump instruction or 55AA,
    # and then insists on 55AA and on not being a JFS/HPFS pseudo-BPB.
    if not strong and (bs[510:512] != b"\x55\xaa" or bs[0x36:0x3E] in (b"JFS     ", b"HPFS    ")):
        return None
    sector_size, cluster_size, reserved, fats = struct.unpack_from("<HBHB", bs, 0x0B)
    dir_entries, sectors16, media, fat_length16 = struct.unpack_from("<HHBH", bs, 0x11)
    total_sect, fat32_length = struct.unpack_from("<II", bs, 0x20)
    if not fats or not reserved or not (media >= 0xF8 or media == 0xF0):
        return None
    if not is_pow2(cluster_size) or not is_pow2(sector_size):
        return None
    if not 512 <= sector_size <= 4096:
        return None
    sect_count = sectors16 or total_sect
    fat_length = fat_length16 or fat32_length
    if fat_length == 0:
        # No FAT at all: blkid would still say "vfat" (without a UUID), but
        # nothing can mount it, and an MBR must not be mistaken for it.
        return None
    fat_size = fat_length * fats
    dir_size = (dir_entries * 32 + sector_size - 1) // sector_size
    data = sect_count - (reserved + fat_size + dir_size)
    if data < 0:
        return None
    clusters = data // cluster_size
    is_fat32 = fat_length16 == 0
    limit = _FAT16_MAX if clusters > _FAT12_MAX else _FAT12_MAX
    if clusters > (_FAT32_MAX if is_fat32 else limit):
        return None
    return is_fat32, sector_size


def probe(read: ReadAt, size: int | None = None) -> FsInfo | None:
    bs = take(read, 0, 512)
    if len(bs) < 512:
        return None
    found = geometry(bs)
    if found is None:
        return None
    is_fat32, sector_size = found
    if is_fat32:
        (fsinfo_sect,) = struct.unpack_from("<H", bs, 0x30)
        if fsinfo_sect:
            fsinfo = take(read, fsinfo_sect * sector_size, 512)
            if len(fsinfo) < 488:
                return None
            if fsinfo[:4] not in (b"RRaA", b"RRdA", b"\0\0\0\0"):
                return None
            if fsinfo[484:488] not in (b"rrAa", b"\0\0\0\0"):
                return None
        serial, raw_label = bs[0x43:0x47], bs[0x47:0x52]
    else:
        serial, raw_label = bs[0x27:0x2B], bs[0x2B:0x36]
    # blkid's "XXXX-XXXX": the little-endian volume id as uppercase hex.
    vol_id = "{:02X}{:02X}-{:02X}{:02X}".format(*serial[::-1]) if any(serial) else None
    name = None if raw_label == b"NO NAME    " else label(raw_label)
    return FsInfo("vfat", vol_id, name)
