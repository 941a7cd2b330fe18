"""Disks for the storage scenarios, as regular files, made once and cached.

The host may lack device-mapper and md (this one does), so layouts that need
them are made in a first QEMU boot: a throwaway initramfs of busybox, the
real tools and their modules runs a shell script over the blank disks, with
the root file system (made on the host by scripts/rootdisk.py) attached as
the last disk to be copied in. dm-verity needs no kernel to format: that one
is made on the host.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from collections.abc import Callable

import rootdisk
from initium import process
from initium.packaging.config import BuildConfig
from initium.packaging.image import ImageBuilder, assemble
from initium.packaging.kernel import kernel_image
from initium.packaging.qemu import boot_argv

CACHE = os.environ.get("INITIUM_VM_CACHE", os.path.expanduser("~/.cache/initium/vm-storage"))
TOOLS = ("/usr/sbin/cryptsetup", "/usr/sbin/lvm", "/usr/sbin/mdadm")
SETUP_MODULES = ["virtio_pci", "virtio_blk", "dm_mod", "dm_crypt", "md_mod", "raid1", "xts", "ecb",
                 "algif_skcipher"]
SETUP_OPTIONAL = ["aesni_intel", "aes_generic", "sha256_generic"]
LVM_CONFIG = ("activation { udev_sync = 0 udev_rules = 0 monitoring = 0 } "
              "devices { obtain_device_list_from_udev = 0 use_devicesfile = 0 }")

KEY = b"initium-test-key-0123456789\n"
LUKS_UUID = "5e0c4a3b-7d1f-4c2e-9a8b-6f5e4d3c2b1a"
OTHER_LUKS_UUID = "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0"
INNER_UUID = "2a3b4c5d-6e7f-4081-92a3-b4c5d6e7f809"
LVM_ROOT_UUID = "3b4c5d6e-7f80-4192-a3b4-c5d6e7f8091a"
MD_ROOT_UUID = "4c5d6e7f-8091-42a3-b4c5-d6e7f8091a2b"
MD_UUID = "d1e2f3a4-b5c6-4d7e-8f90-a1b2c3d4e5f6"
VERITY_ROOT_UUID = "5d6e7f80-91a2-43b4-c5d6-e7f8091a2b3c"
VERITY_HASH_UUID = "6e7f8091-a2b3-44c5-d6e7-f8091a2b3c4d"
PRELUDE = """#!/bin/sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mkdir -p /run/lvm /run/lock /run/cryptsetup /run/mdadm
for m in $(cat /modules); do insmod $m 2>/dev/null; done
n=0; while [ ! -b /dev/vdb ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n+1)); done
set -ex
"""
EPILOGUE = "\nsync\necho SETUP-DONE\npoweroff -f\n"


def setup_image(kver: str, path: str) -> None:
    builder = ImageBuilder(BuildConfig(), kver)
    for d in ("dev", "proc", "sys", "run", "tmp", "etc"):
        builder.add_dir(d)
    builder.add_device("dev/console", 5, 1)
    builder.add_busybox()
    for tool in TOOLS:
        builder.add_binary(tool)
    modules = builder.add_modules(SETUP_MODULES, SETUP_OPTIONAL)
    builder.add_file("modules", "\n".join(m["path"] for m in modules).encode())
    builder.add_file("key", KEY, 0o400)
    image, _ = assemble(builder.parts(0), 0)
    with open(path, "wb") as f:
        f.write(image)


def _run_setup(kver: str, work: str, script: str, disks: list[str]) -> None:
    image = os.path.join(work, "setup.img")
    if not os.path.exists(image):
        setup_image(kver, image)
    builder_init = os.path.join(work, "init.cpio")
    # The script rides in a second initramfs appended to the first: the kernel unpacks both.
    from initium.packaging.cpio import Entry, write_archive

    with open(builder_init, "wb") as f:
        f.write(write_archive([Entry("init", 0o100755, (PRELUDE + script + EPILOGUE).encode())],
                              mtime=0))
    combined = os.path.join(work, "combined.img")
    with open(combined, "wb") as out:
        for part in (image, builder_init):
            with open(part, "rb") as f:
                out.write(f.read())
            out.write(bytes(-out.tell() % 4))
    argv = boot_argv(combined, disks=disks, append="rdinit=/init",
                     kernel=kernel_image(kver))
    output, finished = process.watch(argv, done=lambda t: "SETUP-DONE" in t, timeout=300)
    if not finished or not re.search(r"SETUP-DONE", output):
        raise RuntimeError("the setup VM did not finish:\n" + output[-4000:])


def _cached(name: str, kver: str, script: str, make: Callable[[str], None]) -> str:
    key = hashlib.sha256(f"{kver}\n{script}\n{name}".encode()).hexdigest()[:16]
    directory = os.path.join(CACHE, f"{name}-{key}")
    if not os.path.exists(os.path.join(directory, "done")):
        shutil.rmtree(directory, ignore_errors=True)
        os.makedirs(directory)
        make(directory)
        open(os.path.join(directory, "done"), "w").close()
    return directory


def _blank(path: str, mb: int) -> None:
    with open(path, "wb") as f:
        f.truncate(mb << 20)


def _made_in_vm(kver: str, name: str, script: str, disks: tuple[tuple[str, int], ...],
                root_uuid: str) -> str:
    """The directory of a layout ``script`` makes in a first VM boot, cached.

    The VM gets the blank ``disks`` (file name, MiB) as vda, vdb, … and a
    16 MiB root file system with ``root_uuid`` as the last disk, for the
    script to copy into what it made.
    """
    def make(directory: str) -> None:
        paths = [os.path.join(directory, file) for file, _ in disks]
        for path, (_, mb) in zip(paths, disks, strict=True):
            _blank(path, mb)
        fs = os.path.join(directory, "fs.img")
        rootdisk.make_filesystem(fs, uuid=root_uuid, size_mb=16)
        _run_setup(kver, directory, script, [*paths, fs])
        os.unlink(fs)

    return _cached(name, kver, script, make)


LUKS_SCRIPT = f"""
cryptsetup luksFormat -q --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 \
  --uuid {LUKS_UUID} --key-file /key /dev/vda
