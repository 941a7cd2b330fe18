"""Block devices as the kernel lists them in sysfs, probed with our own code.

No udev: every disk and partition under /sys/block is read through the
facade, its superblock (and, for whole disks, partition table) probed, and
the result kept per device so a wait loop probes each device once.
"""

from __future__ import annotations

from initium.probe import FsInfo, ProbeError, printable, probe_filesystem, probe_partitions
from initium.record import record
from initium.rootspec import RootSpec
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

    def matches(self, spec: RootSpec) -> bool:
        """Whether this is the device ``spec`` names (a path matches even when unreadable)."""
        if spec.kind == "path":
            return spec.value == self.path and self.error != EMPTY
        if spec.kind == "uuid":
            return self.fs is not None and spec.matches_uuid(self.fs.uuid)
        if spec.kind == "label":
            return self.fs is not None and self.fs.label == spec.value
        if spec.kind == "partuuid":
            return spec.matches_uuid(self.partuuid)
        return self.partlabel == spec.value


class Scanner:
    """Probes each device once; a device that was unreadable is tried again next scan."""

    def __init__(self, sys: System) -> None:
        self.sys = sys
        self.known: dict[str, BlockDevice] = {}

    def _size(self, name: str, sysdir: str) -> int:
        try:
            return int(self.sys.read_text(f"{sysdir}/size", 64).strip()) * 512
        except (OSError, ValueError):
            return 0

    def _probe(self, name: str, sysdir: str,
               part: tuple[str | None, str | None] = (None, None)) -> BlockDevice:
        path = f"/dev/{name}"
        if self._size(name, sysdir) == 0:
            return BlockDevice(name, path, None, *part, error=EMPTY)
        try:
            fs = probe_filesystem(lambda o, n: self.sys.read_at(path, o, n))
        except (OSError, ProbeError) as err:
            return BlockDevice(name, path, None, *part, error=str(err))
        return BlockDevice(name, path, fs, *part)

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
                cached = self._probe(disk, sysdir)
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
        missing = [n for n in names if n not in self.known or self.known[n].error is not None]
        if missing:
            table = None
            try:
                size = self._size(disk, sysdir)
                table = probe_partitions(lambda o, n: self.sys.read_at(f"/dev/{disk}", o, n),
                                         size)
            except (OSError, ProbeError):
                table = None
            by_number = {p.number: p for p in table.partitions} if table else {}
            for name in missing:
                try:
                    number = int(self.sys.read_text(f"{sysdir}/{name}/partition", 16).strip())
                except (OSError, ValueError):
                    number = -1
                entry = by_number.get(number)
                part = (entry.partuuid, entry.partlabel) if entry else (None, None)
                self.known[name] = self._probe(name, f"{sysdir}/{name}", part)
        return [self.known[n] for n in names]
