"""Linux swap areas (blkid TYPE swap, USAGE other)."""

from __future__ import annotations

import struct

from initium.probe.common import FsInfo, label, need, take, uuid

TYPE_CHECKING = False
if TYPE_CHECKING:
    from initium.probe.common import ReadAt


def probe(read: ReadAt, size: int | None = None) -> FsInfo | None:
    # The signature ends the first page, and the page size of the machine
    # that ran mkswap is unknown: try every size blkid tries.
    for pagesize in (0x1000, 0x2000, 0x4000, 0x8000, 0x10000):
        magic = take(read, pagesize - 10, 10)
        if magic == b"SWAP-SPACE":
            return FsInfo("swap", None, None)  # v0 carries no UUID or label
        if magic != b"SWAPSPACE2":
            continue
        hdr = take(read, 1024, 180)
        need(hdr, 180, 1024, "swap header")
        (version,) = struct.unpack_from("<I", hdr, 0)
        (lastpage,) = struct.unpack_from("<I", hdr, 4)
        if version not in (1, 0x01000000) or lastpage == 0:
            return None
        if any(hdr[172:180]):
            # blkid treats garbage in the padding as "no UUID/label here".
            return FsInfo("swap", None, None)
        return FsInfo("swap", uuid(hdr[12:28]), label(hdr[28:44]))
    return None
