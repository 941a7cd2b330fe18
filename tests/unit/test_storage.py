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


def test_the_child_reader_reads_and_gives_up_on_a_device_that_never_answers(
        tmp_path: pytest.TempPathFactory) -> None:
    import os
    import time

    from initium.storage.reader import ChildReader

    data = tmp_path / "disk.img"  # type: ignore[operator]
    data.write_bytes(b"0123456789" * 100)
    stuck = str(tmp_path / "stuck")  # type: ignore[operator]
    os.mkfifo(stuck)  # opening it for reading blocks until a writer comes: never
    reader = ChildReader(deadline=0.3)
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


# --------------------------------------------------------------------------
# handlers, with the tools' replies scripted by the in-memory machine

LUKS_UUID = "5e0c4a3b-7d1f-4c2e-9a8b-6f5e4d3c2b1a"


def luks_header(uuid: str = LUKS_UUID) -> bytes:
    head = bytearray(1 << 20)
    head[0:6] = b"LUKS\xba\xbe"
    head[6:8] = (1).to_bytes(2, "big")
    head[168:168 + len(uuid)] = uuid.encode()
    return bytes(head)


def storage_machine(cmdline: str, disks: dict[str, bytes], tools: dict[str, str],
                    inner: bytes | None = None, data: dict[str, object] | None = None,
                    ) -> tuple[object, list[tuple[str, ...]]]:
    from initium.plan import Plan, StageEntry

    m = root_machine(cmdline, disks)
    m.plan = m.ctx.plan = Plan("6.1.0-test", (StageEntry("storage", "x:y",
                                                          {"tools": tools, **(data or {})}),))
    from initium.stages.storage import Storage

    m.ctx.stage_options = Storage.options
    from initium.cmdline import parse

    m.ctx.set_cmdline(parse(cmdline))
    spawned: list[tuple[str, ...]] = []

    def tool(sys: MemorySystem, op: ops.Op) -> None:
        if isinstance(op, ops.Spawn):
            spawned.append(op.argv)
            if op.argv[1] == "open" and inner is not None:
                sys.files.update(disk("dm-0", inner, 99))
                sys.files["/sys/block/dm-0/dm/name"] = op.argv[-1].encode()
                sys.files["/sys/block/dm-0/dm/uuid"] = b"CRYPT-LUKS2-x\n"

    m.sys.on_apply = tool
    m.ctx.stage = "storage"
    return m, spawned


def test_crypt_opens_the_named_volume_with_its_key_file(images: dict[str, bytes]) -> None:  # noqa: F811
    from initium.stages.storage import Storage

    m, spawned = storage_machine(
        f"root=UUID={ROOT_UUID} rd.luks.uuid=luks-{LUKS_UUID} rd.luks.key=/etc/keys/k",
        {"vda": luks_header()}, {"luks": "/usr/sbin/cryptsetup"}, images["root"])
    m.sys.files["/etc/keys/k"] = b"secret"  # type: ignore[attr-defined]
    Storage().run(m.ctx)  # type: ignore[attr-defined]
    assert spawned == [("/usr/sbin/cryptsetup", "open", "--type", "luks", "--key-file",
                        "/etc/keys/k", "/dev/vda", f"luks-{LUKS_UUID}")]
    Root().run(m.ctx)  # type: ignore[attr-defined]
    assert m.ctx.state.root_device == "/dev/dm-0"  # type: ignore[attr-defined]


def test_crypt_leaves_a_volume_nobody_named_closed(images: dict[str, bytes]) -> None:  # noqa: F811
    from initium.stages.storage import Storage

    other = "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0"
    m, spawned = storage_machine(f"root=UUID={ROOT_UUID} rd.luks.uuid={other} rd.timeout=1",
                                 {"vda": luks_header()}, {"luks": "/usr/sbin/cryptsetup"},
                                 images["root"])
    with pytest.raises(StageError) as info:
        Storage().run(m.ctx)  # type: ignore[attr-defined]
    assert spawned == []
    assert (f"seen: vda (crypto_LUKS UUID={LUKS_UUID}; LUKS volume, left closed: "
            "rd.luks.uuid= names another)") in info.value.cause
    assert f"also missing: LUKS volume UUID={other} (rd.luks.uuid=)" in info.value.cause


