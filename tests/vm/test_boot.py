"""Real boots: Debian's cloud kernel in QEMU (TCG) with an initium image and a root disk.

Each scenario asserts a marker that the root disk's own init prints (see
scripts/rootdisk.py), so a pass means the real root was reached, mounted as
asked, and its init ran as PID 1.
"""

from __future__ import annotations

import json
import re

import pytest

from tests.vm.conftest import (
    HOSTILE_LABEL,
    HOSTILE_UUID,
    PART_LABEL,
    PART_UUID,
    ROOT_LABEL,
    ROOT_UUID,
    BootFn,
)

pytestmark = pytest.mark.vm


def _root_init(output: str) -> str:
    m = re.search(r"INITIUM-ROOT-INIT pid=(\d+) init=(\S+)", output)
    assert m, "the root's init never ran:\n" + output[-3000:]
    assert m.group(1) == "1", "the root's init is not PID 1"
    return m.group(2)


def test_root_by_uuid_with_timeline(boot: BootFn, image: str, ext4_disk: str) -> None:
    result = boot(image, ext4_disk, f"root=UUID={ROOT_UUID} initium.timeline")
    assert _root_init(result.output) == "/sbin/init"
    assert result.has(r"^INITIUM-ROOT-MODE ro\b"), "root must default to read-only"
    assert result.has(r"initium timeline"), "initium.timeline must print the table"
    m = re.search(r"INITIUM-TIMELINE (\{.*\})", result.output)
    assert m, "the root cannot read /run/initium/timeline.json"
    stages = [s["stage"] for s in json.loads(m.group(1))["stages"]]
    assert stages == ["early-mounts", "console", "rootfs", "xattrs", "selinux", "ima", "modules",
                      "root"]
    env = re.search(r"INITIUM-ENV (.*)", result.output)
    assert env and "PYTHON" not in env.group(1) and "LD_LIBRARY_PATH" not in env.group(1)
    assert not result.has("cannot free the initramfs"), "the initramfs must be emptied"
    assert not result.has("Kernel panic")


def test_root_by_label(boot: BootFn, image: str, ext4_disk: str) -> None:
    result = boot(image, ext4_disk, f"root=LABEL={ROOT_LABEL}")
    assert _root_init(result.output) == "/sbin/init"


def test_root_by_partuuid_and_partlabel(boot: BootFn, image: str, gpt_disk: str) -> None:
    result = boot(image, gpt_disk, f"root=PARTUUID={PART_UUID}")
    assert _root_init(result.output) == "/sbin/init"
    assert result.has(r"found PARTUUID=.*vda1")
    result = boot(image, gpt_disk, f"root=PARTLABEL={PART_LABEL}")
    assert _root_init(result.output) == "/sbin/init"


def test_root_by_path_read_write_and_init_arguments(boot: BootFn, image: str,
                                                    ext4_disk: str) -> None:
    result = boot(image, ext4_disk, "root=/dev/vda rw single -- --debug 'x'")
    assert _root_init(result.output) == "/sbin/init"
    assert result.has(r"^INITIUM-ROOT-MODE rw\b")
    # The real init gets what the kernel gave /init: the unknown bare word, then the
    # words after --.
    assert result.has(r"INITIUM-ROOT-INIT pid=1 init=/sbin/init args=single --debug 'x' ")


def test_init_option(boot: BootFn, image: str, ext4_disk: str) -> None:
    result = boot(image, ext4_disk, f"root=UUID={ROOT_UUID} init=/sbin/other")
    assert result.has(r"INITIUM-OTHER-INIT pid=1 init=/sbin/other"), result.output[-2000:]


def test_missing_root_halts_within_timeout(boot: BootFn, image: str, ext4_disk: str) -> None:
    wanted = "UUID=00000000-dead-beef-0000-000000000000"
    result = boot(image, ext4_disk, f"root={wanted} rd.timeout=3")
    assert result.finished and result.has(r"reboot: System halted"), result.output[-3000:]
    assert not result.has("Kernel panic")
    assert result.has(rf"root failed: no block device with {wanted} after 3\.\d s; "
                      rf"seen: vda \(ext4 UUID={ROOT_UUID} LABEL={ROOT_LABEL}\)")
    assert result.has(r"try: check UUID=")
    waited = result.kernel_time("root failed") - result.kernel_time(r"root: waiting for")
    assert 2.5 <= waited <= 6.0, f"waited {waited:.1f} s for rd.timeout=3"


