"""Find the device ``root=`` names, wait for it within bounds, and mount it.

The device comes from the storage registry (initium.storage): a plain
disk is found there as before, and a root on LUKS, LVM or md once the
storage stage's handlers have opened it.

A device whose probe finds a container (LUKS, an LVM2 or RAID member, swap,
an external journal) is reported as that container with the option that
would open it, never as a file system the kernel cannot mount.  A file
system the probes do not know is mounted by trying the types the kernel
lists in /proc/filesystems (minus ``nodev`` ones), as the kernel's own root
mount does.

erofs and squashfs are read-only by design: such a root is always mounted
``ro`` (a ``rw`` on the command line cannot change that), and with
``rd.overlay``/``initium.overlay=tmpfs`` it becomes the lower layer of an
overlayfs whose upper and work directories live on a tmpfs under /run, so
the real init sees a writable / whose changes vanish at power-off. /run
moves into the new root at switch-root, which keeps those layers in reach
of the booted system (as dracut's /run/rootfsbase does).
"""

from __future__ import annotations

import math

from initium import linux, ops
from initium.blockdev import BlockDevice
from initium.mounts import parse_mount_options
from initium.options import BootOptions, Option
from initium.probe import printable
from initium.record import replace
from initium.rootspec import RootSpec, RootSpecError, parse_root_spec
from initium.stage import JSON, BootContext, Image, Stage, StageError
from initium.storage import fsck
from initium.storage.loop import Assembly

DEFAULT_WAIT = 30.0
# File systems that cannot be written at all: mounted ro whatever the command line says.
READ_ONLY_FS = ("erofs", "squashfs")
OVERLAY_DIR = "/run/initium/overlay"


def _overlay_kind(value: str) -> str:
    """``tmpfs`` for a writable overlay, ``""`` for none (0/no/none turn it off)."""
    lowered = value.lower()
    if lowered in ("tmpfs", "1", "yes", "y", "true", "on"):
        return "tmpfs"
    if lowered in ("none", "0", "no", "n", "false", "off"):
        return ""
    raise ValueError(f"{value!r} is not an overlay kind (use tmpfs or none)")


OVERLAY = Option("rd.overlay", "rd_overlay", "Mount the root read-only under a writable "
                 "overlayfs whose changes live on a tmpfs and vanish at power-off (bare: "
                 "tmpfs; 0: none). Meant for erofs and squashfs roots, which are read-only.",
                 "dracut: rd.overlay (overlayfs module), rd.live.overlay.overlayfs",
                 _overlay_kind, flag="tmpfs", metavar="[tmpfs|0]", default="", owner="root")
INITIUM_OVERLAY = Option("initium.overlay", "initium_overlay", "The same as rd.overlay, "
                         "which it overrides when both are given.", "dracut: rd.overlay",
                         _overlay_kind, metavar="tmpfs|none", owner="root")


def overlay_kind(ctx: BootContext) -> str:
    """The overlay this boot asks for: ``tmpfs`` or ``""``."""
    chosen = ctx.value(INITIUM_OVERLAY)
    return str(ctx.value(OVERLAY) if chosen is None else chosen)
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


def assembly(ctx: BootContext) -> Assembly:
    """The storage loop of this boot: the storage stage's, or a bare one (no handlers)."""
    found = ctx.state.get(Assembly)
    if found is None:
        found = Assembly(ctx)
        ctx.state.put(found)
    return found


# What opens each container, in the words of dracut and systemd's options.
_CONTAINERS = {
    "crypto_LUKS": ("a LUKS volume", "add rd.luks.uuid={uuid} and point root= at the file "
                                     "system inside it"),
    "LVM2_member": ("an LVM2 physical volume", "add rd.lvm.vg=VG (or rd.lvm.lv=VG/LV) and "
                                               "root=/dev/VG/LV"),
    "linux_raid_member": ("an md RAID member", "add rd.md.uuid={uuid} and point root= at the "
                                               "array's file system"),
    "isw_raid_member": ("an Intel RAID (IMSM) member", "assemble the array with mdadm "
                                                       "(rd.md.uuid=) and point root= at it"),
    "ddf_raid_member": ("a DDF RAID member", "assemble the array with mdadm (rd.md.uuid=) and "
                                             "point root= at it"),
    "swap": ("a swap area", "point root= at a file system; swap cannot be the root"),
    "jbd": ("an external ext journal", "point root= at the ext file system that uses it"),
}


