"""Give the initramfs files the extended attributes cpio could not carry.

The builder writes one list per component (initium.xattrlist); this stage
applies them before anything reads a listed file, so it runs right after the
API file systems exist and before SELinux, IMA, module loading and the root.
Every list is parsed before the first attribute is set: a malformed list
fails the stage with nothing applied, and a failure while applying names
exactly how far each list got.
"""

from __future__ import annotations

from initium import linux
from initium.record import record
from initium.stage import JSON, BootContext, Image, Stage, StageError
from initium.xattrlist import (
    LIST_DIR,
    LIST_MAX,
    NAMESPACES,
    SetXattr,
    XattrListError,
    XattrRecord,
    parse,
)

COMPONENTS = ("early", "core", "modules", "policy")  # the order the kernel unpacks them
# What a ramfs keeps of the lists at this point of the boot: nothing. It has
# no xattr handlers; security.* falls back to the LSM (vfs_setxattr ->
# security_inode_setsecurity), and SELinux refuses that until a policy is
# loaded and the superblock is labelled (SBLABEL_MNT). security.selinux
# therefore goes on after the policy load, by the selinux stage, never in a
# list applied before it; every list entry needs a tmpfs.
RAMFS_KEEPS: frozenset[str] = frozenset()


@record
class ParsedLists:
    """The lists as parsed by an earlier stage (``rootfs``), so they are read once."""

    lists: tuple[tuple[str, list[XattrRecord]], ...]


def allowed_namespaces(ctx: BootContext) -> tuple[str, ...]:
    """The namespaces the image's configuration lets the lists set (the xattrs stage's data)."""
    data = ctx.plan.stage_data("xattrs")
    return tuple(n for n in data.get("namespaces", ["security."]) if n in NAMESPACES)


def enforced(ctx: BootContext) -> bool:
    """Whether this boot asked for enforcement, so that a damaged list fails closed.

    SELinux enforcing (``enforcing=1``, else the image's ``selinux_mode``) or
    IMA required (``rd.ima.require_policy=1`` or the image's
    ``ima_required``): a boot with either must not go on to a shell with
    files that lack the attributes the list gives them.
    """
    data = ctx.plan.stage_data("xattrs")
    if ctx.cmdline.last("rd.ima.require_policy") == "1" or data.get("ima_required"):
        return True
    mode = ctx.cmdline.last("enforcing")
    if mode is not None:
        return mode == "1"
    return data.get("selinux_mode") == "enforcing"


class Xattrs(Stage):
    name = "xattrs"
    after = ("early-mounts", "console")
    before = ("selinux", "ima", "modules", "udev", "storage", "root")

    def install(self, image: Image) -> JSON:
        # The lists themselves are written by the builder with the components.
        return {"namespaces": list(image.option("xattr_namespaces")),
                "ima_required": bool(image.option("ima_required")),
                "selinux_mode": image.option("selinux_mode")}

    def run(self, ctx: BootContext) -> None:
        enforcing = enforced(ctx)
        parsed = ctx.state.get(ParsedLists)
        lists = list(parsed.lists) if parsed is not None else \
            read_lists(ctx, allowed_namespaces(ctx), enforcing)
        if not lists:
            ctx.debug("no xattr lists in this image")
            return
        names = sorted({n for _, recs in lists for r in recs for n, _ in r.xattrs})
        if ctx.sys.statfs_type("/") == linux.RAMFS_MAGIC and set(names) - RAMFS_KEEPS:
            others = ", ".join(n for n in names if n not in RAMFS_KEEPS)
            raise StageError(
                f"the initramfs is on ramfs, which cannot keep {others} before a policy is "
                "loaded; "
                "no xattrs were applied",
                "kernel 6.1 unpacks into ramfs when root= is on its command line; the rootfs "
                "stage moves the initramfs into a tmpfs first: build the image with it and "
                "xattr_tmpfs_move = true (the default), or without those attributes (no "
                "--ima-digest, --ima-sign-key or other namespaces with --keep-xattrs)",
                security=enforcing)
        done: list[tuple[str, int, int]] = []  # (component, records applied, of how many)
        count = 0
        for comp, records in lists:
            for index, rec in enumerate(records):
                for number, (name, value) in enumerate(rec.xattrs):
                    try:
                        ctx.sys.apply(SetXattr(rec.path, name, value))
                    except OSError as err:
                        partly = f", and {number} of the {len(rec.xattrs)} xattrs of " \
                                 f"/{rec.path}" if number else ""
                        raise StageError(
                            f"{LIST_DIR}/{comp}: cannot set {name} on /{rec.path}: "
                            f"{err.strerror}; applied before the failure: "
                            f"{_progress(done, comp, index, len(records))}{partly}",
                            "was the image changed after it was built? Rebuild it; "
                            "/proc must be mounted", security=enforcing) from None
                    count += 1
            done.append((comp, len(records), len(records)))
        ctx.log(f"{count} xattrs applied from {', '.join(c for c, _ in lists)}")


def read_lists(ctx: BootContext, allowed: tuple[str, ...],
                enforcing: bool) -> list[tuple[str, list[XattrRecord]]]:
    lists = []
    for comp in COMPONENTS:
        path = f"{LIST_DIR}/{comp}"
        if not ctx.sys.exists(path):
            continue
        try:
            data = ctx.sys.read_bytes(path, LIST_MAX + 1)
        except OSError as err:
            raise StageError(f"{path}: cannot read: {err.strerror}; no xattrs were applied",
                             "rebuild the image", security=enforcing) from None
        try:
            records = parse(data, allowed_prefixes=allowed)
        except XattrListError as err:
            raise StageError(f"{path}: {err}; no xattrs were applied",
                             "the list is damaged or was not written by this initium's "
                             f"builder (allowed namespaces: {', '.join(allowed)}); rebuild the "
                             "image", security=enforcing) from None
        lists.append((comp, records))
    return lists


def _progress(done: list[tuple[str, int, int]], comp: str, index: int, total: int) -> str:
    parts = [f"{c} {n} of {t} records" for c, n, t in done]
    parts.append(f"{comp} {index} of {total} records")
    return ", ".join(parts)
