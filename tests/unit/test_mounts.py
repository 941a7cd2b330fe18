"""initium.mounts: fstab-style options to mount(2) flags, and /proc/self/mountinfo."""

from __future__ import annotations

import pytest
from initium import linux
from initium.mounts import (
    MountEntry,
    MountOptions,
    flag_names,
    parse_mount_options,
    parse_mountinfo,
)


@pytest.mark.parametrize(("word", "flag"), [
    ("ro", linux.MS_RDONLY), ("nosuid", linux.MS_NOSUID), ("nodev", linux.MS_NODEV),
    ("noexec", linux.MS_NOEXEC), ("sync", linux.MS_SYNCHRONOUS), ("dirsync", linux.MS_DIRSYNC),
    ("noatime", linux.MS_NOATIME), ("nodiratime", linux.MS_NODIRATIME),
    ("relatime", linux.MS_RELATIME), ("strictatime", linux.MS_STRICTATIME),
    ("lazytime", linux.MS_LAZYTIME), ("nosymfollow", linux.MS_NOSYMFOLLOW),
])
def test_flag_words(word: str, flag: int) -> None:
    opts = parse_mount_options(word)
    assert opts.flags == flag
    assert opts.data == ""
    assert word in opts.names


@pytest.mark.parametrize(("word", "cleared"), [
    ("rw", linux.MS_RDONLY), ("suid", linux.MS_NOSUID), ("dev", linux.MS_NODEV),
    ("exec", linux.MS_NOEXEC), ("async", linux.MS_SYNCHRONOUS), ("atime", linux.MS_NOATIME),
    ("diratime", linux.MS_NODIRATIME), ("norelatime", linux.MS_RELATIME),
    ("nostrictatime", linux.MS_STRICTATIME), ("nolazytime", linux.MS_LAZYTIME),
])
def test_clearing_words(word: str, cleared: int) -> None:
    start = cleared | linux.MS_NOSUID | linux.MS_RDONLY
    opts = parse_mount_options(word, start)
    assert opts.flags == start & ~cleared
    assert opts.data == ""


def test_flags_and_data_are_split() -> None:
    opts = parse_mount_options("ro,noatime,data=ordered,errors=remount-ro,commit=5")
    assert opts == MountOptions(linux.MS_RDONLY | linux.MS_NOATIME, ("ro", "noatime"),
                                "data=ordered,errors=remount-ro,commit=5")


def test_last_word_wins() -> None:
    assert parse_mount_options("ro,rw").flags == 0
    assert parse_mount_options("rw,ro").flags == linux.MS_RDONLY
    assert parse_mount_options("noatime,atime").flags == 0


def test_initial_flags_are_kept() -> None:
    opts = parse_mount_options("noatime", linux.MS_RDONLY)
    assert opts.flags == linux.MS_RDONLY | linux.MS_NOATIME
    assert opts.names == ("ro", "noatime")


@pytest.mark.parametrize("text", ["defaults", "auto", "noauto", "nofail", "user", "nouser",
                                  "_netdev", "x-systemd.device-timeout=5",
                                  "x-initrd.mount", "", ",,", " , "])
def test_ignored_words(text: str) -> None:
    assert parse_mount_options(text) == MountOptions(0, ("rw",), "")


def test_ignored_words_between_others() -> None:
    opts = parse_mount_options("defaults,nofail,x-foo,subvol=@, noatime ,compress=zstd")
    assert opts.flags == linux.MS_NOATIME
    assert opts.data == "subvol=@,compress=zstd"


def test_flag_names() -> None:
    assert flag_names(0) == ("rw",)
    assert flag_names(linux.MS_RDONLY | linux.MS_NOSUID | linux.MS_NODEV) == (
        "ro", "nosuid", "nodev")
    assert flag_names(linux.MS_BIND) == ("rw",)  # bits without an fstab word are not named


MOUNTINFO = r"""22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
23 1 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:2 - sysfs sysfs rw
25 1 253:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw,errors=remount-ro
40 25 253:2 /data /mnt/my\040disk rw,relatime - ext4 /dev/mapper/my\040vg-data rw
41 25 0:50 / /mnt/tab\011and\134back rw - tmpfs tmp\040fs rw
42 25 0:51 / /no/optional/fields rw - tmpfs none rw
43 25 0:52 / /many rw master:1 shared:3 propagate_from:1 unbindable - nfs srv:/x rw
garbage line
44 25 x:y / /badnumbers rw - tmpfs none rw
45 25 0:53 / /nosep rw tmpfs none rw
46 25 0:54 / /trunc rw -
47 25 0:55

48 25 8:16 / /last rw - vfat /dev/sdb rw
"""


def test_parse_mountinfo() -> None:
    entries = parse_mountinfo(MOUNTINFO)
    assert entries[0] == MountEntry(0, 21, "/", "/proc", "proc", "proc")
    assert entries[2] == MountEntry(253, 1, "/", "/", "ext4", "/dev/vda1")
    assert [e.mount_point for e in entries] == [
        "/proc", "/sys", "/", "/mnt/my disk", "/mnt/tab\tand\\back", "/no/optional/fields",
        "/many", "/last"]


def test_parse_mountinfo_unescapes_octal() -> None:
    entries = {e.mount_point: e for e in parse_mountinfo(MOUNTINFO)}
    disk = entries["/mnt/my disk"]
    assert disk.root == "/data"
    assert disk.source == "/dev/mapper/my vg-data"
    assert entries["/mnt/tab\tand\\back"].source == "tmp fs"


def test_parse_mountinfo_optional_fields() -> None:
    entries = {e.mount_point: e for e in parse_mountinfo(MOUNTINFO)}
    assert entries["/many"].fstype == "nfs"
    assert entries["/many"].source == "srv:/x"


def test_parse_mountinfo_skips_malformed_lines() -> None:
    points = [e.mount_point for e in parse_mountinfo(MOUNTINFO)]
    for bad in ("/badnumbers", "/nosep", "/trunc"):
        assert bad not in points
    assert parse_mountinfo("") == []
    assert parse_mountinfo("\n\n  \n") == []


def test_parse_mountinfo_backslash_not_followed_by_digits() -> None:
    (entry,) = parse_mountinfo(r"1 1 0:1 / /a\b\12 rw - tmpfs none rw")
    assert entry.mount_point == "/a\\b\\12"
