"""systemd-udevd in the initramfs (``--storage udev``): by-uuid and by-id roots, its handover.

The root's init reports what a real root's systemd would find: which
processes run (udevd must be gone), what /run/udev/data holds (only
db_persist entries survive ``udevadm info --cleanup-db``), and the
/dev/disk links udev made on the devtmpfs that moved into the root.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile

import pytest
import rootdisk

from tests.vm import storage_disks as sd
from tests.vm.conftest import BOOT_TIMEOUT, POWER_DOWN, ROOT_UUID, _build

pytestmark = pytest.mark.vm

SERIAL = "initium-udev-serial"
# Printed by the root's init before it powers off.
REPORT = r"""
echo "INITIUM-UDEV-PROCS $($B cat /proc/[0-9]*/comm 2>/dev/null | $B sort -u | $B tr '\n' ' ')"
if [ -d /run/udev/data ]; then
  echo "INITIUM-UDEV-DATA present: $($B ls /run/udev/data | $B tr '\n' ' ')"
else
  echo "INITIUM-UDEV-DATA absent"
fi
echo "INITIUM-UDEV-CONTROL $($B ls /run/udev | $B tr '\n' ' ')"
echo "INITIUM-UDEV-LINKS $($B ls /dev/disk/by-uuid /dev/disk/by-id 2>&1 | $B tr '\n' ' ')"
"""
RUN_INIT = re.compile(r"^\[\s*(\d+\.\d+)\][^\n]*Run /init as init process", re.MULTILINE)
ROOT_UP = re.compile(r"INITIUM-ROOT-INIT pid=1 [^\r\n]*uptime=(\d+\.\d+)")


def make_udev_disk(path: str, uuid: str = ROOT_UUID) -> None:
    """The plain ext4 root of the other tests, its init also reporting udev's leftovers."""
    init = rootdisk.ROOT_INIT.replace("$B sync\n", REPORT + "$B sync\n")
    assert init != rootdisk.ROOT_INIT
    with tempfile.TemporaryDirectory() as tree:
        rootdisk.populate(tree)
        with open(os.path.join(tree, "sbin/init"), "w") as f:
            f.write(init)
        with open(path, "wb") as f:
            f.truncate(16 << 20)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-d", tree, "-U", uuid, "-E",
                        "root_owner=0:0,lazy_itable_init=0", path], check=True,
                       capture_output=True, env={**os.environ, "E2FSPROGS_FAKE_TIME": "1"})


