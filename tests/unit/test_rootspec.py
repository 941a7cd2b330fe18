"""initium.rootspec.parse_root_spec: what root= names, without touching a device."""

from __future__ import annotations

import pytest
from initium.rootspec import KINDS, RootSpec, RootSpecError, parse_root_spec

UUID = "0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9"


@pytest.mark.parametrize(("text", "kind", "value"), [
    ("/dev/vda", "path", "/dev/vda"),
    ("/dev/vda1", "path", "/dev/vda1"),
    ("/dev/nvme0n1p2", "path", "/dev/nvme0n1p2"),
    (f"UUID={UUID}", "uuid", UUID),
    ("LABEL=root", "label", "root"),
    ("LABEL=my root", "label", "my root"),
    ("LABEL==x", "label", "=x"),
    ("PARTUUID=6a8b-01", "partuuid", "6a8b-01"),
    ("PARTLABEL=linux", "partlabel", "linux"),
    (f"/dev/disk/by-uuid/{UUID}", "uuid", UUID),
    ("/dev/disk/by-label/root", "label", "root"),
    ("/dev/disk/by-partuuid/6a8b-01", "partuuid", "6a8b-01"),
    ("/dev/disk/by-partlabel/EFI\\x20System", "partlabel", "EFI System"),
])
def test_forms(text: str, kind: str, value: str) -> None:
    spec = parse_root_spec(text)
    assert spec == RootSpec(kind, value)
    assert spec.kind in KINDS


def test_by_label_udev_escapes() -> None:
    assert parse_root_spec("/dev/disk/by-label/a\\x2fb").value == "a/b"
    assert parse_root_spec("/dev/disk/by-label/\\x2f\\x2e\\x2e").value == "/.."
    assert parse_root_spec("/dev/disk/by-label/my\\x20disk\\x5cx").value == "my disk\\x"
    # only well-formed escapes are decoded
    assert parse_root_spec("/dev/disk/by-label/50\\x%").value == "50\\x%"
    assert parse_root_spec("/dev/disk/by-label/\\X2f").value == "\\X2f"


def test_by_label_escape_is_decoded_once() -> None:
    # "\x5cx2f" is an escaped backslash followed by "x2f", not a slash
    assert parse_root_spec("/dev/disk/by-label/\\x5cx2f").value == "\\x2f"


def test_str_gives_back_a_root_option_value() -> None:
    assert str(parse_root_spec("/dev/vda")) == "/dev/vda"
    assert str(parse_root_spec(f"UUID={UUID}")) == f"UUID={UUID}"
    assert str(parse_root_spec("/dev/disk/by-label/root")) == "LABEL=root"
    assert str(RootSpec("partlabel", "x")) == "PARTLABEL=x"


def test_uuid_match_ignores_case() -> None:
    spec = parse_root_spec(f"UUID={UUID.upper()}")
    assert spec.matches_uuid(UUID)
    assert spec.matches_uuid(UUID.upper())
    assert not spec.matches_uuid(None)
    assert not spec.matches_uuid(UUID[:-1] + "0")


@pytest.mark.parametrize("text", ["/dev/../etc/shadow", "/dev/./vda", "/dev//vda", "/dev/vda/",
                                  "/dev/vg/../../etc", "/dev/vda/.."])
def test_not_plain_device_paths(text: str) -> None:
    with pytest.raises(RootSpecError) as info:
        parse_root_spec(text)
    assert str(info.value) == f"root={text}: not a plain device path"


@pytest.mark.parametrize("text", ["vda", "sda1", "/dev/", "/dev", "/etc/passwd", "uuid=abc",
                                  "label=root", "ID=1", "",
                                  "8:", ":1", "4096:0", "0:1048576", "PARTNROFF=1"])
def test_unknown_forms(text: str) -> None:
    with pytest.raises(RootSpecError) as info:
        parse_root_spec(text)
    message = str(info.value)
    assert message.startswith(f"root={text}: ")
    assert "unknown form" in message or "not a plain device path" in message


