"""Filesystem-superblock and partition-table probing without libblkid.

PID 1 in the initramfs has to find the root device by LABEL=, UUID=,
PARTUUID= or PARTLABEL= before anything else is mounted, so it cannot rely
on udev having run and must not pull a C library into the image.  The probes
here read a handful of fixed-size structures through a caller-supplied read
function and report what blkid would report for the same bytes, so that
names a user copied from ``blkid`` on the host match at boot.

The parsers never see a path: the caller decides how a device is opened
(and may hand in a partition window of a disk), and the tests can feed them
arbitrary bytes.  Every read has a fixed upper bound and every loop a fixed
iteration limit, because the bytes may come from a hostile or damaged disk
and a hang or an exception escaping into PID 1 would panic the machine.
Anything that looks like a structure but is internally inconsistent raises
:class:`ProbeError`; anything that carries no signature at all yields None.
"""

from __future__ import annotations

# GPT names are UTF-16; importing the codec here puts it in the frozen zip
# (a codec looked up by name at run time is invisible to the import trace).
import encodings.utf_16_le  # noqa: F401
import struct
import zlib

from initium.record import record

TYPE_CHECKING = False  # typing's import cost is not paid at boot
if TYPE_CHECKING:
    from collections.abc import Callable

    ReadAt = Callable[[int, int], bytes]
    """read(offset, length): may return fewer bytes at the end of the device."""

__all__ = [
    "FsInfo",
    "Partition",
    "PartitionTable",
    "ProbeError",
    "printable",
    "probe_filesystem",
    "probe_partitions",
]



class ProbeError(ValueError):
    """A signature was found but the structure behind it cannot be trusted.

    Distinct from "nothing here" (None) so that the boot console can say why a
    disk the user expected to work was passed over, with the byte offset to
    look at in a hexdump.
    """

    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(offset, reason)
        self.offset = offset
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.reason} (at byte offset {self.offset})"


@record
class FsInfo:
    """What identifies a filesystem (or container) for LABEL=/UUID= matching."""

    fstype: str
    uuid: str | None
    label: str | None


@record
class Partition:
    """One partition, numbered and named as the kernel exposes it."""

    number: int
    start: int
    size: int
    partuuid: str | None
    partlabel: str | None
    type: str


@record
class PartitionTable:
    """A parsed partition table; ``kind`` uses blkid's PTTYPE names."""

    kind: str
    uuid: str | None
    partitions: tuple[Partition, ...]


# --------------------------------------------------------------------------
# small helpers


def _read(read: ReadAt, offset: int, length: int) -> bytes:
    # A misbehaving reader may hand back more than asked for; never let that
    # shift the offsets of the fields parsed from the result.
    return bytes(read(offset, length)[:length])


def _need(data: bytes, length: int, offset: int, what: str) -> None:
    if len(data) < length:
        raise ProbeError(
            offset, f"{what} truncated: device ends after {len(data)} of {length} bytes"
        )


# blkid trims with C isspace() in the "C" locale, so match exactly that set
# rather than str.strip(), which also eats Unicode spaces.
_C_SPACE = b" \t\n\v\f\r"


def _label(raw: bytes) -> str | None:
    # Same normalisation as blkid_probe_set_label(): stop at NUL, drop
    # trailing whitespace, no label at all when nothing is left.  Bytes that
    # are not UTF-8 survive as surrogates so a label can be compared and
    # re-encoded byte for byte.
    text = raw.split(b"\0", 1)[0].rstrip(_C_SPACE)
    return text.decode("utf-8", "surrogateescape") if text else None


def _uuid(raw: bytes) -> str | None:
    # blkid omits an all-zero UUID (e.g. "tune2fs -U clear"); reporting
    # 00000000-... would let UUID=00000000-... match every such device.
    if len(raw) != 16 or not any(raw):
        return None
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _guid(raw: bytes) -> str | None:
    # EFI GUIDs store the first three fields little-endian; printing the raw
    # bytes in order would give a PARTUUID no other tool agrees with.
    if len(raw) != 16 or not any(raw):
        return None
    d1, d2, d3 = struct.unpack_from("<IHH", raw, 0)
    tail = raw[8:].hex()
    return f"{d1:08x}-{d2:04x}-{d3:04x}-{tail[:4]}-{tail[4:]}"


