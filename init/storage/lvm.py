"""LVM2: activate volume groups with the lvm tool when their physical volumes appear.

As dracut does: ``rd.lvm.lv=VG/LV`` activates just those LVs, else
``rd.lvm.vg=VG`` those VGs, else every VG found; ``rd.lvm=0`` none. There is
no udev here, so lvm is told to make its /dev nodes and links itself and to
scan /dev rather than ask udev. Activation runs again with every new PV: a
VG whose PVs are not all there yet fails the first time, and that is not an
error until the loop's time is up.
"""

from __future__ import annotations

from initium import ops
from initium.process import ProcessError
from initium.stage import StageError
from initium.storage.loop import Declined, Handler

TYPE_CHECKING = False
if TYPE_CHECKING:
    from initium.stage import BootContext
    from initium.storage.loop import Assembly, Entry

CONFIG = ("activation { udev_sync = 0 udev_rules = 0 monitoring = 0 } "
          "devices { obtain_device_list_from_udev = 0 use_devicesfile = 0 }")
TIMEOUT = 60.0


def valid_lv(text: str) -> bool:
    vg, slash, lv = text.partition("/")
    return bool(slash and vg and lv and "/" not in lv)


class Lvm(Handler):
    name = "lvm"
    fstypes = ("LVM2_member",)

    def __init__(self, ctx: BootContext, tool: str, *, enabled: bool = True,
                 vgs: tuple[str, ...] = (), lvs: tuple[str, ...] = ()) -> None:
        self.ctx, self.tool, self.enabled = ctx, tool, enabled
        self.lvs = tuple(lv.removeprefix("/dev/") for lv in lvs)
        for lv in self.lvs:
            if not valid_lv(lv):
                ctx.warn(f"rd.lvm.lv={lv}: expected VG/LV, ignored")
        self.lvs = tuple(lv for lv in self.lvs if valid_lv(lv))
        self.vgs = vgs
        self.status: int | None = None

    def claim(self, loop: Assembly, entry: Entry) -> str | None:
        if not self.enabled:
            return Declined("LVM2 physical volume, left inactive (rd.lvm=0)")
        if self.lvs:
            argv = [self.tool, "lvchange", "-ay", "--sysinit", "--config", CONFIG, *self.lvs]
        else:
            argv = [self.tool, "vgchange", "-ay", "--sysinit", "--config", CONFIG, *self.vgs]
        try:
            self.status = self.ctx.sys.spawn(ops.Spawn(tuple(argv), TIMEOUT))
        except ProcessError as err:
            raise StageError(f"cannot activate LVM volumes: {err}",
                             "rebuild the image with initium build --storage lvm") from None
        if self.status != 0:
            self.ctx.warn(f"lvm exited with status {self.status} after {entry.device.name} "
                          "appeared; trying again with the next physical volume")
            return Declined("LVM2 physical volume, activation incomplete")
        return "LVM2 physical volume, volumes activated"

    def missing(self, loop: Assembly) -> list[str]:
        if not self.enabled:
            return []
        aliases = {a for e in loop.entries.values() for a in e.device.aliases
                   if e.device.error is None}
        wanted = [f"LVM volume {lv} (rd.lvm.lv=)" for lv in self.lvs
                  if f"/dev/{lv}" not in aliases]
        for vg in self.vgs:
            if not any(a.startswith(f"/dev/{vg}/") for a in aliases) and \
                    not any(lv.startswith(f"{vg}/") for lv in self.lvs):
                wanted.append(f"LVM volume group {vg} (rd.lvm.vg=)")
        return wanted
