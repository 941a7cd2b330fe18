"""The dry run's view of storage on a live host whose root stack is already assembled.

The in-memory machine plays such a host: its dm devices exist from the
start, with their members under /sys/block/NAME/slaves, as a running system
has them. The dry run must say what the image would do with each device
and refuse when the image could not make the root the host made.
"""

from __future__ import annotations

import pytest
from initium.stage import StageError
from initium.stages.root import Root

from tests.unit.test_stages import ROOT_UUID, disk, images, root_machine  # noqa: F401
from tests.unit.test_storage import LUKS_UUID, luks_header, pv_image, storage_machine

CRYPTSETUP, LVM = "/usr/sbin/cryptsetup", "/usr/sbin/lvm"


def mapped(name: str, image: bytes, minor: int, dm_name: str, dm_uuid: str, *,
           members: tuple[str, ...]) -> dict[str, bytes]:
    files = disk(name, image, minor)
    files[f"/sys/block/{name}/dm/name"] = dm_name.encode() + b"\n"
    files[f"/sys/block/{name}/dm/uuid"] = dm_uuid.encode() + b"\n"
    files.update({f"/sys/block/{name}/slaves/{m}": b"" for m in members})
    return files


def lvm_on_luks_host(cmdline: str, tools: dict[str, str], root: bytes) -> object:
    """vda: LUKS; dm-0: its opened volume, an LVM PV; dm-1: the LV vg0/root holding the root."""
    m, _ = storage_machine(cmdline, {"vda": luks_header()}, tools)
    m.sys.files.update(mapped("dm-0", pv_image(), 200, f"luks-{LUKS_UUID}",  # type: ignore[attr-defined]
                              f"CRYPT-LUKS2-{LUKS_UUID.replace('-', '')}-x", members=("vda",)))
    m.sys.files.update(mapped("dm-1", root, 201, "vg0-root", "LVM-abc",  # type: ignore[attr-defined]
                              members=("dm-0",)))
    m.sys.dry_run = True  # type: ignore[attr-defined]
    return m


def run_both(m: object) -> None:
    from initium.stages.storage import Storage

    Storage().run(m.ctx)  # type: ignore[attr-defined]
    m.ctx.stage = "root"  # type: ignore[attr-defined]
    Root().run(m.ctx)  # type: ignore[attr-defined]


def test_lvm_on_luks_with_both_handlers_is_explained_and_would_boot(
        images: dict[str, bytes]) -> None:  # noqa: F811
    m = lvm_on_luks_host("root=/dev/vg0/root", {"luks": CRYPTSETUP, "lvm": LVM}, images["root"])
    run_both(m)
    text = m.text  # type: ignore[attr-defined]
    assert "storage handlers in this image: crypt, lvm" in text
    assert (f"device vda (crypto_LUKS UUID={LUKS_UUID}; LUKS volume, opened as "
            f"/dev/mapper/luks-{LUKS_UUID})") in text
    assert "device dm-0 (LVM2_member" in text and "LVM2 physical volume, volumes activated" in text
    assert (f"key: /dev/vda (LUKS UUID={LUKS_UUID}): no key file, so a passphrase would be "
            "asked on the console (3 tries)") in text
    assert "the root /dev/dm-1 would be assembled: dm-1 on dm-0 on vda" in text
    assert m.ctx.state.root_device == "/dev/dm-1"  # type: ignore[attr-defined]


def test_a_key_file_in_the_image_is_named(images: dict[str, bytes]) -> None:  # noqa: F811
    m = lvm_on_luks_host("root=/dev/vg0/root rd.luks.key=/etc/keys/root.key",
                         {"luks": CRYPTSETUP, "lvm": LVM}, images["root"])
    m.sys.files["/etc/keys/root.key"] = b"k"  # type: ignore[attr-defined]
    run_both(m)
    assert (f"key: /dev/vda (LUKS UUID={LUKS_UUID}): key file /etc/keys/root.key in the "
            "image") in m.text  # type: ignore[attr-defined]


def test_root_on_lvm_without_lvm_in_the_image_would_not_boot(
        images: dict[str, bytes]) -> None:  # noqa: F811
    m = lvm_on_luks_host("root=/dev/vg0/root", {"luks": CRYPTSETUP}, images["root"])
    with pytest.raises(StageError) as info:
        run_both(m)
    assert info.value.cause.startswith(
        "the root /dev/dm-1 sits on dm-1, made from dm-0 (LVM2_member")
    assert info.value.cause.endswith("LVM2 physical volume, no handler in this image (initium "
                                     "build --storage lvm)), which this image would not open")
    assert info.value.hint == "initium build --storage lvm"


def test_luks_left_closed_on_the_command_line_would_not_boot(
        images: dict[str, bytes]) -> None:  # noqa: F811
    m = lvm_on_luks_host("root=/dev/vg0/root rd.luks=0", {"luks": CRYPTSETUP, "lvm": LVM},
                         images["root"])
    with pytest.raises(StageError) as info:
        run_both(m)
    assert info.value.cause == (f"the root /dev/dm-1 sits on dm-0, made from vda (crypto_LUKS "
                                f"UUID={LUKS_UUID}; LUKS volume, left closed (rd.luks=0)), "
                                "which this image would not open")
    assert "rd.luks" in info.value.hint


