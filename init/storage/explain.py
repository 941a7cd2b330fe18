"""What ``initium run --dry-run`` says about storage on a live host, and when it says no.

On a running host the root's stack is already assembled: its dm-N and mdN
devices exist because the host's own tools made them, so finding the root
there proves nothing about the initramfs. The dry run therefore traces the
root down through /sys/block/NAME/slaves to the devices the kernel gives
without help (disks and their partitions) and requires every member on the
way to be one that a handler of this image opens: an LV on a PV whose image
has no lvm, a LUKS volume that ``rd.luks.uuid=`` does not name, a dm device
made by hand, all fail the dry run with that member named.

It also prints what a boot would do with each device (the registry with
each one's classification), which handlers the image has, and the keys it
would need: a key file, a key device, or a passphrase typed on the console.
"""

from __future__ import annotations

from initium.stage import StageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from initium.blockdev import BlockDevice
    from initium.storage.loop import Assembly, Entry

MAX_DEPTH = 16
# Made by the host's tools (device-mapper, md, loop): the initramfs has them
# only when one of its handlers makes them.
STACKED = ("dm-", "md", "loop")
# The build flag that brings the handler of a container type.
_KINDS = {"crypto_LUKS": "luks", "LVM2_member": "lvm", "linux_raid_member": "md"}


def opened(entry: Entry) -> bool:
    """Whether a handler of this image takes ``entry`` and makes what sits on it."""
    return bool(entry.owner) and entry.opened


def stack(loop: Assembly, device: BlockDevice) -> tuple[list[str], StageError | None]:
    """The devices ``device`` sits on, top down, and why the image could not make it, if so."""
    chain: list[str] = []

    def walk(name: str, depth: int) -> StageError | None:
        chain.append(name)
        if depth > MAX_DEPTH:
            return StageError(f"{name}: devices stacked more than {MAX_DEPTH} deep")
        entry = loop.entries.get(name)
        parent = entry.device.disk if entry is not None else None
        if parent and parent != name:  # a partition: what matters is its disk (md126 of md126p2)
            return walk(parent, depth + 1)
        if not name.startswith(STACKED):
            return None
        try:
            members = sorted(loop.ctx.sys.listdir(f"/sys/block/{name}/slaves"))
        except OSError:
            members = []
        if not members:
            return StageError(f"the root {device.path} sits on {name}, which this host made "
                              "with no member device initium could open (a mapping made by "
                              "hand?)", "put the root on a partition, LUKS, LVM, md or verity")
        for member in members:
            entry = loop.entries.get(member)
            if entry is None:
                return StageError(f"the root {device.path} sits on {name}, whose member "
                                  f"{member} the device loop did not see")
            if not opened(entry):
                fstype = entry.device.fs.fstype if entry.device.fs else ""
                kind = _KINDS.get(fstype)
                hint = (f"initium build --storage {kind}" if kind and not entry.owner
                        else "check the rd.luks/rd.lvm/rd.md options against this device")
                return StageError(f"the root {device.path} sits on {name}, made from "
                                  f"{entry.describe()}, which this image would not open", hint)
            problem = walk(member, depth + 1)
            if problem is not None:
                return problem
        return None

    return chain, walk(device.name, 0)


def explain(loop: Assembly, device: BlockDevice) -> None:
    """Log the registry, the handlers and keys; raise when the root's stack cannot be made."""
    from initium.storage.crypt import Crypt

    ctx = loop.ctx
    names = [h.name for h in loop.handlers]
    ctx.log("storage handlers in this image: " +
            (", ".join(names) if names else "none (plain disks and partitions only)"))
    for entry in loop.entries.values():
        ctx.log(f"device {entry.describe()}")
    for handler in loop.handlers:
        if isinstance(handler, Crypt):
            for need in handler.needs:
                ctx.log(f"key: {need}")
    chain, problem = stack(loop, device)
    if problem is not None:
        raise problem
    ctx.log(f"the root {device.path} would be assembled: {' on '.join(chain)}")