def _text_id(raw: bytes) -> str | None:
    # LUKS and LVM keep their UUIDs as text, and blkid passes them through.
    text = raw.split(b"\0", 1)[0].rstrip(_C_SPACE)
    return text.decode("ascii", "surrogateescape") if text else None


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return tuple(table)


_CRC32C = _crc32c_table()


def _crc32c_raw(data: bytes, crc: int = 0xFFFFFFFF) -> int:
    # The kernel's crc32c() without the final inversion: ext4 and erofs store
    # exactly this; btrfs stores its complement.  zlib only offers CRC-32.
    table = _CRC32C
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc


def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


# --------------------------------------------------------------------------
# filesystems and containers


_LUKS_MAGIC = b"LUKS\xba\xbe"
_LUKS_MAGIC2 = b"SKUL\xba\xbe"
# Where cryptsetup may put the LUKS2 secondary header (LUKS2_HDR2_OFFSETS).
_LUKS2_HDR2_OFFSETS = (
    0x4000,
    0x8000,
    0x10000,
    0x20000,
    0x40000,
    0x80000,
    0x100000,
    0x200000,
    0x400000,
)


def _luks_info(hdr: bytes, offset: int) -> FsInfo | None:
    _need(hdr, 264, offset, "LUKS header")
    (version,) = struct.unpack_from(">H", hdr, 6)
    if version == 2:
        (hdr_offset,) = struct.unpack_from(">Q", hdr, 256)
        if hdr_offset != offset:
            # A stale copy (e.g. inside a backup image) is not this device's.
            return None
        return FsInfo("crypto_LUKS", _text_id(hdr[168:208]), _label(hdr[24:72]))
    if version == 1:
        # LUKS1 has no secondary header; "SKUL" with version 1 is not one.
        return FsInfo("crypto_LUKS", _text_id(hdr[168:208]), None) if offset == 0 else None
    raise ProbeError(offset, f"LUKS header with unknown version {version}")


def _probe_luks(read: ReadAt) -> FsInfo | None:
    hdr = _read(read, 0, 512)
    if hdr[:6] == _LUKS_MAGIC:
        info = _luks_info(hdr, 0)
        if info is not None:
            return info
    # cryptsetup can still open a device whose primary header was wiped, so
    # blkid looks for the secondary header too, and so do we.
    for off in _LUKS2_HDR2_OFFSETS:
        hdr = _read(read, off, 512)
        if hdr[:6] == _LUKS_MAGIC2:
            info = _luks_info(hdr, off)
            if info is not None:
                return info
    return None


def _probe_lvm2(read: ReadAt) -> FsInfo | None:
    # The label may sit in any of the first four sectors; LVM's own CRC
    # (CRC-32 seeded with 0xf597a6cf, no final inversion) guards it.
    buf = _read(read, 0, 2048)
    for sector in range(4):
        lab = buf[sector * 512 : sector * 512 + 512]
        if lab[:8] != b"LABELONE" or lab[24:32] != b"LVM2 001":
            continue
        off = sector * 512
        _need(lab, 512, off, "LVM2 label")
        sector_xl, crc, pvh_off = struct.unpack_from("<QII", lab, 8)
        if sector_xl != sector:
            continue
        if zlib.crc32(lab[20:], 0xF597A6CF ^ 0xFFFFFFFF) ^ 0xFFFFFFFF != crc:
            raise ProbeError(off, "LVM2 label checksum mismatch")
        if not 32 <= pvh_off <= 512 - 32:
            raise ProbeError(off, f"LVM2 PV header offset {pvh_off} out of range")
        pv = _text_id(lab[pvh_off : pvh_off + 32])
        if pv is not None and len(pv) == 32:
            # blkid prints the 32 characters in LVM's 6-4-4-4-4-4-6 grouping.
            pv = "-".join(
                (pv[0:6], pv[6:10], pv[10:14], pv[14:18], pv[18:22], pv[22:26], pv[26:32])
            )
        return FsInfo("LVM2_member", pv, None)
    return None