def test_rd_emergency_reboot(boot: BootFn, image: str, ext4_disk: str) -> None:
    result = boot(image, ext4_disk, "root=LABEL=absent rd.timeout=1 rd.emergency=reboot",
                  until=r"reboot: Restarting system|Kernel panic|reboot: Power down")
    assert result.has(r"root failed: no block device with LABEL=absent after 1\.\d s")
    assert result.has(r"reboot: Restarting system"), result.output[-2000:]


def test_unknown_root_form_is_one_clear_line(boot: BootFn, image: str,
                                             ext4_disk: str) -> None:
    result = boot(image, ext4_disk, "root=ZFS=tank/root rd.emergency=poweroff")
    assert result.has(r"root failed: root=ZFS=tank/root: unknown form"), result.output[-2000:]
    assert result.has(r"reboot: Power down")
    assert not result.has("Traceback|Kernel panic")


def test_rd_break_gives_a_shell_then_continues(boot: BootFn, shell_image: str,
                                               ext4_disk: str) -> None:
    sent: list[str] = []

    def answer(text: str) -> bytes | None:
        if "stopping before root" in text and "first" not in sent:
            sent.append("first")
            # An orphan for PID 1 to reap: the subshell exits, its sleep is reparented.
            return (b"echo SHELL-SAYS-$((6*7)) $(tty) $(cut -d' ' -f7 /proc/self/stat); "
                    b"(sleep 0.1 &); sleep 0.5; exit\n")
        if "stopping before switch-root" in text and "second" not in sent:
            sent.append("second")
            return b"echo ZOMBIES=$(grep -l '^State:.Z' /proc/[0-9]*/status | wc -l); exit\n"
        return None

    result = boot(shell_image, ext4_disk, f"root=UUID={ROOT_UUID} rd.break=root,switch-root",
                  answer=answer)
    assert result.has(r"rd\.break: stopping before root"), result.output[-3000:]
    # The shell owns the console's tty as its controlling terminal: job control, Ctrl-C.
    assert result.has(r"SHELL-SAYS-42 /dev/tty\S+ [1-9]\d*"), "no shell, or no controlling tty"
    assert not result.has("job control turned off")
    assert result.has(r"^ZOMBIES=0\b"), "PID 1 left the first shell's orphan unreaped"
    assert _root_init(result.output) == "/sbin/init"


def test_hostile_label_matches_and_is_printed_escaped(boot: BootFn, image: str,
                                                     hostile_disk: str) -> None:
    result = boot(image, hostile_disk, f"root=LABEL={HOSTILE_LABEL}")
    assert _root_init(result.output) == "/sbin/init"
    missing = boot(image, hostile_disk,
                   "root=UUID=00000000-0000-4000-8000-00000000beef rd.timeout=1")
    assert missing.has(rf"seen: vda \(ext4 UUID={HOSTILE_UUID} LABEL=\.\./\\xffroot\)"), \
        missing.output[-2000:]
    assert missing.has(r"reboot: System halted")
    assert not missing.has("Traceback|Kernel panic")


def test_root_on_virtio_scsi_found_by_modalias(boot: BootFn, default_image: str,
                                               ext4_disk: str) -> None:
    """No driver named at build: virtio_pci, virtio_scsi and sd_mod load because
    the devices ask for them, round after round; virtio_blk, with no device, does not."""
    scsi = ["-device", "virtio-scsi-pci",
            "-drive", f"file={ext4_disk},if=none,id=d0,format=raw,snapshot=on",
            "-device", "scsi-hd,drive=d0"]
    result = boot(default_image, None, f"root=UUID={ROOT_UUID}", extra=scsi)
    assert _root_init(result.output) == "/sbin/init"
    m = re.search(r"initium: modules: loaded ([^\n]*)", result.output)
    assert m, result.output[-3000:]
    loaded = m.group(1).strip().split(", ")
    assert {"virtio_pci", "virtio_scsi", "sd_mod"} <= set(loaded)
    assert "virtio_blk" not in loaded
    assert result.has(r"modalias: [4-9] rounds"), "sd_mod needs the disk virtio_scsi made"
    assert result.has(r"sd 0:0:0:0: \[sda\]")


def test_the_default_image_loads_no_scsi_driver_for_a_virtio_disk(
        boot: BootFn, default_image: str, ext4_disk: str) -> None:
    result = boot(default_image, ext4_disk, f"root=UUID={ROOT_UUID}")
    assert _root_init(result.output) == "/sbin/init"
    m = re.search(r"initium: modules: loaded ([^\n]*)", result.output)
    assert m, result.output[-3000:]
    loaded = m.group(1).strip().split(", ")
    assert "virtio_blk" in loaded
    assert not {"virtio_scsi", "sd_mod", "scsi_mod"} & set(loaded)
