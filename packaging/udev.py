"""What ``--storage udev`` puts in the image: systemd-udevd, udevadm, and the host's storage rules.

Only the rules that name block devices come along (the /dev/disk/by-*
links, and the device-mapper and md links when those handlers are in the
image too), never the ones that would assemble storage behind the
handlers' backs: lvm2's 69-lvm.rules activates every complete volume group
and mdadm's 64-md-raid-assembly.rules runs ``mdadm --incremental`` on every
member, which would ignore ``rd.lvm.vg=`` and ``rd.md.uuid=`` (dracut ships
its own rules in their place for the same reason). 80-drivers.rules (udev's
kmod builtin) stays out too: the modules stage's own modalias matcher loads
drivers, at about 15 KB of code against udevd's loading of the whole
modules.alias.
"""

from __future__ import annotations

import os
import re

from initium.stage import JSON, Image

from .interpreter import canonical

UDEVD = ("/usr/lib/systemd/systemd-udevd", "/lib/systemd/systemd-udevd")
UDEVADM = ("/usr/bin/udevadm", "/bin/udevadm", "/usr/sbin/udevadm", "/sbin/udevadm")
# Where the host's rules are, highest priority first (udev(7): /etc overrides /usr/lib).
RULES_DIRS = ("/etc/udev/rules.d", "/usr/lib/udev/rules.d", "/lib/udev/rules.d")
UDEV_LIB = ("/usr/lib/udev", "/lib/udev")
IMAGE_RULES = "/usr/lib/udev/rules.d"
IMAGE_LIB = "/usr/lib/udev"
UDEV_CONF = "/etc/udev/udev.conf"
HOST_GROUP = "/etc/group"
_GROUP = re.compile(rb'GROUP\s*:?=\s*"([A-Za-z_][A-Za-z0-9_.-]*)"')

BASE_RULES = ("50-udev-default.rules", "60-persistent-storage.rules")
# Programs 60-persistent-storage.rules runs for ATA and SCSI disks' by-id links.
BASE_PROGRAMS = ("ata_id", "scsi_id")
# Device-mapper's rules (names differ between distributions: both sets are looked for).
DM_RULES = ("10-dm.rules", "13-dm-disk.rules", "55-dm.rules",
            "60-persistent-storage-dm.rules", "95-dm-notify.rules")
KIND_RULES = {
    "luks": DM_RULES,
    "verity": DM_RULES,
    "lvm": (*DM_RULES, "11-dm-lvm.rules", "56-lvm.rules"),
    "md": ("63-md-raid-arrays.rules",),
}
# The tools those rules run: with udevd running, cryptsetup and lvm wait for
# 95-dm-notify.rules' ``dmsetup udevcomplete``, so dmsetup must be there.
KIND_TOOLS = {"luks": ("dmsetup",), "verity": ("dmsetup",), "lvm": ("dmsetup",)}


# Ours: device-mapper and md devices keep their database entry across
# switch-root, as dracut's 11-dm.rules and md rules arrange (Debian's and
# Fedora's own dm rules do not: they expect a systemd initrd that does).
PERSIST_RULES = "59-initium-db-persist.rules"
PERSIST_TEXT = b"""\
# initium: udevadm info --cleanup-db at switch-root spares db_persist entries.
# Device-mapper and md devices are set up in the initramfs and stay in use; the
# real root's udevd must find their flags (DM_UDEV_PRIMARY_SOURCE_FLAG, MD_*) in
# the database when it coldplugs them, or it takes them for devices not ready.
SUBSYSTEM!="block", GOTO="initium_db_persist_end"
ACTION!="add|change", GOTO="initium_db_persist_end"
KERNEL=="dm-[0-9]*|md[0-9]*|md_d[0-9]*", OPTIONS+="db_persist"
LABEL="initium_db_persist_end"
"""


