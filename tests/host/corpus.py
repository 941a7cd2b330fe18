"""A corpus of small images made by the real tools, each paired with blkid's view.

Every builder makes one image in a temporary directory with the tool a user
would use (mkfs.*, mkswap, cryptsetup, pvcreate, mdadm, sfdisk) and returns
an :class:`Image`; a builder whose tool or kernel support is missing skips
with the reason.  RAID metadata for which no tool can work here (IMSM and
DDF need firmware or a controller) comes from tests/unit/disk_images.py and
is held to blkid all the same.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.unit.disk_images import (
    ddf_anchor,
    isw_anchor,
    md0_offset,
    md0_superblock,
    md1_superblock,
    need,
    run,
    sparse,
)

MiB = 1 << 20


@dataclass(frozen=True)
class Image:
    name: str
    path: Path  # what our probe reads
    blkid_path: str  # what blkid -p reads: the file, or a loop device over it
    sector_size: int = 512
    inner_uuid: str | None = None  # a file system inside a container, that must not win


Builder = Callable[[Path, contextlib.ExitStack], Image]




def loop(stack: contextlib.ExitStack, img: Path, sector_size: int = 512) -> str:
    """Attach ``img`` to a loop device, detached when ``stack`` closes."""
    need("losetup")
    if os.geteuid() != 0:
        pytest.skip("loop devices need root")
    args = ["losetup", "--show", "-f"]
    if sector_size != 512:
        args += ["--sector-size", str(sector_size)]
    proc = subprocess.run([*args, str(img)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.skip(f"cannot attach a loop device: {proc.stderr.strip()}")
    dev = proc.stdout.strip()
    stack.callback(subprocess.run, ["losetup", "-d", dev], check=False)
    return dev


def plain(name: str, path: Path, inner: str | None = None) -> Image:
    return Image(name, path, str(path), inner_uuid=inner)


# --------------------------------------------------------------------------
# file systems and simple containers


def mkfs(name: str, tool: str, size_mib: int, *args: str) -> Builder:
    def build(tmp: Path, stack: contextlib.ExitStack) -> Image:
        need(tool)
        img = sparse(tmp / f"{name}.img", size_mib * MiB)
        run(tool, *args, img)
        return plain(name, img)

    return build


def tree_image(name: str, *cmd: str) -> Builder:
    def build(tmp: Path, stack: contextlib.ExitStack) -> Image:
        need(cmd[0])
        src = tmp / "tree"
        src.mkdir()
        (src / "hello").write_text("hi\n")
        img = tmp / f"{name}.img"
        argv = [a.replace("{img}", str(img)).replace("{src}", str(src)) for a in cmd]
        run(*argv)
        return plain(name, img)

    return build


def swap(tmp: Path, stack: contextlib.ExitStack) -> Image:
    need("mkswap")
    img = sparse(tmp / "swap.img", 1 * MiB)
    img.chmod(0o600)
    run("mkswap", "-U", "4d5e6f70-8192-4d3e-8f40-6b7c8d9eafb0", "-L", "swap-1", img)
    return plain("swap", img)


def luks(version: int) -> Builder:
    def build(tmp: Path, stack: contextlib.ExitStack) -> Image:
        need("cryptsetup")
        img = sparse(tmp / f"luks{version}.img", 20 * MiB)
        key = tmp / "key"
        key.write_bytes(b"not a secret")
        key.chmod(0o400)
        args: list[str | Path] = [
            "cryptsetup", "-q", "luksFormat", "--type", f"luks{version}",
            "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--key-file", key,
            "--uuid", f"6f708192-a3b4-4c5d-8e6f-708192a3b4c{version}",
        ]  # fmt: skip
        if version == 2:
            args += ["--label", "crypt root"]
        run(*args, img)
        return plain(f"luks{version}", img)

    return build


def lvm2(tmp: Path, stack: contextlib.ExitStack) -> Image:
    need("pvcreate")
    img = sparse(tmp / "pv.img", 16 * MiB)
    with contextlib.ExitStack() as attached:
        dev = loop(attached, img)
        # Keep the host's LVM devices file (if any) from learning about the loop device.
        run("pvcreate", "-q", "--config", "devices { use_devicesfile = 0 }",
            "-u", "5e6f7081-92a3-4b4c-9d5e-6f708192a3b4", "--norestorefile", dev)  # fmt: skip
    return plain("LVM2_member", img)


# --------------------------------------------------------------------------
# md RAID1 of two loop files, made by mdadm


def md_available() -> str | None:
    """Why mdadm cannot create an array here, or None when it can."""
    if shutil.which("mdadm") is None:
        return "mdadm not installed (scripts/setup-host installs it)"
    if os.geteuid() != 0:
        return "mdadm --create needs root"
    if not os.path.exists("/proc/mdstat"):
        subprocess.run(["modprobe", "md_mod"], capture_output=True, check=False)
        subprocess.run(["modprobe", "raid1"], capture_output=True, check=False)
    if not os.path.exists("/proc/mdstat"):
        return "the running kernel has no md driver (/proc/mdstat missing)"
    return None


MD_UUID = "7b0e5a2c:1d3f4e5a:8b6c9d0e:1f2a3b4c"
MD_INNER = "0b5e1c2d-3f40-4a5b-8c6d-7e8f90a1b2c3"
MD_HAND = "7b0e5a2c-1d3f-4e5a-8b6c-9d0e1f2a3b4c"


def mdadm(metadata: str) -> Builder:
    def build(tmp: Path, stack: contextlib.ExitStack) -> Image:
        reason = md_available()
        if reason:
            pytest.skip(reason)
        a = sparse(tmp / "a.img", 24 * MiB)
        b = sparse(tmp / "b.img", 24 * MiB)
        with contextlib.ExitStack() as attached:
            la, lb = loop(attached, a), loop(attached, b)
            md = f"/dev/md/initium-probe-{metadata.replace('.', '')}"
            run("mdadm", "--create", md, "--run", "--quiet", "--level=1", "--raid-devices=2",
                f"--metadata={metadata}", f"--uuid={MD_UUID}", "--assume-clean",
                "--homehost=any", "--name=root", la, lb)  # fmt: skip
            try:
                run("mkfs.ext4", "-q", "-F", "-U", MD_INNER, "-L", "md-root", md)
            finally:
                run("mdadm", "--stop", md)
        return plain(f"md-{metadata}", a, MD_INNER)

    return build


# --------------------------------------------------------------------------
# RAID metadata no tool can write here, held to blkid all the same


def hand(name: str, size: int, at: int, data: bytes) -> Builder:
    def build(tmp: Path, stack: contextlib.ExitStack) -> Image:
        img = tmp / f"{name}.img"
        disk = bytearray(size)
        off = at if at >= 0 else size + at
        disk[off : off + len(data)] = data
        img.write_bytes(disk)
        return plain(name, img)

    return build


# --------------------------------------------------------------------------
# partition tables, on 512-byte and (through a loop device) 4 KiB sectors

GPT_SCRIPT = """label: gpt
label-id: 01234567-89AB-CDEF-0123-456789ABCDEF
start=256, size=1024, type=linux, uuid=11111111-2222-4333-8444-555555555555, name="root part"
start=1280, size=256, type=swap, uuid=AABBCCDD-EEFF-4011-8233-445566778899, name="swap"
"""
DOS_SCRIPT = """label: dos
label-id: 0x12345678
start=256, size=512, type=83, bootable
start=1024, size=2048, type=5
start=1280, size=256, type=82
start=1792, size=512, type=83
"""


def table(kind: str, sector_size: int) -> Builder:
    def build(tmp: Path, stack: contextlib.ExitStack) -> Image:
        need("sfdisk")
        img = sparse(tmp / f"{kind}{sector_size}.img", 4096 * sector_size)
        target = str(img)
        if sector_size != 512:
            # sfdisk 2.38 has no --sector-size: it takes the loop device's.
            target = loop(stack, img, sector_size)
        script = GPT_SCRIPT if kind == "gpt" else DOS_SCRIPT
        run("sfdisk", "-q", "--no-reread", "--no-tell-kernel", target, stdin=script)
        return Image(f"{kind}-{sector_size}", img, target, sector_size)

    return build


CORPUS: list[tuple[str, Builder]] = [
    ("ext4", mkfs("ext4", "mkfs.ext4", 16, "-q", "-F", "-U",
                  "0b5e1c2d-3f40-4a5b-8c6d-7e8f90a1b2c3", "-L", "my ext4")),
    ("jbd", mkfs("jbd", "mkfs.ext4", 8, "-q", "-F", "-O", "journal_dev", "-U",
                 "1c2d3e4f-5061-4b7c-9d8e-9fa0b1c2d3e4", "-L", "journal")),
    ("xfs", mkfs("xfs", "mkfs.xfs", 300, "-q", "-f", "-m",
                 "uuid=1a2b3c4d-5e6f-4a1b-9c2d-3e4f5a6b7c8d", "-L", "xfs-root")),
    ("btrfs", mkfs("btrfs", "mkfs.btrfs", 114, "-q", "-f", "-U",
                   "2b3c4d5e-6f70-4b1c-8d2e-4f5a6b7c8d9e", "-L", "pool")),
    ("vfat", mkfs("vfat", "mkfs.vfat", 40, "-F", "32", "-i", "DEADBEEF", "-n", "BOOT32")),
    ("erofs", tree_image("erofs", "mkfs.erofs", "-U3c4d5e6f-7081-4c2d-9e3f-5a6b7c8d9eaf",
                         "{img}", "{src}")),
    ("squashfs", tree_image("squashfs", "mksquashfs", "{src}", "{img}", "-quiet", "-noappend")),
    ("swap", swap),
    ("luks1", luks(1)),
    ("luks2", luks(2)),
    ("LVM2_member", lvm2),
    ("md-0.90", mdadm("0.90")),
    ("md-1.0", mdadm("1.0")),
    ("md-1.1", mdadm("1.1")),
    ("md-1.2", mdadm("1.2")),
    ("md-0.90 (hand-built)", hand("md090", 8 * MiB, md0_offset(8 * MiB),
                                  md0_superblock((1, 2, 3, 4), 4096))),
    ("md-1.0 (hand-built)", hand("md10", 8 * MiB, 8 * MiB - 0x2000,
                                 md1_superblock(8 * MiB - 0x2000, MD_HAND, b"h:root"))),
    ("md-1.1 (hand-built)", hand("md11", 8 * MiB, 0, md1_superblock(0, MD_HAND, b"h:root"))),
    ("md-1.2 (hand-built)", hand("md12", 8 * MiB, 4096,
                                 md1_superblock(4096, MD_HAND, b"h:root"))),
    ("isw (hand-built)", hand("isw", 8 * MiB, -1024, isw_anchor())),
    ("ddf (hand-built)", hand("ddf", 8 * MiB, -512, ddf_anchor(b"Linux-MD-test-guid-1234"))),
    ("gpt-512", table("gpt", 512)),
    ("gpt-4096", table("gpt", 4096)),
    ("dos-512", table("dos", 512)),
    ("dos-4096", table("dos", 4096)),
]  # fmt: skip


@contextlib.contextmanager
def made(builder: Builder, tmp: Path) -> Iterator[Image]:
    with contextlib.ExitStack() as stack:
        yield builder(tmp, stack)
