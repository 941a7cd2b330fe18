"""GUID partition tables, primary and backup.

Every LBA on disk is in units of the disk's logical block size, which the
caller passes in: a 4Kn disk keeps its header at byte 4096, not 512.
"""

from __future__ import annotations

# GPT names are UTF-16; importing the codec here puts it in the frozen zip
# (a codec looked up by name at run time is invisible to the import trace).
import encodings.utf_16_le  # noqa: F401
import struct
import zlib

from initium.probe.common import Partition, PartitionTable, ProbeError, guid, take

TYPE_CHECKING = False
if TYPE_CHECKING:
    from initium.probe.common import ReadAt

# The entry array is bounded by what is read, not by a count of entries:
# the UEFI minimum is 16 KiB (128 x 128 bytes) but tools may write larger
# arrays (1024 entries for some installers, bigger entries for others).
MAX_ARRAY_BYTES = 1 << 20


class _NoGpt(Exception):
    """Internal: why one GPT header copy was rejected."""

    def __init__(self, offset: int, reason: str, signed: bool) -> None:
        super().__init__(reason)
        self.offset = offset
        self.reason = reason
        self.signed = signed


def _copy(
    read: ReadAt, lba: int, last_lba: int, ss: int, size: int
) -> tuple[str | None, tuple[Partition, ...]]:
    off = lba * ss
    hdr = take(read, off, ss)
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
    array_len = count * esz
    if count < 1 or array_len > MAX_ARRAY_BYTES:
        raise bad(
            f"GPT claims {count} entries of {esz} bytes, "
            f"the array must be 1..{MAX_ARRAY_BYTES} bytes"
        )
    if ents_lba == 0 or ents_lba > last_lba or ents_lba * ss + array_len > size:
        raise bad(f"GPT entry array at LBA {ents_lba} lies outside the disk")
    array = take(read, ents_lba * ss, array_len)
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
                partuuid=guid(ent[16:32]),
                partlabel=name or None,
                type=guid(ent[:16]) or "",
            )
        )
    return guid(disk_guid), tuple(parts)


def probe(read: ReadAt, size: int, ss: int) -> PartitionTable | None:
    """The GPT behind a protective MBR, from the primary or else the backup copy."""
    last_lba = size // ss - 1
    if last_lba < 2:
        return None
    try:
        disk_uuid, parts = _copy(read, 1, last_lba, ss, size)
    except _NoGpt as primary:
        try:
            # A damaged primary is what the backup at the last LBA is for.
            disk_uuid, parts = _copy(read, last_lba, last_lba, ss, size)
        except _NoGpt as backup:
            if not (primary.signed or backup.signed):
                return None  # a protective MBR alone: nothing to describe
            raise ProbeError(
                primary.offset if primary.signed else backup.offset,
                f"no usable GPT: primary: {primary.reason}; backup: {backup.reason}",
            ) from None
    return PartitionTable("gpt", disk_uuid, parts)
