"""Roots on LUKS2, LVM, md RAID1 and dm-verity, assembled by the storage stage in QEMU.

Each scenario that must boot asserts the root's own init marker; each that
must not asserts the message and that the machine went down.
"""

from __future__ import annotations

import os
import re

import pytest

from tests.vm import storage_disks as sd
from tests.vm.conftest import POWER_DOWN, BootFn, _build

pytestmark = pytest.mark.vm


def _booted(output: str) -> None:
    assert re.search(r"INITIUM-ROOT-INIT pid=1 ", output), output[-4000:]


@pytest.fixture(scope="module")
def luks_image(kver: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    tmp = tmp_path_factory.mktemp("luks-image")
    key = tmp / "root.key"
    key.write_bytes(sd.KEY)
    return _build(str(tmp), kver, "--storage", "luks", "--include", str(key),
                  "/etc/keys/root.key")


def test_luks2_root_with_a_key_file_in_the_image(boot: BootFn, kver: str,
                                                 luks_image: str) -> None:
    disk = sd.luks_disk(kver)
    result = boot(luks_image, disk, f"root=UUID={sd.INNER_UUID} rd.luks.uuid={sd.LUKS_UUID} "
                  "rd.luks.key=/etc/keys/root.key")
    _booted(result.output)
    assert result.has(rf"LUKS volume, opened as /dev/mapper/luks-{sd.LUKS_UUID}|"
                      rf"found UUID={sd.INNER_UUID}: dm-0")


def test_a_luks_volume_other_than_the_one_named_never_boots(boot: BootFn, kver: str,
                                                            luks_image: str) -> None:
    disk = sd.luks_disk(kver)
    result = boot(luks_image, disk, f"root=UUID={sd.INNER_UUID} "
                  f"rd.luks.uuid={sd.OTHER_LUKS_UUID} rd.luks.key=/etc/keys/root.key "
                  "rd.timeout=4")
    assert not result.has("INITIUM-ROOT-INIT"), "a volume nobody named was opened"
    assert result.has(rf"no block device with UUID={sd.INNER_UUID} after 4\.\d s; seen: "
                      rf"vda \(crypto_LUKS UUID={sd.LUKS_UUID}; LUKS volume, left closed: "
                      r"rd.luks.uuid= names another\)"), result.output[-3000:]
    assert result.has(rf"also missing: LUKS volume UUID={sd.OTHER_LUKS_UUID}")
    assert result.has(POWER_DOWN)


def test_lvm_on_luks2_root_with_a_key_file_in_the_image(
        boot: BootFn, kver: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The LUKS handler's /dev/mapper volume re-enters the loop as a PV for the LVM handler."""
    tmp = tmp_path_factory.mktemp("crypt-lvm-image")
    key = tmp / "root.key"
    key.write_bytes(sd.KEY)
    image = _build(str(tmp), kver, "--storage", "luks,lvm", "--include", str(key),
                   "/etc/keys/root.key")
    result = boot(image, sd.crypt_lvm_disk(kver),
                  f"root=/dev/vgcrypt/root rd.luks.uuid={sd.CRYPT_LVM_LUKS_UUID} "
                  "rd.luks.key=/etc/keys/root.key rd.lvm.lv=vgcrypt/root rd.debug")
    _booted(result.output)
    out = result.output[-4000:]
    # rd.debug shows the helpers: cryptsetup first, then lvm on what it opened.
    opened = re.search(rf"\+ \S*cryptsetup open --type luks --key-file /etc/keys/root.key "
                       rf"/dev/vda luks-{sd.CRYPT_LVM_LUKS_UUID}\s", result.output)
    activated = re.search(r"\+ \S*lvm lvchange -ay --sysinit .* vgcrypt/root\s", result.output)
    assert opened and activated and opened.start() < activated.start(), out
    # The root is the LV (dm-1) stacked on the LUKS mapping (dm-0).
    assert result.has(rf"found /dev/vgcrypt/root: dm-1 \(ext4 UUID={sd.CRYPT_LVM_ROOT_UUID}"), out


def test_lvm_logical_volume_root(boot: BootFn, kver: str,
                                 tmp_path_factory: pytest.TempPathFactory) -> None:
    image = _build(str(tmp_path_factory.mktemp("lvm-image")), kver, "--storage", "lvm")
    result = boot(image, sd.lvm_disk(kver), "root=/dev/vg0/root rd.lvm.lv=vg0/root")
    _booted(result.output)
    assert result.has(r"found /dev/vg0/root: dm-0")


def test_md_raid1_root(kver: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    from initium import process
    from initium.packaging.kernel import kernel_image
    from initium.packaging.qemu import boot_argv

    image = _build(str(tmp_path_factory.mktemp("md-image")), kver, "--storage", "md")
    a, b = sd.md_disks(kver)
    argv = boot_argv(image, disks=[a, b], append=f"root=UUID={sd.MD_ROOT_UUID}",
                     kernel=kernel_image(kver))
    output, _ = process.watch(argv, done=lambda t: re.search(POWER_DOWN, t) is not None,
                              timeout=180)
    _booted(output)
    assert re.search(rf"found UUID={sd.MD_ROOT_UUID}: md\d+", output), output[-3000:]


def test_md_raid1_with_a_member_missing_boots_degraded_after_rd_md_timeout(
        boot: BootFn, kver: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    image = _build(str(tmp_path_factory.mktemp("md-degraded-image")), kver, "--storage", "md")
    a, _ = sd.md_disks(kver)
    result = boot(image, a, f"root=UUID={sd.MD_ROOT_UUID} rd.md.timeout=2")
    out = result.output[-4000:]
    assert result.has(r"^mdadm: /dev/vda attached to /dev/md/\S+, not enough to start safely"), out
    assert result.has(r"md arrays still incomplete after 2 s \(rd\.md\.timeout=\): starting "
                      r"them degraded"), out
    assert result.has(r"md/raid1:md\d+: active with 1 out of 2 mirrors"), out
    assert result.has(rf"found UUID={sd.MD_ROOT_UUID}: md\d+"), out
    _booted(result.output)
    # Not before the timeout: the member came after the modules, the start 2 s after it.
    waited = result.kernel_time(r"starting them degraded") - \
        result.kernel_time(r"initium: modules: loaded")
    assert waited >= 2.0, f"started degraded {waited:.1f} s after the modules, before the timeout"


class Typist:
    """Types the next passphrase each time cryptsetup's prompt appears once more.

    It waits a moment before typing: cryptsetup prints the prompt, then turns
    echo off with TCSAFLUSH, which would echo (then drop) keys typed earlier.
    """

    def __init__(self, prompt: str, passphrases: list[str]) -> None:
        self.prompt, self.passphrases, self.typed = prompt, passphrases, 0

    def __call__(self, text: str) -> bytes | None:
        import time

        if text.count(self.prompt) <= self.typed or self.typed >= len(self.passphrases):
            return None
        time.sleep(1.5)
        self.typed += 1
        return self.passphrases[self.typed - 1].encode() + b"\n"


def test_luks2_root_with_a_passphrase_typed_on_the_serial_console(
        boot: BootFn, kver: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    image = _build(str(tmp_path_factory.mktemp("luks-pass-image")), kver, "--storage", "luks")
    disk = sd.passphrase_disk(kver)
    prompt = "Enter passphrase for /dev/vda"
    base = f"root=UUID={sd.PASS_ROOT_UUID} rd.luks.uuid={sd.PASS_LUKS_UUID}"

    # A typo first, then the passphrase: the second try opens it.
    typist = Typist(prompt, ["wrong-guess-one", sd.PASSPHRASE])
    result = boot(image, disk, base, answer=typist)
    out = result.output[-4000:]
    assert result.has(rf"asking for the passphrase of /dev/vda \(LUKS UUID={sd.PASS_LUKS_UUID}\) "
                      r"on the console \(3 tries\)"), out
    assert result.output.count(prompt) == 2, out
    assert result.has(rf"found UUID={sd.PASS_ROOT_UUID}: dm-0"), out
    _booted(result.output)
    # Echo off: nothing typed shows on the console.
    assert sd.PASSPHRASE not in result.output and "wrong-guess-one" not in result.output

    # Wrong every time: tries=2 prompts, then one message and rd.emergency's action.
    typist = Typist(prompt, ["wrong-guess-one", "wrong-guess-two", sd.PASSPHRASE])
    result = boot(image, disk, f"{base} rd.luks.options=tries=2 rd.emergency=poweroff",
                  answer=typist)
    out = result.output[-4000:]
    assert not result.has("INITIUM-ROOT-INIT"), "booted with a wrong passphrase"
    assert result.output.count(prompt) == 2, out
    assert typist.typed == 2
    failure = (rf"storage failed: cannot open /dev/vda \(LUKS UUID={sd.PASS_LUKS_UUID}\) with "
               r"the passphrase typed: no key available with this passphrase or key file")
    assert len(re.findall(failure, result.output)) == 1, out
    assert result.has(r"reboot: Power down"), out
    assert "wrong-guess" not in result.output


def test_verity_root_with_a_wrong_hash_refuses_to_boot(
        kver: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    from initium import process
    from initium.packaging.kernel import kernel_image
    from initium.packaging.qemu import boot_argv

    tmp = tmp_path_factory.mktemp("verity")
    image = _build(str(tmp), kver, "--storage", "verity")
    data, tree, roothash = sd.verity_disks(str(tmp))
    wrong = ("0" if roothash[0] != "0" else "1") + roothash[1:]
    base = (f"root=UUID={sd.VERITY_ROOT_UUID} systemd.verity_root_data=/dev/vda "
            "systemd.verity_root_hash=/dev/vdb")

    def run(append: str) -> str:
        argv = boot_argv(image, disks=[data, tree], append=append, kernel=kernel_image(kver))
        output, _ = process.watch(argv, done=lambda t: re.search(POWER_DOWN, t) is not None,
                                  timeout=180)
        return output

    bad = run(f"{base} roothash={wrong}")
    assert "INITIUM-ROOT-INIT" not in bad, "a wrong root hash booted"
    assert re.search(r"dm-verity refused the root on /dev/vda with hash tree /dev/vdb: "
                     r"the root hash does not match", bad), bad[-3000:]
    assert re.search(POWER_DOWN, bad)
    good = run(f"{base} roothash={roothash}")
    _booted(good)
    assert re.search(rf"found UUID={sd.VERITY_ROOT_UUID}: dm-0", good), good[-3000:]
    assert os.path.getsize(tree) > 0


def test_a_corrupted_verity_block_never_reaches_the_real_init_as_good_data(
        boot: BootFn, kver: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    """One byte of a file flipped after veritysetup format; the right root hash.

    The default policy (io-error): the root boots, the file's read fails with
    EIO. restart-on-corruption on the command line: the machine restarts at
    that read. panic-on-corruption from the image's config: the kernel panics.
    """
    tmp = tmp_path_factory.mktemp("verity-corrupt")
    image = _build(str(tmp), kver, "--storage", "verity")
    data, tree, roothash = sd.corrupted_verity_disks(str(tmp))
    spec = f"initium.verity=/dev/vda,/dev/vdb,{roothash}"
    restarted = r"reboot: Restarting system"
    victim = re.escape(sd.VICTIM)

    result = boot(image, None, spec, extra=_disks(data, tree))
    out = result.output[-4000:]
    assert result.has(r"dm-verity: /dev/vda mapped as /dev/mapper/root, every read checked "
                      r"against the root hash; a corrupted block reads as an I/O error "
                      r"\(io-error\)"), out
    assert result.has(r"found /dev/mapper/root: dm-0"), out
    _booted(result.output)
    assert result.has(rf"^INITIUM-READ {victim} failed: .*Input/output error"), out
    assert result.has(r"device-mapper: verity: 254:0: data block \d+ is corrupted"), out
    assert not result.has(rf"INITIUM-READ {victim} ok")

    result = boot(image, None, f"{spec},restart-on-corruption",
                  until=restarted + "|" + POWER_DOWN, extra=_disks(data, tree))
    out = result.output[-4000:]
    assert result.has(r"a corrupted block restarts the machine \(restart-on-corruption\)"), out
    _booted(result.output)
    assert result.has(restarted), out
    assert not result.has(r"INITIUM-READ"), out

    config = tmp / "panic.toml"
    config.write_text('storage = ["verity"]\nverity_corruption = "panic-on-corruption"\n')
    panicking = _build(str(tmp_path_factory.mktemp("verity-panic")), kver, "--config",
                       str(config))
    result = boot(panicking, None, f"roothash={roothash} systemd.verity_root_data=/dev/vda "
                  "systemd.verity_root_hash=/dev/vdb", extra=_disks(data, tree))
    out = result.output[-4000:]
    assert result.has(r"a corrupted block panics the kernel \(panic-on-corruption\)"), out
    _booted(result.output)
    assert result.has(r"Kernel panic - not syncing: dm-verity device corrupted"), out
    assert not result.has(r"INITIUM-READ"), out


def _disks(*paths: str) -> list[str]:
    return [a for p in paths for a in ("-drive", f"file={p},format=raw,if=virtio")]


EROFS_ROOT_UUID = "7f8091a2-b3c4-45d6-e7f8-091a2b3c4d5e"


def test_erofs_root_under_a_tmpfs_overlay_is_writable(
        boot: BootFn, kver: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    import rootdisk

    tmp = tmp_path_factory.mktemp("erofs")
    disk = str(tmp / "root.erofs")
    rootdisk.make_filesystem(disk, fstype="erofs", uuid=EROFS_ROOT_UUID)
    with open(disk, "r+b") as f:  # whole sectors for QEMU
        f.truncate(-(-os.path.getsize(disk) // (1 << 20)) << 20)
    image = _build(str(tmp), kver, "--module", "erofs", "--module", "overlay")
    result = boot(image, disk, f"root=UUID={EROFS_ROOT_UUID} rw rd.overlay")
    _booted(result.output)
    assert result.has(r"/dev/vda \(erofs, read-only\) under a tmpfs overlay on /sysroot"), \
        result.output[-3000:]
    assert result.has(r"^INITIUM-ROOT-MODE rw\s*$"), result.output[-3000:]


def test_fsck_force_checks_a_rw_root_before_mounting_it(
        boot: BootFn, kver: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    import rootdisk

    tmp = tmp_path_factory.mktemp("fsck")
    disk = str(tmp / "root.img")
    rootdisk.make_disk(disk, uuid=EROFS_ROOT_UUID, label="fsck-root")
    image = _build(str(tmp), kver, "--fsck")
    result = boot(image, disk, f"root=UUID={EROFS_ROOT_UUID} rw fsck.mode=force")
    _booted(result.output)
    # e2fsck's own summary line, copied to the log before the mount
    assert result.has(r"initium: root: fsck: fsck-root: \d+/\d+ files \([\d.]+% "
                      r"non-contiguous\), \d+/\d+ blocks"), result.output[-3000:]
    assert result.has(r"/dev/vda: ext4 checked, clean")
    assert result.has(r"^INITIUM-ROOT-MODE rw\s*$")


def test_a_disk_that_never_answers_a_read_does_not_hold_up_the_root(
        boot: BootFn, kver: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    """A second disk whose reads QEMU throttles to 1 byte/s after a 64 KiB burst.

    The burst lets the firmware (SeaBIOS, which probes every disk at POST and
    would hang the machine before the kernel without it) and the kernel's first
    reads through; after it, a 4 KiB read waits over an hour. The disk sits on
    virtio-scsi, whose disks the kernel attaches asynchronously (sd), so module
    loading is not held up; initium's probe of it stalls, is reported by name,
    and the root on vda must still be reached within rd.timeout. (QEMU 7.2's
    blkdebug cannot delay a guest read: its suspend rules fire on driver events
    such as qcow2's, and need the monitor to resume; throttling needs neither.)
    The machine is not waited for after the root's marker: shutting down with a
    read still queued on the throttled disk takes as long as the read.
    """
    import rootdisk

    tmp = tmp_path_factory.mktemp("stuck")
    root, stuck = str(tmp / "root.img"), str(tmp / "stuck.img")
    rootdisk.make_disk(root, uuid=EROFS_ROOT_UUID)
    rootdisk.make_disk(stuck, uuid="8091a2b3-c4d5-46e7-f809-1a2b3c4d5e6f")
    image = _build(str(tmp), kver, "--module", "virtio_blk", "--module", "virtio_scsi",
                   "--module", "sd_mod")
    extra = ["-device", "virtio-scsi-pci,id=scsi0",
             "-drive", f"file={stuck},format=raw,if=none,id=stuck,"
                      "throttling.bps-read=1,throttling.bps-read-max=65536",
             "-device", "scsi-hd,drive=stuck,bus=scsi0.0"]
    result = boot(image, root, f"root=UUID={EROFS_ROOT_UUID} rd.timeout=20",
                  until=r"INITIUM-ROOT-MODE|" + POWER_DOWN, extra=extra)
    _booted(result.output)
    assert result.has(r"initium: root: /dev/sda: stalled: no answer to a read within \d+ s; "
                      r"the other devices are served meanwhile"), result.output[-3000:]
    assert result.has(rf"found UUID={EROFS_ROOT_UUID}: vda"), result.output[-3000:]
    waited = result.kernel_time(rf"found UUID={EROFS_ROOT_UUID}") - \
        result.kernel_time(r"initium: modules: loaded")
    assert waited < 20.0, f"root found {waited:.1f} s after the modules, beyond rd.timeout"


def test_root_by_uuid_is_the_same_disk_whichever_order_the_disks_probe_in(
        boot: BootFn, kver: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Swapping the -drive options swaps the PCI slots, so vda and vdb trade places."""
    import rootdisk

    tmp = tmp_path_factory.mktemp("order")
    root, other = str(tmp / "root.img"), str(tmp / "other.img")
    rootdisk.make_disk(root, uuid=EROFS_ROOT_UUID, label="order-root")
    rootdisk.make_disk(other, uuid="91a2b3c4-d5e6-47f8-8091-a2b3c4d5e6f7", label="order-other")
    image = _build(str(tmp), kver)
    found = {}
    for first, second in ((root, other), (other, root)):
        result = boot(image, first, f"root=UUID={EROFS_ROOT_UUID}",
                      extra=["-drive", f"file={second},format=raw,if=virtio"])
        _booted(result.output)
        match = re.search(rf"found UUID={EROFS_ROOT_UUID}: (vd[ab]) \(ext4 "
                          rf"UUID={EROFS_ROOT_UUID} LABEL=order-root\)", result.output)
        assert match, result.output[-3000:]
        found[first] = match.group(1)
    assert found == {root: "vda", other: "vdb"}


def test_fsck_errors_it_cannot_fix_stop_the_boot_with_its_output(
        boot: BootFn, kver: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    import subprocess

    import rootdisk

    tmp = tmp_path_factory.mktemp("fsck-bad")
    disk = str(tmp / "root.img")
    rootdisk.make_disk(disk, uuid=EROFS_ROOT_UUID, label="bad-root")
    # A superblock inode count of 1: e2fsck -p will not repair that unattended (exit 4).
    subprocess.run(["debugfs", "-w", "-R", "ssv inodes_count 1", disk], check=True,
                   capture_output=True)
    image = _build(str(tmp), kver, "--fsck")
    result = boot(image, disk, f"root=UUID={EROFS_ROOT_UUID} rw")
    assert not result.has("INITIUM-ROOT-INIT"), "a root with uncorrected errors was mounted"
    assert result.has(r"initium: root: fsck: bad-root: UNEXPECTED INCONSISTENCY; RUN fsck "
                      r"MANUALLY\."), result.output[-3000:]
    assert result.has(r"/dev/vda: ext4 has errors the checker left uncorrected \(exit status "
                      r"4\): .*UNEXPECTED INCONSISTENCY"), result.output[-3000:]
    assert result.has(POWER_DOWN)


def test_squashfs_root_stays_read_only_when_rw_is_asked(
        boot: BootFn, kver: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    import rootdisk

    tmp = tmp_path_factory.mktemp("squashfs")
    disk = str(tmp / "root.squashfs")
    rootdisk.make_filesystem(disk, fstype="squashfs")
    with open(disk, "r+b") as f:  # whole sectors for QEMU
        f.truncate(-(-os.path.getsize(disk) // (1 << 20)) << 20)
    image = _build(str(tmp), kver, "--module", "squashfs")
    result = boot(image, disk, "root=/dev/vda rw")
    _booted(result.output)
    assert result.has(r"squashfs is read-only: the root is mounted ro"), result.output[-3000:]
    assert result.has(r"^INITIUM-ROOT-MODE ro\s*$"), result.output[-3000:]
