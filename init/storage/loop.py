"""The device registry and the one loop that assembles storage.

Every block device the kernel lists is probed once (with a deadline, see
``reader``), classified, and handed to the handler that owns its type: a
LUKS volume to ``crypt``, an LVM2 physical volume to ``lvm``, an md member
to ``md``. What a handler makes (dm-N, mdN) shows up in sysfs and goes
through the same steps on the next turn, so LVM on LUKS on md needs no
fixed order. The loop is single-threaded: handlers run one at a time and
share nothing but the registry.

New devices are found by re-reading /sys/block every ``POLL_INTERVAL``: one
directory listing per turn (plus the new devices' own files), which costs
well under a millisecond and needs neither udev nor a netlink socket.
"""

from __future__ import annotations

import math

from initium.blockdev import EMPTY, BlockDevice, Scanner
from initium.probe import printable
from initium.record import record
from initium.stage import StageError
from initium.storage.reader import Reader, ReadStalled, StartReader

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import ClassVar

    from initium.rootspec import RootSpec
    from initium.stage import BootContext

POLL_INTERVAL = 0.05
# A stalled device is read again this often, in case it came back.
STALL_RETRY = 5.0

# What a container is, and the build flag whose handler opens it.
_CONTAINERS = {
    "crypto_LUKS": ("LUKS volume", "luks"),
    "LVM2_member": ("LVM2 physical volume", "lvm"),
    "linux_raid_member": ("md RAID member", "md"),
    "isw_raid_member": ("Intel RAID (IMSM) member", "md"),
    "ddf_raid_member": ("DDF RAID member", "md"),
}


class Declined(str):
    """A handler's classification of a device it saw and will not open.

    rd.luks=0, a UUID the command line does not name, an array mdadm did not
    take: the dry run tells these from the devices a handler opens by this
    type, not by the words.
    """

    __slots__ = ()


@record(frozen=False)
class Entry:
    """One device in the registry and what became of it."""

    device: BlockDevice
    role: str = ""  # the classification, in words; "" for a plain file system
    owner: str = ""  # the handler that took it
    hidden: bool = False  # consumed by a mapping (verity data): never answers for root=
    settled: bool = False  # classified for good (not offered to its handler again)
    opened: bool = False  # its handler opens it (makes what sits on it)

    def describe(self) -> str:
        summary = self.device.summary()
        return f"{summary[:-1]}; {self.role})" if self.role else summary


class Handler:
    """A kind of storage the loop can assemble; one instance per boot.

    ``claim`` is offered every new device whose type is in ``fstypes`` and
    returns the device's classification (a ``Declined`` one when it will
    not open the device), or None to be offered it again on the next turn
    (waiting for a key device, say). ``tick`` runs once per
    turn for work that depends on time or on several devices (a degraded
    array, a verity pair). ``missing`` names what the command line requires
    that is not there yet; the loop does not end while it is non-empty.
    """

    name: ClassVar[str] = ""
    fstypes: ClassVar[tuple[str, ...]] = ()

    def claim(self, loop: Assembly, entry: Entry) -> str | None:
        raise NotImplementedError

    def tick(self, loop: Assembly) -> None:
        return None

    def missing(self, loop: Assembly) -> list[str]:
        return []

    def aliases(self, device: BlockDevice) -> tuple[str, ...]:
        """Other /dev paths this handler knows for ``device`` (udev's links)."""
        return ()


def _classify(device: BlockDevice, handlers: dict[str, Handler]) -> str:
    if device.error is not None:
        return ""  # the summary already says empty, unreadable or stalled
    if device.fs is None or device.usage == "filesystem":
        return ""
    what, flag = _CONTAINERS.get(device.fs.fstype, (device.fs.fstype, ""))
    if flag:
        return f"{what}, no handler in this image (initium build --storage {flag})"
    return f"{what}, not a file system"


