"""QEMU command lines for trying and testing images (TCG: no KVM on the build hosts)."""

from __future__ import annotations

import shutil

from .kernel import kernel_image
from .reader import image_plan

QEMU = "qemu-system-x86_64"


def boot_argv(image: str, *, disks: list[str], append: str = "", kernel: str | None = None,
              memory: str = "512M", extra: list[str] | None = None) -> list[str]:
    qemu = shutil.which(QEMU)
    if qemu is None:
        raise ValueError(f"{QEMU} not found: apt-get install qemu-system-x86")
    kernel = kernel or kernel_image(image_plan(image).kver)
    cmdline = "console=ttyS0 panic=-1"
    if disks and "root=" not in append:
        cmdline += " root=/dev/vda"
    cmdline = f"{cmdline} {append}".strip()
    argv = [qemu, "-accel", "tcg", "-m", memory, "-smp", "1", "-display", "none", "-no-reboot",
            "-nodefaults", "-serial", "stdio", "-kernel", kernel, "-initrd", image,
            "-append", cmdline]
    for disk in disks:
        argv += ["-drive", f"file={disk},format=raw,if=virtio"]
    return argv + (extra or [])