def _probe_xfs(read: ReadAt) -> FsInfo | None:
    sb = _read(read, 0, 512)
    if sb[:4] != b"XFSB":
        return None
    _need(sb, 128, 0, "xfs superblock")
    blocksize, dblocks = struct.unpack_from(">IQ", sb, 4)
    rextsize, agblocks, agcount = struct.unpack_from(">III", sb, 80)
    sectsize, inodesize, _inopblock = struct.unpack_from(">HHH", sb, 102)
    blocklog, sectlog, inodelog, inopblog = sb[120], sb[121], sb[122], sb[123]
    imax_pct = sb[127]
    # The sanity checks of blkid's xfs_verify_sb(): "XFSB" alone is four
    # bytes that stale or random data can carry.
    sane = (
        agcount > 0
        and 9 <= sectlog <= 15
        and sectsize == 1 << sectlog
        and 9 <= blocklog <= 16
        and blocksize == 1 << blocklog
        and 8 <= inodelog <= 11
        and inodesize == 1 << inodelog
        and blocklog - inodelog == inopblog
        and 4096 <= rextsize * blocksize <= 1 << 30
        and imax_pct <= 100
        and dblocks != 0
        and (agcount - 1) * agblocks + 64 <= dblocks <= agcount * agblocks
    )
    if not sane:
        return None
    return FsInfo("xfs", _uuid(sb[32:48]), _label(sb[108:120]))


def _probe_squashfs(read: ReadAt) -> FsInfo | None:
    sb = _read(read, 0, 32)
    if sb[:4] != b"hsqs":
        return None
    _need(sb, 32, 0, "squashfs superblock")
    (major,) = struct.unpack_from("<H", sb, 28)
    if major != 4:
        # Squashfs 1-3 ("squashfs3" in blkid) cannot be mounted by Linux >= 2.6.29.
        return None
    return FsInfo("squashfs", None, None)


def _probe_erofs(read: ReadAt) -> FsInfo | None:
    head = _read(read, 1024, 128)
    if head[:4] != b"\xe2\xe1\xf5\xe0":
        return None
    _need(head, 128, 1024, "erofs superblock")
    stored, compat = struct.unpack_from("<II", head, 4)
    blkszbits = head[12]
    # blkid stops at 4 KiB blocks; the kernel takes up to PAGE_SIZE, which
    # is 64 KiB on some machines.
    if not 9 <= blkszbits <= 16:
        return None
    if compat & 0x1:  # EROFS_FEATURE_COMPAT_SB_CHKSUM
        # The kernel refuses to mount on a mismatch; say so rather than
        # offering a device that will fail later.
        length = 1 << blkszbits
        if length > 1024:
            length -= 1024
        block = bytearray(_read(read, 1024, length))
        _need(bytes(block), length, 1024, "erofs superblock block")
        block[4:8] = b"\0\0\0\0"
        if _crc32c_raw(bytes(block)) != stored:
            raise ProbeError(1024, "erofs superblock checksum mismatch")
    return FsInfo("erofs", _uuid(head[48:64]), _label(head[64:80]))


def _probe_btrfs(read: ReadAt) -> FsInfo | None:
    base = 0x10000
    sb = _read(read, base, 4096)
    if sb[0x40:0x48] != b"_BHRfS_M":
        return None
    _need(sb, 4096, base, "btrfs superblock")
    (csum_type,) = struct.unpack_from("<H", sb, 0xC4)
    if csum_type == 0:  # crc32c; xxhash/sha256/blake2 are left unverified
        (stored,) = struct.unpack_from("<I", sb, 0)
        if _crc32c_raw(sb[0x20:]) ^ 0xFFFFFFFF != stored:
            raise ProbeError(base, "btrfs superblock checksum mismatch")
    return FsInfo("btrfs", _uuid(sb[0x20:0x30]), _label(sb[0x12B:0x22B]))


