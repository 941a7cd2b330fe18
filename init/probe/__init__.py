"""Filesystem, container and partition-table probing without libblkid.

PID 1 in the initramfs has to find the root device by LABEL=, UUID=,
PARTUUID= or PARTLABEL= before anything else is mounted, so it cannot rely
on udev having run and must not pull a C library into the image.  The probes
read a handful of fixed-size structures through a caller-supplied read
function and report what ``blkid -p`` would report for the same bytes, so
that names a user copied from ``blkid`` on the host match at boot.

One module per format family (``raid``, ``luks``, ``lvm``, ``ext`` ...);
this module only decides the order in which they are asked.

The parsers never see a path: the caller decides how a device is opened
(and may hand in a partition window of a disk), and the tests can feed them
arbitrary bytes.  Every read has a fixed upper bound and every loop a fixed
iteration limit, because the bytes may come from a hostile or damaged disk
and a hang or an exception escaping into PID 1 would panic the machine.
Anything that looks like a structure but is internally inconsistent raises
:class:`ProbeError`; anything that carries no signature at all yields None.
"""

from __future__ import annotations

from initium.probe import (
    btrfs,
    dos,
    erofs,
    ext,
    fat,
    gpt,
    luks,
    lvm,
    raid,
    squashfs,
    swap,
    xfs,
)
from initium.probe.common import (
    FsInfo,
    Partition,
    PartitionTable,
    ProbeError,
    is_pow2,
    printable,
    take,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from initium.probe.common import ReadAt

__all__ = [
    "FsInfo",
    "Partition",
    "PartitionTable",
    "ProbeError",
    "printable",
    "probe_filesystem",
    "probe_partitions",
]


# After RAID (probed first, below): containers with strong offset-0
# signatures; then formats whose magic lies inside another format's
# superblock after it (the ext magic at 1080 falls in the erofs UUID, every
# boot sector ends in 55AA); FAT, which has no magic, last.
_AFTER_RAID: tuple[Callable[[ReadAt, int | None], FsInfo | None], ...] = (
    luks.probe,
    lvm.probe,
    xfs.probe,
    squashfs.probe,
    erofs.probe,
    btrfs.probe,
    ext.probe,  # also jbd, the external-journal container
    swap.probe,
    fat.probe,
)


def probe_filesystem(
    read: ReadAt,
    size: int | None = None,
    *,
    partition: bool = False,
    disk_table: PartitionTable | None = None,
) -> FsInfo | None:
    """Identify the container or file system at the start of ``read``.

    Containers come first, RAID members before everything, as in blkid: a
    member of an md RAID1 with metadata 0.90 or 1.0 carries the array's
    file system at offset 0, and that must never answer for the array.
    ``size`` is the device's size in bytes; without it the formats kept at
    the end of a device (md 0.90 and 1.0, IMSM, DDF) cannot be seen, so
    every caller that knows it should pass it.  ``partition`` and
    ``disk_table`` refine two RAID decisions as blkid makes them (see
    :func:`initium.probe.raid.probe`).

    Raises ProbeError when a signature is present but its structure is
    truncated or fails its checksum, since that is a damaged device the
    user will want to hear about.  The result's ``usage`` tells a
    mountable "filesystem" from a container ("raid", "crypto", "other").
    """
    if size is not None and size < 0:
        raise ValueError(f"negative device size {size}")
    info = raid.probe(read, size, partition=partition, disk_table=disk_table)
    if info is not None:
        return info
    for probe in _AFTER_RAID:
        info = probe(read, size)
        if info is not None:
            return info
    return None


def probe_partitions(read: ReadAt, size: int, sector_size: int = 512) -> PartitionTable | None:
    """Parse a GPT or DOS partition table from a whole-disk reader.

    ``size`` is the device size in bytes (the backup GPT lives at its end)
    and ``sector_size`` its logical block size (sysfs
    queue/logical_block_size), the unit of every LBA on disk.  Like blkid
    and the kernel, a GPT is only looked for behind a protective MBR; a GPT
    whose headers are both unusable raises ProbeError rather than silently
    falling back to the protective MBR.
    """
    if not is_pow2(sector_size) or not 512 <= sector_size <= 65536:
        raise ValueError(f"sector size {sector_size} is not a power of two in 512..65536")
    if size < 0:
        raise ValueError(f"negative device size {size}")
    mbr = take(read, 0, 512)
    if len(mbr) < 512 or mbr[510:512] != b"\x55\xaa":
        return None
    if any(ptype == dos.GPT_PROTECTIVE for _b, ptype, _l, _c in dos.entries(mbr)):
        return gpt.probe(read, size, sector_size)
    return dos.probe(read, mbr, sector_size)
