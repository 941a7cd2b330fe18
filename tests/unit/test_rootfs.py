"""The rootfs stage: the move from ramfs into a tmpfs, and the copy it makes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from initium import linux, ops
from initium.cmdline import Cmdline, parse
from initium.console import Console
from initium.memsystem import MemorySystem
from initium.mounts import parse_mountinfo
from initium.options import BootOptions
from initium.plan import Plan, StageEntry
from initium.stage import BootContext, StageError
from initium.stages.rootfs import (
    TMPFS_DIR,
    CopyStats,
    CopyTree,
    EnterTmpfs,
    Rootfs,
    copy_tree,
    top_mounts,
)
from initium.stages.xattrs import ParsedLists, Xattrs
from initium.xattrlist import SetXattr, XattrRecord, serialize

LABEL = b"system_u:object_r:bin_t:s0\0"
IMA = b"\x04\x04" + bytes(32)
API = [("proc", "/proc", "proc"), ("sysfs", "/sys", "sysfs"), ("devtmpfs", "/dev", "devtmpfs"),
       ("tmpfs", "/dev/shm", "tmpfs"), ("tmpfs", "/run", "tmpfs"),
       ("securityfs", "/sys/kernel/security", "securityfs")]


def image(records: list[XattrRecord]) -> dict[str, bytes]:
    files = {f"/{r.path}": b"data" for r in records}
    files["/.initium/xattrs/core"] = serialize(records)
    files["/etc/initrd-release"] = b"ID=initium\n"
    files.update({f"{t}/": b"" for _, t, _ in API})
    return files


def model_the_move(sys: MemorySystem, op: ops.Op) -> None:
    """What the kernel does for the stage's own operations, for the in-memory machine."""
    if isinstance(op, CopyTree):
        top = op.target.rstrip("/")
        points = tuple(t + "/" for _, t, _ in sys.mounted)
        for path, data in list(sys.files.items()):
            if path.startswith(top + "/"):
                continue
            if path in points or not path.startswith(points):  # mount points stay empty
                sys.files[top + path] = data
    elif isinstance(op, EnterTmpfs):
        # The ramfs beneath is freed; the tmpfs becomes / and statfs says so.
        sys.files = {p: d for p, d in sys.files.items() if p.startswith(op.path + "/")}
        sys._chroot(op.path)
        sys.fs_magic = linux.TMPFS_MAGIC


def machine(files: dict[str, bytes], magic: int = linux.RAMFS_MAGIC) -> MemorySystem:
    return MemorySystem(files=files, fs_magic=magic, mounted=list(API),
                        on_apply=model_the_move)


def context(sys: MemorySystem, cmdline: str = "", move: bool = True) -> BootContext:
    plan = Plan("6.1.0-test", (StageEntry("rootfs", "initium.stages.rootfs:Rootfs",
                                          {"tmpfs_move": move}),
                               StageEntry("xattrs", "initium.stages.xattrs:Xattrs",
                                          {"namespaces": ["security."]})))
    ctx = BootContext(sys, Cmdline(), BootOptions(), plan, Console(lambda _: None),
                      stage="rootfs")
    ctx.set_cmdline(parse(cmdline))
    return ctx


def test_order() -> None:
    assert Rootfs.before == ("xattrs",)
    assert "early-mounts" in Rootfs.after


def test_tmpfs_root_needs_no_move() -> None:
    sys = machine(image([XattrRecord("init", (("security.ima", IMA),))]), linux.TMPFS_MAGIC)
    Rootfs().run(context(sys))
    assert sys.applied == []


def test_ramfs_with_only_selinux_labels_moves_too() -> None:
    """Before a policy is loaded SELinux refuses security.selinux on a ramfs (no SBLABEL_MNT)."""
    sys = machine(image([XattrRecord("init", (("security.selinux", LABEL),))]))
    ctx = context(sys)
    Rootfs().run(ctx)
    assert sys.applied[0].describe() == f"mkdir {TMPFS_DIR} (mode 700)"
    parsed = ctx.state.get(ParsedLists)
    assert parsed is not None and parsed.lists[0][0] == "core"


def test_ramfs_without_lists_stays() -> None:
    sys = machine(image([]))
    Rootfs().run(context(sys))
    assert sys.applied == []


