"""ext2, ext3, ext4, and jbd (an ext journal kept on its own device).

One superblock format serves all four: the name is chosen from the feature
flags the way blkid chooses it, and a superblock with INCOMPAT_JOURNAL_DEV
is an external journal (blkid TYPE jbd, USAGE other), never a file system.
"""

from __future__ import annotations

import struct

from initium.probe.common import FsInfo, ProbeError, crc32c_raw, label, need, take, uuid

TYPE_CHECKING = False
if TYPE_CHECKING:
    from initium.probe.common import ReadAt

_EXT3_HAS_JOURNAL = 0x0004
_EXT3_JOURNAL_DEV = 0x0008
_EXT4_METADATA_CSUM = 0x0400
# Feature sets ext2/ext3 drivers understand (blkid's *_FEATURE_*_SUPP).
_EXT2_RO_COMPAT_SUPP = 0x0001 | 0x0002 | 0x0004
_EXT2_INCOMPAT_SUPP = 0x0002 | 0x0010
_EXT3_INCOMPAT_SUPP = 0x0002 | 0x0004 | 0x0010


def probe(read: ReadAt, size: int | None = None) -> FsInfo | None:
    sb = take(read, 1024, 1024)
    if sb[0x38:0x3A] != b"\x53\xef":
        return None
    need(sb, 1024, 1024, "ext superblock")
    (log_block_size,) = struct.unpack_from("<I", sb, 0x18)
    if log_block_size > 6:  # more than 64 KiB blocks: not something Linux made
        return None
    compat, incompat, ro_compat = struct.unpack_from("<III", sb, 0x5C)
    if ro_compat & _EXT4_METADATA_CSUM:
        (stored,) = struct.unpack_from("<I", sb, 0x3FC)
        if crc32c_raw(sb[:0x3FC]) != stored:
            raise ProbeError(1024, "ext4 superblock checksum mismatch")
    # Same decision as blkid's probe_jbd/ext2/3/4 (leaving out its look at
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
    return FsInfo(fstype, uuid(sb[0x68:0x78]), label(sb[0x78:0x88]))
