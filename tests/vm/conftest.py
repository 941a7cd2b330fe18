"""Fixtures for boots in QEMU: the installed cloud kernel, images built once, root disks.

The kernel is whichever Debian cloud kernel is installed (the mirror's
version changes over time): never a hard-coded version.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import rootdisk
from initium import process
from initium.packaging.kernel import installed_kernels, kernel_image
from initium.packaging.qemu import boot_argv

ROOT_UUID = "6b1f3c52-8d7e-4a0b-9c1d-2e3f4a5b6c7d"
ROOT_LABEL = "initium-root"
PART_UUID = "0c7d2a9e-51f4-4e3b-8a6d-93b1c0e4f2a8"
PART_LABEL = "initium-part"
BOOT_TIMEOUT = 120.0


def cloud_kernel() -> str:
    kernels = [k for k in installed_kernels() if "cloud" in k] or installed_kernels()
    if not kernels:
        pytest.skip("no kernel installed (apt-get install linux-image-cloud-amd64)")
    return kernels[-1]


@dataclass(frozen=True)
class Boot:
    output: str
    finished: bool

    def has(self, pattern: str) -> bool:
        return re.search(pattern, self.output, re.MULTILINE) is not None

    def kernel_time(self, pattern: str) -> float:
        """The kernel timestamp of the first console line matching ``pattern``."""
        m = re.search(r"^\[\s*(\d+\.\d+)\][^\n]*" + pattern, self.output, re.MULTILINE)
        assert m, f"no kernel line matching {pattern!r}"
        return float(m.group(1))


BootFn = Callable[..., Boot]

# A panic is waited for to the end of its line: the tests read its reason.
POWER_DOWN = r"reboot: Power down|reboot: System halted|Kernel panic[^\n]*\n"


@pytest.fixture(scope="session")
def kver() -> str:
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 missing (apt-get install qemu-system-x86)")
    return cloud_kernel()


def _build(tmp: str, kver: str, *extra: str, module: str | None = "virtio_blk") -> str:
    from initium.cli import main

    out = os.path.join(tmp, "initium.img")
    named = ["--module", module] if module else []
    assert main(["build", "--output", out, "--kver", kver, *named, *extra]) == 0
    return out


@pytest.fixture(scope="session")
def image(kver: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    return _build(str(tmp_path_factory.mktemp("image")), kver)


@pytest.fixture(scope="session")
def default_image(kver: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """No driver named: the default set, loaded by modalias."""
    return _build(str(tmp_path_factory.mktemp("default-image")), kver, module=None)


@pytest.fixture(scope="session")
def shell_image(kver: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    return _build(str(tmp_path_factory.mktemp("shell-image")), kver, "--shell")


@pytest.fixture(scope="session")
def ext4_disk(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = str(tmp_path_factory.mktemp("disk") / "root.img")
    rootdisk.make_disk(path, uuid=ROOT_UUID, label=ROOT_LABEL)
    return path


# Not UTF-8, with a slash and dot-dots: the label must match byte for byte and
# be printed escaped, and nothing may use it as a path.
HOSTILE_LABEL = "../\udcffroot"
HOSTILE_UUID = "3d0e5b1a-9c8f-4e7d-8b6a-5f4e3d2c1b0a"


@pytest.fixture(scope="session")
def hostile_disk(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = str(tmp_path_factory.mktemp("hostile") / "hostile.img")
    rootdisk.make_disk(path, uuid=HOSTILE_UUID, label=HOSTILE_LABEL)
    return path


@pytest.fixture(scope="session")
def gpt_disk(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = str(tmp_path_factory.mktemp("gpt") / "gpt.img")
    rootdisk.make_disk(path, table="gpt", partuuid=PART_UUID, partlabel=PART_LABEL,
                       uuid="a1b2c3d4-0000-4000-8000-000000000001", label="gpt-root")
    return path


@pytest.fixture(scope="session")
def boot(kver: str) -> BootFn:
    def run(image: str, disk: str | None, append: str, *, until: str = POWER_DOWN,
            answer: Callable[[str], bytes | None] | None = None,
            extra: list[str] | None = None) -> Boot:
        argv = boot_argv(image, disks=[disk] if disk else [], append=append,
                         kernel=kernel_image(kver), extra=extra)
        output, finished = process.watch(
            argv, done=lambda text: re.search(until, text) is not None,
            timeout=BOOT_TIMEOUT, answer=answer)
        return Boot(output, finished)

    return run
