"""erofs superblocks, with the checksum the kernel enforces."""

from __future__ import annotations

import struct

from initium.probe.common import FsInfo, ProbeError, crc32c_raw, label, need, take, uuid

TYPE_CHECKING = False
if TYPE_CHECKING:
    from initium.probe.common import ReadAt


def probe(read: ReadAt, size: int | None = None) -> FsInfo | None:
    head = take(read, 1024, 128)
    if head[:4] != b"\xe2\xe1\xf5\xe0":
        return None
    need(head, 128, 1024, "erofs superblock")
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
        block = bytearray(take(read, 1024, length))
        need(bytes(block), length, 1024, "erofs superblock block")
        block[4:8] = b"\0\0\0\0"
        if crc32c_raw(bytes(block)) != stored:
            raise ProbeError(1024, "erofs superblock checksum mismatch")
    return FsInfo("erofs", uuid(head[48:64]), label(head[64:80]))
