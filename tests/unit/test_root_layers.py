"""The root stage's read-only roots and tmpfs overlay, on the memory machine."""

from __future__ import annotations

import pytest
from initium import linux, ops
from initium.cmdline import parse
from initium.stage import StageError
from initium.stages.root import OVERLAY_DIR, Root
from initium.storage import fsck

from tests.unit.test_probe import make_erofs
from tests.unit.test_stages import FILESYSTEMS, Machine, images, root_machine  # noqa: F401

EROFS_FS = FILESYSTEMS + b"\terofs\nnodev\toverlay\n"


@pytest.fixture(scope="module")
def erofs_image(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return make_erofs(tmp_path_factory.mktemp("erofs")).read_bytes()


def machine(cmdline: str, image: bytes, filesystems: bytes = EROFS_FS) -> Machine:
    m = root_machine(cmdline, {"vda": image}, filesystems=filesystems)
    m.ctx.stage_options = Root.options
    m.ctx.set_cmdline(parse(cmdline))
    return m


def mounts(m: Machine) -> list[ops.Mount]:
    return [o for o in m.sys.applied if isinstance(o, ops.Mount)]


def test_an_erofs_root_is_mounted_read_only_even_when_rw_is_asked(erofs_image: bytes) -> None:
    m = machine("root=/dev/vda rw", erofs_image)
    Root().run(m.ctx)
    (mount,) = mounts(m)
    assert (mount.source, mount.target, mount.fstype) == ("/dev/vda", "/sysroot", "erofs")
    assert mount.flags & linux.MS_RDONLY
    assert "erofs is read-only: the root is mounted ro" in m.text


@pytest.mark.parametrize("option", ["rd.overlay", "rd.overlay=tmpfs", "initium.overlay=tmpfs",
                                    "rd.overlay=0 initium.overlay=tmpfs"])
def test_an_overlay_puts_a_writable_tmpfs_over_the_read_only_root(
        erofs_image: bytes, option: str) -> None:
    m = machine(f"root=/dev/vda {option}", erofs_image)
    Root().run(m.ctx)
    tmpfs, lower, top = mounts(m)
    assert (tmpfs.fstype, tmpfs.target) == ("tmpfs", OVERLAY_DIR)
    assert (lower.source, lower.target, lower.fstype) == ("/dev/vda", f"{OVERLAY_DIR}/lower",
                                                          "erofs")
    assert lower.flags & linux.MS_RDONLY
    assert (top.fstype, top.target) == ("overlay", "/sysroot")
    assert not top.flags & linux.MS_RDONLY
    assert top.data == (f"lowerdir={OVERLAY_DIR}/lower,upperdir={OVERLAY_DIR}/upper,"
                        f"workdir={OVERLAY_DIR}/work")
    assert ops.MakeDir(f"{OVERLAY_DIR}/upper") in m.sys.applied
    assert m.ctx.state.root_fstype == "erofs"
    assert "under a tmpfs overlay on /sysroot" in m.text


def test_overlay_turned_off_leaves_a_plain_mount(erofs_image: bytes) -> None:
    m = machine("root=/dev/vda rd.overlay initium.overlay=none", erofs_image)
    Root().run(m.ctx)
    assert [o.fstype for o in mounts(m)] == ["erofs"]


def test_an_overlay_without_the_driver_fails_before_mounting(erofs_image: bytes) -> None:
    m = machine("root=/dev/vda rd.overlay", erofs_image, FILESYSTEMS + b"\terofs\n")
    with pytest.raises(StageError) as info:
        Root().run(m.ctx)
    assert "no overlayfs driver" in info.value.cause
    assert "--module overlay" in info.value.hint
    assert mounts(m) == []


def test_a_bad_overlay_value_is_a_warning_and_no_overlay(erofs_image: bytes) -> None:
    m = machine("root=/dev/vda rd.overlay=zram", erofs_image)
    Root().run(m.ctx)
    assert [o.fstype for o in mounts(m)] == ["erofs"]
    assert "rd.overlay" in m.text and "zram" in m.text


# --------------------------------------------------------------------------
# fsck before a read-write mount

E2FSCK = "/usr/sbin/e2fsck"


def fsck_machine(cmdline: str, ext4: bytes, status: int = 0, output: bytes = b"",
                 tools: dict[str, str] | None = None) -> Machine:
    from initium.plan import Plan, StageEntry

    m = machine(cmdline, ext4, FILESYSTEMS)
    data = {"fsck": {"ext4": E2FSCK} if tools is None else tools}
    m.plan = m.ctx.plan = Plan("6.1.0-test", (StageEntry("root", "x:y", data),))
    m.sys.spawn_status = status
    m.sys.files[fsck.OUTPUT] = output
    return m


def checker_runs(m: Machine) -> list[fsck.RunChecker]:
    return [o for o in m.sys.applied if isinstance(o, fsck.RunChecker)]


@pytest.mark.parametrize(("status", "meaning"), [
    (0, "ok"), (1, "corrected"), (2, "reboot"), (3, "reboot"), (4, "uncorrected"),
    (5, "uncorrected"), (6, "uncorrected"), (8, "failed"), (12, "failed"), (16, "failed"),
    (32, "failed"), (128, "failed"), (-9, "failed"),
])
def test_the_exit_status_table(status: int, meaning: str) -> None:
    assert fsck.verdict(status) == meaning


@pytest.mark.parametrize(("cmdline", "expected"), [
    ("rw", ("-p", "/dev/vda")),
    ("rw fsck.mode=force", ("-p", "-f", "/dev/vda")),
    ("rw fsck.repair=yes", ("-y", "/dev/vda")),
    ("rw fsck.mode=force fsck.repair=no", ("-n", "-f", "/dev/vda")),
    ("rw fsck.repair=bogus", ("-p", "/dev/vda")),  # a bad value warns and keeps the default
])
def test_a_rw_root_is_checked_before_its_mount(images: dict[str, bytes], cmdline: str,  # noqa: F811
                                               expected: tuple[str, ...]) -> None:
    m = fsck_machine(f"root=/dev/vda {cmdline}", images["root"], 0,
                     b"rootfs: 11/2048 files (0.0% non-contiguous)\n")
    Root().run(m.ctx)
    (run,) = checker_runs(m)
    assert run.argv == (E2FSCK, *expected)
    assert run.timeout == fsck.TIMEOUT
    applied = m.sys.applied
    mount = next(o for o in applied if isinstance(o, ops.Mount))
    assert applied.index(run) < applied.index(mount)
    assert not mount.flags & linux.MS_RDONLY
    assert "fsck: rootfs: 11/2048 files (0.0% non-contiguous)" in m.text
    assert "/dev/vda: ext4 checked, clean" in m.text


@pytest.mark.parametrize("cmdline", ["", "ro", "rw rd.skipfsck", "rw fsck.mode=skip",
                                     "rw rd.overlay"])
def test_no_check_for_a_read_only_root_or_when_skipped(images: dict[str, bytes],  # noqa: F811
                                                       cmdline: str) -> None:
    m = fsck_machine(f"root=/dev/vda {cmdline}", images["root"], status=4)
    m.sys.files["/proc/filesystems"] = FILESYSTEMS + b"nodev\toverlay\n"
    Root().run(m.ctx)
    assert checker_runs(m) == []


def test_no_checker_in_the_image_mounts_unchecked(images: dict[str, bytes]) -> None:  # noqa: F811
    m = fsck_machine("root=/dev/vda rw fsck.mode=force", images["root"], tools={})
    Root().run(m.ctx)
    assert checker_runs(m) == []
    assert "no checker for ext4" in m.text


def test_corrected_errors_are_logged_and_the_boot_goes_on(images: dict[str, bytes]) -> None:  # noqa: F811
    m = fsck_machine("root=/dev/vda rw", images["root"], 1, b"rootfs: FILE SYSTEM WAS MODIFIED\n")
    Root().run(m.ctx)
    assert "the checker corrected errors (exit status 1)" in m.text
    assert m.ctx.state.root_fstype == "ext4"


def test_reboot_needed_reboots_before_mounting(images: dict[str, bytes]) -> None:  # noqa: F811
    m = fsck_machine("root=/dev/vda rw", images["root"], 3)
    with pytest.raises(StageError):
        Root().run(m.ctx)
    assert m.sys.powered_off == "reboot"
    assert not [o for o in m.sys.applied if isinstance(o, ops.Mount)]


@pytest.mark.parametrize(("status", "cause"), [
    (4, "has errors the checker left uncorrected (exit status 4): rootfs: UNEXPECTED "
        "INCONSISTENCY; RUN fsck MANUALLY."),
    (8, "the checker failed (exit status 8): rootfs: UNEXPECTED INCONSISTENCY; RUN fsck "
        "MANUALLY."),
])
def test_uncorrected_and_operational_errors_stop_the_boot_with_the_output(
        images: dict[str, bytes], status: int, cause: str) -> None:  # noqa: F811
    m = fsck_machine("root=/dev/vda rw", images["root"], status,
                     b"rootfs: UNEXPECTED INCONSISTENCY; RUN fsck MANUALLY.\n")
    with pytest.raises(StageError) as info:
        Root().run(m.ctx)
    prefix = "/dev/vda: ext4 " if status == 4 else "/dev/vda: "
    assert info.value.cause == prefix + cause
    assert not [o for o in m.sys.applied if isinstance(o, ops.Mount)]
