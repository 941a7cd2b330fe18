"""The storage loop and its handlers, on the in-memory machine with real superblocks."""

from __future__ import annotations

import pytest
from initium import ops
from initium.memsystem import MemorySystem
from initium.rootspec import parse_root_spec
from initium.stage import StageError
from initium.stages.root import Root
from initium.storage.loop import Assembly, Entry, Handler
from initium.storage.reader import ReadStalled, SimulatedReader, StartReader

from tests.unit.test_stages import (
    OTHER_UUID,
    ROOT_UUID,
    disk,
    images,  # noqa: F401  (the module-scoped fixture)
    root_machine,
)


def test_a_device_that_stalls_is_reported_and_the_root_is_still_found(
        images: dict[str, bytes]) -> None:  # noqa: F811
    m = root_machine(f"root=UUID={ROOT_UUID}", {"vda": images["other"], "vdb": images["root"]})
    m.sys.read_delays["/dev/vda"] = 10.0  # every read of vda takes 10 s: a disk in recovery
    Root().run(m.ctx)
    assert m.ctx.state.root_device == "/dev/vdb"
    assert "/dev/vda: stalled: no answer to a read within 2 s" in m.text
    # one read of the stuck disk, not one per probe: the others were not held up
    assert m.sys.now < 10.0 + 1.0


def test_a_stalled_device_is_listed_by_name_at_the_timeout(images: dict[str, bytes]) -> None:  # noqa: F811
    m = root_machine(f"root=UUID={ROOT_UUID} rd.timeout=12", {"vda": images["other"]})
    m.sys.read_delays["/dev/vda"] = 10.0
    with pytest.raises(StageError) as info:
        Root().run(m.ctx)
    assert "seen: vda (unreadable: stalled: no answer to a read within 2 s)" in info.value.cause


def test_the_simulated_reader_remembers_a_stall_and_forgives_it() -> None:
    sys = MemorySystem(files={"/dev/vda": b"x" * 8192}, read_delays={"/dev/vda": 3.0})
    reader = sys.apply(StartReader())
    assert isinstance(reader, SimulatedReader)
    with pytest.raises(ReadStalled):
        reader.read("/dev/vda", 0, 512)
    reads = sys.reads
    with pytest.raises(ReadStalled):
        reader.read("/dev/vda", 0, 512)
    assert sys.reads == reads  # failed at once, the disk not touched again
    reader.forgive("/dev/vda")
    sys.read_delays.clear()
    assert reader.read("/dev/vda", 0, 4) == b"xxxx"


class MakesADevice(Handler):
    """Stands for crypt: claims an LVM2-less container type and makes a new disk appear."""

    name = "fake"
    fstypes = ("ext4",)

    def __init__(self, sys: MemorySystem, image: bytes) -> None:
        self.sys, self.image = sys, image
        self.claimed: list[str] = []

    def claim(self, loop: Assembly, entry: Entry) -> str | None:
        self.claimed.append(entry.device.name)
        if entry.device.name == "vda":
            self.sys.files.update(disk("dm-0", self.image, 99))
            self.sys.files["/sys/block/dm-0/dm/name"] = b"inner\n"
            self.sys.files["/sys/block/dm-0/dm/uuid"] = b"CRYPT-LUKS2-x\n"
            return "opened as inner"
        return "made by fake"

    def missing(self, loop: Assembly) -> list[str]:
        return [] if "dm-0" in self.claimed else ["the inner device"]


def test_devices_a_handler_makes_re_enter_the_loop(images: dict[str, bytes]) -> None:  # noqa: F811
    m = root_machine("root=/dev/mapper/inner", {"vda": images["other"]})
    handler = MakesADevice(m.sys, images["root"])
    m.ctx.state.put(Assembly(m.ctx, (handler,)))
    Root().run(m.ctx)
    assert handler.claimed == ["vda", "dm-0"]
    assert m.ctx.state.root_device == "/dev/dm-0"
    assert any(isinstance(op, StartReader) for op in m.sys.applied)


def test_missing_required_devices_are_named_at_the_timeout(images: dict[str, bytes]) -> None:  # noqa: F811
    class Never(Handler):
        name = "never"

        def missing(self, loop: Assembly) -> list[str]:
            return ["LUKS volume UUID=abc (rd.luks.uuid=)"]

    m = root_machine(f"root=UUID={OTHER_UUID} rd.timeout=1", {"vda": images["other"]})
    m.ctx.state.put(Assembly(m.ctx, (Never(),)))
    with pytest.raises(StageError) as info:
        Root().run(m.ctx)
    assert info.value.cause == (f"still missing after 1.0 s: LUKS volume UUID=abc "
                                f"(rd.luks.uuid=); seen: vda (ext4 UUID={OTHER_UUID} "
                                "LABEL=other)")
    assert not [o for o in m.sys.applied if isinstance(o, ops.Mount)]


def test_dm_aliases() -> None:
    from initium.blockdev import dm_aliases

    assert dm_aliases("luks-1", "CRYPT-LUKS2-1") == ("/dev/mapper/luks-1",)
    assert dm_aliases("my--vg-root--lv", "LVM-abc") == ("/dev/mapper/my--vg-root--lv",
                                                        "/dev/my-vg/root-lv")
    assert dm_aliases("../x", "") == ()
    spec = parse_root_spec("/dev/my-vg/root-lv")
    assert spec.kind == "path"


def test_the_forked_reader_reads_and_gives_up_on_a_device_that_never_answers(
        tmp_path: pytest.TempPathFactory) -> None:
    import os
    import time

    from initium.storage.reader import ForkedReader

    data = tmp_path / "disk.img"  # type: ignore[operator]
    data.write_bytes(b"0123456789" * 100)
    stuck = str(tmp_path / "stuck")  # type: ignore[operator]
    os.mkfifo(stuck)  # opening it for reading blocks until a writer comes: never
    reader = ForkedReader(deadline=0.3)
    try:
        assert reader.read(str(data), 5, 10) == b"5678901234"
        with pytest.raises(FileNotFoundError):
            reader.read(str(data) + ".missing", 0, 1)
        started = time.monotonic()
        with pytest.raises(ReadStalled):
            reader.read(stuck, 0, 512)
        assert time.monotonic() - started < 2.0
        assert reader.read(str(data), 0, 3) == b"012"  # a new child serves the others
        assert len(reader.abandoned) == 1
    finally:
        reader.close()