def test_crypt_wrong_key_is_one_security_failure(images: dict[str, bytes]) -> None:  # noqa: F811
    from initium.stages.storage import Storage

    m, _ = storage_machine(f"root=UUID={ROOT_UUID} rd.luks.key=/k",
                                 {"vda": luks_header()}, {"luks": "/usr/sbin/cryptsetup"})
    m.sys.files["/k"] = b"wrong"  # type: ignore[attr-defined]
    m.sys.spawn_status = 2  # type: ignore[attr-defined]
    with pytest.raises(StageError) as info:
        Storage().run(m.ctx)  # type: ignore[attr-defined]
    assert info.value.security
    assert info.value.cause == (f"cannot open /dev/vda (LUKS UUID={LUKS_UUID}) with key file "
                                "/k: no key available with this passphrase or key file")


def test_crypt_without_a_key_asks_on_the_console(images: dict[str, bytes]) -> None:  # noqa: F811
    from initium.stages.storage import Storage

    m, _ = storage_machine(f"root=UUID={ROOT_UUID}", {"vda": luks_header()},
                           {"luks": "/usr/sbin/cryptsetup"}, images["root"])
    Storage().run(m.ctx)  # type: ignore[attr-defined]
    (spawn,) = [op for op in m.sys.applied if isinstance(op, ops.Spawn)]  # type: ignore[attr-defined]
    assert spawn.console and "--tries" in spawn.argv and spawn.argv[-2:] == (
        "/dev/vda", f"luks-{LUKS_UUID}")
    assert f"asking for the passphrase of /dev/vda (LUKS UUID={LUKS_UUID})" in m.text  # type: ignore[attr-defined]


def test_crypttab_parser() -> None:
    from initium.storage.crypt import CryptError, open_flags, parse_crypttab

    tab = parse_crypttab("# comment\n\nroot UUID=abc /etc/k discard,tries=5,bogus\nswap /dev/x -\n")
    assert [(t.name, t.device, t.keyfile) for t in tab] == [("root", "UUID=abc", "/etc/k"),
                                                            ("swap", "/dev/x", None)]
    assert open_flags(tab[0].options) == (["--allow-discards"], 5, ["bogus"])
    with pytest.raises(CryptError, match="line 1: expected 2 to 4 fields"):
        parse_crypttab("lonely\n")
    with pytest.raises(CryptError, match="not a device name"):
        parse_crypttab("../x /dev/vda\n")


def pv_image() -> bytes:
    """1 MiB whose first sector holds an LVM2 physical volume label (its crc is LVM's)."""
    import struct
    import zlib

    pv = bytearray(1 << 20)
    label = bytearray(512)
    label[0:8] = b"LABELONE"
    struct.pack_into("<QII", label, 8, 1, 0, 32)
    label[24:32] = b"LVM2 001"
    label[32:64] = b"abcdefABCDEF0123456789ghijklmnop"
    struct.pack_into("<I", label, 16, zlib.crc32(bytes(label[20:]), 0xF597A6CF ^ 0xFFFFFFFF)
                     ^ 0xFFFFFFFF)
    pv[512:1024] = label
    return bytes(pv)