def test_ramfs_with_ima_moves_then_xattrs_applies() -> None:
    sys = machine(image([XattrRecord("init", (("security.ima", IMA),
                                              ("security.selinux", LABEL)))]))
    ctx = context(sys)
    Rootfs().run(ctx)
    assert [op.describe() for op in sys.applied] == [
        f"mkdir {TMPFS_DIR} (mode 700)",
        f"mount -t tmpfs tmpfs {TMPFS_DIR} -o mode=0755",
        f"copy / into {TMPFS_DIR} (files, links, nodes; one device)",
        f"mount --move /dev {TMPFS_DIR}/dev",
        f"mount --move /proc {TMPFS_DIR}/proc",
        f"mount --move /run {TMPFS_DIR}/run",
        f"mount --move /sys {TMPFS_DIR}/sys",
        f"mount --move {TMPFS_DIR} / && chroot . && free the old initramfs",
    ]
    # PID 1 now stands in the copy: the API mounts came along, the files are there.
    assert sys.root == TMPFS_DIR
    assert sys.statfs_type("/") == linux.TMPFS_MAGIC
    assert {t for _, t, _ in sys.mounted} >= {"/", "/proc", "/dev/shm", "/sys/kernel/security"}
    assert sys.read_bytes("/etc/initrd-release") == b"ID=initium\n"
    ctx.stage = "xattrs"
    sys.applied.clear()
    Xattrs().run(ctx)
    assert [(op.path, op.name) for op in sys.applied if isinstance(op, SetXattr)] == [
        ("init", "security.ima"), ("init", "security.selinux")]


def test_move_disabled_stops_with_the_fix() -> None:
    sys = machine(image([XattrRecord("init", (("security.ima", IMA),))]))
    with pytest.raises(StageError) as caught:
        Rootfs().run(context(sys, "enforcing=1", move=False))
    err = caught.value
    assert "cannot keep security.ima" in err.cause and "xattr_tmpfs_move = false" in err.cause
    assert "xattr_tmpfs_move = true" in err.hint
    assert err.security
    assert sys.applied == []


def test_copy_failure_is_reported_and_fails_closed_when_enforcing() -> None:
    def refuse(sys: MemorySystem, op: ops.Op) -> None:
        if isinstance(op, CopyTree):
            raise OSError(28, "No space left on device", "/.initium-tmpfs/usr/lib/big")
        model_the_move(sys, op)

    sys = machine(image([XattrRecord("init", (("security.ima", IMA),))]))
    sys.on_apply = refuse
    with pytest.raises(StageError) as caught:
        Rootfs().run(context(sys, "enforcing=1"))
    assert "cannot copy the initramfs into a tmpfs (needed for security.ima)" in \
        caught.value.cause
    assert "No space left on device" in caught.value.cause
    assert caught.value.security


def test_malformed_list_stops_before_anything_moves() -> None:
    files = image([XattrRecord("init", (("security.ima", IMA),))])
    files["/.initium/xattrs/core"] = b"zz"
    sys = machine(files)
    with pytest.raises(StageError, match="offset 0x0"):
        Rootfs().run(context(sys))
    assert sys.applied == []


def test_top_mounts_skip_nested_and_the_copy() -> None:
    text = "\n".join(f"{i} 1 0:{i} / {t} rw - {fs} {s} rw"
                     for i, (s, t, fs) in enumerate([("rootfs", "/", "rootfs"), *API,
                                                     ("tmpfs", TMPFS_DIR, "tmpfs")], 20))
    assert top_mounts(parse_mountinfo(text), TMPFS_DIR) == ["/dev", "/proc", "/run", "/sys"]


def test_dry_run_reply_is_a_copy_count() -> None:
    assert CopyTree("/", TMPFS_DIR).simulate(MemorySystem()) == CopyStats(0, 0)


def test_copy_tree_keeps_files_links_nodes_modes_and_times(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "usr/bin").mkdir(parents=True)
    (src / "usr/bin/python3").write_bytes(b"\x7fELF" + bytes(200_000))
    os.chmod(src / "usr/bin/python3", 0o755)
    os.link(src / "usr/bin/python3", src / "usr/bin/python3.11")
    (src / "bin").symlink_to("usr/bin")
    (src / "etc").mkdir(mode=0o700)
    (src / "etc/initrd-release").write_bytes(b"ID=initium\n")
    os.utime(src / "etc/initrd-release", ns=(0, 0))
    os.mkfifo(src / "fifo", 0o640)
    (src / ".initium-tmpfs").mkdir()
    (src / ".initium-tmpfs/not-copied").write_bytes(b"x")
    if os.getuid() == 0:
        os.mknod(src / "console", stat.S_IFCHR | 0o600, os.makedev(5, 1))
    dst.mkdir()
    stats = copy_tree(str(src), str(dst), skip=".initium-tmpfs")
    assert (dst / "usr/bin/python3").read_bytes() == (src / "usr/bin/python3").read_bytes()
    assert stat.S_IMODE(os.stat(dst / "usr/bin/python3").st_mode) == 0o755
    assert os.stat(dst / "usr/bin/python3").st_ino == os.stat(dst / "usr/bin/python3.11").st_ino
    assert os.readlink(dst / "bin") == "usr/bin"
    assert stat.S_IMODE(os.stat(dst / "etc").st_mode) == 0o700
    assert os.stat(dst / "etc/initrd-release").st_mtime_ns == 0
    assert stat.S_ISFIFO(os.stat(dst / "fifo").st_mode)
    assert not (dst / ".initium-tmpfs").exists()
    if os.getuid() == 0:
        st = os.stat(dst / "console")
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(5, 1)
    assert stats.size == 200_004 + 11  # the hard link's data counted once
    assert stats.files == 8 + int(os.getuid() == 0)
