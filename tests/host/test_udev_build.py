"""initium build --storage udev on this host: udevd, udevadm, rules, libraries; none without."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest
from initium.packaging.udev import (
    BASE_RULES,
    DM_RULES,
    PERSIST_RULES,
    group_file,
    host_rule,
    rule_names,
)
from initium.plan import PLAN_PATH, Plan

from tests.host.conftest import build
from tests.host.test_build import _files

UDEVADM = "/usr/bin/udevadm"
UDEVD = "/usr/lib/systemd/systemd-udevd"


def _udev_host() -> None:
    if shutil.which("udevadm") is None or host_rule("60-persistent-storage.rules") is None:
        pytest.skip("this host has no udev (apt-get install udev)")


@pytest.fixture(scope="module")
def pair(kver: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    _udev_host()
    tmp = tmp_path_factory.mktemp("udev-build")
    os.environ["SOURCE_DATE_EPOCH"] = "1700000000"
    try:
        plain = build(str(tmp / "plain.img"), kver, "--module", "virtio_blk")
        with_udev = build(str(tmp / "udev.img"), kver, "--module", "virtio_blk",
                          "--storage", "udev")
    finally:
        del os.environ["SOURCE_DATE_EPOCH"]
    return plain, with_udev


def test_the_udev_image_has_udevd_udevadm_rules_and_their_libraries(
        pair: tuple[str, str]) -> None:
    files = _files(pair[1])
    assert stat.S_ISREG(files[UDEVADM].mode)
    link = files[UDEVD]
    if stat.S_ISLNK(link.mode):  # one binary for both names since systemd 247
        assert os.path.normpath(os.path.join(os.path.dirname(UDEVD),
                                             link.data.decode())) == UDEVADM
    for name in BASE_RULES:
        assert f"/usr/lib/udev/rules.d/{name}" in files
    persist = files[f"/usr/lib/udev/rules.d/{PERSIST_RULES}"].data
    assert b'KERNEL=="dm-[0-9]*|md[0-9]*|md_d[0-9]*", OPTIONS+="db_persist"' in persist
    for name in ("69-lvm.rules", "64-md-raid-assembly.rules", "80-drivers.rules"):
        assert f"/usr/lib/udev/rules.d/{name}" not in files  # they would assemble or load
    libs = {os.path.basename(p) for p in files if "/lib/" in p and ".so" in p}
    assert {"libkmod.so.2", "libblkid.so.1"} <= libs  # udevadm's ELF closure
    group = files["/etc/group"].data.decode()
    assert group.startswith("audio:x:") or "disk:x:" in group
    plan = Plan.from_bytes(files["/" + PLAN_PATH.lstrip("/")].data)
    data = plan.stage_data("storage")
    assert data["kinds"] == ["udev"] and data["udev"]["udevadm"] == UDEVADM


def test_an_image_without_udev_has_none_of_it_and_keeps_its_size(
        pair: tuple[str, str], kver: str, tmp_path: Path) -> None:
    plain, with_udev = pair
    files, udev_files = _files(plain), _files(with_udev)
    assert not [p for p in files if "udev" in p]
    assert "/etc/group" not in files
    assert set(files) < set(udev_files)
    extra = set(udev_files) - set(files)
    unexpected = [p for p in extra if not (
        stat.S_ISDIR(udev_files[p].mode) or "udev" in p or p == "/etc/group" or ".so" in p)]
    assert unexpected == []
    # --storage none is the same image, byte for byte: udev costs only who asks for it
    os.environ["SOURCE_DATE_EPOCH"] = "1700000000"
    try:
        none = build(str(tmp_path / "none.img"), kver, "--module", "virtio_blk",
                     "--storage", "none")
    finally:
        del os.environ["SOURCE_DATE_EPOCH"]
    assert Path(none).read_bytes() == Path(plain).read_bytes()
    print(f"\nUDEV-SIZES plain {os.path.getsize(plain)} udev {os.path.getsize(with_udev)}")


def test_dm_kinds_bring_the_dm_rules_and_dmsetup(kver: str, tmp_path: Path) -> None:
    _udev_host()
    if shutil.which("cryptsetup") is None or shutil.which("dmsetup") is None:
        pytest.skip("cryptsetup or dmsetup missing")
    image = build(str(tmp_path / "luks.img"), kver, "--module", "virtio_blk",
                  "--storage", "luks,udev")
    files = _files(image)
    present = [n for n in DM_RULES if host_rule(n) is not None]
    assert present, "no device-mapper rules on this host"
    for name in present:
        assert f"/usr/lib/udev/rules.d/{name}" in files
    assert any(p.endswith("/dmsetup") for p in files)


def test_rule_names_and_group_file() -> None:
    assert rule_names(["udev"]) == sorted(BASE_RULES)
    assert "63-md-raid-arrays.rules" in rule_names(["md", "udev"])
    assert "56-lvm.rules" in rule_names(["lvm"]) and "55-dm.rules" in rule_names(["lvm"])
    text, unknown = group_file([b'KERNEL=="sd*", GROUP="disk"\n', b'GROUP="nosuch", '
                                b'GROUP:="tty"\n'], "disk:x:6:alice,bob\ntty:x:5:\n")
    assert text == b"disk:x:6:\ntty:x:5:\n"  # numbers kept, members not
    assert unknown == ["nosuch"]


def test_a_masked_rule_is_left_out(tmp_path: Path) -> None:
    etc, lib = tmp_path / "etc", tmp_path / "lib"
    etc.mkdir()
    lib.mkdir()
    (lib / "60-persistent-storage.rules").write_text("x")
    (lib / "50-udev-default.rules").write_text("y")
    (etc / "60-persistent-storage.rules").symlink_to("/dev/null")
    (etc / "50-udev-default.rules").write_text("override")
    dirs = (str(etc), str(lib))
    assert host_rule("60-persistent-storage.rules", dirs) is None
    assert host_rule("50-udev-default.rules", dirs) == str(etc / "50-udev-default.rules")
