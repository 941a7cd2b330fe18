"""md RAID: members go to ``mdadm --incremental`` as they appear.

An array starts once all its members are there. When some are still
missing ``rd.md.timeout`` seconds (default 10) after the first one came,
the arrays that can run degraded are started (``mdadm --incremental --run
--scan``, as dracut's and systemd's last-resort timers do), so a dead disk
in a mirror delays the boot instead of stopping it. ``rd.md.uuid=`` limits
assembly to the named arrays, ``rd.md=0`` assembles none.
"""

from __future__ import annotations

from initium import ops
from initium.probe import printable
from initium.process import ProcessError
from initium.stage import StageError
from initium.storage.loop import Declined, Handler

TYPE_CHECKING = False
if TYPE_CHECKING:
    from initium.stage import BootContext
    from initium.storage.loop import Assembly, Entry

DEFAULT_TIMEOUT = 10.0
TIMEOUT = 60.0
CONFIG_PATH = "/etc/mdadm/mdadm.conf"
# Arrays made on another machine (the installer's) carry its host name:
# assemble them all the same, under their own names.
CONFIG = b"HOMEHOST <ignore>\nAUTO +all\n"


def uuid_digits(text: str) -> str:
    """An array UUID with only its hex digits: mdadm writes a:b:c:d, blkid a-b-c-d-e."""
    return "".join(c for c in text.lower() if c in "0123456789abcdef")


class Md(Handler):
    name = "md"
    fstypes = ("linux_raid_member", "isw_raid_member", "ddf_raid_member")

    def __init__(self, ctx: BootContext, tool: str, *, enabled: bool = True,
                 uuids: tuple[str, ...] = (), timeout: float = DEFAULT_TIMEOUT) -> None:
        self.ctx, self.tool, self.enabled, self.timeout = ctx, tool, enabled, timeout
        self.uuids = {uuid_digits(u) for u in uuids}
        self.first: float | None = None
        self.forced = False
        self.seen: set[str] = set()

    def _run(self, argv: list[str]) -> int:
        try:
            return self.ctx.sys.spawn(ops.Spawn((self.tool, *argv), TIMEOUT))
        except ProcessError as err:
            raise StageError(f"cannot assemble md arrays: {err}",
                             "rebuild the image with initium build --storage md") from None

    def claim(self, loop: Assembly, entry: Entry) -> str | None:
        device = entry.device
        uuid = uuid_digits(device.fs.uuid or "") if device.fs else ""
        if not self.enabled:
            return Declined("md RAID member, left alone (rd.md=0)")
        if self.uuids and uuid not in self.uuids:
            return Declined("md RAID member, left alone: rd.md.uuid= names another array")
        if device.fs is not None and device.fs.fstype != "linux_raid_member":
            return Declined("RAID member whose metadata needs mdmon, which initium does not run")
        self.seen.add(uuid)
        if self.first is None:
            self.first = self.ctx.sys.monotonic()
        status = self._run(["--incremental", device.path])
        if status != 0:
            self.ctx.warn(f"mdadm --incremental {device.path} exited with status {status}")
            return Declined(f"md RAID member, not added (mdadm status {status})")
        return "md RAID member, added to its array"

    def tick(self, loop: Assembly) -> None:
        if self.first is None or self.forced:
            return
        if self.ctx.sys.monotonic() - self.first < self.timeout:
            return
        self.forced = True
        self.ctx.warn(f"md arrays still incomplete after {self.timeout:g} s "
                      "(rd.md.timeout=): starting them degraded")
        self._run(["--incremental", "--run", "--scan"])

    def missing(self, loop: Assembly) -> list[str]:
        if not self.enabled:
            return []
        return [f"md array UUID={printable(u)} (rd.md.uuid=)" for u in sorted(self.uuids)
                if u not in self.seen]
