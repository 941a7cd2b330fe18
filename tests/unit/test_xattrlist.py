"""The xattr list: the worked example from docs/image-format.md, every fault with its offset."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import pytest
from initium.xattrlist import (
    LIST_MAX,
    NAMESPACES,
    SetXattr,
    XattrListError,
    XattrRecord,
    canonical,
    parse,
    serialize,
    show_value,
)

IMA = b"\x04\x04" + hashlib.sha256(b"hello\n").digest()
ETC_T = b"system_u:object_r:etc_t:s0\0"
BIN_T = b"system_u:object_r:bin_t:s0\0"

# The two-record list of docs/image-format.md, byte for byte (offsets on the left).
EXAMPLE = bytes.fromhex(
    # 0x00 record "etc": p_size 0x42, path at 0x0a, one xattr at 0x0e (c_size 0x34)
    "30303030303030303432" "65746300"
    "3030303030303334" "73656375726974792e73656c696e757800"
    "73797374656d5f753a6f626a6563745f723a6574635f743a733000"
    # 0x42 record "init": p_size 0x7a, path at 0x4c, xattrs at 0x51 (0x37) and 0x88 (0x34)
    "30303030303030303761" "696e697400"
    "3030303030303337" "73656375726974792e696d6100"
    "04045891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
    "3030303030303334" "73656375726974792e73656c696e757800"
    "73797374656d5f753a6f626a6563745f723a62696e5f743a733000"
)
EXAMPLE_RECORDS = [
    XattrRecord("etc", (("security.selinux", ETC_T),)),
    XattrRecord("init", (("security.ima", IMA), ("security.selinux", BIN_T))),
]


def test_worked_example_parses() -> None:
    assert len(EXAMPLE) == 0xBC
    assert parse(EXAMPLE) == EXAMPLE_RECORDS


def test_worked_example_is_what_the_writer_writes() -> None:
    shuffled = [XattrRecord("init", (("security.selinux", BIN_T), ("security.ima", IMA))),
                XattrRecord("etc", (("security.selinux", ETC_T),))]
    assert serialize(shuffled) == EXAMPLE


def test_empty_list_and_record_without_xattrs() -> None:
    assert parse(b"") == []
    assert parse(b"000000000Ca\0") == [XattrRecord("a", ())]


def test_non_utf8_path_round_trips() -> None:
    recs = [XattrRecord("usr/\udcff", (("security.x", b"\0\1"),))]
    assert parse(serialize(recs)) == recs


def test_upper_and_lower_case_hex() -> None:
    assert parse(b"000000000Ca\0") == parse(b"000000000ca\0")


def _record(path: bytes, *xattrs: bytes) -> bytes:
    body = path + b"\0" + b"".join(xattrs)
    return b"%010x" % (10 + len(body)) + body


def _xattr(name: bytes, value: bytes, size: int | None = None) -> bytes:
    return b"%08x" % (size if size is not None else 8 + len(name) + 1 + len(value)) \
        + name + b"\0" + value


GOOD = _record(b"a", _xattr(b"security.x", b"v"))

FAULTS = [
    (b"00000", 0, "truncated record size: 5 of 10 hex digits"),
    (b"+00000000c", 0, "not 10 hex digits"),
    (b" 00000000c", 0, "not 10 hex digits"),
    (b"0x0000000c", 0, "not 10 hex digits"),
    (b"000000_00c", 0, "not 10 hex digits"),
    (b"000000000b", 0, "too small for a path"),
    (b"00000000ffa\0", 0, "runs past the end of the list (12 bytes left)"),
    (b"000000000cab", 10, "path is not NUL-terminated"),
    (GOOD + b"000000000c/\0", len(GOOD) + 10, "is absolute"),
    (_record(b"a/../b"), 10, "'..' component"),
    (_record(b"a//b"), 10, "empty, '.' or '..' component"),
    (_record(b"a/"), 10, "empty, '.' or '..' component"),
    (_record(b"./a"), 10, "'.' or '..' component"),
    (_record(b"x" * 4096), 10, "the limit is 4095"),
    (GOOD + GOOD, len(GOOD) + 10, "has a second record"),
    (_record(b"a", b"0000000"), 12, "truncated xattr size: 7 of 8 hex digits"),
    (_record(b"a", b"0000000g"), 12, "xattr size '0000000g' is not 8 hex digits"),
    (_record(b"a", b"-0000009"), 12, "not 8 hex digits"),
    (_record(b"a", b"00000009"), 12, "too small for a name"),
    (_record(b"a", _xattr(b"security.x", b"v", 40)), 12, "runs past the end of its record"),
    (_record(b"a", b"0000000asecur"), 20, "xattr name is not NUL-terminated"),
    (_record(b"a", _xattr(b"trusted.x", b"")), 20, "outside the allowed namespaces (security.)"),
    (_record(b"a", _xattr(b"security.", b"")), 20, "only a namespace"),
    (_record(b"a", _xattr(b"security." + b"n" * 247, b"")), 20, "the limit is 255"),
    (_record(b"a", _xattr(b"security.x", b"v" * 65537)), 31, "the limit is 65536"),
    (_record(b"a", _xattr(b"security.x", b"1"), _xattr(b"security.x", b"2")), 40,
     "given twice"),
]


@pytest.mark.parametrize(("data", "offset", "reason"), FAULTS)
def test_faults_have_offset_and_reason(data: bytes, offset: int, reason: str) -> None:
    with pytest.raises(XattrListError) as caught:
        parse(data)
    assert caught.value.offset == offset, str(caught.value)
    assert reason in caught.value.reason
    text = str(caught.value)
    assert text.startswith(f"offset {offset:#x}: ") and "\n" not in text


def test_limits_at_the_edge_are_accepted() -> None:
    name = b"security." + b"n" * 246
    value = b"v" * 65536
    assert parse(_record(b"a", _xattr(name, value))) == [
        XattrRecord("a", ((name.decode(), value),))]
    assert parse(_record(b"x" * 4095))[0].path == "x" * 4095


def test_total_and_record_caps() -> None:
    with pytest.raises(XattrListError, match="the limit is 100"):
        parse(GOOD * 10, max_total=100)
    many = b"".join(_record(b"f%d" % i) for i in range(5))
    with pytest.raises(XattrListError, match="more than 4 records") as caught:
        parse(many, max_records=4)
    assert caught.value.offset == len(b"".join(_record(b"f%d" % i) for i in range(4)))
    assert LIST_MAX == 16 << 20


def test_namespaces_follow_the_configuration() -> None:
    data = _record(b"a", _xattr(b"user.x", b"1"), _xattr(b"trusted.y", b"2"))
    assert parse(data, allowed_prefixes=NAMESPACES)[0].xattrs == (("user.x", b"1"),
                                                                   ("trusted.y", b"2"))
    with pytest.raises(XattrListError, match="outside the allowed"):
        parse(data, allowed_prefixes=("security.", "user."))


def test_error_messages_escape_hostile_bytes() -> None:
    with pytest.raises(XattrListError) as caught:
        parse(_record(b"/\n\x1b[2J"))
    assert "\n" not in str(caught.value) and "\x1b" not in str(caught.value)


@pytest.mark.parametrize("bad", [
    XattrRecord("/abs", ()),
    XattrRecord("a/../b", ()),
    XattrRecord("a", (("security.x", b"v" * 65537),)),
    XattrRecord("a", (("other.x", b""),)),
    XattrRecord("a", (("security.x", b""), ("security.x", b"1"))),
])
def test_writer_refuses_what_the_reader_refuses(bad: XattrRecord) -> None:
    with pytest.raises(ValueError, match="cannot write the xattrs"):
        serialize([bad])


def test_writer_refuses_a_path_twice() -> None:
    with pytest.raises(ValueError, match="second record"):
        serialize([XattrRecord("a", ()), XattrRecord("a", ())])


def test_canonical_order_is_by_bytes() -> None:
    recs = canonical([XattrRecord("b", ()), XattrRecord("a/b", ()), XattrRecord("a", ())])
    assert [r.path for r in recs] == ["a", "a/b", "b"]


def test_show_value() -> None:
    assert show_value(BIN_T) == '"system_u:object_r:bin_t:s0"'
    assert show_value(b"\x01\x02") == "0x0102 (2 bytes)"
    assert show_value(IMA) == f"0x{IMA[:16].hex()}... (34 bytes)"
    assert show_value(b"a\nb\0").startswith("0x")


def test_describe() -> None:
    op = SetXattr("usr/bin/sh", "security.selinux", BIN_T)
    assert op.describe() == 'setxattr security.selinux="system_u:object_r:bin_t:s0" /usr/bin/sh'
    assert SetXattr("a", "user.x", b"\1", root="/tmp/t/").describe() == \
        "setxattr user.x=0x01 (1 bytes) /tmp/t/a"


# -- applying to a real directory (user.* on the test's file system) ---------


def _user_xattrs_supported(path: Path) -> bool:
    probe = path / ".probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, "user.initium-probe", b"1")
    except OSError:
        return False
    finally:
        probe.unlink()
    return True


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    if not _user_xattrs_supported(tmp_path):
        pytest.skip(f"{tmp_path}: the file system has no user xattrs")
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    (root / "usr/bin").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret").write_bytes(b"s")
    (root / "usr/bin/tool").write_bytes(b"t")
    (root / "escape").symlink_to(outside)
    (root / "usr/lib").symlink_to(outside)
    (root / "file-link").symlink_to(outside / "secret")
    return tmp_path


def test_apply_sets_the_attribute(tree: Path) -> None:
    root = tree / "root"
    SetXattr("usr/bin/tool", "user.label", b"x\0", root=str(root)).perform(None)
    assert os.getxattr(root / "usr/bin/tool", "user.label") == b"x\0"


@pytest.mark.parametrize("path", ["escape/secret", "usr/lib/secret"])
def test_apply_never_follows_a_directory_symlink(tree: Path, path: str) -> None:
    with pytest.raises(OSError) as caught:
        SetXattr(path, "user.label", b"x", root=str(tree / "root")).perform(None)
    assert caught.value.errno in (errno.ELOOP, errno.ENOTDIR)
    assert "symlink is never followed" in str(caught.value)
    assert os.listxattr(tree / "outside/secret") == []


def test_apply_to_a_symlink_touches_the_link_not_its_target(tree: Path) -> None:
    # Linux refuses user.* on symlinks (EPERM); what matters is that the target is untouched.
    try:
        SetXattr("file-link", "user.label", b"x", root=str(tree / "root")).perform(None)
    except OSError as err:
        assert err.errno == errno.EPERM
    assert os.listxattr(tree / "outside/secret") == []


def test_apply_reports_a_missing_file_by_its_list_path(tree: Path) -> None:
    with pytest.raises(FileNotFoundError) as caught:
        SetXattr("usr/bin/none", "user.label", b"x", root=str(tree / "root")).perform(None)
    assert caught.value.filename == "usr/bin/none"


def test_apply_refuses_a_path_outside_the_tree(tree: Path) -> None:
    with pytest.raises(OSError, match=r"'\.\.' component"):
        SetXattr("../outside/secret", "user.label", b"x", root=str(tree / "root")).perform(None)
    assert os.listxattr(tree / "outside/secret") == []


def test_docs_show_the_same_bytes() -> None:
    doc = (Path(__file__).parents[2] / "docs/image-format.md").read_text()
    block = doc.split("offset  bytes", 1)[1].split("```", 1)[0]
    raw = bytearray()
    for line in block.splitlines()[1:]:
        column = line[8:59].split()
        if line[:5].strip():
            assert int(line[:5], 16) == len(raw), line  # the offset column is right
        raw += bytes(int(b, 16) for b in column)
    assert bytes(raw) == EXAMPLE


def test_the_live_facade_performs_it_and_the_dry_run_only_checks(tree: Path) -> None:
    from initium.system import DryRunSystem, LiveSystem

    root = tree / "root"
    LiveSystem().apply(SetXattr("usr/bin/tool", "user.live", b"1", root=str(root)))
    assert os.getxattr(root / "usr/bin/tool", "user.live") == b"1"
    dry = DryRunSystem()
    dry.apply(SetXattr("usr/bin/tool", "user.dry", b"1", root=str(root)))
    assert "user.dry" not in os.listxattr(root / "usr/bin/tool")
    with pytest.raises(OSError, match="symlink is never followed"):
        dry.apply(SetXattr("escape/secret", "user.dry", b"1", root=str(root)))
    with pytest.raises(FileNotFoundError):
        dry.apply(SetXattr("usr/bin/none", "user.dry", b"1", root=str(root)))
