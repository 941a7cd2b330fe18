"""Which kernel to build for, and where its files are."""

from __future__ import annotations

import os
import re


class KernelError(ValueError):
    pass


def _version_key(release: str) -> list[tuple[int, str]]:
    return [(int(p), "") if p.isdigit() else (-1, p) for p in re.split(r"[.\-+~]", release)]


def installed_kernels(modules_root: str = "/lib/modules") -> list[str]:
    try:
        names = [n for n in os.listdir(modules_root)
                 if os.path.isfile(os.path.join(modules_root, n, "modules.dep"))]
    except OSError:
        return []
    return sorted(names, key=_version_key)


def default_kver(modules_root: str = "/lib/modules") -> str:
    """The running kernel when its modules are here, else the newest installed one."""
    running = os.uname().release
    if os.path.isfile(os.path.join(modules_root, running, "modules.dep")):
        return running
    kernels = installed_kernels(modules_root)
    if not kernels:
        raise KernelError(f"no kernel modules under {modules_root} (install a kernel package, "
                          "or pass --kver)")
    return kernels[-1]


def kernel_image(kver: str, boot: str = "/boot") -> str:
    for name in (f"vmlinuz-{kver}", f"vmlinux-{kver}", f"bzImage-{kver}"):
        path = os.path.join(boot, name)
        if os.path.isfile(path):
            return path
    raise KernelError(f"no kernel image for {kver} under {boot}")
