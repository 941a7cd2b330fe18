"""initium.kmod: module names, modules.dep/softdep/builtin, and the load order."""

from __future__ import annotations

import os

import pytest
from initium.kmod import (
    ModuleError,
    load_order,
    module_name,
    parse_builtin,
    parse_modules_dep,
    parse_softdeps,
)
from initium.packaging.kernel import installed_kernels


@pytest.mark.parametrize(("given", "expected"), [
    ("kernel/drivers/block/virtio_blk.ko", "virtio_blk"),
    ("kernel/drivers/block/virtio_blk.ko.xz", "virtio_blk"),
    ("kernel/drivers/block/virtio_blk.ko.zst", "virtio_blk"),
    ("kernel/drivers/block/virtio_blk.ko.gz", "virtio_blk"),
    ("kernel/drivers/char/hw_random/virtio-rng.ko", "virtio_rng"),
    ("virtio-rng", "virtio_rng"),
    ("ext4", "ext4"),
    ("/lib/modules/6.1.0/kernel/fs/ext4/ext4.ko", "ext4"),
    ("foo.ko.bz2", "foo.ko.bz2"),  # not a suffix the kernel loads: left alone
])
def test_module_name(given: str, expected: str) -> None:
    assert module_name(given) == expected


def test_module_name_strips_only_one_suffix() -> None:
    assert module_name("odd.ko.ko") == "odd.ko"


DEP = """\
kernel/drivers/virtio/virtio.ko.xz: kernel/drivers/virtio/virtio_ring.ko.xz
kernel/drivers/virtio/virtio_ring.ko.xz:
kernel/drivers/block/virtio_blk.ko.xz: kernel/drivers/virtio/virtio.ko.xz \
kernel/drivers/virtio/virtio_ring.ko.xz
kernel/drivers/scsi/virtio_scsi.ko.xz: kernel/drivers/scsi/scsi_mod.ko.xz \
kernel/drivers/virtio/virtio.ko.xz kernel/drivers/virtio/virtio_ring.ko.xz
kernel/drivers/scsi/scsi_mod.ko.xz: kernel/drivers/scsi/scsi_common.ko.xz
kernel/fs/ext4/ext4.ko.xz: kernel/fs/jbd2/jbd2.ko.xz kernel/fs/mbcache.ko.xz \
kernel/lib/crc16.ko.xz
kernel/fs/jbd2/jbd2.ko.xz:
kernel/lib/crc16.ko.xz:
kernel/crypto/crc32c_generic.ko.xz:
kernel/drivers/char/hw_random/virtio-rng.ko.xz: kernel/drivers/virtio/virtio.ko.xz
this line has no colon
: no path here
"""

BUILTIN = """\
kernel/drivers/scsi/scsi_common.ko
kernel/fs/mbcache.ko

kernel/lib/crc32c.ko
"""

SOFTDEP = """\
# Soft dependencies extracted from modules themselves.
softdep ext4 pre: crc32c_generic post: nothing
softdep virtio_blk pre: not-installed
softdep cifs gcm
softdep
softdep x pre:
options foo bar=1
"""


def deps() -> dict[str, tuple[str, list[str]]]:
    return parse_modules_dep(DEP)


def test_parse_modules_dep() -> None:
    d = deps()
    assert d["virtio_blk"] == ("kernel/drivers/block/virtio_blk.ko.xz", ["virtio", "virtio_ring"])
    assert d["virtio_ring"] == ("kernel/drivers/virtio/virtio_ring.ko.xz", [])
    assert d["virtio_rng"][1] == ["virtio"]
    assert "this line has no colon" not in d
    assert "" not in d
    assert sorted(d) == ["crc16", "crc32c_generic", "ext4", "jbd2", "scsi_mod", "virtio",
                         "virtio_blk", "virtio_ring", "virtio_rng", "virtio_scsi"]


def test_parse_builtin() -> None:
    assert parse_builtin(BUILTIN) == {"scsi_common", "mbcache", "crc32c"}
    assert parse_builtin("") == set()


def test_parse_softdeps_keeps_only_pre() -> None:
    assert parse_softdeps(SOFTDEP) == {"ext4": ["crc32c_generic"],
                                       "virtio_blk": ["not_installed"]}


def test_parse_softdeps_accumulates_lines() -> None:
    text = "softdep a pre: b\nsoftdep a pre: c d post: e\n"
    assert parse_softdeps(text) == {"a": ["b", "c", "d"]}


def test_load_order_deps_before_dependents() -> None:
    order = load_order(["virtio_blk"], deps(), set())
    assert order == ["virtio_ring", "virtio", "virtio_blk"]


def test_load_order_each_module_once() -> None:
    order = load_order(["virtio_blk", "virtio_scsi", "virtio_blk", "virtio"], deps(),
                       parse_builtin(BUILTIN))
    assert order == ["virtio_ring", "virtio", "virtio_blk", "scsi_mod", "virtio_scsi"]
    assert len(order) == len(set(order))


