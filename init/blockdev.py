"""Block devices as the kernel lists them in sysfs, probed with our own code.

No udev: every disk and partition under /sys/block is read through the
facade, its superblock (and, for whole disks, partition table) probed, and
the result kept per device so a wait loop probes each device once.  Each
probe gets the device's size (RAID and other metadata live at the end) and
each partition table the disk's logical block size (4K-sector disks).
"""

from __future__ import annotations

from initium.probe import (
    FsInfo,
    PartitionTable,
    ProbeError,
    printable,
    probe_filesystem,
    probe_partitions,
)
from initium.record import record
from initium.rootspec import RootSpec

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from initium.system import System

# A machine with more block devices than this is not waiting for its root
# among them; the bound keeps one scan's work finite whatever sysfs says.
MAX_DEVICES = 4096
EMPTY = "empty"


@record
class BlockDevice:
    name: str
    path: str
    fs: FsInfo | None
    partuuid: str | None = None
    partlabel: str | None = None
    error: str | None = None
    devno: tuple[int, int] | None = None
    disk: str | None = None  # the whole disk of a partition
    number: int | None = None  # the partition number
    # Other names of the device: /dev/mapper/NAME and /dev/VG/LV for
    # device-mapper devices (what udev's links would be).
    aliases: tuple[str, ...] = ()

    @property
    def usage(self) -> str | None:
        """blkid's USAGE of what is on the device, None when nothing was recognised."""
        return self.fs.usage if self.fs is not None else None

    def summary(self) -> str:
        words: list[str] = []
        if self.fs is not None:
            words.append(self.fs.fstype)
            if self.fs.uuid:
                words.append(f"UUID={printable(self.fs.uuid)}")
            if self.fs.label:
                words.append(f"LABEL={printable(self.fs.label)}")
        if self.partuuid:
            words.append(f"PARTUUID={printable(self.partuuid)}")
        if self.partlabel:
            words.append(f"PARTLABEL={printable(self.partlabel)}")
        if self.error == EMPTY:
            words.append("empty")
        elif self.error:
            words.append(f"unreadable: {printable(self.error)}")
        return f"{self.name} ({' '.join(words) or 'no file system'})"

    def matches(self, spec: RootSpec, siblings: list[BlockDevice] | None = None) -> bool:
        """Whether this is the device ``spec`` names (a path matches even when unreadable).

        ``siblings`` are the devices seen with it, for ``PARTUUID=…/PARTNROFF=N``,
        which names the partition N after the one with that PARTUUID on the
        same disk, as the kernel's root= does.
        """
        if spec.kind == "path":
            return (spec.value == self.path or spec.value in self.aliases) and self.error != EMPTY
        if spec.kind == "devno":
            return self.devno is not None and self.devno == spec.devno
        if spec.kind == "uuid":
            return self.fs is not None and spec.matches_uuid(self.fs.uuid)
        if spec.kind == "label":
            return self.fs is not None and self.fs.label == spec.value
        if spec.kind == "partuuid":
            if not spec.partnroff:
                return spec.matches_uuid(self.partuuid)
            return any(s.disk == self.disk and s.number is not None and self.number is not None
                       and s.number + spec.partnroff == self.number
                       and spec.matches_uuid(s.partuuid) for s in siblings or ())
        return self.partlabel == spec.value


def parse_devno(text: str) -> tuple[int, int] | None:
    """sysfs's ``dev`` file ("8:1") as a pair; None for anything else."""
    major, colon, minor = text.strip().partition(":")
    if not colon or not major.isdigit() or not minor.isdigit():
        return None
    return int(major), int(minor)


def dm_aliases(name: str, uuid: str) -> tuple[str, ...]:
    """The /dev names udev would give a device-mapper device called ``name``.

    LVM names its devices VG-LV with every dash inside VG or LV doubled,
    and gives them a ``LVM-`` dm UUID; those also get /dev/VG/LV.
    """
    if not name or "/" in name or name in (".", ".."):
        return ()
    found = [f"/dev/mapper/{name}"]
    if uuid.startswith("LVM-"):
        marker = name.replace("--", "\0")
        vg, dash, lv = marker.partition("-")
        if dash and vg and lv:
            found.append(f"/dev/{vg.replace(chr(0), '-')}/{lv.replace(chr(0), '-')}")
    return tuple(found)