cryptsetup open --key-file /key /dev/vda inner
dd if=/dev/vdb of=/dev/mapper/inner bs=1M
cryptsetup close inner
"""


def luks_disk(kver: str) -> str:
    directory = _made_in_vm(kver, "luks", LUKS_SCRIPT, (("luks.img", 40),), INNER_UUID)
    return os.path.join(directory, "luks.img")


LVM_SCRIPT = f"""
lvm pvcreate --config '{LVM_CONFIG}' /dev/vda
lvm vgcreate --config '{LVM_CONFIG}' vg0 /dev/vda
lvm lvcreate --config '{LVM_CONFIG}' -y -Zn -L 20M -n root vg0
dd if=/dev/vdb of=/dev/mapper/vg0-root bs=1M
lvm vgchange --config '{LVM_CONFIG}' -an vg0
"""


def lvm_disk(kver: str) -> str:
    directory = _made_in_vm(kver, "lvm", LVM_SCRIPT, (("lvm.img", 40),), LVM_ROOT_UUID)
    return os.path.join(directory, "lvm.img")


MD_SCRIPT = f"""
mdadm --create /dev/md0 --run --level=1 --raid-devices=2 --metadata=1.2 \
  --uuid={MD_UUID} --homehost=setup --name=root /dev/vda /dev/vdb
dd if=/dev/vdc of=/dev/md0 bs=1M
mdadm --wait /dev/md0 || true  # status 1: nothing left to resync
mdadm --stop /dev/md0
"""


def md_disks(kver: str) -> tuple[str, str]:
    directory = _made_in_vm(kver, "md", MD_SCRIPT, (("md-a.img", 24), ("md-b.img", 24)),
                            MD_ROOT_UUID)
    return os.path.join(directory, "md-a.img"), os.path.join(directory, "md-b.img")


def verity_disks(directory: str) -> tuple[str, str, str]:
    """Data, hash tree and the root hash, made on the host (veritysetup format needs no dm)."""
    data, tree = os.path.join(directory, "verity-data.img"), os.path.join(directory,
                                                                          "verity-hash.img")
    rootdisk.make_filesystem(data, uuid=VERITY_ROOT_UUID, size_mb=16)
    _blank(tree, 1)
    # mkfs gives a 16 MiB ext4 1 KiB blocks: the mapping must not have larger sectors.
    out = subprocess.run(["veritysetup", "format", "--data-block-size=1024",
                          f"--uuid={VERITY_HASH_UUID}", data, tree],
                         check=True, capture_output=True, text=True).stdout
    m = re.search(r"Root hash:\s+([0-9a-f]+)", out)
    assert m, out
    return data, tree, m.group(1)


CRYPT_LVM_LUKS_UUID = "7a8b9c0d-1e2f-4a3b-8c4d-5e6f7a8b9c0d"
CRYPT_LVM_ROOT_UUID = "8b9c0d1e-2f3a-4b4c-9d5e-6f7a8b9c0d1e"
CRYPT_LVM_SCRIPT = f"""
cryptsetup luksFormat -q --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 \
  --uuid {CRYPT_LVM_LUKS_UUID} --key-file /key /dev/vda
