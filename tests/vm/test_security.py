"""Security stages in real boots: the tmpfs move for IMA xattrs, SELinux's policy load.

Debian's kernel unpacks the initramfs into ramfs when root= is given, so an
image whose lists carry security.ima must move into a tmpfs before the list
can be applied; the root's init then shows the boot got through switch-root.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import rootdisk
from initium.cli import main

from tests.vm.conftest import ROOT_UUID, BootFn

pytestmark = pytest.mark.vm


def _reached_root(output: str) -> None:
    m = re.search(r"INITIUM-ROOT-INIT pid=(\d+)", output)
    assert m and m.group(1) == "1", "the root's init never ran as PID 1:\n" + output[-4000:]


def test_ima_xattrs_move_the_initramfs_into_a_tmpfs(boot: BootFn, kver: str, ext4_disk: str,
                                                   tmp_path: Path) -> None:
    out = str(tmp_path / "ima.img")
    assert main(["build", "--output", out, "--kver", kver, "--module", "virtio_blk",
                 "--ima-digest"]) == 0
    result = boot(out, ext4_disk, f"root=UUID={ROOT_UUID} rd.debug")
    m = re.search(r"moved the initramfs from ramfs into a tmpfs \(for security\.ima\): "
                  r"(\d+) files, ([\d.]+) MiB in ([\d.]+) s", result.output)
    assert m, result.output[-4000:]
    assert int(m.group(1)) > 20
    # Applied on the tmpfs: a ramfs would have refused every security.ima.
    applied = re.search(r"(\d+) xattrs applied from core", result.output)
    assert applied and int(applied.group(1)) > 20, result.output[-4000:]
    assert result.has(r"setxattr security\.ima=0x0404")
    assert not result.has(r"cannot free the old ramfs|cannot free the initramfs")
    _reached_root(result.output)
    assert not result.has("Kernel panic|Traceback")


def test_without_root_the_kernel_unpacks_into_tmpfs_and_nothing_moves(
        boot: BootFn, kver: str, tmp_path: Path) -> None:
    out = str(tmp_path / "ima.img")
    assert main(["build", "--output", out, "--kver", kver, "--module", "virtio_blk",
                 "--ima-digest"]) == 0
    # No root= at all: the image stops in `root`, after the xattrs were applied in place.
    result = boot(out, None, "rd.debug rd.timeout=1", until=r"System halted|Kernel panic")
    assert result.has(r"the initramfs is not on ramfs: nothing to move"), result.output[-4000:]
    assert result.has(r"\d+ xattrs applied from core")


POLICY = "/etc/selinux/default"


def test_selinux_policy_loaded_and_dev_relabelled(boot: BootFn, kver: str, ext4_disk: str,
                                                  tmp_path: Path) -> None:
    if not Path(POLICY, "policy").is_dir():
        pytest.skip("apt-get install selinux-policy-default")
    out = str(tmp_path / "selinux.img")
    assert main(["build", "--output", out, "--kver", kver, "--module", "virtio_blk",
                 "--selinux-policy", POLICY]) == 0
    result = boot(out, ext4_disk,
                  f"root=UUID={ROOT_UUID} security=selinux selinux=1 enforcing=0")
    # (a) the kernel took the policy from the stage, and the root sees selinuxfs in permissive
    assert result.has(r"SELinux:  policy capability"), result.output[-4000:]
    m = re.search(r"SELinux policy \S+policy\.\d+ loaded in ([\d.]+) s \(permissive\); "
                  r"(\d+) initramfs files and (\d+) files under /dev, /run labelled",
                  result.output)
    assert m, result.output[-4000:]
    assert int(m.group(2)) > 20 and int(m.group(3)) > 20
    assert result.has(r"^INITIUM-SELINUX enforce=0 ")
    # (b) nodes devtmpfs made before the load carry their policy types, not device_t
    assert result.has(r"labels now: /dev/null=system_u:object_r:null_device_t:s0, "
                      r"/dev/console=system_u:object_r:console_device_t:s0")
    _reached_root(result.output)
    assert not result.has("Kernel panic|Traceback")


def test_selinux_0_skips_and_enforcing_without_selinux_stops(boot: BootFn, kver: str,
                                                            ext4_disk: str,
                                                            tmp_path: Path) -> None:
    if not Path(POLICY, "policy").is_dir():
        pytest.skip("apt-get install selinux-policy-default")
    out = str(tmp_path / "selinux.img")
    assert main(["build", "--output", out, "--kver", kver, "--module", "virtio_blk",
                 "--selinux-policy", POLICY, "--shell"]) == 0
    result = boot(out, ext4_disk, f"root=UUID={ROOT_UUID} selinux=0 initium.timeline")
    assert result.has(r"^\s+selinux\s+[\d.]+\s+[\d.]+\s+0\.000\s+skipped"), result.output[-3000:]
    _reached_root(result.output)
    # AppArmor kernel (no security=selinux) but enforcing=1: fail closed, no shell.
    result = boot(out, ext4_disk, f"root=UUID={ROOT_UUID} enforcing=1",
                  until=r"System halted|Kernel panic")
    assert result.has(r"selinux failed: the kernel has no SELinux enabled"), \
        result.output[-3000:]
    assert result.has(r"reboot: System halted")
    assert not result.has(r"starting the emergency shell|INITIUM-ROOT-INIT")


REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def initium_policy(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A copy of the host's policy store with policy/initium.pp linked in (policy/build)."""
    if not Path(POLICY, "policy").is_dir() or not Path("/var/lib/selinux/default").is_dir():
        pytest.skip("apt-get install selinux-policy-default")
    if not Path("/usr/share/selinux/devel/Makefile").exists():
        pytest.skip("apt-get install checkpolicy semodule-utils selinux-policy-dev")
    out = tmp_path_factory.mktemp("store")
    done = subprocess.run([str(REPO / "policy/build"), str(out)], capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def _denials_before_root(output: str) -> list[str]:
    before = output.split("INITIUM-ROOT-INIT", 1)[0]
    return [line for line in before.splitlines() if "avc:  denied" in line]


def test_selinux_with_initium_module_no_denials_in_permissive(
        boot: BootFn, kver: str, ext4_disk: str, tmp_path: Path, initium_policy: str) -> None:
    out = str(tmp_path / "selinux.img")
    assert main(["build", "--output", out, "--kver", kver, "--module", "virtio_blk",
                 "--selinux-policy", initium_policy]) == 0
    result = boot(out, ext4_disk,
                  f"root=UUID={ROOT_UUID} security=selinux selinux=1 enforcing=0")
    m = re.search(r"SELinux policy \S+ loaded in [\d.]+ s \(permissive\); (\d+) initramfs "
                  r"files and (\d+) files under /dev, /run labelled", result.output)
    assert m and int(m.group(1)) > 20 and int(m.group(2)) > 20, result.output[-4000:]
    _reached_root(result.output)
    # The permissive kernel logs every first denial of a (source, target, class);
    # without the module there are 8 `associate` ones here (bin_t on root_t, ...).
    assert _denials_before_root(result.output) == []
    assert result.has(r"^INITIUM-SELINUX enforce=0 ")


def test_selinux_enforcing_boots_a_labelled_root_into_init_t(
        boot: BootFn, kver: str, tmp_path: Path, initium_policy: str) -> None:
    out = str(tmp_path / "selinux.img")
    assert main(["build", "--output", out, "--kver", kver, "--module", "virtio_blk",
                 "--selinux-policy", initium_policy]) == 0
    disk = str(tmp_path / "labelled.img")
    rootdisk.make_disk(disk, uuid=ROOT_UUID, selinux_policy=initium_policy)
    result = boot(out, disk, f"root=UUID={ROOT_UUID} security=selinux selinux=1 enforcing=1")
    assert result.has(r"SELinux policy \S+ loaded in [\d.]+ s \(enforcing\)"), \
        result.output[-4000:]
    assert result.has(r"labels now: /dev/null=system_u:object_r:null_device_t:s0, "
                      r"/dev/console=system_u:object_r:console_device_t:s0")
    _reached_root(result.output)
    # PID 1 left kernel_t for initium_t right after the load (the policy has
    # policy/initium.te), and exec of /sbin/init (init_exec_t on the labelled
    # root) took it from there to init_t: /proc/1/attr/prev is the context
    # before that exec.
    assert result.has(r"labelled in [\d.]+ s; PID 1 in initium_t")
    assert result.has(r"^INITIUM-SELINUX enforce=1 pid1=system_u:system_r:init_t:s0 "
                      r"prev=system_u:system_r:initium_t:s0"), result.output[-3000:]
    assert _denials_before_root(result.output) == []
    # What the root's init finds: /dev/vda appeared after the load (virtio_blk
    # is loaded by the modules stage) and was labelled at switch-root.
    assert result.has(r"nodes made under /dev since the policy load labelled")
    assert result.has(r"^INITIUM-LABELS /dev/null=system_u:object_r:null_device_t:s0 "
                      r"/dev/console=system_u:object_r:console_device_t:s0 "
                      r"/dev/vda=system_u:object_r:fixed_disk_device_t:s0 "
                      r"/sbin/init=system_u:object_r:init_exec_t:s0"), result.output[-3000:]
    assert not result.has("Kernel panic|Traceback")


def test_systemd_252_takes_over_a_loaded_policy_and_ends_in_init_t(
        boot: BootFn, kver: str, tmp_path: Path, initium_policy: str) -> None:
    """The handover to the build host's systemd, as docs/selinux.md describes it."""
    if not Path(rootdisk.SYSTEMD).exists():
        pytest.skip("systemd is not installed")
    out = str(tmp_path / "selinux.img")
    assert main(["build", "--output", out, "--kver", kver, "--module", "virtio_blk",
                 "--selinux-policy", initium_policy]) == 0
    disk = str(tmp_path / "systemd.img")
    rootdisk.make_disk(disk, uuid=ROOT_UUID, selinux_policy=initium_policy, systemd=True,
                       size_mb=80)
    result = boot(out, disk, f"root=UUID={ROOT_UUID} security=selinux selinux=1 enforcing=0 "
                  "systemd.unit=initium-report.service systemd.log_target=kmsg")
    assert result.has(r"PID 1 in initium_t"), result.output[-4000:]
    # selinux-setup.c loads the root's policy again although one is loaded
    # (PID 1's context is not "kernel"), then relabels the API file systems.
    assert result.has(r"systemd\[1\]: Successfully loaded SELinux policy in"), \
        result.output[-4000:]
    assert result.has(r"systemd\[1\]: Relabelled /dev, /dev/shm, /run")
    # systemd runs in init_t, entered by exec from initium_t; the mode it
    # keeps is the command line's.
    assert result.has(r"^INITIUM-SYSTEMD pid1=system_u:system_r:init_t:s0 "
                      r"prev=system_u:system_r:initium_t:s0 enforce=0 comm=systemd"), \
        result.output[-4000:]
    assert not result.has("Kernel panic|Traceback|Freezing execution")


def test_enforcing_with_the_policy_gone_stops_and_a_damaged_list_stops(
        boot: BootFn, kver: str, ext4_disk: str, tmp_path: Path) -> None:
    """The issue's failure paths, on images damaged after the build.

    A later cpio archive replaces an earlier file (the kernel unpacks them in
    order, and an entry of another type removes what was there), so an
    overlay turns the policy into a dangling symlink, or the core's xattr
    list into bytes that are not one.
    """
    import stat

    from initium.packaging.cpio import Entry, write_archive
    from initium.packaging.selinux import IMAGE_DIR, policy_file
    from initium.packaging.xattrs import list_path

    if not Path(POLICY, "policy").is_dir():
        pytest.skip("apt-get install selinux-policy-default")
    out = tmp_path / "selinux.img"
    assert main(["build", "--output", str(out), "--kver", kver, "--module", "virtio_blk",
                 "--selinux-policy", POLICY, "--ima-digest", "--shell"]) == 0
    policy = f"{IMAGE_DIR}/policy.{policy_file(POLICY)[1]}".lstrip("/")
    gone = tmp_path / "gone.img"
    gone.write_bytes(out.read_bytes() + write_archive(
        [Entry(policy, stat.S_IFLNK | 0o777, b"/nonexistent")]))
    result = boot(str(gone), ext4_disk,
                  f"root=UUID={ROOT_UUID} security=selinux selinux=1 enforcing=1 rd.shell",
                  until=r"System halted|Kernel panic")
    assert result.has(r"selinux failed: no SELinux policy in this image"), \
        result.output[-3000:]
    assert result.has(r"reboot: System halted")
    assert not result.has(r"starting the emergency shell|INITIUM-ROOT-INIT|Kernel panic")

    damaged = tmp_path / "damaged.img"
    damaged.write_bytes(out.read_bytes() + write_archive(
        [Entry(list_path("core"), stat.S_IFREG | 0o644, b"\x00\x00\x00\x07not a list")]))
    # IMA required: the list is read first by the rootfs stage (it decides on
    # the tmpfs move), which stops with the offset, fail closed.
    result = boot(str(damaged), ext4_disk,
                  f"root=UUID={ROOT_UUID} rd.shell rd.ima.require_policy=1",
                  until=r"System halted|Kernel panic")
    assert result.has(r"rootfs failed: /\.initium/xattrs/core: offset 0x0: .*; no xattrs "
                      r"were applied"), result.output[-3000:]
    assert result.has(r"reboot: System halted")
    assert not result.has(r"starting the emergency shell|INITIUM-ROOT-INIT|Kernel panic")
