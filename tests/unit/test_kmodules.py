"""The builder's module resolution: compressed modules come out plain, in load order."""

from __future__ import annotations

import gzip
import lzma
import shutil
import subprocess
from pathlib import Path

import pytest
from initium.kmod import ModuleError
from initium.packaging.kmodules import modules_dep_subset, resolve_modules

KVER = "6.99.0-test"


def _tree(tmp_path: Path) -> Path:
    base = tmp_path / KVER
    (base / "kernel/drivers").mkdir(parents=True)
    body = {name: b"\x7fELF" + name.encode() + b"\x00firmware=acme/" + name.encode() + b".bin\x00"
            for name in ("ring", "core", "blk")}
    (base / "kernel/drivers/ring.ko.xz").write_bytes(lzma.compress(body["ring"]))
    (base / "kernel/drivers/core.ko.gz").write_bytes(gzip.compress(body["core"]))
    if shutil.which("zstd") is None:
        pytest.skip("zstd not installed")
    zst = subprocess.run(["zstd", "-q", "-c"], input=body["blk"], capture_output=True,
                         check=True).stdout
    (base / "kernel/drivers/blk.ko.zst").write_bytes(zst)
    (base / "modules.dep").write_text(
        "kernel/drivers/ring.ko.xz:\n"
        "kernel/drivers/core.ko.gz: kernel/drivers/ring.ko.xz\n"
        "kernel/drivers/blk.ko.zst: kernel/drivers/core.ko.gz kernel/drivers/ring.ko.xz\n")
    (base / "modules.builtin").write_text("kernel/fs/ext4/ext4.ko\n")
    return tmp_path


def test_compressed_modules_are_stored_plain_in_load_order(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    files = resolve_modules(KVER, ["blk", "ext4"], modules_root=str(root))
    assert [m.name for m in files] == ["ring", "core", "blk"]
    assert [m.image_path for m in files] == [
        f"/lib/modules/{KVER}/kernel/drivers/ring.ko",
        f"/lib/modules/{KVER}/kernel/drivers/core.ko",
        f"/lib/modules/{KVER}/kernel/drivers/blk.ko"]
    assert files[2].data.startswith(b"\x7fELFblk")
    assert files[0].firmware == ("acme/ring.bin",)
    dep = modules_dep_subset(KVER, files, modules_root=str(root))
    assert dep.splitlines() == [
        "kernel/drivers/blk.ko: kernel/drivers/core.ko kernel/drivers/ring.ko",
        "kernel/drivers/core.ko: kernel/drivers/ring.ko",
        "kernel/drivers/ring.ko:"]


def test_optional_modules_the_kernel_lacks_are_skipped(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    files = resolve_modules(KVER, [], ["ahci", "core"], modules_root=str(root))
    assert [m.name for m in files] == ["ring", "core"]
    with pytest.raises(ModuleError, match="module ahci is neither"):
        resolve_modules(KVER, ["ahci"], modules_root=str(root))


def test_a_kernel_without_modules_dep_is_named(tmp_path: Path) -> None:
    with pytest.raises(ModuleError, match=f"no modules.dep for kernel {KVER}"):
        resolve_modules(KVER, ["blk"], modules_root=str(tmp_path))


def test_required_and_optional_are_kept_apart_with_their_options(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    files = resolve_modules(KVER, ["core"], ["blk"], modules_root=str(root),
                            options={"blk": ["queue_depth=64"], "ring": ["x=1", "y=2"]})
    assert [(m.name, m.required, m.params) for m in files] == [
        ("ring", True, "x=1 y=2"), ("core", True, ""), ("blk", False, "queue_depth=64")]


def test_modprobe_d_merged_by_file_name_etc_first(tmp_path: Path) -> None:
    from initium.packaging.kmodules import modprobe_options

    etc, lib = tmp_path / "etc", tmp_path / "lib"
    etc.mkdir()
    lib.mkdir()
    (lib / "a.conf").write_text("options blk from_lib_a=1\n")
    (lib / "b.conf").write_text("options blk shadowed=1\n")
    (etc / "b.conf").write_text("options blk from_etc_b=1\n")
    (etc / "c.txt").write_text("options blk not_a_conf=1\n")
    assert modprobe_options((str(etc), str(lib))) == {"blk": ["from_lib_a=1", "from_etc_b=1"]}
