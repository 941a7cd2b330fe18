"""Find the device ``root=`` names, wait for it within bounds, and mount it."""

from __future__ import annotations

import math

from initium import linux, ops
from initium.blockdev import BlockDevice, Scanner
from initium.mounts import parse_mount_options
from initium.options import BootOptions
from initium.probe import printable
from initium.rootspec import RootSpec, RootSpecError, parse_root_spec
from initium.stage import BootContext, Stage, StageError

DEFAULT_WAIT = 30.0
POLL_INTERVAL = 0.05
# Modules that provide a file system under another name than the type.
_FS_MODULES = {"vfat": ("vfat", "fat"), "ext2": ("ext4", "ext2"), "ext3": ("ext4", "ext3")}


def wait_budget(options: BootOptions) -> float:
    """How long to wait for the root device, in seconds (inf: for ever).

    ``rootwait`` waits for ever (or N seconds), ``rootdelay=N`` N seconds, and
    ``rd.timeout=N`` bounds all of them (0 meaning no bound, as in dracut).
    Without any of them: 30 s, so a missing disk ends in a message, not a hang.
    """
    if options.rootwait is not None:
        budget = options.rootwait
    elif options.rootdelay is not None:
        budget = options.rootdelay
    else:
        budget = DEFAULT_WAIT if options.rd_timeout is None else math.inf
    if options.rd_timeout:
        budget = min(budget, options.rd_timeout)
    return budget


def _hint(spec: RootSpec, seen: list[BlockDevice]) -> str:
    if not seen:
        return ("no block devices at all: is the disk driver in the image "
                "(initium build --module virtio_blk, nvme, ahci …)?")
    if spec.kind == "path":
        return "check the device name, or use root=UUID=… which does not depend on probe order"
    return f"check {spec.kind.upper()}= against the devices seen (blkid on a running system)"


class Root(Stage):
    name = "root"
    after = ("modules", "console")

    def run(self, ctx: BootContext) -> None:
        text = ctx.options.root
        if text is None:
            raise StageError("no root= on the kernel command line",
                             "add root=UUID=… (or LABEL=, PARTUUID=, /dev/…)")
        try:
            spec = parse_root_spec(text)
        except RootSpecError as err:
            raise StageError(str(err), "fix root= on the kernel command line") from None
        device = self._wait(ctx, spec)
        ctx.state.root_device = device.path
        self._mount(ctx, device)

    def _wait(self, ctx: BootContext, spec: RootSpec) -> BlockDevice:
        budget = wait_budget(ctx.options)
        scanner = Scanner(ctx.sys)
        start = ctx.sys.monotonic()
        announced = False
        while True:
            seen = scanner.scan()
            for device in seen:
                if device.matches(spec):
                    ctx.log(f"found {spec}: {device.summary()}")
                    return device
            waited = ctx.sys.monotonic() - start
            if waited >= budget:
                listing = ", ".join(d.summary() for d in seen) or "no block devices"
                raise StageError(f"no block device with {spec} after {waited:.1f} s; "
                                 f"seen: {listing}", _hint(spec, seen))
            if not announced:
                bound = "no time limit" if math.isinf(budget) else f"up to {budget:g} s"
                ctx.log(f"waiting for {spec} ({bound})")
                announced = True
            ctx.sys.sleep(min(POLL_INTERVAL, max(budget - waited, 0.0)))

    def _mount(self, ctx: BootContext, device: BlockDevice) -> None:
        fstype = ctx.options.rootfstype or (device.fs.fstype if device.fs else None)
        if fstype is None:
            why = f" ({printable(device.error)})" if device.error else ""
            raise StageError(f"{device.path}: no file system recognised{why}",
                             "give rootfstype= if the file system is one initium cannot probe")
        rw = ctx.options.root_rw is True
        opts = parse_mount_options(ctx.options.rootflags or "",
                                   0 if rw else linux.MS_RDONLY)
        flags = opts.flags & ~linux.MS_RDONLY if rw else opts.flags | linux.MS_RDONLY
        if not self._kernel_knows(ctx, fstype):
            raise StageError(f"the kernel has no {fstype} driver",
                             f"add it to the image: initium build --module "
                             f"{_FS_MODULES.get(fstype, (fstype,))[0]}")
        target = ctx.state.new_root
        if not ctx.sys.exists(target):
            ctx.sys.apply(ops.MakeDir(target))
        mount = ops.Mount(device.path, target, fstype, flags, opts.data,
                          parse_mount_options("", flags).names)
        try:
            ctx.sys.apply(mount)
        except OSError as err:
            raise StageError(f"{mount.describe()}: {err.strerror}",
                             "check rootfstype= and rootflags=; the kernel log (dmesg) "
                             "says more") from None
        ctx.state.root_fstype = fstype

    def _kernel_knows(self, ctx: BootContext, fstype: str) -> bool:
        providers = _FS_MODULES.get(fstype, (fstype,))
        return ctx.sys.has_filesystem(fstype) or any(
            m in ctx.state.loaded_modules for m in providers)
