"""Continue in a tmpfs when the kernel unpacked the initramfs into a ramfs.

Kernel 6.1 unpacks into ramfs whenever ``root=`` is on its command line,
and ramfs keeps no extended attributes of its own: ``security.selinux``
survives there only because the LSM holds it in memory, ``security.ima``
and ``security.evm`` are refused.  When the image's xattr lists carry
anything beyond ``security.selinux`` this stage, before ``xattrs``, copies
the initramfs into a fresh tmpfs, moves the API file systems into it, makes
it ``/`` (``mount --move`` and ``chroot``, as switch-root does) and frees
the ramfs.  PID 1 goes on running from the copy: every later import, helper
and the final switch-root see the tmpfs, whose statfs magic and
/etc/initrd-release satisfy ``RemoveInitramfs``'s guards as before.

The builder setting ``xattr_tmpfs_move = false`` turns the move off; the
stage then stops the boot with the fix instead of letting the list fail
half-way.
"""

from __future__ import annotations

import os
import stat

from initium import linux, ops, syscalls
from initium.initramfs import remove_initramfs
from initium.record import record
from initium.stage import JSON, BootContext, Image, Stage, StageError
from initium.stages.xattrs import (
    RAMFS_KEEPS,
    ParsedLists,
    allowed_namespaces,
    enforced,
    read_lists,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from initium.mounts import MountEntry
    from initium.system import System

TMPFS_DIR = "/.initium-tmpfs"
_COPY_CHUNK = 1 << 30


@record
class CopyStats:
    """What a copy moved: the figures the stage logs for the cost of the move."""

    files: int
    size: int


def copy_tree(src: str, dst: str, skip: str = "") -> CopyStats:
    """Copy the tree at ``src`` into the existing directory ``dst``, staying on one device.

    Regular files (hard links kept), directories, symbolic links and device,
    fifo and socket nodes, with their mode, owner and times.  A directory
    on another device (a mount point) is created empty and not entered: the
    mount itself is moved afterwards.  ``skip`` names a top-level entry to
    leave out (the copy's own mount point).
    """
    device = os.stat(src).st_dev
    linked: dict[int, str] = {}
    files = size = 0

    def finish(path: str, st: os.stat_result) -> None:
        os.chown(path, st.st_uid, st.st_gid, follow_symlinks=False)
        if not stat.S_ISLNK(st.st_mode):
            os.chmod(path, stat.S_IMODE(st.st_mode))
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)

    def copy_file(source: str, target: str, length: int) -> None:
        fin = os.open(source, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            fout = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                offset = 0
                while offset < length:
                    sent = os.sendfile(fout, fin, offset, min(length - offset, _COPY_CHUNK))
                    if sent == 0:
                        break  # the file shrank under us: copy what there is
                    offset += sent
            finally:
                os.close(fout)
        finally:
            os.close(fin)

    def walk(source_dir: str, target_dir: str, top: bool) -> None:
        nonlocal files, size
        with os.scandir(source_dir) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                if top and entry.name == skip:
                    continue
                st = entry.stat(follow_symlinks=False)
                target = os.path.join(target_dir, entry.name)
                mode = st.st_mode
                if stat.S_ISDIR(mode):
                    os.mkdir(target, 0o700)
                    if st.st_dev == device:
                        walk(entry.path, target, False)
                elif stat.S_ISLNK(mode):
                    os.symlink(os.readlink(entry.path), target)
                elif stat.S_ISREG(mode):
                    if st.st_nlink > 1 and st.st_ino in linked:
                        os.link(linked[st.st_ino], target)
                        files += 1
                        continue
                    copy_file(entry.path, target, st.st_size)
                    if st.st_nlink > 1:
                        linked[st.st_ino] = target
                    size += st.st_size
                else:
                    os.mknod(target, mode, st.st_rdev)
                finish(target, st)
                files += 1

    walk(src, dst, True)
    finish(dst, os.stat(src))
    return CopyStats(files, size)


@record
class CopyTree(ops.Op):
    """Copy the initramfs into the tmpfs mounted on ``target`` (not crossing mounts)."""

    source: str
    target: str

    def describe(self) -> str:
        return f"copy {self.source} into {self.target} (files, links, nodes; one device)"

    def perform(self, sys: System) -> CopyStats:
        return copy_tree(self.source, self.target, skip=os.path.basename(self.target))

    def simulate(self, sys: System) -> CopyStats:
        return CopyStats(0, 0)


@record
class EnterTmpfs(ops.Op):
    """Make the tmpfs at ``path`` the root, then free the ramfs beneath it.

    The ramfs is reached after the ``chroot`` through a descriptor opened
    before it (``/proc/self/fd/N``, which the kernel resolves outside the
    chroot), and emptied with the same guarded routine as switch-root's
    (PID 1 only, ramfs or tmpfs only, /etc/initrd-release present, never
    crossing a mount).  The reply is the error that kept it from being
    freed, or None.  Files still mapped (the interpreter, its libraries)
    keep their pages until the real init is executed.
    """

    irreversible = True
    path: str

    def describe(self) -> str:
        return f"mount --move {self.path} / && chroot . && free the old initramfs"

    def perform(self, sys: System) -> OSError | None:
        old = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.chdir(self.path)
            syscalls.mount(".", "/", None, linux.MS_MOVE)
            os.chroot(".")
            os.chdir("/")
            where = f"/proc/self/fd/{old}"
            try:
                remove_initramfs(where, where, syscalls.statfs_type(where))
            except OSError as err:
                return err
            return None
        finally:
            os.close(old)

    def simulate(self, sys: System) -> OSError | None:
        return None


def top_mounts(mounts: list[MountEntry], skip: str) -> list[str]:
    """The mount points that hang directly off the root mount (the others move with them)."""
    points = [m.mount_point for m in mounts if m.mount_point not in ("/", skip)]
    tops = []
    for point in dict.fromkeys(points):
        if not any(other != point and point.startswith(other.rstrip("/") + "/")
                   for other in points):
            tops.append(point)
    return sorted(tops)


def move_wanted(names: list[str]) -> list[str]:
    """The attribute names a ramfs would refuse: the reason to move, or nothing."""
    return [n for n in names if n not in RAMFS_KEEPS]


class Rootfs(Stage):
    name = "rootfs"
    after = ("early-mounts", "console")
    before = ("xattrs",)

    def install(self, image: Image) -> JSON:
        return {"tmpfs_move": bool(image.option("xattr_tmpfs_move"))}

    def run(self, ctx: BootContext) -> None:
        if ctx.sys.statfs_type("/") != linux.RAMFS_MAGIC:
            ctx.debug("the initramfs is not on ramfs: nothing to move")
            return
        enforcing = enforced(ctx)
        lists = read_lists(ctx, allowed_namespaces(ctx), enforcing)
        ctx.state.put(ParsedLists(tuple(lists)))
        names = sorted({n for _, recs in lists for r in recs for n, _ in r.xattrs})
        refused = move_wanted(names)
        if not refused:
            ctx.debug("the initramfs is on ramfs; its xattr lists need no tmpfs")
            return
        if not ctx.data().get("tmpfs_move", True):
            raise StageError(
                f"the initramfs is on ramfs, which cannot keep {', '.join(refused)} at this "
                "point, and this image was built with xattr_tmpfs_move = false",
                "rebuild with xattr_tmpfs_move = true (the default) in the configuration, or "
                "without those attributes; or boot without root= (the kernel then unpacks "
                "into a tmpfs)", security=enforcing)
        self._move(ctx, refused, enforcing)

    def _move(self, ctx: BootContext, refused: list[str], enforcing: bool) -> None:
        sys = ctx.sys
        start = sys.monotonic()
        hint = "boot without root= (the kernel then unpacks into a tmpfs), or rebuild with " \
               "xattr_tmpfs_move = false and without those attributes"
        try:
            if not sys.exists(TMPFS_DIR):
                sys.apply(ops.MakeDir(TMPFS_DIR, 0o700))
            sys.apply(ops.Mount("tmpfs", TMPFS_DIR, "tmpfs", 0, "mode=0755"))
            copied = sys.apply(CopyTree("/", TMPFS_DIR))
            for point in top_mounts(sys.mounts(), TMPFS_DIR):
                sys.apply(ops.MoveMount(point, TMPFS_DIR + point))
        except OSError as err:
            raise StageError(f"cannot copy the initramfs into a tmpfs (needed for "
                             f"{', '.join(refused)}): {err}", hint,
                             security=enforcing) from None
        try:
            left = sys.apply(EnterTmpfs(TMPFS_DIR))
        except OSError as err:
            raise StageError(f"cannot make the tmpfs copy the root: {err}", hint,
                             security=enforcing, retry=False) from None
        if left is not None:
            ctx.warn(f"cannot free the old ramfs ({left.strerror}), ignoring")
        took = sys.monotonic() - start
        files = copied.files if isinstance(copied, CopyStats) else 0
        size = copied.size if isinstance(copied, CopyStats) else 0
        ctx.log(f"moved the initramfs from ramfs into a tmpfs (for {', '.join(refused)}): "
                f"{files} files, {size / 1048576:.1f} MiB in {took:.3f} s")
        if sys.statfs_type("/") != linux.TMPFS_MAGIC and not sys.dry_run:
            raise StageError("after the move / is still not a tmpfs", hint,
                             security=enforcing, retry=False)