class Assembly:
    """The registry and the loop; kept in the boot state so ``root`` shares it."""

    def __init__(self, ctx: BootContext, handlers: tuple[Handler, ...] = ()) -> None:
        self.ctx = ctx
        self.handlers = handlers
        self.by_type = {t: h for h in handlers for t in h.fstypes}
        self.entries: dict[str, Entry] = {}
        self.default_root: str | None = None  # verity's /dev/mapper/root when root= is absent
        self.started = ctx.sys.monotonic()
        self._reader: Reader | None = None
        self._scanner: Scanner | None = None
        self._forgiven = self.started

    def _scan(self) -> list[BlockDevice]:
        if self._scanner is None:
            reader: Reader = self.ctx.sys.apply(StartReader())
            self._reader = reader
            self.ctx.at_switch_root("device reader", lambda _ctx: reader.close())
            self._scanner = Scanner(self.ctx.sys, reader.read)
        now = self.ctx.sys.monotonic()
        if self._reader is not None and self._reader.stalled and \
                now - self._forgiven >= STALL_RETRY:
            for path in list(self._reader.stalled):
                self._reader.forgive(path)
            self._forgiven = now
        return self._scanner.scan()

    def step(self) -> list[Entry]:
        """One turn: new devices in, each new one to its handler, then the handlers' ticks."""
        seen = self._scan()
        current = []
        for device in seen:
            entry = self.entries.get(device.name)
            if entry is None or entry.device is not device:
                if stalled(device) and (entry is None or not stalled(entry.device)):
                    self.ctx.warn(f"{device.path}: {device.error}; the other devices are "
                                  "served meanwhile")
                hidden = entry.hidden if entry is not None else False
                entry = self.entries[device.name] = Entry(device, hidden=hidden)
            current.append(entry)
        for entry in current:
            if entry.settled or entry.device.error is not None:
                continue
            handler = self.by_type.get(entry.device.fs.fstype) if entry.device.fs else None
            if handler is None:
                entry.role = _classify(entry.device, self.by_type)
                entry.settled = True
                continue
            role = handler.claim(self, entry)
            if role is not None:
                entry.role, entry.owner, entry.settled = role, handler.name, True
                entry.opened = not isinstance(role, Declined)
        for handler in self.handlers:
            handler.tick(self)
        return current

    def visible(self) -> list[BlockDevice]:
        return [e.device for e in self.entries.values() if not e.hidden]

    def find(self, spec: RootSpec) -> BlockDevice | None:
        devices = self.visible()
        for device in devices:
            if device.matches(spec, devices):
                return device
        if spec.kind == "path":
            for device in devices:
                if any(spec.value in h.aliases(device) for h in self.handlers):
                    return device
        return None

    def has(self, name: str) -> bool:
        """Whether the handler ``name`` (udev, crypt …) is in this boot's loop."""
        return any(h.name == name for h in self.handlers)

    def entry_for(self, spec: RootSpec) -> Entry | None:
        """The registry entry a device spec names (hidden ones too: handlers use this)."""
        devices = [e.device for e in self.entries.values()]
        for entry in self.entries.values():
            if entry.device.matches(spec, devices):
                return entry
        return None

    def missing(self) -> list[str]:
        return [item for h in self.handlers for item in h.missing(self)]

    def listing(self) -> str:
        return ", ".join(e.describe() for e in self.entries.values()) or "no block devices"

    def wait(self, spec: RootSpec | None, budget: float) -> BlockDevice | None:
        """Turn until ``spec``'s device and everything required exist, or fail at ``budget``."""
        start = self.ctx.sys.monotonic()
        announced = False
        while True:
            self.step()
            device = self.find(spec) if spec is not None else None
            missing = self.missing()
            if (spec is None or device is not None) and not missing:
                if device is not None:
                    self.ctx.log(f"found {spec}: {device.summary()}")
                return device
            waited = self.ctx.sys.monotonic() - start
            if waited >= budget:
                raise self._timeout(spec, device, missing, waited)
            if not announced:
                bound = "no time limit" if math.isinf(budget) else f"up to {budget:g} s"
                wanted = ([str(spec)] if spec is not None and device is None else []) + missing
                self.ctx.log(f"waiting for {', '.join(wanted)} ({bound})")
                announced = True
            # at least 1 ms: a remainder of 1e-16 s would not move a clock at 2 s
            self.ctx.sys.sleep(min(POLL_INTERVAL, max(budget - waited, 1e-3)))

    def _timeout(self, spec: RootSpec | None, device: BlockDevice | None, missing: list[str],
                 waited: float) -> StageError:
        seen = self.visible()
        if spec is not None and device is None:
            cause = f"no block device with {spec} after {waited:.1f} s; seen: {self.listing()}"
            if missing:
                cause += f"; also missing: {'; '.join(missing)}"
            return StageError(cause, _hint(spec, seen, self))
        return StageError(f"still missing after {waited:.1f} s: {'; '.join(missing)}; "
                          f"seen: {self.listing()}",
                          "check the rd.luks/rd.lvm/rd.md options against the devices seen")


def _hint(spec: RootSpec, seen: list[BlockDevice], loop: Assembly) -> str:
    if not loop.entries:
        return ("no block devices at all: is the disk driver in the image "
                "(initium build --module virtio_blk, nvme, ahci …)?")
    closed = [e for e in loop.entries.values() if e.owner and "left closed" in e.role]
    if closed:
        first = closed[0].device
        uuid = printable(first.fs.uuid) if first.fs and first.fs.uuid else "UUID"
        return (f"{first.name} was left closed; if it holds the root, name it with "
                f"rd.luks.uuid={uuid}")
    if spec.kind == "path":
        return "check the device name, or use root=UUID=… which does not depend on probe order"
    return f"check {spec.kind.upper()}= against the devices seen (blkid on a running system)"


def stalled(device: BlockDevice) -> bool:
    return bool(device.error and device.error.startswith("stalled"))


__all__ = ["EMPTY", "Assembly", "Entry", "Handler", "ReadStalled", "stalled"]
