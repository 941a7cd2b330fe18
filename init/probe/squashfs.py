"""squashfs 4 (the only version Linux still mounts)."""

from __future__ import annotations

import struct

from initium.probe.common import FsInfo, need, take

TYPE_CHECKING = False
if TYPE_CHECKING:
    from initium.probe.common import ReadAt


def probe(read: ReadAt, size: int | None = None) -> FsInfo | None:
    sb = take(read, 0, 32)
    if sb[:4] != b"hsqs":
        return None
    need(sb, 32, 0, "squashfs superblock")
    (major,) = struct.unpack_from("<H", sb, 28)
    if major != 4:
        # Squashfs 1-3 ("squashfs3" in blkid) cannot be mounted by Linux >= 2.6.29.
        return None
    # squashfs carries neither a UUID nor a label: it is found by path or PARTUUID.
    return FsInfo("squashfs", None, None)
