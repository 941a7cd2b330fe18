"""DOS (MBR) partition tables with their chains of extended boot records.

Entries count in logical blocks of the disk: on a 4Kn disk an MBR's LBA 8
is byte 32768.  The table itself always fills the first 512 bytes of its
block.
"""

from __future__ import annotations

import struct

from initium.probe import fat
from initium.probe.common import Partition, PartitionTable, take

TYPE_CHECKING = False
if TYPE_CHECKING:
    from initium.probe.common import ReadAt

MAX_LOGICAL = 128
_MAX_EBR_HOPS = 256
_EXTENDED = (0x05, 0x0F, 0x85)
GPT_PROTECTIVE = 0xEE


def entries(sector: bytes) -> list[tuple[int, int, int, int]]:
    """(boot indicator, type, first LBA, sector count) of the four slots."""
    found = []
    for o in range(446, 510, 16):
        lba, count = struct.unpack_from("<II", sector, o + 8)
        found.append((sector[o], sector[o + 4], lba, count))
    return found


def _logicals(
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
        ebr = take(read, cur * ss, 512)
        if len(ebr) < 512 or ebr[510:512] != b"\x55\xaa":
            break
        slots = entries(ebr)
        for i, (_boot, ptype, rel, count) in enumerate(slots):
            if count == 0 or ptype in _EXTENDED:
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
            if len(found) >= MAX_LOGICAL:
                return found
        link = next(
            ((rel, count) for _b, t, rel, count in slots if count and t in _EXTENDED), None
        )
        if link is None:
            break
        cur, cur_size = ext_start + link[0], link[1]
    return found


def probe(read: ReadAt, mbr: bytes, ss: int) -> PartitionTable | None:
    # A FAT boot sector also ends in 55AA; blkid and the kernel both refuse
    # to read its BPB bytes as partition entries.
    if fat.geometry(mbr) is not None:
        return None
    slots = entries(mbr)
    if any(boot not in (0x00, 0x80) for boot, *_ in slots):
        return None
    (disksig,) = struct.unpack_from("<I", mbr, 440)
    parts: list[Partition] = []
    for i, (_boot, ptype, lba, count) in enumerate(slots):
        if count:
            parts.append(
                Partition(
                    i + 1, lba * ss, count * ss, f"{disksig:08x}-{i + 1:02x}", None, f"0x{ptype:x}"
                )
            )
    logical: list[Partition] = []
    for _boot, ptype, lba, count in slots:
        if count and ptype in _EXTENDED and len(logical) < MAX_LOGICAL:
            more = _logicals(read, lba, count, ss, disksig=disksig, first_number=5 + len(logical))
            logical.extend(more[: MAX_LOGICAL - len(logical)])
    return PartitionTable("dos", f"{disksig:08x}" if disksig else None, tuple(parts + logical))