@pytest.fixture(scope="module")
def udev_disk(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = str(tmp_path_factory.mktemp("udev-disk") / "root.img")
    make_udev_disk(path)
    return path


@pytest.fixture(scope="module")
def udev_image(kver: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    return _build(str(tmp_path_factory.mktemp("udev-image")), kver, "--storage", "udev")


def boot_serial(kver: str, image: str, disk: str, append: str) -> str:
    """A boot with the disk given a serial number, so udev makes /dev/disk/by-id/virtio-SERIAL."""
    from initium import process
    from initium.packaging.kernel import kernel_image
    from initium.packaging.qemu import boot_argv

    argv = boot_argv(image, disks=[], append=append, kernel=kernel_image(kver),
                     extra=["-drive", f"file={disk},format=raw,if=none,id=root",
                            "-device", f"virtio-blk-pci,drive=root,serial={SERIAL}"])
    output, _ = process.watch(argv, done=lambda t: re.search(POWER_DOWN, t) is not None,
                              timeout=BOOT_TIMEOUT)
    return output


def in_initramfs(output: str) -> float:
    """Seconds from the kernel's "Run /init" to the root's init, as benchmarks/ count them."""
    run, up = RUN_INIT.search(output), ROOT_UP.search(output)
    assert run and up, output[-3000:]
    return float(up.group(1)) - float(run.group(1))


def _handed_over(output: str, kept: str = "") -> None:
    assert re.search(r"INITIUM-ROOT-INIT pid=1 ", output), output[-4000:]
    procs = re.search(r"INITIUM-UDEV-PROCS ([^\r\n]*)", output)
    assert procs, output[-3000:]
    assert "udevd" not in procs.group(1) and "udev-worker" not in procs.group(1), procs.group(1)
    data = re.search(r"INITIUM-UDEV-DATA ([^\r\n]*)", output)
    assert data and data.group(1).startswith("present"), output[-3000:]
    # Only db_persist entries (dm, md) survive cleanup-db: vda's (b254:0 or
    # so) was there during the boot and is gone.
    entries = re.findall(r"\bb\d+:\d+\b", data.group(1))
    assert entries == ([kept] if kept else []), data.group(1)
    control = re.search(r"INITIUM-UDEV-CONTROL ([^\r\n]*)", output)
    assert control, output[-3000:]
    assert "control" not in control.group(1).split(), control.group(1)
    assert re.search(r"initium: storage: udev settled after \d+\.\d+ s", output), output[-4000:]


def test_by_uuid_root_with_udev(kver: str, udev_image: str, udev_disk: str) -> None:
    output = boot_serial(kver, udev_image, udev_disk, f"root=/dev/disk/by-uuid/{ROOT_UUID}")
    _handed_over(output)
    links = re.search(r"INITIUM-UDEV-LINKS ([^\r\n]*)", output)
    assert links and ROOT_UUID in links.group(1) and f"virtio-{SERIAL}" in links.group(1), \
        output[-3000:]


def test_by_id_root_needs_udev_and_works_with_it(kver: str, udev_image: str,
                                                  udev_disk: str) -> None:
    output = boot_serial(kver, udev_image, udev_disk, f"root=/dev/disk/by-id/virtio-{SERIAL}")
    _handed_over(output)
    assert re.search(rf"found /dev/disk/by-id/virtio-{SERIAL}: vda", output), output[-3000:]


def test_time_in_initramfs_with_and_without_udev(kver: str, udev_image: str, udev_disk: str,
                                                 image: str, capsys: pytest.CaptureFixture[str]
                                                 ) -> None:
    """Not a pass/fail bound (TCG on a shared machine varies): the figures for the report."""
    append = f"root=/dev/disk/by-uuid/{ROOT_UUID} initium.timeline"
    figures: dict[str, list[float]] = {"udev": [], "plain": []}
    for _ in range(2):
        for name, img in (("udev", udev_image), ("plain", image)):
            output = boot_serial(kver, img, udev_disk, append)
            figures[name].append(in_initramfs(output))
            if name == "udev":
                _handed_over(output)
    sizes = {name: os.path.getsize(img) for name, img in (("udev", udev_image),
                                                          ("plain", image))}
    with capsys.disabled():
        for name, times in figures.items():
            print(f"\nUDEV-FIGURES {name}: in initramfs {', '.join(f'{t:.2f}' for t in times)}"
                  f" s; image {sizes[name]} bytes")
    assert sizes["udev"] > sizes["plain"]


def test_luks_root_with_udev_keeps_the_dm_entry_for_the_real_root(
        kver: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    """cryptsetup under udevd (dm cookies, 95-dm-notify's dmsetup), dm-0 db_persist kept."""

    def make(directory: str) -> None:
        disk, fs = os.path.join(directory, "luks.img"), os.path.join(directory, "fs.img")
        with open(disk, "wb") as f:
            f.truncate(40 << 20)
        make_udev_disk(fs, sd.INNER_UUID)
        sd._run_setup(kver, directory, sd.LUKS_SCRIPT, [disk, fs])
        os.unlink(fs)

    disk = os.path.join(sd._cached("udev-luks", kver, sd.LUKS_SCRIPT + REPORT, make),
                        "luks.img")
    tmp = tmp_path_factory.mktemp("udev-luks-image")
    key = tmp / "root.key"
    key.write_bytes(sd.KEY)
    image = _build(str(tmp), kver, "--storage", "luks,udev", "--include", str(key),
                   "/etc/keys/root.key")
    output = boot_serial(kver, image, disk, f"root=/dev/disk/by-uuid/{sd.INNER_UUID} "
                         f"rd.luks.uuid={sd.LUKS_UUID} rd.luks.key=/etc/keys/root.key")
    dm = re.search(r"found UUID=\S+: (dm-\d+)", output)
    assert dm, output[-4000:]
    _handed_over(output, kept="b253:0")
    links = re.search(r"INITIUM-UDEV-LINKS ([^\r\n]*)", output)
    assert links and sd.INNER_UUID in links.group(1), output[-3000:]