def container_error(spec: RootSpec, device: BlockDevice) -> StageError | None:
    """The error for a root= that names a container rather than a file system, if it does."""
    if device.fs is None or device.usage == "filesystem":
        return None
    what, hint = _CONTAINERS.get(device.fs.fstype, (f"a {device.fs.fstype} container",
                                                    "point root= at the file system inside"))
    uuid = printable(device.fs.uuid) if device.fs.uuid else "UUID"
    return StageError(f"root={spec} names {what} ({device.summary()}), not a file system",
                      hint.format(uuid=uuid))


class Root(Stage):
    name = "root"
    after = ("modules", "console")
    options = (OVERLAY, INITIUM_OVERLAY, *fsck.OPTIONS)

    def install(self, image: Image) -> JSON:
        """With ``--fsck``: e2fsck (and its libraries) for ext2/3/4 roots mounted rw."""
        if not image.option("fsck"):
            return {}
        from initium.stages.storage import find_tool

        try:
            host = find_tool("e2fsck")
        except ValueError:
            raise ValueError("--fsck needs e2fsck, which this host lacks (apt-get install "
                             "e2fsprogs)") from None
        image.add_binary(host)
        return {"fsck": {fstype: host for fstype, name in fsck.CHECKERS.items()
                         if name == "e2fsck"}}

    def run(self, ctx: BootContext) -> None:
        loop = assembly(ctx)
        text = ctx.options.root or loop.default_root
        if text is None:
            raise StageError("no root= on the kernel command line",
                             "add root=UUID=… (or LABEL=, PARTUUID=, /dev/…)")
        try:
            spec = parse_root_spec(text, device_mapper=any(h.name != "udev" for h in loop.handlers),
                                   udev=loop.has("udev"))
        except RootSpecError as err:
            raise StageError(str(err), "fix root= on the kernel command line") from None
        device = self._wait(ctx, spec)
        container = container_error(spec, device)
        if container is not None:
            raise container
        ctx.state.root_device = device.path
        self._mount(ctx, device)

    def _wait(self, ctx: BootContext, spec: RootSpec) -> BlockDevice:
        """The device ``spec`` names, from the storage registry (made here when no stage did)."""
        device = assembly(ctx).wait(spec, wait_budget(ctx.options))
        if device is None:  # wait() returns only once spec's device is there
            raise StageError(f"no block device with {spec}")
        if ctx.sys.dry_run:  # the host assembled its root: could this image?
            from initium.storage.explain import explain

            explain(assembly(ctx), device)
        return device

    def _mount(self, ctx: BootContext, device: BlockDevice) -> None:
        fstype = ctx.options.rootfstype or (device.fs.fstype if device.fs else None)
        if fstype is None and device.error:
            raise StageError(f"{device.path}: no file system recognised "
                             f"({printable(device.error)})",
                             "give rootfstype= if the file system is one initium cannot probe; "
                             "the kernel log (dmesg) may say more")
        overlay = overlay_kind(ctx)
        rw = ctx.options.root_rw is True and not overlay
        if rw and fstype in READ_ONLY_FS:
            ctx.log(f"{fstype} is read-only: the root is mounted ro (rd.overlay=tmpfs gives "
                    "a writable / over it)")
            rw = False
        opts = parse_mount_options(ctx.options.rootflags or "",
                                   0 if rw else linux.MS_RDONLY)
        flags = opts.flags & ~linux.MS_RDONLY if rw else opts.flags | linux.MS_RDONLY
        if fstype is not None and not self._kernel_knows(ctx, fstype):
            raise StageError(f"the kernel has no {fstype} driver",
                             f"add it to the image: initium build --module "
                             f"{_FS_MODULES.get(fstype, (fstype,))[0]}")
        if overlay and not self._kernel_knows(ctx, "overlay"):
            raise StageError("rd.overlay asks for an overlay, but the kernel has no overlayfs "
                             "driver", "add it to the image: initium build --module overlay")
        if rw and fstype is not None:
            fsck.check(ctx, device.path, fstype, ctx.data().get("fsck", {}))
        target = f"{OVERLAY_DIR}/lower" if overlay else ctx.state.new_root
        if overlay:
            self._overlay_layers(ctx)
        if not ctx.sys.exists(target):
            ctx.sys.apply(ops.MakeDir(target))
        names = parse_mount_options("", flags).names
        if fstype is None:
            template = ops.Mount(device.path, target, "", flags, opts.data, names)
            ctx.state.root_fstype = self._mount_any(ctx, template)
        else:
            mount = ops.Mount(device.path, target, fstype, flags, opts.data, names)
            try:
                ctx.sys.apply(mount)
            except OSError as err:
                raise StageError(f"{mount.describe()}: {err.strerror}",
                                 "check rootfstype= and rootflags=; the kernel log (dmesg) "
                                 "says more") from None
            ctx.state.root_fstype = fstype
        if overlay:
            self._overlay_mount(ctx, target)

    def _overlay_layers(self, ctx: BootContext) -> None:
        """A tmpfs for the upper and work directories (one file system, as overlayfs needs)."""
        if not ctx.sys.exists(OVERLAY_DIR):
            ctx.sys.apply(ops.MakeDir(OVERLAY_DIR))
        flags = linux.MS_NOSUID | linux.MS_NODEV
        try:
            ctx.sys.apply(ops.Mount("tmpfs", OVERLAY_DIR, "tmpfs", flags, "mode=0755",
                                    ("nosuid", "nodev")))
        except OSError as err:
            raise StageError(f"cannot mount the overlay's tmpfs on {OVERLAY_DIR}: "
                             f"{err.strerror}") from None
        for name in ("upper", "work"):
            ctx.sys.apply(ops.MakeDir(f"{OVERLAY_DIR}/{name}"))

    def _overlay_mount(self, ctx: BootContext, lower: str) -> None:
        target = ctx.state.new_root
        if not ctx.sys.exists(target):
            ctx.sys.apply(ops.MakeDir(target))
        data = f"lowerdir={lower},upperdir={OVERLAY_DIR}/upper,workdir={OVERLAY_DIR}/work"
        mount = ops.Mount("overlay", target, "overlay", 0, data, ("rw",))
        try:
            ctx.sys.apply(mount)
        except OSError as err:
            raise StageError(f"{mount.describe()}: {err.strerror}",
                             "the kernel log (dmesg) says why overlayfs refused") from None
        ctx.log(f"{ctx.state.root_device} ({ctx.state.root_fstype}, read-only) under a "
                f"tmpfs overlay on {target}: writable, changes are lost at power-off")

    def _mount_any(self, ctx: BootContext, template: ops.Mount) -> str:
        """Try each block file system the kernel knows, in its order, as its root mount does."""
        device = template.source
        candidates = block_filesystems(ctx)
        if not candidates:
            raise StageError(f"{device}: no file system recognised, and the kernel lists "
                             "no block file system to try",
                             "give rootfstype=, and add its module to the image")
        ctx.log(f"{device}: no file system recognised; trying {', '.join(candidates)}")
        failures = []
        for fstype in candidates:
            try:
                ctx.sys.apply(replace(template, fstype=fstype))
            except OSError as err:
                failures.append(f"{fstype}: {err.strerror}")
                continue
            return fstype
        raise StageError(f"{device}: no file system recognised, and none of the kernel's "
                         f"would mount it ({'; '.join(failures)})",
                         "give rootfstype= and add its module to the image "
                         "(initium build --module NAME)")

    def _kernel_knows(self, ctx: BootContext, fstype: str) -> bool:
        """Whether the kernel has ``fstype`` now or a module loaded for it provides it."""
        providers = _FS_MODULES.get(fstype, (fstype,))
        return ctx.sys.has_filesystem(fstype) or any(
            m in ctx.state.loaded_modules for m in providers)


def block_filesystems(ctx: BootContext) -> list[str]:
    """/proc/filesystems minus the ``nodev`` ones, in the kernel's order."""
    try:
        text = ctx.sys.read_text("/proc/filesystems")
    except OSError:
        return []
    found = []
    for line in text.splitlines():
        words = line.split()
        if len(words) == 1:
            found.append(words[0])
    return found
