"""Drivers by modalias: the alias parser, the builder's table, and the boot-time rounds.

The boot side runs on the memory machine: devices are ``/sys/bus/BUS/devices/
NAME/modalias`` files, and a loaded driver makes its devices appear (on_apply),
as virtio_pci makes the virtio devices that want virtio_blk.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from initium import ops
from initium.kmod import (
    MAX_MODALIAS,
    MAX_PATTERN,
    compile_glob,
    glob_match,
    is_device_alias,
    parse_modules_alias,
)
from initium.memsystem import MemorySystem
from initium.packaging.kmodules import resolve_modules
from initium.stages.modalias import Walk, walk_modaliases
from initium.stages.modules import Modules

from tests.unit.test_stages import KVER, modules_machine

ALIASES = """\
# Aliases extracted from modules themselves.
alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci
alias virtio:d00000002v* virtio_blk
alias virtio:d00000008v* virtio_scsi
alias scsi:t-0x00* sd_mod
alias block-major-8-* sd_mod
alias fs-ext4 ext4
alias devname:fuse fuse
alias input:b0003v*p*e*-e*k*ra*mlsfw* hid_foo
alias onlyone
alias pci:v*d*sv*sd*bc01sc06i01* ahci-ish
"""


def test_modules_alias_lines_are_parsed_and_the_rest_skipped() -> None:
    table = parse_modules_alias(ALIASES)
    assert table[0] == ("pci:v00001AF4d*sv*sd*bc*sc*i*", "virtio_pci")
    assert ("pci:v*d*sv*sd*bc01sc06i01*", "ahci_ish") in table  # module names as the kernel's
    assert all(pattern != "onlyone" for pattern, _ in table)
    assert len(table) == 9


def test_device_aliases_have_a_bus_prefix() -> None:
    assert is_device_alias("scsi:t-0x00*")
    assert is_device_alias("acpi*:PNP0A03:*")
    assert not is_device_alias("fs-ext4")
    assert not is_device_alias("block-major-8-*")
    assert not is_device_alias("devname:fuse")


@pytest.mark.parametrize(("pattern", "alias", "hit"), [
    ("pci:v00001AF4d*sv*sd*bc*sc*i*",
     "pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00", True),
    ("pci:v00001AF4d*sv*sd*bc*sc*i*",
     "pci:v00008086d00001237sv00001AF4sd00001100bc06sc00i00", False),
    ("virtio:d00000002v*", "virtio:d00000002v00001AF4", True),
    ("virtio:d00000002v*", "virtio:d00000008v00001AF4", False),
    ("scsi:t-0x00*", "scsi:t-0x00", True),
    ("scsi:t-0x0[0-7]", "scsi:t-0x05", True),
    ("scsi:t-0x0[!0-7]", "scsi:t-0x05", False),
])
def test_real_aliases_match(pattern: str, alias: str, hit: bool) -> None:
    assert glob_match(compile_glob(pattern), alias) is hit


def test_the_worst_pattern_is_bounded_work() -> None:
    """Many stars and a text that almost matches: len(pattern) * len(text) steps, no more."""
    pattern = "*a" * (MAX_PATTERN // 2 - 1) + "*b"
    text = "a" * MAX_MODALIAS
    started = time.monotonic()
    assert glob_match(compile_glob(pattern), text) is False
    assert time.monotonic() - started < 20  # exponential backtracking would never end


# --------------------------------------------------------------------------
# the builder


def _kernel(tmp_path: Path) -> Path:
    base = tmp_path / KVER
    (base / "kernel").mkdir(parents=True)
    names = ["ring", "virtio", "virtio_pci", "virtio_blk", "scsi_mod", "virtio_scsi", "sd_mod",
             "ext4", "mbcache", "hid_foo", "fuse"]
    for name in names:
        (base / f"kernel/{name}.ko").write_bytes(b"\x7fELF" + name.encode())
    deps = {"virtio": ["ring"], "virtio_pci": ["virtio", "ring"], "virtio_blk": ["virtio", "ring"],
            "virtio_scsi": ["scsi_mod", "virtio", "ring"], "sd_mod": ["scsi_mod"],
            "ext4": ["mbcache"]}
    (base / "modules.dep").write_text("".join(
        f"kernel/{n}.ko: {' '.join(f'kernel/{d}.ko' for d in deps.get(n, []))}\n" for n in names))
    (base / "modules.alias").write_text(ALIASES)
    return tmp_path


def test_the_builder_marks_hardware_drivers_on_demand(tmp_path: Path) -> None:
    root = _kernel(tmp_path)
    files = resolve_modules(KVER, ["fuse"], ["virtio_pci", "virtio_blk", "virtio_scsi",
                                             "sd_mod", "ext4", "hid_foo"],
                            modules_root=str(root), by_modalias=True)
    by_name = {m.name: m for m in files}
    # Named: always, whatever aliases it has. ext4 (fs-ext4 only) and hid_foo
    # (an input device, which the init does not read) too, with what they need.
    assert [n for n, m in by_name.items() if not m.on_demand] == [
        "fuse", "mbcache", "ext4", "hid_foo"]
    assert by_name["fuse"].required
    assert by_name["virtio_pci"].aliases == ("pci:v00001AF4d*sv*sd*bc*sc*i*",)
    assert by_name["sd_mod"].aliases == ("scsi:t-0x00*",)  # not block-major-8-*
    assert by_name["virtio_scsi"].needs == ("scsi_mod", "virtio", "ring")
    assert by_name["ring"].on_demand and by_name["ring"].aliases == ()
    # Without by_modalias (another stage's modules), nothing is on demand.
    plain = resolve_modules(KVER, [], ["virtio_pci"], modules_root=str(root))
    assert not any(m.on_demand for m in plain)


# --------------------------------------------------------------------------
# the boot

PCI = "/sys/bus/pci/devices"
VIRTIO = "/sys/bus/virtio/devices"
SCSI = "/sys/bus/scsi/devices"
MODULE_DIR = f"/lib/modules/{KVER}/kernel"


def _item(name: str, aliases: list[str] | None = None, needs: list[str] | None = None,
          on_demand: bool = True) -> dict[str, Any]:
    item: dict[str, Any] = {"name": name, "path": f"{MODULE_DIR}/{name}.ko", "required": False}
    if on_demand:
        item["on_demand"] = True
        if aliases:
            item["aliases"] = aliases
        if needs:
            item["needs"] = needs
    return item


PLAN = [
    _item("ext4", on_demand=False),
    _item("ring"),
    _item("virtio", needs=["ring"]),
    _item("virtio_pci", ["pci:v00001AF4d*sv*sd*bc*sc*i*"], ["virtio", "ring"]),
    _item("virtio_blk", ["virtio:d00000002v*"], ["virtio", "ring"]),
    _item("scsi_mod"),
    _item("virtio_scsi", ["virtio:d00000008v*"], ["scsi_mod", "virtio", "ring"]),
    _item("sd_mod", ["scsi:t-0x00*", "scsi:t-0x0e*"], ["scsi_mod"]),
    _item("nvme", ["pci:v*d*sv*sd*bc01sc08i02*"]),
]


def _machine(devices: dict[str, str], creates: dict[str, dict[str, str]]) -> Any:
    """A machine with these devices; loading a module in ``creates`` adds its devices."""
    def driver(sys: MemorySystem, op: ops.Op) -> None:
        if isinstance(op, ops.LoadModule):
            for path, alias in creates.get(op.name, {}).items():
                sys.files[f"{path}/modalias"] = alias.encode() + b"\n"

    sys = MemorySystem(release=KVER, on_apply=driver,
                       files={f"{p}/modalias": a.encode() + b"\n" for p, a in devices.items()})
    sys.files["/sys/bus/cpu/devices/cpu0/uevent"] = b""  # a device without a modalias
    return modules_machine(sys, PLAN)


VIRTIO_BLK_VM = {f"{PCI}/0000:00:00.0": "pci:v00008086d00001237sv00001AF4sd00001100bc06sc00i00",
                 f"{PCI}/0000:00:04.0": "pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00"}
VIRTIO_PCI_CREATES = {f"{VIRTIO}/virtio0": "virtio:d00000002v00001AF4"}


def test_only_the_drivers_of_present_hardware_load() -> None:
    m = _machine(VIRTIO_BLK_VM, {"virtio_pci": VIRTIO_PCI_CREATES})
    Modules().run(m.ctx)
    # ext4 has no device alias: always; virtio_blk only once virtio_pci made
    # its device (a second round); no SCSI and no nvme, whose hardware is absent.
    assert m.ctx.state.loaded_modules == ["ext4", "ring", "virtio", "virtio_pci", "virtio_blk"]
    assert "modalias: 3 rounds, 3 modaliases in 5 reads" in m.text


def test_a_scsi_disk_behind_virtio_scsi_takes_three_rounds() -> None:
    devices = {f"{PCI}/0000:00:03.0": "pci:v00001AF4d00001004sv00001AF4sd00000008bc01sc00i00"}
    creates = {"virtio_pci": {f"{VIRTIO}/virtio0": "virtio:d00000008v00001AF4"},
               "virtio_scsi": {f"{SCSI}/0:0:0:0": "scsi:t-0x00",
                               f"{SCSI}/target0:0:0": ""}}
    m = _machine(devices, creates)
    Modules().run(m.ctx)
    assert m.ctx.state.loaded_modules == ["ext4", "ring", "virtio", "virtio_pci", "scsi_mod",
                                          "virtio_scsi", "sd_mod"]
    assert "modalias: 4 rounds" in m.text
    # Each device is read once, in whichever round it first appeared.
    reads = [p for p in m.sys.files if p.endswith("/modalias")]
    assert len(reads) == 4


def test_no_hardware_no_drivers() -> None:
    m = _machine({f"{PCI}/0000:00:00.0": "pci:v00008086d00001237sv0sd0bc06sc00i00"}, {})
    Modules().run(m.ctx)
    assert m.ctx.state.loaded_modules == ["ext4"]


def test_drivers_that_keep_making_devices_stop_after_the_rounds() -> None:
    """A chain longer than MAX_ROUNDS: a bounded number of rounds, then a warning."""
    chain = [_item(f"m{i}", [f"chain:{i}"]) for i in range(12)]
    creates = {f"m{i}": {f"/sys/bus/chain/devices/d{i + 1}": f"chain:{i + 1}"}
               for i in range(11)}

    def driver(sys: MemorySystem, op: ops.Op) -> None:
        if isinstance(op, ops.LoadModule):
            for path, alias in creates.get(op.name, {}).items():
                sys.files[f"{path}/modalias"] = alias.encode()

    sys = MemorySystem(release=KVER, on_apply=driver,
                       files={"/sys/bus/chain/devices/d0/modalias": b"chain:0"})
    m = modules_machine(sys, chain)
    Modules().run(m.ctx)
    assert m.ctx.state.loaded_modules == [f"m{i}" for i in range(8)]
    assert "drivers still wanted after 8 rounds, not loaded: m8" in m.text


def test_a_hostile_sysfs_is_bounded_by_counting() -> None:
    files = {f"/sys/bus/b{b}/devices/d{d}/modalias": b"x:" + b"a" * 10_000
             for b in range(20) for d in range(50)}
    sys = MemorySystem(files=files)
    walk = walk_modaliases(sys, max_entries=300)
    assert walk.truncated == "more than 300 devices"
    assert walk.entries <= 300 and walk.reads <= 301  # 300 devices and the cpu modalias
    # A modalias longer than a page is cut at a page: never a whole file in memory.
    assert all(len(a) <= MAX_MODALIAS for a in walk.modaliases)


def test_later_rounds_read_only_new_devices() -> None:
    sys = MemorySystem(files={f"{PCI}/0000:00:0{i}.0/modalias": b"pci:x" for i in range(5)})
    walk = walk_modaliases(sys)
    first = walk.reads
    walk_modaliases(sys, walk)
    assert walk.reads == first
    sys.files[f"{VIRTIO}/virtio0/modalias"] = b"virtio:d00000002v00001AF4"
    walk_modaliases(sys, walk)
    assert walk.reads == first + 1
    assert "virtio:d00000002v00001AF4" in walk.modaliases


def test_the_cpu_modalias_is_read_though_no_bus_lists_it() -> None:
    sys = MemorySystem(files={"/sys/devices/system/cpu/modalias":
                              b"cpu:type:x86,ven0000fam0006mod003F:feature:,0000,0001\n"})
    assert walk_modaliases(sys, Walk()).modaliases == {
        "cpu:type:x86,ven0000fam0006mod003F:feature:,0000,0001"}