def test_an_image_without_a_storage_stage_cannot_open_a_luks_root(
        images: dict[str, bytes]) -> None:  # noqa: F811
    m = root_machine(f"root=UUID={ROOT_UUID}", {"vda": luks_header()})
    m.sys.files.update(mapped("dm-0", images["root"], 200, "cryptroot", "CRYPT-LUKS2-x",
                              members=("vda",)))
    m.sys.dry_run = True
    with pytest.raises(StageError) as info:
        Root().run(m.ctx)
    assert "the root /dev/dm-0 sits on dm-0, made from vda (crypto_LUKS" in info.value.cause
    assert "storage handlers in this image: none" in m.text
    assert info.value.hint == "initium build --storage luks"


def test_a_mapping_made_by_hand_over_a_plain_disk_would_not_boot(
        images: dict[str, bytes]) -> None:  # noqa: F811
    m = root_machine(f"root=UUID={ROOT_UUID}", {"vdb": images["other"]})
    m.sys.files.update(mapped("dm-0", images["root"], 200, "linear", "", members=("vdb",)))
    m.sys.dry_run = True
    with pytest.raises(StageError, match=r"the root /dev/dm-0 sits on dm-0, made from vdb "
                       r"\(ext4 .*which this image would not open"):
        Root().run(m.ctx)


def test_a_plain_root_is_its_own_stack(images: dict[str, bytes]) -> None:  # noqa: F811
    m = root_machine(f"root=UUID={ROOT_UUID}", {"vda": images["root"]})
    m.sys.dry_run = True
    Root().run(m.ctx)
    assert "the root /dev/vda would be assembled: vda" in m.text
    assert m.ctx.state.root_device == "/dev/vda"


def test_a_partition_of_an_md_array_is_traced_through_its_array(
        images: dict[str, bytes]) -> None:  # noqa: F811
    """md127p1 holds the root; md127's members are the RAID members vda and vdb."""
    from tests.unit.test_stages import gpt_disk

    puuid = "11111111-2222-4333-8444-555555555555"
    array, (start,) = gpt_disk([(puuid, images["root"])])
    from tests.unit.disk_images import md1_superblock

    member = bytearray(1 << 20)
    block = md1_superblock(4096, "d1e2f3a4-b5c6-4d7e-8f90-a1b2c3d4e5f6", b"h:root")
    member[4096:4096 + len(block)] = block  # md 1.2: 4 KiB in
    for tools, ok in (({"md": "/usr/sbin/mdadm"}, True), ({}, False)):
        m, _ = storage_machine(f"root=PARTUUID={puuid}", {"vda": bytes(member),
                                                          "vdb": bytes(member)}, tools)
        files = m.sys.files  # type: ignore[attr-defined]
        files.update(disk("md127", array, 300))
        files.update({"/sys/block/md127/slaves/vda": b"", "/sys/block/md127/slaves/vdb": b"",
                      "/sys/block/md127/md127p1/partition": b"1\n",
                      "/sys/block/md127/md127p1/size":
                      f"{len(images['root']) // 512}\n".encode(),
                      "/sys/block/md127/md127p1/dev": b"259:1\n",
                      "/dev/md127p1": array[start : start + len(images["root"])]})
        m.sys.dry_run = True  # type: ignore[attr-defined]
        if ok:
            run_both(m)
            assert ("the root /dev/md127p1 would be assembled: md127p1 on md127 on vda on "
                    "vdb") in m.text  # type: ignore[attr-defined]
        else:
            with pytest.raises(StageError, match=r"the root /dev/md127p1 sits on md127, made "
                               r"from vda \(linux_raid_member.*no handler in this image"):
                run_both(m)


def test_a_verity_root_is_made_from_its_data_and_hash_devices(
        images: dict[str, bytes]) -> None:  # noqa: F811
    """The data and hash devices belong to the verity handler: opened, not "left"."""
    roothash = "ab" * 32
    m, _ = storage_machine(f"roothash={roothash} systemd.verity_root_data=/dev/vda "
                           "systemd.verity_root_hash=/dev/vdb root=/dev/mapper/root",
                           {"vda": images["root"], "vdb": bytes(1 << 20)},
                           {"verity": "/usr/sbin/veritysetup"})
    m.sys.files.update(mapped("dm-0", images["root"], 200, "root",  # type: ignore[attr-defined]
                              "CRYPT-VERITY-x", members=("vda", "vdb")))
    m.sys.dry_run = True  # type: ignore[attr-defined]
    run_both(m)
    text = m.text  # type: ignore[attr-defined]
    assert "storage handlers in this image: verity" in text, text
    assert "the root /dev/dm-0 would be assembled: dm-0 on vda" in text, text