class Scanner:
    """Probes each device once; a device that was unreadable is tried again next scan.

    ``read`` reads a device (path, offset, length); the storage loop hands in
    one that gives up on a device that does not answer in time.
    """

    def __init__(self, sys: System,
                 read: Callable[[str, int, int], bytes] | None = None) -> None:
        self.sys = sys
        self.read = read or sys.read_at
        self.known: dict[str, BlockDevice] = {}
        self.tables: dict[str, PartitionTable | None] = {}

    def _number(self, path: str, limit: int = 64) -> str | None:
        try:
            return self.sys.read_text(path, limit).strip()
        except OSError:
            return None

    def _size(self, sysdir: str) -> int:
        text = self._number(f"{sysdir}/size")
        return int(text) * 512 if text and text.isdigit() else 0

    def _sector_size(self, disk: str) -> int:
        text = self._number(f"/sys/block/{disk}/queue/logical_block_size")
        size = int(text) if text and text.isdigit() else 512
        return size if size in (512, 1024, 2048, 4096, 8192, 16384, 32768, 65536) else 512

    def _probe(self, name: str, sysdir: str, *, disk: str | None = None,
               number: int | None = None, part: tuple[str | None, str | None] = (None, None),
               table: PartitionTable | None = None) -> BlockDevice:
        path = f"/dev/{name}"
        devno = parse_devno(self._number(f"{sysdir}/dev", 32) or "")
        size = self._size(sysdir)
        fs: FsInfo | None = None
        error: str | None = None
        if size == 0:
            error = EMPTY
        else:
            try:
                fs = probe_filesystem(lambda o, n: self.read(path, o, n), size,
                                      partition=number is not None, disk_table=table)
            except (OSError, ProbeError, ValueError) as err:
                error = str(err)
        return BlockDevice(name, path, fs, part[0], part[1], error, devno, disk, number,
                           self._aliases(name, sysdir))

    def _aliases(self, name: str, sysdir: str) -> tuple[str, ...]:
        if name.startswith("dm-"):
            return dm_aliases(self._number(f"{sysdir}/dm/name", 256) or "",
                              self._number(f"{sysdir}/dm/uuid", 256) or "")
        return ()

    def _table(self, disk: str, sysdir: str) -> PartitionTable | None:
        """The disk's partition table, read once it was read without error."""
        if disk in self.tables:
            return self.tables[disk]
        try:
            table = probe_partitions(lambda o, n: self.read(f"/dev/{disk}", o, n),
                                     self._size(sysdir), self._sector_size(disk))
        except (OSError, ProbeError, ValueError):
            return None  # not cached: a transient read error is tried again next scan
        self.tables[disk] = table
        return table

    def scan(self) -> list[BlockDevice]:
        try:
            disks = self.sys.listdir("/sys/block")[:MAX_DEVICES]
        except OSError:
            return []
        found: list[BlockDevice] = []
        for disk in disks:
            if disk.startswith(("ram", "zram")) and disk not in self.known:
                continue
            sysdir = f"/sys/block/{disk}"
            cached = self.known.get(disk)
            if cached is None or cached.error is not None:
                table = self._table(disk, sysdir) if self._size(sysdir) else None
                cached = self._probe(disk, sysdir, table=table)
                self.known[disk] = cached
            found.append(cached)
            found.extend(self._partitions(disk, sysdir))
        return found

    def _partitions(self, disk: str, sysdir: str) -> list[BlockDevice]:
        try:
            names = [n for n in self.sys.listdir(sysdir)
                     if n.startswith(disk) and self.sys.exists(f"{sysdir}/{n}/partition")]
        except OSError:
            return []
        missing = [n for n in names if n not in self.known or self.known[n].error is not None
                   or (self.known[n].partuuid is None and disk not in self.tables)]
        if missing:
            table = self._table(disk, sysdir)
            by_number = {p.number: p for p in table.partitions} if table else {}
            for name in missing:
                text = self._number(f"{sysdir}/{name}/partition", 16)
                number = int(text) if text and text.isdigit() else None
                entry = by_number.get(number) if number is not None else None
                part = (entry.partuuid, entry.partlabel) if entry else (None, None)
                self.known[name] = self._probe(name, f"{sysdir}/{name}", disk=disk,
                                               number=number, part=part)
        return [self.known[n] for n in names]