def test_load_order_accepts_paths_and_dashes() -> None:
    assert load_order(["virtio-rng"], deps(), set()) == ["virtio_ring", "virtio", "virtio_rng"]


def test_load_order_drops_builtin_modules() -> None:
    builtin = parse_builtin(BUILTIN)
    # scsi_common is builtin: scsi_mod's dependency on it is satisfied
    assert load_order(["scsi_mod"], deps(), builtin) == ["scsi_mod"]
    # a wanted module that is builtin yields nothing to load
    assert load_order(["crc32c"], deps(), builtin) == []


def test_load_order_unknown_module() -> None:
    with pytest.raises(ModuleError, match=r"module nvme is neither in modules\.dep nor builtin"):
        load_order(["nvme"], deps(), set())


def test_load_order_unknown_dependency_names_who_needed_it() -> None:
    with pytest.raises(ModuleError) as info:
        load_order(["scsi_mod"], deps(), set())  # scsi_common is not builtin here
    assert str(info.value) == ("module scsi_common (needed by scsi_mod) is neither in "
                               "modules.dep nor builtin")


def test_load_order_softdep_pre_comes_first_and_is_optional() -> None:
    softdeps = parse_softdeps(SOFTDEP)
    builtin = parse_builtin(BUILTIN)
    order = load_order(["ext4"], deps(), builtin, softdeps)
    assert order == ["crc32c_generic", "jbd2", "crc16", "ext4"]
    # virtio_blk's softdep is not installed: skipped, not an error
    assert load_order(["virtio_blk"], deps(), builtin, softdeps) == [
        "virtio_ring", "virtio", "virtio_blk"]


def test_load_order_without_softdeps_ignores_them() -> None:
    assert load_order(["ext4"], deps(), parse_builtin(BUILTIN)) == ["jbd2", "crc16", "ext4"]


def test_load_order_dependency_cycle_terminates() -> None:
    cyclic = parse_modules_dep("a.ko: b.ko\nb.ko: c.ko\nc.ko: a.ko\n")
    order = load_order(["a"], cyclic, set())
    assert sorted(order) == ["a", "b", "c"]
    assert order[-1] == "a"


def test_load_order_softdep_cycle_terminates() -> None:
    d = parse_modules_dep("a.ko:\nb.ko:\n")
    order = load_order(["a"], d, set(), {"a": ["b"], "b": ["a"]})
    assert order == ["b", "a"]


def test_load_order_nothing_wanted() -> None:
    assert load_order([], deps(), set()) == []


# --------------------------------------------------------------------------
# the real kernel installed on this machine


def test_real_modules_dep_of_an_installed_kernel() -> None:
    kernels = installed_kernels()
    if not kernels:
        pytest.skip("no kernel with modules.dep under /lib/modules")
    base = os.path.join("/lib/modules", kernels[-1])
    with open(os.path.join(base, "modules.dep"), encoding="utf-8") as f:
        dep = parse_modules_dep(f.read())
    try:
        with open(os.path.join(base, "modules.builtin"), encoding="utf-8") as f:
            builtin = parse_builtin(f.read())
    except FileNotFoundError:
        builtin = set()
    if "virtio_blk" not in dep and "virtio_blk" not in builtin:
        pytest.skip(f"{kernels[-1]} has no virtio_blk")
    order = load_order(["virtio_blk"], dep, builtin)
    if "virtio_blk" in builtin:
        assert order == []
        return
    assert order[-1] == "virtio_blk"
    if "virtio_ring" in dep:
        assert order.index("virtio_ring") < order.index("virtio_blk")
    else:
        assert "virtio_ring" in builtin
    for name in order:
        path = os.path.join(base, dep[name][0])
        assert os.path.isfile(path), path
        # every dependency of a module comes before it
        for needed in dep[name][1]:
            if needed not in builtin:
                assert order.index(needed) < order.index(name)


def test_modprobe_options_as_libkmod_reads_them() -> None:
    from initium.kmod import parse_modprobe_options

    text = ("# comment\noptions nvme-core default_ps_max_latency_us=0\n"
            "options snd_hda_intel power_save=1 \\\n  model=auto\n"
            "blacklist pcspkr\noptions lonely\nalias foo bar\n"
            "options nvme_core other=2\n")
    assert parse_modprobe_options(text) == {
        "nvme_core": ["default_ps_max_latency_us=0", "other=2"],
        "snd_hda_intel": ["power_save=1", "model=auto"]}


def test_cmdline_module_params() -> None:
    from initium.kmod import cmdline_module_params

    words = [("libata.force", "1:noncq"), ("nvme-core.default_ps_max_latency_us", "0"),
             ("rd.luks.uuid", "x"), ("root", "/dev/vda"), ("mod.flag", None),
             (".x", "1"), ("mod.", "1"), ("m.label", "a b")]
    assert cmdline_module_params(words) == {
        "libata": ["force=1:noncq"], "nvme_core": ["default_ps_max_latency_us=0"],
        "rd": ["luks.uuid=x"], "mod": ["flag"], "m": ['label="a b"']}
