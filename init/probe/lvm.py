"""LVM2 physical volume labels (blkid TYPE LVM2_member, USAGE raid)."""

from __future__ import annotations

import struct
import zlib

from initium.probe.common import FsInfo, ProbeError, need, take, text_id

TYPE_CHECKING = False
if TYPE_CHECKING:
    from initium.probe.common import ReadAt


def probe(read: ReadAt, size: int | None = None) -> FsInfo | None:
    # The label may sit in any of the first four sectors; LVM's own CRC
    # (CRC-32 seeded with 0xf597a6cf, no final inversion) guards it.
    buf = take(read, 0, 2048)
    for sector in range(4):
        lab = buf[sector * 512 : sector * 512 + 512]
        if lab[:8] != b"LABELONE" or lab[24:32] != b"LVM2 001":
            continue
        off = sector * 512
        need(lab, 512, off, "LVM2 label")
        sector_xl, crc, pvh_off = struct.unpack_from("<QII", lab, 8)
        if sector_xl != sector:
            continue
        if zlib.crc32(lab[20:], 0xF597A6CF ^ 0xFFFFFFFF) ^ 0xFFFFFFFF != crc:
            raise ProbeError(off, "LVM2 label checksum mismatch")
        if not 32 <= pvh_off <= 512 - 32:
            raise ProbeError(off, f"LVM2 PV header offset {pvh_off} out of range")
        pv = text_id(lab[pvh_off : pvh_off + 32])
        if pv is not None and len(pv) == 32:
            # blkid prints the 32 characters in LVM's 6-4-4-4-4-4-6 grouping.
            pv = "-".join(
                (pv[0:6], pv[6:10], pv[10:14], pv[14:18], pv[18:22], pv[22:26], pv[26:32])
            )
        return FsInfo("LVM2_member", pv, None)
    return None