def test_unknown_form_lists_the_known_ones() -> None:
    with pytest.raises(RootSpecError) as info:
        parse_root_spec("vda")
    for form in ("/dev/NAME", "UUID=", "LABEL=", "PARTUUID=", "PARTLABEL="):
        assert form in str(info.value)


@pytest.mark.parametrize("prefix", ["UUID=", "LABEL=", "PARTUUID=", "PARTLABEL="])
def test_empty_tag_values(prefix: str) -> None:
    with pytest.raises(RootSpecError, match="empty"):
        parse_root_spec(prefix)


def test_root_spec_error_is_a_value_error() -> None:
    assert issubclass(RootSpecError, ValueError)


def test_by_label_escapes_are_bytes() -> None:
    # udev's encode_devnode_name() keeps valid UTF-8 and writes every other
    # byte as \xNN: a Latin-1 label b"caf\xe9" becomes by-label/caf\xe9, and
    # must match probe's surrogateescape label ...
    assert parse_root_spec("/dev/disk/by-label/caf\\xe9").value == "caf\udce9"
    # ... and escaped bytes that form UTF-8 together are one character.
    assert parse_root_spec("/dev/disk/by-label/caf\\xc3\\xa9").value == "café"


@pytest.mark.parametrize(("text", "why"), [
    ("/dev/disk/by-id/virtio-root", "udev links"),
    ("/dev/disk/by-path/pci-0000:00:04.0", "udev links"),
    ("/dev/disk/by-uuid/", "udev links"),
    ("/dev/mapper/root", "storage stage"),
    ("/dev/mapper/../../etc", "storage stage"),
])
def test_names_only_udev_or_dm_create_fail_at_once(text: str, why: str) -> None:
    with pytest.raises(RootSpecError) as info:
        parse_root_spec(text)
    message = str(info.value)
    assert message.startswith(f"root={text}: ") and why in message
    assert message.endswith("use UUID=, LABEL=, PARTUUID= or PARTLABEL= instead")


@pytest.mark.parametrize(("text", "devno"), [
    ("8:1", (8, 1)), ("08:01", (8, 1)), ("259:0", (259, 0)), ("801", (8, 1)),
    ("0x801", (8, 1)), ("fe00", (254, 0)),
])
def test_major_minor_as_the_kernel_reads_them(text: str, devno: tuple[int, int]) -> None:
    spec = parse_root_spec(text)
    assert (spec.kind, spec.devno) == ("devno", devno)
    assert str(spec) == f"{devno[0]}:{devno[1]}"


def test_new_decode_dev_of_a_large_minor() -> None:
    # new_encode_dev(MKDEV(259, 0x12345)) = (0x45) | (259 << 8) | ((0x12345 & ~0xff) << 12)
    encoded = 0x45 | (259 << 8) | ((0x12345 & ~0xFF) << 12)
    assert parse_root_spec(f"{encoded:x}").devno == (259, 0x12345)


def test_partuuid_with_partnroff() -> None:
    spec = parse_root_spec("PARTUUID=0c7d2a9e-51f4-4e3b-8a6d-93b1c0e4f2a8/PARTNROFF=2")
    assert (spec.kind, spec.value, spec.partnroff) == (
        "partuuid", "0c7d2a9e-51f4-4e3b-8a6d-93b1c0e4f2a8", 2)
    assert str(spec) == "PARTUUID=0c7d2a9e-51f4-4e3b-8a6d-93b1c0e4f2a8/PARTNROFF=2"
    for bad in ("PARTUUID=x/PARTNROFF=", "PARTUUID=x/PARTNROFF=-1", "PARTUUID=/PARTNROFF=1",
                "PARTUUID=x/PARTNROFF=99999999"):
        with pytest.raises(RootSpecError):
            parse_root_spec(bad)
