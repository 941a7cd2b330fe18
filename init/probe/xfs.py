"""XFS superblocks."""

from __future__ import annotations

import struct

from initium.probe.common import FsInfo, label, need, take, uuid

TYPE_CHECKING = False
if TYPE_CHECKING:
    from initium.probe.common import ReadAt


def probe(read: ReadAt, size: int | None = None) -> FsInfo | None:
    sb = take(read, 0, 512)
    if sb[:4] != b"XFSB":
        return None
    need(sb, 128, 0, "xfs superblock")
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
    return FsInfo("xfs", uuid(sb[32:48]), label(sb[108:120]))