_EXT3_HAS_JOURNAL = 0x0004
_EXT3_JOURNAL_DEV = 0x0008
_EXT4_METADATA_CSUM = 0x0400
# Feature sets ext2/ext3 drivers understand (blkid's *_FEATURE_*_SUPP).
_EXT2_RO_COMPAT_SUPP = 0x0001 | 0x0002 | 0x0004
_EXT2_INCOMPAT_SUPP = 0x0002 | 0x0010
_EXT3_INCOMPAT_SUPP = 0x0002 | 0x0004 | 0x0010


def _probe_ext(read: ReadAt) -> FsInfo | None:
    sb = _read(read, 1024, 1024)
    if sb[0x38:0x3A] != b"\x53\xef":
        return None
    _need(sb, 1024, 1024, "ext superblock")
    (log_block_size,) = struct.unpack_from("<I", sb, 0x18)
    if log_block_size > 6:  # more than 64 KiB blocks: not something Linux made
        return None
    compat, incompat, ro_compat = struct.unpack_from("<III", sb, 0x5C)
    if ro_compat & _EXT4_METADATA_CSUM:
        (stored,) = struct.unpack_from("<I", sb, 0x3FC)
        if _crc32c_raw(sb[:0x3FC]) != stored:
            raise ProbeError(1024, "ext4 superblock checksum mismatch")
    # Same decision as blkid's probe_ext2/3/4 (leaving out its look at
    # /proc/filesystems): the name is the oldest driver that understands
    # every feature flag that is set.
    if incompat & _EXT3_JOURNAL_DEV:
        fstype = "jbd"
    elif ro_compat & ~_EXT2_RO_COMPAT_SUPP:
        fstype = "ext4"
    elif compat & _EXT3_HAS_JOURNAL:
        fstype = "ext3" if not incompat & ~_EXT3_INCOMPAT_SUPP else "ext4"
    else:
        fstype = "ext2" if not incompat & ~_EXT2_INCOMPAT_SUPP else "ext4"
    return FsInfo(fstype, _uuid(sb[0x68:0x78]), _label(sb[0x78:0x88]))


def _probe_swap(read: ReadAt) -> FsInfo | None:
    # The signature ends the first page, and the page size of the machine
    # that ran mkswap is unknown: try every size blkid tries.
    for pagesize in (0x1000, 0x2000, 0x4000, 0x8000, 0x10000):
        magic = _read(read, pagesize - 10, 10)
        if magic == b"SWAP-SPACE":
            return FsInfo("swap", None, None)  # v0 carries no UUID or label
        if magic != b"SWAPSPACE2":
            continue
        hdr = _read(read, 1024, 180)
        _need(hdr, 180, 1024, "swap header")
        (version,) = struct.unpack_from("<I", hdr, 0)
        (lastpage,) = struct.unpack_from("<I", hdr, 4)
        if version not in (1, 0x01000000) or lastpage == 0:
            return None
        if any(hdr[172:180]):
            # blkid treats garbage in the padding as "no UUID/label here".
            return FsInfo("swap", None, None)
        return FsInfo("swap", _uuid(hdr[12:28]), _label(hdr[28:44]))
    return None


_FAT12_MAX = 0xFF4
_FAT16_MAX = 0xFFF4
_FAT32_MAX = 0x0FFFFFF6


