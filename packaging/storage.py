"""Which storage handlers an image carries: named ones, or ``auto`` from the host's root.

``auto`` follows the device under / through sysfs, as lsblk -s would: a
device-mapper device says what made it in dm/uuid (CRYPT-LUKS…, LVM-…,
CRYPT-VERITY…), an md array has an md/ directory, and each one's slaves/
lead to the devices below it.
"""

from __future__ import annotations

import os

from initium.stages.storage import KINDS

STAGE_REF = "initium.stages.storage:Storage"
CHOICES = (*KINDS, "auto", "none")


def resolve_storage(values: tuple[str, ...], sysfs: str = "/sys") -> tuple[str, ...]:
    """The handler kinds for ``values`` (``auto`` expanded, ``none`` alone meaning none)."""
    kinds: list[str] = []
    for value in values:
        if value == "auto":
            kinds += sorted(host_root_kinds(sysfs))
        elif value in KINDS:
            kinds.append(value)
        elif value != "none":
            raise ValueError(f"unknown storage kind {value!r} (known: {', '.join(CHOICES)})")
    return tuple(k for k in KINDS if k in kinds)


def _kinds_below(directory: str, depth: int = 0) -> set[str]:
    found: set[str] = set()
    if depth > 16:
        return found
    try:
        with open(os.path.join(directory, "dm", "uuid")) as f:
            uuid = f.read().strip()
    except OSError:
        uuid = ""
    if uuid.startswith("CRYPT-LUKS"):
        found.add("luks")
    elif uuid.startswith("LVM-"):
        found.add("lvm")
    elif uuid.startswith("CRYPT-VERITY"):
        found.add("verity")
    if os.path.isdir(os.path.join(directory, "md")):
        found.add("md")
    slaves = os.path.join(directory, "slaves")
    if os.path.isdir(os.path.join(directory, "partition")) or not os.path.isdir(slaves):
        parent = os.path.dirname(os.path.realpath(directory))
        if os.path.isfile(os.path.join(directory, "partition")):
            return found | _kinds_below(parent, depth + 1)
        return found
    for name in sorted(os.listdir(slaves)):
        found |= _kinds_below(os.path.realpath(os.path.join(slaves, name)), depth + 1)
    return found


def host_root_kinds(sysfs: str = "/sys") -> set[str]:
    """What assembling this host's root needs; empty when / is not on a block device."""
    dev = os.stat("/").st_dev
    directory = os.path.join(sysfs, "dev", "block", f"{os.major(dev)}:{os.minor(dev)}")
    if not os.path.exists(directory):
        return set()
    return _kinds_below(os.path.realpath(directory))