def test_lvm_activates_named_lvs_and_waits_for_them(images: dict[str, bytes]) -> None:  # noqa: F811
    from initium.stages.storage import Storage

    m, spawned = storage_machine("root=/dev/vg0/root rd.lvm.lv=vg0/root rd.timeout=1",
                                 {"vda": pv_image()}, {"lvm": "/usr/sbin/lvm"})
    try:
        Storage().run(m.ctx)  # type: ignore[attr-defined]
    except StageError as err:
        assert "LVM volume vg0/root (rd.lvm.lv=)" in err.cause
    else:
        raise AssertionError("nothing made /dev/vg0/root, yet the loop ended")
    assert all(argv[:3] == ("/usr/sbin/lvm", "lvchange", "-ay") and argv[-1] == "vg0/root"
               for argv in spawned) and spawned


def test_verity_needs_its_devices_and_a_hex_hash() -> None:
    from initium.stages.storage import Storage

    m, _ = storage_machine("roothash=xyz", {}, {"verity": "/usr/sbin/veritysetup"})
    with pytest.raises(StageError, match="not a hex digest") as info:
        Storage().run(m.ctx)  # type: ignore[attr-defined]
    assert info.value.security
    m, _ = storage_machine("roothash=" + "ab" * 32, {}, {"verity": "/usr/sbin/veritysetup"})
    with pytest.raises(StageError, match=r"needs systemd\.verity_root_data="):
        Storage().run(m.ctx)  # type: ignore[attr-defined]
    m, _ = storage_machine("roothash=" + "ab" * 32, {}, {})
    with pytest.raises(StageError, match="no dm-verity support"):
        Storage().run(m.ctx)  # type: ignore[attr-defined]


# --------------------------------------------------------------------------
# verity: initium.verity= and the corruption policy

ROOTHASH = "0f" * 32
VERITYSETUP = "/usr/sbin/veritysetup"


def verity_machine(cmdline: str, root_image: bytes, policy: str | None = None,
                   ) -> tuple[object, list[tuple[str, ...]]]:
    """vda the data, vdb the hash tree; veritysetup open makes dm-0 named root."""
    data: dict[str, object] = {} if policy is None else {"verity_corruption": policy}
    m, spawned = storage_machine(cmdline, {"vda": root_image, "vdb": bytes(4096)},
                                 {"verity": VERITYSETUP}, data=data)

    def tool(sys: MemorySystem, op: ops.Op) -> None:
        if isinstance(op, ops.Spawn):
            spawned.append(op.argv)
            sys.files.update(disk("dm-0", root_image, 99))
            sys.files["/sys/block/dm-0/dm/name"] = b"root\n"

    m.sys.on_apply = tool  # type: ignore[attr-defined]
    return m, spawned


@pytest.mark.parametrize(("image_policy", "words", "flags", "said"), [
    (None, "", (), "a corrupted block reads as an I/O error (io-error)"),
    ("io-error", "", (), "(io-error)"),
    ("restart-on-corruption", "", ("--restart-on-corruption",), "restarts the machine"),
    ("panic-on-corruption", "", ("--panic-on-corruption",), "panics the kernel"),
    # the command line's policy word wins over the image's, the last one over earlier ones
    ("restart-on-corruption", ",io-error", (), "(io-error)"),
    ("io-error", ",ignore-corruption,check-at-most-once,panic-on-corruption",
     ("--panic-on-corruption", "--check-at-most-once"), "(panic-on-corruption)"),
    ("io-error", ",ignore-corruption", ("--ignore-corruption",), "READ AS IT IS"),
])
def test_initium_verity_maps_the_root_with_the_corruption_policy(
        images: dict[str, bytes], image_policy: str | None, words: str,  # noqa: F811
        flags: tuple[str, ...], said: str) -> None:
    from initium.stages.storage import Storage

    m, spawned = verity_machine(f"initium.verity=/dev/vda,/dev/vdb,{ROOTHASH.upper()}{words}",
                                images["root"], image_policy)
    Storage().run(m.ctx)  # type: ignore[attr-defined]
    assert spawned == [(VERITYSETUP, "open", *flags, "/dev/vda", "root", "/dev/vdb", ROOTHASH)]
    assert said in m.text  # type: ignore[attr-defined]
    assert ("READ AS IT IS" in m.text) == ("--ignore-corruption" in flags)  # type: ignore[attr-defined]
    # No root=: the root is the mapping, never the unchecked data device.
    Root().run(m.ctx)  # type: ignore[attr-defined]
    assert m.ctx.state.root_device == "/dev/dm-0"  # type: ignore[attr-defined]


