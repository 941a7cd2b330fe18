"""The xattrs stage against the in-memory machine."""

from __future__ import annotations

import errno

import pytest
from initium import linux, ops
from initium.cmdline import Cmdline, parse
from initium.console import Console
from initium.memsystem import MemorySystem
from initium.options import BootOptions
from initium.plan import Plan, StageEntry
from initium.stage import BootContext, StageError
from initium.stages.xattrs import Xattrs
from initium.xattrlist import SetXattr, XattrRecord, serialize

LABEL = b"system_u:object_r:bin_t:s0\0"
IMA = b"\x04\x04" + bytes(32)


def lists(**by_component: list[XattrRecord]) -> dict[str, bytes]:
    """The lists, and an empty file for every path they name (the image's files)."""
    files = {f"/{r.path}": b"" for recs in by_component.values() for r in recs}
    files.update({f"/.initium/xattrs/{c}": serialize(recs) for c, recs in by_component.items()})
    return files


def run(files: dict[str, bytes], cmdline: str = "", magic: int = linux.TMPFS_MAGIC,
        namespaces: list[str] | None = None, fail: str | None = None, *,
        image: dict[str, object] | None = None) -> tuple[MemorySystem, list[str]]:
    def refuse(_: MemorySystem, op: ops.Op) -> None:
        if isinstance(op, SetXattr) and op.path == fail:
            raise OSError(errno.EOPNOTSUPP, "Operation not supported", op.path)

    sys = MemorySystem(files=files, fs_magic=magic, on_apply=refuse)
    data: dict[str, object] = {"namespaces": namespaces} if namespaces is not None else {}
    data.update(image or {})
    plan = Plan("6.1.0-test", (StageEntry("xattrs", "initium.stages.xattrs:Xattrs", data),))
    out: list[str] = []
    ctx = BootContext(sys, Cmdline(), BootOptions(), plan, Console(out.append), stage="xattrs")
    ctx.set_cmdline(parse(cmdline))
    Xattrs().run(ctx)
    return sys, out


def context(sys: MemorySystem) -> BootContext:
    return BootContext(sys, Cmdline(), BootOptions(), Plan("6.1.0-test", ()),
                       Console(lambda _: None), stage="xattrs")


def set_ops(sys: MemorySystem) -> list[tuple[str, str, bytes]]:
    return [(op.path, op.name, op.value) for op in sys.applied if isinstance(op, SetXattr)]


def test_order_against_the_other_stages() -> None:
    assert "early-mounts" in Xattrs.after
    assert {"selinux", "ima", "modules", "root"} <= set(Xattrs.before)


def test_applies_every_present_list_in_component_order() -> None:
    files = lists(policy=[XattrRecord("etc/initium/plan.json", (("security.selinux", LABEL),))],
                  core=[XattrRecord("init", (("security.selinux", LABEL),)),
                        XattrRecord("usr/bin/python3", (("security.ima", IMA),
                                                        ("security.selinux", LABEL)))])
    sys, out = run(files)
    assert set_ops(sys) == [("init", "security.selinux", LABEL),
                            ("usr/bin/python3", "security.ima", IMA),
                            ("usr/bin/python3", "security.selinux", LABEL),
                            ("etc/initium/plan.json", "security.selinux", LABEL)]
    assert all(op.root == "/" for op in sys.applied if isinstance(op, SetXattr))
    assert "4 xattrs applied from core, policy" in "".join(out)


def test_no_lists_is_nothing_to_do() -> None:
    sys, _ = run({"/init": b""})
    assert sys.applied == []


def test_malformed_list_fails_with_offset_and_applies_nothing() -> None:
    files = lists(core=[XattrRecord("init", (("security.selinux", LABEL),))])
    files["/.initium/xattrs/modules"] = b"000000000fusr/x"
    sys = MemorySystem(files=files, fs_magic=linux.TMPFS_MAGIC)
    with pytest.raises(StageError) as caught:
        Xattrs().run(context(sys))
    assert set_ops(sys) == []
    err = caught.value
    assert err.cause == ("/.initium/xattrs/modules: offset 0xa: path is not NUL-terminated "
                         "within its record; no xattrs were applied")
    assert not err.security