def _first(paths: tuple[str, ...]) -> str | None:
    for path in paths:
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def host_rule(name: str, dirs: tuple[str, ...] = RULES_DIRS) -> str | None:
    """The host's rules file ``name`` as udev would pick it, None when absent or masked."""
    for directory in dirs:
        path = os.path.join(directory, name)
        if os.path.lexists(path):
            if os.path.realpath(path) == "/dev/null":
                return None  # masked by the administrator
            return path if os.path.isfile(path) else None
    return None


def rule_names(kinds: tuple[str, ...] | list[str]) -> list[str]:
    """The rules files wanted for an image with the storage ``kinds``, in udev's order."""
    names = set(BASE_RULES)
    for kind in kinds:
        names.update(KIND_RULES.get(kind, ()))
    return sorted(names)


def group_file(rules: list[bytes], host_groups: str) -> tuple[bytes, list[str]]:
    """An /etc/group with the groups the rules name, as the host numbers them; and those it lacks.

    Only name and number: members are the host's business. A group the host
    lacks is left out, and udevd ignores its rule's GROUP= as the host's does.
    """
    wanted = sorted({m.group(1).decode() for text in rules for m in _GROUP.finditer(text)})
    known: dict[str, str] = {}
    for line in host_groups.splitlines():
        fields = line.split(":")
        if len(fields) >= 3 and fields[2].isdigit():
            known.setdefault(fields[0], fields[2])
    lines = [f"{name}:x:{known[name]}:\n" for name in wanted if name in known]
    return "".join(lines).encode(), [name for name in wanted if name not in known]


def install_udev(image: Image, kinds: tuple[str, ...] | list[str]) -> JSON:
    """Add udevd, udevadm, the rules and their programs; the paths the boot side runs."""
    from initium.stages.storage import find_tool

    udevadm = _first(UDEVADM)
    udevd = _first(UDEVD)
    if udevadm is None or udevd is None:
        raise ValueError("--storage udev needs systemd-udevd and udevadm, which this host "
                         "lacks (apt-get install udev)")
    image.add_binary(udevadm)
    udevadm_image = canonical(udevadm)
    udevd_image = canonical(udevd)
    if os.path.realpath(udevd) == os.path.realpath(udevadm):
        # systemd ≥ 247 builds one binary that acts on the name it is called by.
        image.add_symlink(udevd_image, os.path.relpath(udevadm_image,
                                                       os.path.dirname(udevd_image)))
    else:
        image.add_binary(udevd)
    rules = []
    texts = []
    for name in rule_names(kinds):
        path = host_rule(name)
        if path is None:
            continue
        with open(path, "rb") as f:
            texts.append(f.read())
        image.add_file(f"{IMAGE_RULES}/{name}", texts[-1])
        rules.append(name)
    image.add_file(f"{IMAGE_RULES}/{PERSIST_RULES}", PERSIST_TEXT)
    rules.append(PERSIST_RULES)
    if not any(name in rules for name in BASE_RULES):
        raise ValueError("--storage udev needs the host's 60-persistent-storage.rules "
                         f"(looked in {', '.join(RULES_DIRS)})")
    programs = []
    for name in BASE_PROGRAMS:
        program = _first(tuple(os.path.join(d, name) for d in UDEV_LIB))
        if program is not None:
            image.add_binary(program, f"{IMAGE_LIB}/{name}")
            programs.append(name)
    tools = sorted({tool for kind in kinds for tool in KIND_TOOLS.get(kind, ())})
    for tool in tools:
        image.add_binary(find_tool(tool))
    try:
        with open(HOST_GROUP, encoding="utf-8", errors="replace") as f:
            host_groups = f.read()
    except OSError:
        host_groups = ""
    groups, unknown = group_file(texts, host_groups)
    image.add_file(HOST_GROUP, groups)
    if os.path.isfile(UDEV_CONF):
        with open(UDEV_CONF, "rb") as f:
            image.add_file(UDEV_CONF, f.read())
    return {"udevd": udevd_image, "udevadm": udevadm_image, "rules": rules,
            "programs": programs, "tools": tools, "unknown_groups": unknown}