def test_systemd_verity_options_override_the_image_policy_too(
        images: dict[str, bytes]) -> None:  # noqa: F811
    from initium.stages.storage import Storage

    m, spawned = verity_machine(f"root=UUID={ROOT_UUID} roothash={ROOTHASH} "
                                "systemd.verity_root_data=/dev/vda "
                                "systemd.verity_root_hash=/dev/vdb "
                                "systemd.verity_root_options=panic-on-corruption",
                                images["root"], "restart-on-corruption")
    Storage().run(m.ctx)  # type: ignore[attr-defined]
    assert spawned == [(VERITYSETUP, "open", "--panic-on-corruption", "/dev/vda", "root",
                        "/dev/vdb", ROOTHASH)]
    Root().run(m.ctx)  # type: ignore[attr-defined]
    assert m.ctx.state.root_device == "/dev/dm-0"  # type: ignore[attr-defined]


@pytest.mark.parametrize(("cmdline", "cause"), [
    # an empty value is not a typo to warn about and skip: it would boot the root unchecked
    ("roothash", "roothash=: not a hex digest"),
    ("roothash= systemd.verity_root_data=/dev/vda systemd.verity_root_hash=/dev/vdb",
     "roothash=: not a hex digest"),
    ("initium.verity", "expected DATA,HASH,ROOTHASH"),
    ("initium.verity=/dev/vda,/dev/vdb", "expected DATA,HASH,ROOTHASH"),
    ("initium.verity=/dev/vda,/dev/vdb,xyz", "the root hash is not a hex digest"),
    ("initium.verity=ZFS=tank,/dev/vdb," + ROOTHASH, "data device"),
    (f"initium.verity=/dev/vda,/dev/vdb,{ROOTHASH} roothash={ROOTHASH}",
     "both initium.verity= and roothash="),
    (f"initium.verity=/dev/vda,/dev/vdb,{ROOTHASH} systemd.verity_root_data=/dev/vda",
     "both initium.verity= and roothash="),
])
def test_a_bad_verity_spec_stops_the_boot_as_a_security_failure(
        images: dict[str, bytes], cmdline: str, cause: str) -> None:  # noqa: F811
    from initium.stages.storage import Storage

    m, spawned = verity_machine(cmdline, images["root"])
    with pytest.raises(StageError) as info:
        Storage().run(m.ctx)  # type: ignore[attr-defined]
    assert cause in info.value.cause and info.value.security
    assert spawned == []


def test_initium_verity_without_verity_in_the_image_refuses(images: dict[str, bytes]) -> None:  # noqa: F811
    from initium.stages.storage import Storage

    m, _ = storage_machine(f"initium.verity=/dev/vda,/dev/vdb,{ROOTHASH}", {}, {})
    with pytest.raises(StageError, match=r"initium\.verity= is given but this image has no "
                       r"dm-verity support") as info:
        Storage().run(m.ctx)  # type: ignore[attr-defined]
    assert info.value.security


def test_initium_verity_devices_missing_are_named_at_the_timeout(
        images: dict[str, bytes]) -> None:  # noqa: F811
    from initium.stages.storage import Storage

    m, spawned = verity_machine(f"initium.verity=UUID={OTHER_UUID},/dev/vdb,{ROOTHASH} "
                                "rd.timeout=1", images["root"])
    with pytest.raises(StageError) as info:
        Storage().run(m.ctx)  # type: ignore[attr-defined]
    assert f"verity data device UUID={OTHER_UUID} (initium.verity=)" in info.value.cause
    assert spawned == []
