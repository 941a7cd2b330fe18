"""The root stage's read-only roots and tmpfs overlay, on the memory machine."""

from __future__ import annotations

import pytest
from initium import linux, ops
from initium.cmdline import parse
from initium.stage import StageError
from initium.stages.root import OVERLAY_DIR, Root

from tests.unit.test_probe import make_erofs
from tests.unit.test_stages import FILESYSTEMS, Machine, root_machine

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
