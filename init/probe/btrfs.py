"""btrfs primary superblock (at 64 KiB)."""

from __future__ import annotations

import struct

from initium.probe.common import FsInfo, ProbeError, crc32c_raw, label, need, take, uuid

TYPE_CHECKING = False
if TYPE_CHECKING:
    from initium.probe.common import ReadAt

_BASE = 0x10000


def probe(read: ReadAt, size: int | None = None) -> FsInfo | None:
    sb = take(read, _BASE, 4096)
    if sb[0x40:0x48] != b"_BHRfS_M":
        return None
    need(sb, 4096, _BASE, "btrfs superblock")
    (csum_type,) = struct.unpack_from("<H", sb, 0xC4)
    if csum_type == 0:  # crc32c; xxhash/sha256/blake2 are left unverified
        (stored,) = struct.unpack_from("<I", sb, 0)
        if crc32c_raw(sb[0x20:]) ^ 0xFFFFFFFF != stored:
            raise ProbeError(_BASE, "btrfs superblock checksum mismatch")
    return FsInfo("btrfs", uuid(sb[0x20:0x30]), label(sb[0x12B:0x22B]))