cryptsetup open --key-file /key /dev/vda inner
lvm pvcreate --config '{LVM_CONFIG}' /dev/mapper/inner
lvm vgcreate --config '{LVM_CONFIG}' vgcrypt /dev/mapper/inner
lvm lvcreate --config '{LVM_CONFIG}' -y -Zn -L 20M -n root vgcrypt
dd if=/dev/vdb of=/dev/mapper/vgcrypt-root bs=1M
lvm vgchange --config '{LVM_CONFIG}' -an vgcrypt
cryptsetup close inner
"""


def crypt_lvm_disk(kver: str) -> str:
    """LVM inside LUKS2: the PV is the opened LUKS volume, the root an LV in it."""
    directory = _made_in_vm(kver, "crypt-lvm", CRYPT_LVM_SCRIPT, (("crypt-lvm.img", 48),),
                            CRYPT_LVM_ROOT_UUID)
    return os.path.join(directory, "crypt-lvm.img")


# Typed on the console: cryptsetup reads a typed passphrase up to the newline,
# so the keyslot is made from the same bytes without one.
PASSPHRASE = "initium-typed-passphrase"
PASS_LUKS_UUID = "9c0d1e2f-3a4b-4c5d-8e6f-7a8b9c0d1e2f"
PASS_ROOT_UUID = "0d1e2f3a-4b5c-4d6e-9f7a-8b9c0d1e2f3a"
PASS_SCRIPT = f"""
printf '%s' '{PASSPHRASE}' > /pass
cryptsetup luksFormat -q --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 \
  --uuid {PASS_LUKS_UUID} --key-file /pass /dev/vda
cryptsetup open --key-file /pass /dev/vda inner
dd if=/dev/vdb of=/dev/mapper/inner bs=1M
cryptsetup close inner
"""


def passphrase_disk(kver: str) -> str:
    directory = _made_in_vm(kver, "luks-pass", PASS_SCRIPT, (("pass.img", 40),),
                            PASS_ROOT_UUID)
    return os.path.join(directory, "pass.img")


VICTIM = "/srv/victim"


def corrupted_verity_disks(directory: str) -> tuple[str, str, str]:
    """As verity_disks, then one byte of /srv/victim's data flipped in the data image.

    The hash tree was made from the good data, so the flipped block fails its
    hash: the file system's metadata is intact and mounts, the file does not
    read. The root's init reads the file (/etc/initium-read-check) and says how.
    """
    data, tree = os.path.join(directory, "verity-data.img"), os.path.join(directory,
                                                                          "verity-hash.img")
    victim = b"".join(b"INITIUM-VERITY-VICTIM %06d\n" % i for i in range(512))  # 14 KiB
    rootdisk.make_filesystem(data, uuid=VERITY_ROOT_UUID, size_mb=16,
                             extra={VICTIM: victim,
                                    "/etc/initium-read-check": f"{VICTIM}\n".encode()})
    _blank(tree, 1)
    out = subprocess.run(["veritysetup", "format", "--data-block-size=1024",
                          f"--uuid={VERITY_HASH_UUID}", data, tree],
                         check=True, capture_output=True, text=True).stdout
    m = re.search(r"Root hash:\s+([0-9a-f]+)", out)
    assert m, out
    with open(data, "r+b") as f:
        image = f.read()
        at = image.find(b"INITIUM-VERITY-VICTIM 000100\n")
        assert at > 0 and image.count(b"INITIUM-VERITY-VICTIM 000100\n") == 1
        f.seek(at)
        f.write(b"J")  # "I" -> "J"
    return data, tree, m.group(1)
