"""LUKS1 and LUKS2 headers (blkid TYPE crypto_LUKS, USAGE crypto)."""

from __future__ import annotations

import struct

from initium.probe.common import FsInfo, ProbeError, label, need, take, text_id

TYPE_CHECKING = False
if TYPE_CHECKING:
    from initium.probe.common import ReadAt

_MAGIC = b"LUKS\xba\xbe"
_MAGIC2 = b"SKUL\xba\xbe"
# Where cryptsetup may put the LUKS2 secondary header (LUKS2_HDR2_OFFSETS).
_HDR2_OFFSETS = (
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


def _info(hdr: bytes, offset: int) -> FsInfo | None:
    need(hdr, 264, offset, "LUKS header")
    (version,) = struct.unpack_from(">H", hdr, 6)
    if version == 2:
        (hdr_offset,) = struct.unpack_from(">Q", hdr, 256)
        if hdr_offset != offset:
            # A stale copy (e.g. inside a backup image) is not this device's.
            return None
        return FsInfo("crypto_LUKS", text_id(hdr[168:208]), label(hdr[24:72]))
    if version == 1:
        # LUKS1 has no secondary header; "SKUL" with version 1 is not one.
        return FsInfo("crypto_LUKS", text_id(hdr[168:208]), None) if offset == 0 else None
    raise ProbeError(offset, f"LUKS header with unknown version {version}")


def probe(read: ReadAt, size: int | None = None) -> FsInfo | None:
    hdr = take(read, 0, 512)
    if hdr[:6] == _MAGIC:
        info = _info(hdr, 0)
        if info is not None:
            return info
    # cryptsetup can still open a device whose primary header was wiped, so
    # blkid looks for the secondary header too, and so do we.
    for off in _HDR2_OFFSETS:
        hdr = take(read, off, 512)
        if hdr[:6] == _MAGIC2:
            info = _info(hdr, off)
            if info is not None:
                return info
    return None
