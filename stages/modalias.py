"""Load the optional drivers whose hardware is there: device modaliases matched at boot.

The builder stores, for each on-demand module, the modules.alias patterns
by which devices ask for it (and what it needs). The init reads the
``modalias`` of every device on every bus, matches them with initium.kmod's glob matcher, and
loads what matched with its dependencies, in the plan's order. A driver
creates devices (virtio_pci makes the virtio devices that want virtio_blk;
virtio_scsi makes the SCSI disks that want sd_mod), so the walk is repeated
until a round loads nothing new.

The kernel waits for a module's asynchronous probing (SCSI scans) before
finit_module returns, so a round sees the devices the previous one created.
A device that appears later (a slow USB disk) is not matched here: that is
udev's job when the image has it.
"""

from __future__ import annotations

from initium.kmod import MAX_MODALIAS, GlobError, compile_glob, glob_match, literal_prefix

TYPE_CHECKING = False
if TYPE_CHECKING:
    from initium.kmod import Token
    from initium.stage import JSON
    from initium.system import System

SYSFS_BUS = "/sys/bus"
# The cpu modalias (its features) is on the cpu bus's root, which no bus lists.
EXTRA_MODALIASES = ("/sys/devices/system/cpu/modalias",)
# Bounds of one walk: a large server has some 10^4 devices on its buses.
MAX_ENTRIES = 200_000
MAX_ROUNDS = 8


class Walk:
    """The devices seen so far (bus/name → modalias, "" for none) and the work it took.

    One Walk serves every round: a device seen in an earlier round is not
    read again, so later rounds cost a listing of each bus and the reads of
    the devices that the new drivers created.
    """

    def __init__(self) -> None:
        self.seen: dict[str, str] = {}
        self.entries = 0
        self.reads = 0
        self.truncated = ""  # why a walk stopped early, if one did

    @property
    def modaliases(self) -> set[str]:
        return {alias for alias in self.seen.values() if alias}


def walk_modaliases(sys: System, walk: Walk | None = None, top: str = SYSFS_BUS,
                    max_entries: int = MAX_ENTRIES) -> Walk:
    """Read the ``modalias`` of every device on every bus not yet in ``walk``.

    Buses list their devices in /sys/bus/BUS/devices (links into
    /sys/devices): one listing per bus finds them all, where a walk of the
    /sys/devices tree reads every attribute directory (measured under TCG:
    about 0.07 s per walk of 2,000 entries, against a few ms). Nothing is
    walked through a link; each link is only read through, once, for its
    ``modalias``. The work is bounded by counting: at most ``max_entries``
    entries in all, then the walk stops with ``truncated`` saying so.
    """
    walk = walk or Walk()
    if not walk.seen:
        for path in EXTRA_MODALIASES:
            walk.seen[path] = _modalias(sys, path, walk)
    try:
        buses = sys.listdir(top)
    except OSError:
        return walk
    for bus in buses:
        try:
            devices = sys.listdir(f"{top}/{bus}/devices")
        except OSError:
            continue
        if walk.entries + len(devices) > max_entries:
            walk.truncated = f"more than {max_entries} devices"
            return walk
        walk.entries += len(devices)
        for device in devices:
            key = f"{bus}/devices/{device}"
            if key not in walk.seen:
                walk.seen[key] = _modalias(sys, f"{top}/{key}/modalias", walk)
    return walk


def _modalias(sys: System, path: str, walk: Walk) -> str:
    walk.reads += 1
    try:
        return sys.read_text(path, MAX_MODALIAS).strip()
    except OSError:
        return ""  # no modalias (not every bus has one), or the device went away


class AliasTable:
    """The plan's (pattern, module) pairs, compiled once, with a literal prefix to skip fast."""

    def __init__(self, items: list[JSON]) -> None:
        self.rows: list[tuple[str, tuple[Token, ...], str]] = []
        for item in items:
            for pattern in item.get("aliases", []):
                try:
                    tokens = compile_glob(str(pattern))
                except GlobError:
                    continue  # the builder drops these; a modified plan must not stop the boot
                self.rows.append((literal_prefix(str(pattern)), tokens, str(item["name"])))

    def modules_for(self, modaliases: set[str], skip: set[str]) -> dict[str, str]:
        """Module → the first modalias (sorted) that asks for it, for modules not in ``skip``."""
        wanted: dict[str, str] = {}
        for alias in sorted(modaliases):
            for prefix, tokens, module in self.rows:
                if module in skip or module in wanted or not alias.startswith(prefix):
                    continue
                if glob_match(tokens, alias):
                    wanted[module] = alias
        return wanted


def with_needs(names: set[str], by_name: dict[str, JSON]) -> set[str]:
    """``names`` and every module they need (within the image), transitively."""
    result: set[str] = set()
    pending = list(names)
    while pending:
        name = pending.pop()
        if name in result or name not in by_name:
            continue
        result.add(name)
        pending.extend(str(n) for n in by_name[name].get("needs", []))
    return result