def _fat_geometry(bs: bytes) -> tuple[bool, int] | None:
    """Return (is_fat32, sector_size) when the boot sector passes blkid's checks.

    FAT has no real magic, so blkid's fat_valid_superblock() judges the BPB
    instead; an MBR or another filesystem's boot block must not pass.
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
    if not _is_pow2(cluster_size) or not _is_pow2(sector_size):
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


def _probe_vfat(read: ReadAt) -> FsInfo | None:
    bs = _read(read, 0, 512)
    if len(bs) < 512:
        return None
    geometry = _fat_geometry(bs)
    if geometry is None:
        return None
    is_fat32, sector_size = geometry
    if is_fat32:
        (fsinfo_sect,) = struct.unpack_from("<H", bs, 0x30)
        if fsinfo_sect:
            fsinfo = _read(read, fsinfo_sect * sector_size, 512)
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
    uuid = "{:02X}{:02X}-{:02X}{:02X}".format(*serial[::-1]) if any(serial) else None
    label = None if raw_label == b"NO NAME    " else _label(raw_label)
    return FsInfo("vfat", uuid, label)


# Strong, offset-0 signatures first; formats whose magic lies inside another
# format's superblock after it (the ext magic at 1080 falls in the erofs
# UUID, every boot sector ends in 55AA); FAT, which has no magic, last.
_FS_PROBES: tuple[Callable[[ReadAt], FsInfo | None], ...] = (
    _probe_luks,
    _probe_lvm2,
    _probe_xfs,
    _probe_squashfs,
    _probe_erofs,
    _probe_btrfs,
    _probe_ext,
    _probe_swap,
    _probe_vfat,
)


def probe_filesystem(read: ReadAt) -> FsInfo | None:
    """Identify the filesystem or container at the start of ``read``.

    First match wins, in an order chosen so that weak signatures cannot
    shadow strong ones.  Raises ProbeError when a signature is present but
    its structure is truncated or fails its checksum, since that is a
    damaged device the user will want to hear about.
    """
    for probe in _FS_PROBES:
        info = probe(read)
        if info is not None:
            return info
    return None


# --------------------------------------------------------------------------
# partition tables

_MAX_GPT_ENTRIES = 256
_MAX_LOGICAL = 128
_MAX_EBR_HOPS = 256
_DOS_EXTENDED = (0x05, 0x0F, 0x85)
_GPT_PROTECTIVE = 0xEE


class _NoGpt(Exception):
    """Internal: why one GPT header copy was rejected."""

    def __init__(self, offset: int, reason: str, signed: bool) -> None:
        super().__init__(reason)
        self.offset = offset
        self.reason = reason
        self.signed = signed


def _gpt_copy(
    read: ReadAt, lba: int, last_lba: int, ss: int, size: int
) -> tuple[str | None, tuple[Partition, ...]]:
    off = lba * ss
    hdr = _read(read, off, ss)
    if hdr[:8] != b"EFI PART":
        raise _NoGpt(off, "no GPT signature", False)

    def bad(reason: str) -> _NoGpt:
        return _NoGpt(off, reason, True)

    if len(hdr) < 92:
        raise bad("GPT header truncated")
    (hsz, hcrc) = struct.unpack_from("<II", hdr, 12)
    if not 92 <= hsz <= ss:
        raise bad(f"GPT header size {hsz} outside 92..{ss}")
    if len(hdr) < hsz:
        raise bad("GPT header truncated")
    if zlib.crc32(hdr[:16] + b"\0\0\0\0" + hdr[20:hsz]) != hcrc:
        raise bad("GPT header CRC mismatch")
    my_lba, _alt, first, last = struct.unpack_from("<QQQQ", hdr, 24)
    disk_guid = hdr[56:72]
    ents_lba, count, esz, ecrc = struct.unpack_from("<QIII", hdr, 72)
    if my_lba != lba:
        raise bad(f"GPT header claims to be at LBA {my_lba}, found at LBA {lba}")
    if not first <= last <= last_lba:
        raise bad(f"GPT usable range {first}..{last} outside disk (last LBA {last_lba})")
    if first < lba < last:
        raise bad("GPT header lies inside the usable area")
    if not (128 <= esz <= 4096 and esz % 8 == 0):
        raise bad(f"GPT entry size {esz} not a multiple of 8 in 128..4096")
    if not 1 <= count <= _MAX_GPT_ENTRIES:
        raise bad(f"GPT claims {count} entries, limit is {_MAX_GPT_ENTRIES}")
    array_len = count * esz
    if ents_lba == 0 or ents_lba > last_lba or ents_lba * ss + array_len > size:
        raise bad(f"GPT entry array at LBA {ents_lba} lies outside the disk")
    array = _read(read, ents_lba * ss, array_len)
    if len(array) != array_len:
        raise bad("GPT entry array truncated")
    if zlib.crc32(array) != ecrc:
        raise bad("GPT entry array CRC mismatch")

    parts = []
    for i in range(count):
        ent = array[i * esz : i * esz + 128]
        if not any(ent[:16]):
            continue  # unused slot; its number stays reserved, as in the kernel
        start, end = struct.unpack_from("<QQ", ent, 32)
        # The kernel's is_pte_valid(): only the disk end matters, not the
        # usable range; a reversed range would wrap, so drop that too.
        if end < start or end > last_lba:
            continue
        name = ent[56:128].decode("utf-16-le", "surrogatepass").split("\0", 1)[0]
        parts.append(
            Partition(
                number=i + 1,
                start=start * ss,
                size=(end - start + 1) * ss,
                partuuid=_guid(ent[16:32]),
                partlabel=name or None,
                type=_guid(ent[:16]) or "",
            )
        )
    return _guid(disk_guid), tuple(parts)


def _probe_gpt(read: ReadAt, size: int, ss: int) -> PartitionTable | None:
    last_lba = size // ss - 1
    if last_lba < 2:
        return None
    try:
        uuid, parts = _gpt_copy(read, 1, last_lba, ss, size)
    except _NoGpt as primary:
        try:
            # A damaged primary is what the backup at the last LBA is for.
            uuid, parts = _gpt_copy(read, last_lba, last_lba, ss, size)
        except _NoGpt as backup:
            if not (primary.signed or backup.signed):
                return None  # a protective MBR alone: nothing to describe
            raise ProbeError(
                primary.offset if primary.signed else backup.offset,
                f"no usable GPT: primary: {primary.reason}; backup: {backup.reason}",
            ) from None
    return PartitionTable("gpt", uuid, parts)


def _mbr_entries(sector: bytes) -> list[tuple[int, int, int, int]]:
    # (boot indicator, type, first LBA, sector count)
    entries = []
    for o in range(446, 510, 16):
        lba, count = struct.unpack_from("<II", sector, o + 8)
        entries.append((sector[o], sector[o + 4], lba, count))
    return entries


def _dos_logicals(
    read: ReadAt, ext_start: int, ext_size: int, ss: int, *, disksig: int, first_number: int
) -> list[Partition]:
    """Follow one EBR chain the way the kernel's parse_extended() does.

    Data partitions in an EBR are relative to that EBR, links to the next
    EBR relative to the start of the primary extended partition.
    """
    found: list[Partition] = []
    seen: set[int] = set()
    cur, cur_size = ext_start, ext_size
    for _ in range(_MAX_EBR_HOPS):
        if cur in seen:
            break  # a chain pointing back into itself
        seen.add(cur)
        ebr = _read(read, cur * ss, 512)
        if len(ebr) < 512 or ebr[510:512] != b"\x55\xaa":
            break
        entries = _mbr_entries(ebr)
        for i, (_boot, ptype, rel, count) in enumerate(entries):
            if count == 0 or ptype in _DOS_EXTENDED:
                continue
            start = cur + rel
            # Slots 3 and 4 of an EBR often hold garbage: only believe them
            # when they stay inside this EBR's and the container's bounds.
            if i >= 2 and (
                rel + count > cur_size or start < ext_start or start + count > ext_start + ext_size
            ):
                continue
            number = first_number + len(found)
            found.append(
                Partition(
                    number,
                    start * ss,
                    count * ss,
                    f"{disksig:08x}-{number:02x}",
                    None,
                    f"0x{ptype:x}",
                )
            )
            if len(found) >= _MAX_LOGICAL:
                return found
        link = next(
            ((rel, count) for _b, t, rel, count in entries if count and t in _DOS_EXTENDED), None
        )
        if link is None:
            break
        cur, cur_size = ext_start + link[0], link[1]
    return found


def _probe_dos(read: ReadAt, mbr: bytes, ss: int) -> PartitionTable | None:
    # A FAT boot sector also ends in 55AA; blkid and the kernel both refuse
    # to read its BPB bytes as partition entries.
    if _fat_geometry(mbr) is not None:
        return None
    entries = _mbr_entries(mbr)
    if any(boot not in (0x00, 0x80) for boot, *_ in entries):
        return None
    (disksig,) = struct.unpack_from("<I", mbr, 440)
    parts: list[Partition] = []
    for i, (_boot, ptype, lba, count) in enumerate(entries):
        if count:
            parts.append(
                Partition(
                    i + 1, lba * ss, count * ss, f"{disksig:08x}-{i + 1:02x}", None, f"0x{ptype:x}"
                )
            )
    logical: list[Partition] = []
    for _boot, ptype, lba, count in entries:
        if count and ptype in _DOS_EXTENDED and len(logical) < _MAX_LOGICAL:
            more = _dos_logicals(
                read, lba, count, ss, disksig=disksig, first_number=5 + len(logical)
            )
            logical.extend(more[: _MAX_LOGICAL - len(logical)])
    return PartitionTable("dos", f"{disksig:08x}" if disksig else None, tuple(parts + logical))


def probe_partitions(read: ReadAt, size: int, sector_size: int = 512) -> PartitionTable | None:
    """Parse a GPT or DOS partition table from a whole-disk reader.

    ``size`` is the device size in bytes (the backup GPT lives at its end)
    and ``sector_size`` its logical block size, the unit of every LBA on
    disk.  Like blkid and the kernel, a GPT is only looked for behind a
    protective MBR; a GPT whose headers are both unusable raises ProbeError
    rather than silently falling back to the protective MBR.
    """
    if not _is_pow2(sector_size) or not 512 <= sector_size <= 65536:
        raise ValueError(f"sector size {sector_size} is not a power of two in 512..65536")
    if size < 0:
        raise ValueError(f"negative device size {size}")
    mbr = _read(read, 0, 512)
    if len(mbr) < 512 or mbr[510:512] != b"\x55\xaa":
        return None
    if any(ptype == _GPT_PROTECTIVE for _b, ptype, _l, _c in _mbr_entries(mbr)):
        return _probe_gpt(read, size, sector_size)
    return _probe_dos(read, mbr, sector_size)


# --------------------------------------------------------------------------
# console rendering


def printable(text: str | None, limit: int = 64) -> str:
    """Render a label or UUID from disk so it cannot garble the console.

    Labels are attacker-controlled bytes: escape sequences, bidi overrides
    or a few kilobytes of text must not reach the terminal unmodified.
    Non-printable characters become \\xNN per UTF-8 byte (surrogate-escaped
    bytes as the original byte), backslashes are doubled so the escaping is
    unambiguous, and the result never exceeds ``limit`` characters.
    """
    if limit < 1:
        raise ValueError(f"limit must be positive, got {limit}")
    if text is None:
        return ""
    pieces: list[str] = []
    used = 0
    for ch in text:
        code = ord(ch)
        if ch == "\\":
            piece = "\\\\"
        elif 0xDC80 <= code <= 0xDCFF:
            piece = f"\\x{code - 0xDC00:02x}"
        elif ch.isprintable():
            piece = ch
        else:
            piece = "".join(f"\\x{b:02x}" for b in ch.encode("utf-8", "surrogatepass"))
        if used + len(piece) > limit:
            # Make room for the ellipsis without cutting an escape in half.
            while pieces and used + 1 > limit:
                used -= len(pieces.pop())
            return "".join(pieces) + "…"
        pieces.append(piece)
        used += len(piece)
    return "".join(pieces)