@pytest.mark.parametrize(("cmdline", "image", "closed"), [
    ("enforcing=1", {}, True),
    ("rd.ima.require_policy=1", {}, True),
    ("", {"ima_required": True}, True),
    ("", {"selinux_mode": "enforcing"}, True),
    ("enforcing=0", {"selinux_mode": "enforcing"}, False),
    ("enforcing=0", {"ima_required": True}, True),
    ("", {"selinux_mode": "permissive"}, False),
])
def test_malformed_list_fails_closed_when_enforcing(cmdline: str, image: dict[str, object],
                                                    closed: bool) -> None:
    with pytest.raises(StageError) as caught:
        run({"/.initium/xattrs/core": b"zz"}, cmdline=cmdline, image=image)
    assert caught.value.security is closed
    assert "offset 0x0: truncated record size" in caught.value.cause


def test_namespaces_come_from_the_plan() -> None:
    files = lists(core=[XattrRecord("init", (("user.note", b"x"),))])
    with pytest.raises(StageError, match="outside the allowed namespaces"):
        run(files)
    sys, _ = run(files, namespaces=["security.", "user."])
    assert set_ops(sys) == [("init", "user.note", b"x")]


def test_failure_while_applying_reports_how_far_each_list_got() -> None:
    files = lists(core=[XattrRecord("a", (("security.selinux", LABEL),)),
                        XattrRecord("b", (("security.selinux", LABEL),))],
                  modules=[XattrRecord("m1", (("security.selinux", LABEL),)),
                           XattrRecord("m2", (("security.ima", IMA),
                                              ("security.selinux", LABEL))),
                           XattrRecord("m3", (("security.selinux", LABEL),))],
                  policy=[XattrRecord("p", (("security.selinux", LABEL),))])

    def fail_second(sys: MemorySystem, op: ops.Op) -> None:
        if isinstance(op, SetXattr) and (op.path, op.name) == ("m2", "security.selinux"):
            raise OSError(errno.ENOENT, "No such file or directory", op.path)

    sys = MemorySystem(files=files, fs_magic=linux.TMPFS_MAGIC, on_apply=fail_second)
    with pytest.raises(StageError) as caught:
        Xattrs().run(context(sys))
    assert caught.value.cause == (
        "/.initium/xattrs/modules: cannot set security.selinux on /m2: No such file or "
        "directory; applied before the failure: core 2 of 2 records, modules 1 of 3 records, "
        "and 1 of the 2 xattrs of /m2")


def test_ramfs_keeps_no_label_before_a_policy_is_loaded() -> None:
    with pytest.raises(StageError, match=r"cannot keep security\.selinux before a policy"):
        run(lists(core=[XattrRecord("init", (("security.selinux", LABEL),))]),
            magic=linux.RAMFS_MAGIC)


def test_ramfs_with_ima_stops_with_the_fix() -> None:
    files = lists(core=[XattrRecord("init", (("security.ima", IMA),
                                             ("security.selinux", LABEL)))])
    with pytest.raises(StageError) as caught:
        run(files, magic=linux.RAMFS_MAGIC, cmdline="enforcing=1")
    err = caught.value
    assert err.cause == ("the initramfs is on ramfs, which cannot keep security.ima, "
                         "security.selinux before a policy is loaded; no xattrs were applied")
    assert "root=" in err.hint and "tmpfs" in err.hint
    assert err.security


def test_a_listed_file_missing_from_the_image_fails() -> None:
    files = lists(core=[XattrRecord("init", (("security.selinux", LABEL),))])
    del files["/init"]
    with pytest.raises(StageError) as caught:
        run(files)
    assert caught.value.cause.startswith("/.initium/xattrs/core: cannot set security.selinux "
                                         "on /init: No such file or directory")


def test_a_symlink_on_the_way_is_refused_in_memory_too() -> None:
    files = lists(core=[XattrRecord("lib/x", (("security.selinux", LABEL),))])
    sys = MemorySystem(files=files, links={"/lib": "usr/lib"}, fs_magic=linux.TMPFS_MAGIC)
    with pytest.raises(StageError, match="'lib' in the path is not a directory"):
        Xattrs().run(context(sys))


def test_apply_failure_names_the_list_and_file() -> None:
    files = lists(core=[XattrRecord("init", (("security.ima", IMA),))])
    with pytest.raises(StageError) as caught:
        run(files, fail="init")
    assert caught.value.cause == ("/.initium/xattrs/core: cannot set security.ima on /init: "
                                  "Operation not supported; applied before the failure: core 0 "
                                  "of 1 records")
