"""The real stages, run against the in-memory machine (and real ext4 superblocks)."""

from __future__ import annotations

import errno
import json
import math
import shutil
import struct
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from initium import linux, ops
from initium.boot_env import LAUNCHER_ENV, LIBRARY_PATH_KEY
from initium.cmdline import Cmdline, parse
from initium.console import Console
from initium.memsystem import MemorySystem
from initium.options import BootOptions
from initium.plan import Plan, StageEntry
from initium.rootspec import parse_root_spec
from initium.runner import TIMELINE_PATH, Runner
from initium.stage import BootContext, StageError
from initium.stages.console import KernelLog
from initium.stages.early_mounts import EarlyMounts
from initium.stages.modules import Modules
from initium.stages.root import DEFAULT_WAIT, Root, wait_budget
from initium.stages.switch_root import (
    API_MOUNTS,
    INIT_CANDIDATES,
    MAX_SYMLINKS,
    SwitchRoot,
    resolve_in_root,
)

from tests.unit.disk_images import build_gpt, md1_superblock

KVER = "6.1.0-test"
NOSUID_NODEV_NOEXEC = linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC


class Machine:
    def __init__(self, sys: MemorySystem | None = None, cmdline: str | bytes | None = "",
                 plan: Plan | None = None) -> None:
        self.sys = sys if sys is not None else MemorySystem(release=KVER)
        self.out: list[str] = []
        self.plan = plan if plan is not None else Plan(KVER, ())
        self.ctx = BootContext(self.sys, Cmdline(), BootOptions(), self.plan,
                               Console(self.out.append))
        if cmdline is not None:
            self.ctx.set_cmdline(parse(cmdline))

    @property
    def text(self) -> str:
        return "".join(self.out)

    def ops_of(self, kind: type[ops.Op]) -> list[ops.Op]:
        return [op for op in self.sys.applied if isinstance(op, kind)]


# --------------------------------------------------------------------------
# early-mounts

FILESYSTEMS = (b"nodev\tsysfs\nnodev\ttmpfs\nnodev\tproc\nnodev\tdevtmpfs\n"
               b"nodev\tsecurityfs\nnodev\tdevpts\n\text4\n")


def early(files: Mapping[str, bytes], mounted: list[tuple[str, str, str]] | None = None,
          ) -> Machine:
    sys = MemorySystem(files=dict(files), mounted=list(mounted or []))
    m = Machine(sys, cmdline=None)
    EarlyMounts().run(m.ctx)
    return m


def mount_ops(m: Machine) -> list[ops.Mount]:
    return [op for op in m.sys.applied if isinstance(op, ops.Mount)]


def test_early_mounts_in_order() -> None:
    m = early({"/proc/filesystems": FILESYSTEMS, "/proc/cmdline": b"quiet\n"})
    assert [(op.source, op.target, op.fstype) for op in mount_ops(m)] == [
        ("proc", "/proc", "proc"), ("sysfs", "/sys", "sysfs"), ("devtmpfs", "/dev", "devtmpfs"),
        ("tmpfs", "/dev/shm", "tmpfs"), ("devpts", "/dev/pts", "devpts"),
        ("tmpfs", "/run", "tmpfs"), ("securityfs", "/sys/kernel/security", "securityfs")]
    by_target = {op.target: op for op in mount_ops(m)}
    assert by_target["/proc"].flags == NOSUID_NODEV_NOEXEC
    assert by_target["/sys"].flags == NOSUID_NODEV_NOEXEC
    # systemd's mount-setup table: strictatime on /dev, /dev/shm and /run,
    # /run bounded in size and inodes, devpts with the tty group.
    assert by_target["/dev"].flags == linux.MS_NOSUID | linux.MS_STRICTATIME
    assert by_target["/dev"].data == "mode=0755,size=4m"
    assert by_target["/dev/shm"].flags == (linux.MS_NOSUID | linux.MS_NODEV
                                           | linux.MS_STRICTATIME)
    assert by_target["/dev/pts"].flags == linux.MS_NOSUID | linux.MS_NOEXEC
    assert by_target["/dev/pts"].data == "mode=0620,gid=5,ptmxmode=0666"
    assert by_target["/run"].flags == linux.MS_NOSUID | linux.MS_NODEV | linux.MS_STRICTATIME
    assert by_target["/run"].data == "mode=0755,size=20%,nr_inodes=800k"
    assert by_target["/run"].flag_names == ("rw", "nosuid", "nodev", "strictatime")


def test_early_mounts_make_missing_mount_points_first() -> None:
    m = early({"/proc/cmdline": b""})
    seq = [(type(op).__name__, getattr(op, "target", getattr(op, "path", "")))
           for op in m.sys.applied]
    # /proc exists (it has a file below it); the others are created just before their mount
    assert seq == [("Mount", "/proc"), ("MakeDir", "/sys"), ("Mount", "/sys"),
                   ("MakeDir", "/dev"), ("Mount", "/dev"), ("MakeDir", "/dev/shm"),
                   ("Mount", "/dev/shm"), ("MakeDir", "/run"), ("Mount", "/run")]


def test_early_mounts_skip_securityfs_when_the_kernel_lacks_it() -> None:
    without = FILESYSTEMS.replace(b"nodev\tsecurityfs\n", b"")
    m = early({"/proc/filesystems": without})
    assert [op.target for op in mount_ops(m)] == ["/proc", "/sys", "/dev", "/dev/shm",
                                                  "/dev/pts", "/run"]


def test_early_mounts_skip_securityfs_without_proc_filesystems() -> None:
    m = early({})
    assert "/sys/kernel/security" not in [op.target for op in mount_ops(m)]


def test_early_mounts_skip_rows_already_mounted() -> None:
    m = early({"/proc/filesystems": FILESYSTEMS, "/proc/cmdline": b"root=/dev/vda\n"},
              mounted=[("proc", "/proc", "proc"), ("devtmpfs", "/dev", "devtmpfs")])
    assert [op.target for op in mount_ops(m)] == ["/sys", "/dev/shm", "/dev/pts", "/run",
                                                  "/sys/kernel/security"]
    # the command line is read even when /proc was already there
    assert m.ctx.cmdline_loaded
    assert m.ctx.options.root == "/dev/vda"


def test_early_mounts_load_the_command_line_from_proc() -> None:
    m = early({"/proc/cmdline": b"root=LABEL=r rw rd.break=root rd.nope -- single\n"})
    assert m.ctx.cmdline_loaded
    assert m.ctx.options.root == "LABEL=r"
    assert m.ctx.options.root_rw is True
    assert m.ctx.options.breaks == ("root",)
    assert m.ctx.cmdline.init_args == ("single",)
    assert "cmdline: unknown option rd.nope, ignored" in m.text


def test_early_mounts_without_proc_cmdline_use_defaults() -> None:
    m = early({})
    assert m.ctx.cmdline_loaded
    assert m.ctx.options == BootOptions()
    assert "cannot use the kernel command line" in m.text


def test_early_mounts_with_a_broken_cmdline_use_defaults() -> None:
    m = early({"/proc/cmdline": b"root=/dev/vda\x00rw"})
    assert m.ctx.cmdline_loaded
    assert m.ctx.options == BootOptions()
    assert "NUL byte" in m.text


def test_early_mounts_fatal_row_failure() -> None:
    def refuse(sys: MemorySystem, op: ops.Op) -> None:
        if isinstance(op, ops.Mount) and op.target == "/dev":
            raise OSError(errno.ENODEV, "No such device")

    sys = MemorySystem(on_apply=refuse)
    m = Machine(sys, cmdline=None)
    with pytest.raises(StageError) as info:
        EarlyMounts().run(m.ctx)
    assert info.value.cause == "cannot mount devtmpfs on /dev: No such device"
    assert "CONFIG_DEVTMPFS" in info.value.hint


def test_early_mounts_securityfs_failure_is_only_a_warning() -> None:
    def refuse(sys: MemorySystem, op: ops.Op) -> None:
        if isinstance(op, ops.Mount) and op.fstype == "securityfs":
            raise OSError(errno.EPERM, "Operation not permitted")

    sys = MemorySystem(files={"/proc/filesystems": FILESYSTEMS}, on_apply=refuse)
    m = Machine(sys, cmdline=None)
    EarlyMounts().run(m.ctx)
    assert "cannot mount securityfs on /sys/kernel/security: Operation not permitted" in m.text


# --------------------------------------------------------------------------
# modules

MODULE_DIR = f"/lib/modules/{KVER}/kernel"
MODULES = [{"name": "virtio_ring", "path": f"{MODULE_DIR}/drivers/virtio/virtio_ring.ko"},
           {"name": "virtio", "path": f"{MODULE_DIR}/drivers/virtio/virtio.ko"},
           {"name": "virtio_blk", "path": f"{MODULE_DIR}/drivers/block/virtio_blk.ko"}]


def modules_machine(sys: MemorySystem, modules: list[dict[str, Any]] | None = None) -> Machine:
    data: dict[str, Any] = {"modules": MODULES if modules is None else modules}
    plan = Plan(KVER, (StageEntry("modules", "initium.stages.modules:Modules", data),))
    for item in data["modules"]:
        sys.files.setdefault(item["path"], b"\x7fELF")
    m = Machine(sys, plan=plan)
    m.ctx.stage = "modules"
    return m


def loaded(m: Machine) -> list[str]:
    return [op.name for op in m.sys.applied if isinstance(op, ops.LoadModule)]


def test_modules_load_in_the_planned_order() -> None:
    m = modules_machine(MemorySystem(release=KVER))
    Modules().run(m.ctx)
    assert m.sys.applied == [ops.LoadModule(i["name"], i["path"]) for i in MODULES]
    assert m.ctx.state.loaded_modules == ["virtio_ring", "virtio", "virtio_blk"]
    assert "modules: loaded virtio_ring, virtio, virtio_blk" in m.text


def test_modules_refuse_a_kernel_version_mismatch() -> None:
    m = modules_machine(MemorySystem(release="6.5.0-1-amd64"))
    with pytest.raises(StageError) as info:
        Modules().run(m.ctx)
    assert KVER in info.value.cause
    assert "6.5.0-1-amd64" in info.value.cause
    assert "--kver 6.5.0-1-amd64" in info.value.hint
    assert m.sys.applied == []


def test_modules_skip_those_already_loaded() -> None:
    sys = MemorySystem(release=KVER, files={"/sys/module/virtio_ring/refcnt": b"2\n",
                                            "/sys/module/virtio/": b""})
    m = modules_machine(sys)
    Modules().run(m.ctx)
    assert loaded(m) == ["virtio_blk"]
    assert m.ctx.state.loaded_modules == ["virtio_blk"]


def test_modules_missing_file_is_a_stage_error() -> None:
    sys = MemorySystem(release=KVER)
    m = modules_machine(sys)
    del sys.files[MODULES[1]["path"]]
    with pytest.raises(StageError) as info:
        Modules().run(m.ctx)
    assert info.value.cause == f"module virtio is missing: no {MODULES[1]['path']} in the image"
    assert loaded(m) == ["virtio_ring"]


def test_modules_load_errors() -> None:
    def answer(sys: MemorySystem, op: ops.Op) -> None:
        if isinstance(op, ops.LoadModule) and op.name == "virtio_ring":
            raise OSError(errno.EEXIST, "File exists")
        if isinstance(op, ops.LoadModule) and op.name == "virtio":
            raise OSError(errno.ENODEV, "No such device")

    m = modules_machine(MemorySystem(release=KVER, on_apply=answer))
    Modules().run(m.ctx)
    assert loaded(m) == ["virtio_ring", "virtio", "virtio_blk"]
    assert m.ctx.state.loaded_modules == ["virtio_blk"]
    assert "cannot load virtio: ENODEV (No such device), ignoring" in m.text
    assert "virtio_ring" not in m.text.replace("loaded virtio_blk", "")


@pytest.mark.parametrize(("code", "hint"), [
    (errno.ENOEXEC, "not for this kernel"),
    (errno.EKEYREJECTED, "signature is not trusted"),
    (errno.ENOENT, "a symbol it needs is missing"),
])
def test_a_required_module_the_kernel_rejects_stops_at_once(code: int, hint: str) -> None:
    """Not a warning and a 30 s wait for a disk that cannot appear."""
    sys = MemorySystem(release=KVER, module_errors={"virtio": code})
    m = modules_machine(sys)
    with pytest.raises(StageError) as info:
        Modules().run(m.ctx)
    assert info.value.cause.startswith(
        f"the kernel rejected module virtio: {errno.errorcode[code]} (")
    assert hint in info.value.hint
    assert [name for name, _ in sys.loaded] == ["virtio_ring"]


def test_an_optional_module_the_kernel_rejects_is_a_warning() -> None:
    optional = [{**item, "required": False} for item in MODULES]
    sys = MemorySystem(release=KVER, module_errors={"virtio": errno.ENOEXEC})
    m = modules_machine(sys, optional)
    Modules().run(m.ctx)
    assert [name for name, _ in sys.loaded] == ["virtio_ring", "virtio_blk"]
    assert "cannot load virtio: ENOEXEC (Exec format error), ignoring (optional)" in m.text


def test_module_parameters_from_modprobe_d_then_the_command_line() -> None:
    with_params = [MODULES[0], MODULES[1], {**MODULES[2], "params": "queue_depth=64 x=1"}]
    sys = MemorySystem(release=KVER)
    m = modules_machine(sys, with_params)
    m.ctx.set_cmdline(parse('virtio-blk.queue_depth=128 virtio_ring.flag nvme_core.a=1 '
                            'virtio.label="a b" root=/dev/vda'))
    Modules().run(m.ctx)
    assert sys.loaded == [("virtio_ring", "flag"), ("virtio", 'label="a b"'),
                          ("virtio_blk", "queue_depth=64 x=1 queue_depth=128")]
    assert "load module virtio_blk from" in ops.LoadModule(
        "virtio_blk", "/x", "queue_depth=128").describe()


def test_modules_none_planned() -> None:
    m = modules_machine(MemorySystem(release=KVER), modules=[])
    Modules().run(m.ctx)
    assert m.sys.applied == []
    assert m.text == ""


# --------------------------------------------------------------------------
# switch-root: finding init

ROOT = "/sysroot"


def test_resolve_plain_path() -> None:
    assert resolve_in_root(MemorySystem(), ROOT, "/sbin/init") == "/sysroot/sbin/init"


def test_resolve_absolute_link_stays_inside_the_new_root() -> None:
    sys = MemorySystem(links={"/sysroot/sbin/init": "/lib/systemd/systemd"})
    assert resolve_in_root(sys, ROOT, "/sbin/init") == "/sysroot/lib/systemd/systemd"


def test_resolve_absolute_link_to_a_host_path_is_not_followed_outside() -> None:
    sys = MemorySystem(links={"/sysroot/sbin/init": "/../../etc/passwd"})
    assert resolve_in_root(sys, ROOT, "/sbin/init") == "/sysroot/etc/passwd"


def test_resolve_relative_link_and_linked_directories() -> None:
    sys = MemorySystem(links={"/sysroot/sbin": "usr/sbin",
                              "/sysroot/usr/sbin/init": "../lib/systemd/systemd"})
    assert resolve_in_root(sys, ROOT, "/sbin/init") == "/sysroot/usr/lib/systemd/systemd"


def test_resolve_dot_dot_never_leaves_the_root() -> None:
    sys = MemorySystem(links={"/sysroot/sbin/init": "../../../../../bin/busybox"})
    assert resolve_in_root(sys, ROOT, "/sbin/init") == "/sysroot/bin/busybox"
    assert resolve_in_root(sys, ROOT, "/../../x/./y") == "/sysroot/x/y"


def test_resolve_detects_loops() -> None:
    sys = MemorySystem(links={"/sysroot/a": "/b", "/sysroot/b": "a",
                              "/sysroot/self": "/self"})
    assert resolve_in_root(sys, ROOT, "/a") is None
    assert resolve_in_root(sys, ROOT, "/self/init") is None


def test_resolve_symlink_budget() -> None:
    chain = {f"/sysroot/l{i}": f"/l{i + 1}" for i in range(MAX_SYMLINKS)}
    sys = MemorySystem(links=chain)
    assert resolve_in_root(sys, ROOT, "/l0") == f"/sysroot/l{MAX_SYMLINKS}"
    sys.links[f"/sysroot/l{MAX_SYMLINKS}"] = "/end"
    assert resolve_in_root(sys, ROOT, "/l0") is None


# A machine as the root stage leaves it: API file systems and the root mounted,
# the initramfs (with its marker) around them.
SWITCH_MOUNTS = [("devtmpfs", "/dev", "devtmpfs"), ("proc", "/proc", "proc"),
                 ("sysfs", "/sys", "sysfs"), ("tmpfs", "/run", "tmpfs"),
                 ("devpts", "/dev/pts", "devpts"), ("/dev/vda", "/sysroot", "ext4")]
SWITCH_FILES = {"/etc/initrd-release": b"ID=initium\n", "/init": b"#!", "/usr/bin/sh": b"",
                "/dev/console": b"", "/proc/cmdline": b"", "/run/initium/timeline.json": b"{}",
                "/sysroot/etc/hostname": b"real\n", "/sysroot/dev/": b"", "/sysroot/proc/": b"",
                "/sysroot/sys/": b"", "/sysroot/run/": b""}


def switch_machine(executables: set[str], cmdline: str = "", *,
                   links: dict[str, str] | None = None,
                   env: dict[str, str] | None = None) -> Machine:
    sys = MemorySystem(files=dict(SWITCH_FILES), mounted=list(SWITCH_MOUNTS),
                       executables=executables, links=dict(links or {}), env=dict(env or {}))
    m = Machine(sys, cmdline=cmdline)
    sys.init_args = list(m.ctx.cmdline.init_args)  # what the kernel would hand /init
    m.ctx.state.root_device = "/dev/vda"
    m.ctx.stage = "switch-root"
    return m


def exec_op(m: Machine) -> ops.Exec:
    (op,) = [o for o in m.sys.applied if isinstance(o, ops.Exec)]
    return op


@pytest.mark.parametrize(("present", "chosen"), [
    ({"/sysroot/sbin/init", "/sysroot/etc/init", "/sysroot/bin/init", "/sysroot/bin/sh"},
     "/sbin/init"),
    ({"/sysroot/etc/init", "/sysroot/bin/init", "/sysroot/bin/sh"}, "/etc/init"),
    ({"/sysroot/bin/init", "/sysroot/bin/sh"}, "/bin/init"),
    ({"/sysroot/bin/sh"}, "/bin/sh"),
])
def test_init_candidates_in_order(present: set[str], chosen: str) -> None:
    m = switch_machine(present)
    SwitchRoot().run(m.ctx)
    assert exec_op(m).path == chosen
    assert exec_op(m).argv == (chosen,)


def test_init_found_through_an_absolute_link() -> None:
    m = switch_machine({"/sysroot/lib/systemd/systemd", "/sysroot/bin/sh"},
                       links={"/sysroot/sbin/init": "/lib/systemd/systemd"})
    SwitchRoot().run(m.ctx)
    assert exec_op(m).path == "/sbin/init"


def test_init_link_loop_falls_back() -> None:
    m = switch_machine({"/sysroot/bin/sh"}, links={"/sysroot/sbin/init": "/sbin/init"})
    SwitchRoot().run(m.ctx)
    assert exec_op(m).path == "/bin/sh"


def test_init_option_wins() -> None:
    m = switch_machine({"/sysroot/sbin/init", "/sysroot/usr/bin/bash"}, "init=/usr/bin/bash")
    SwitchRoot().run(m.ctx)
    assert exec_op(m).path == "/usr/bin/bash"


def test_init_option_not_executable_has_no_fallback() -> None:
    m = switch_machine({"/sysroot/sbin/init"}, "init=/usr/bin/bash")
    with pytest.raises(StageError) as info:
        SwitchRoot().run(m.ctx)
    assert info.value.cause == ("init=/usr/bin/bash is not an executable file in /dev/vda "
                                "mounted on /sysroot")
    assert "init=" in info.value.hint
    assert m.sys.applied == []


def test_no_init_at_all() -> None:
    m = switch_machine(set())
    with pytest.raises(StageError) as info:
        SwitchRoot().run(m.ctx)
    assert info.value.cause == ("no init in /dev/vda mounted on /sysroot: tried "
                                + ", ".join(INIT_CANDIDATES))
    assert m.sys.applied == []


def test_switch_root_needs_a_mounted_root() -> None:
    m = switch_machine({"/sysroot/sbin/init"})
    m.ctx.state.root_device = None
    with pytest.raises(StageError, match="nothing is mounted on /sysroot"):
        SwitchRoot().run(m.ctx)


# --------------------------------------------------------------------------
# switch-root: the operations


def test_switch_root_operation_sequence_and_environment() -> None:
    env = {**LAUNCHER_ENV, LIBRARY_PATH_KEY: "/usr/lib/initium", "TERM": "vt220",
           "BOOT_IMAGE": "/vmlinuz"}
    m = switch_machine({"/sysroot/sbin/init"}, 'rw -- --log-level=debug "a b"', env=env)
    SwitchRoot().run(m.ctx)
    assert m.sys.applied == [
        ops.MoveMount("/dev", "/sysroot/dev"),
        ops.MoveMount("/proc", "/sysroot/proc"),
        ops.MoveMount("/sys", "/sysroot/sys"),
        ops.MoveMount("/run", "/sysroot/run"),
        ops.RemoveInitramfs("/", "/sysroot"),
        ops.ChangeRoot("/sysroot"),
        ops.Exec("/sbin/init", ("/sbin/init", "--log-level=debug", "a b"),
                 (("BOOT_IMAGE", "/vmlinuz"), ("HOME", "/"), ("TERM", "vt220"))),
    ]
    assert API_MOUNTS == ("/dev", "/proc", "/sys", "/run")
    # The machine the real init finds: its root at /, the API mounts (with
    # /dev/pts riding along under /dev) inside it, the initramfs gone.
    assert m.sys.mounted == [("devtmpfs", "/dev", "devtmpfs"), ("proc", "/proc", "proc"),
                             ("sysfs", "/sys", "sysfs"), ("tmpfs", "/run", "tmpfs"),
                             ("devpts", "/dev/pts", "devpts"), ("/dev/vda", "/", "ext4")]
    assert m.sys.read_bytes("/etc/hostname") == b"real\n"
    assert m.sys.read_bytes("/run/initium/timeline.json") == b"{}"  # /run moved, not freed
    assert not m.sys.exists("/etc/initrd-release")
    assert not [p for p in m.sys.files if not p.startswith("/sysroot/")
                and not p.startswith(("/dev/", "/proc/", "/run/"))]
    assert m.sys.point_of_no_return == "mount --move /dev /sysroot/dev"
    passed = dict(exec_op(m).env)
    for key in (*LAUNCHER_ENV, LIBRARY_PATH_KEY):
        assert key not in passed
    assert "switch-root: starting /sbin/init" in m.text


def test_switch_root_cannot_free_the_initramfs_but_goes_on() -> None:
    def refuse(sys: MemorySystem, op: ops.Op) -> None:
        if isinstance(op, ops.RemoveInitramfs):
            raise OSError(errno.EPERM, "Operation not permitted")

    m = switch_machine({"/sysroot/sbin/init"})
    m.sys.on_apply = refuse
    SwitchRoot().run(m.ctx)
    assert isinstance(m.sys.applied[-1], ops.Exec)
    assert "cannot free the initramfs (Operation not permitted), ignoring" in m.text


def test_switch_root_exec_failure_is_a_stage_error() -> None:
    def refuse(sys: MemorySystem, op: ops.Op) -> None:
        if isinstance(op, ops.Exec):
            raise OSError(errno.ENOEXEC, "Exec format error")

    m = switch_machine({"/sysroot/sbin/init"})
    m.sys.on_apply = refuse
    with pytest.raises(StageError) as info:
        SwitchRoot().run(m.ctx)
    assert info.value.cause == "no init could be executed (/sbin/init: Exec format error)"
    assert info.value.retry is False


def test_switch_root_tries_the_next_init_when_exec_fails() -> None:
    def refuse_sbin_init(sys: MemorySystem, op: ops.Op) -> None:
        if isinstance(op, ops.Exec) and op.path == "/sbin/init":
            raise OSError(errno.ENOEXEC, "Exec format error")

    m = switch_machine({"/sysroot/sbin/init", "/sysroot/bin/sh"})
    m.sys.on_apply = refuse_sbin_init
    SwitchRoot().run(m.ctx)
    execs = [op.path for op in m.sys.applied if isinstance(op, ops.Exec)]
    assert execs == ["/sbin/init", "/bin/sh"]
    assert "exec /sbin/init failed: Exec format error" in m.text


# --------------------------------------------------------------------------
# root: how long to wait


@pytest.mark.parametrize(("cmdline", "budget"), [
    ("", DEFAULT_WAIT),
    ("rootwait", math.inf),
    ("rootwait=5", 5.0),
    ("rootdelay=7", 7.0),
    ("rootwait=5 rootdelay=7", 5.0),
    ("rd.timeout=10", 10.0),
    ("rd.timeout=60", 60.0),
    ("rootwait rd.timeout=10", 10.0),
    ("rootwait=20 rd.timeout=10", 10.0),
    ("rootwait=3 rd.timeout=10", 3.0),
    ("rootdelay=20 rd.timeout=10", 10.0),
    ("rd.timeout=0", math.inf),
    ("rootwait rd.timeout=0", math.inf),
    ("rootwait=5 rd.timeout=0", 5.0),
    ("rootdelay=7 rd.timeout=0", 7.0),
])
def test_wait_budget(cmdline: str, budget: float) -> None:
    assert DEFAULT_WAIT == 30.0
    m = Machine(cmdline=cmdline)
    assert wait_budget(m.ctx.options) == budget


# --------------------------------------------------------------------------
# root: real ext4 superblocks

ROOT_UUID = "0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9"
OTHER_UUID = "11111111-2222-4333-8444-555555555555"
HOSTILE_UUID = "99999999-8888-4777-a666-555555555555"
# 16 bytes: not UTF-8, a terminal escape, a bell, slashes and dot-dots
HOSTILE_LABEL = b"\xff\xfe/..\x1b[31m/..\xc3(\x07"
HOSTILE_PRINTED = "\\xff\\xfe/..\\x1b[31m/..\\xc3(\\x07"
FS_OFFSET_LABEL = 1024 + 0x78
SB_CHECKSUM = 1024 + 0x3FC


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C = _crc32c_table()


def crc32c_raw(data: bytes, crc: int = 0xFFFFFFFF) -> int:
    """ext4's superblock checksum: crc32c seeded with ~0 and no final inversion."""
    for b in data:
        crc = _CRC32C[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc


def mkfs_ext4(path: Path, uuid: str, label: str) -> bytes:
    if shutil.which("mkfs.ext4") is None:
        pytest.skip("mkfs.ext4 not installed")
    with path.open("wb") as f:
        f.truncate(4 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-U", uuid, "-L", label, str(path)], check=True,
                   capture_output=True)
    return path.read_bytes()


def set_label(image: bytes, label: bytes) -> bytes:
    """Write s_volume_name and fix the superblock checksum, as tune2fs would."""
    assert len(label) <= 16
    data = bytearray(image)
    (ro_compat,) = struct.unpack_from("<I", data, 1024 + 0x64)
    csum = bool(ro_compat & 0x400)
    if csum:  # our crc must agree with mkfs before we rely on it
        (stored,) = struct.unpack_from("<I", data, SB_CHECKSUM)
        assert crc32c_raw(bytes(data[1024:SB_CHECKSUM])) == stored
    data[FS_OFFSET_LABEL:FS_OFFSET_LABEL + 16] = label.ljust(16, b"\0")
    if csum:
        struct.pack_into("<I", data, SB_CHECKSUM, crc32c_raw(bytes(data[1024:SB_CHECKSUM])))
    return bytes(data)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    tmp = tmp_path_factory.mktemp("ext4")
    hostile = mkfs_ext4(tmp / "hostile.img", HOSTILE_UUID, "placeholder")
    return {
        "root": mkfs_ext4(tmp / "root.img", ROOT_UUID, "rootfs"),
        "other": mkfs_ext4(tmp / "other.img", OTHER_UUID, "other"),
        "hostile": set_label(hostile, HOSTILE_LABEL),
    }


def disk(name: str, image: bytes, minor: int) -> dict[str, bytes]:
    return {f"/sys/block/{name}/size": f"{len(image) // 512}\n".encode(),
            f"/sys/block/{name}/dev": f"254:{minor}\n".encode(),
            f"/dev/{name}": image}


class CountedSleep(MemorySystem):
    """A wait loop that stops advancing the clock fails here instead of hanging the suite."""

    MAX_SLEEPS = 100_000
    sleeps = 0

    def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        if self.sleeps > self.MAX_SLEEPS:
            raise AssertionError(f"{self.sleeps} sleeps, now={self.now}: the wait does not end")
        super().sleep(seconds)


def root_machine(cmdline: str | bytes, disks: Mapping[str, bytes], *,
                 appear_at: Mapping[str, float] | None = None,
                 filesystems: bytes = FILESYSTEMS) -> Machine:
    files: dict[str, bytes] = {"/proc/filesystems": filesystems}
    delays: dict[str, float] = {}
    for minor, (name, image) in enumerate(sorted(disks.items())):
        rows = disk(name, image, minor * 16)
        files.update(rows)
        if appear_at and name in appear_at:
            delays.update(dict.fromkeys(rows, appear_at[name]))
    m = Machine(CountedSleep(files=files, appear_at=delays), cmdline=cmdline)
    m.ctx.stage = "root"
    return m


def root_mount(m: Machine) -> ops.Mount:
    (op,) = [o for o in m.sys.applied if isinstance(o, ops.Mount)]
    return op


@pytest.mark.parametrize("spec", [
    f"UUID={ROOT_UUID}", f"UUID={ROOT_UUID.upper()}", "LABEL=rootfs", "/dev/vda",
    f"/dev/disk/by-uuid/{ROOT_UUID}", "/dev/disk/by-label/rootfs",
])
def test_root_found(images: dict[str, bytes], spec: str) -> None:
    m = root_machine(f"root={spec}", {"vdb": images["other"], "vda": images["root"]})
    Root().run(m.ctx)
    assert m.ctx.state.root_device == "/dev/vda"
    assert m.ctx.state.root_fstype == "ext4"
    assert root_mount(m).source == "/dev/vda"
    assert root_mount(m).target == "/sysroot"
    assert root_mount(m).fstype == "ext4"
    assert ops.MakeDir("/sysroot") in m.sys.applied
    assert f"root: found {parse_root_spec(spec)}: vda (ext4 " in m.text
    assert f"UUID={ROOT_UUID} LABEL=rootfs" in m.text
    assert m.sys.now == 0.0  # present at once: no waiting


def test_root_other_disk_by_label(images: dict[str, bytes]) -> None:
    m = root_machine("root=LABEL=other", {"vdb": images["other"], "vda": images["root"]})
    Root().run(m.ctx)
    assert m.ctx.state.root_device == "/dev/vdb"


@pytest.mark.parametrize(("cmdline", "flags", "names"), [
    ("", linux.MS_RDONLY, ("ro",)),
    ("ro", linux.MS_RDONLY, ("ro",)),
    ("rw", 0, ("rw",)),
    ("rw ro", linux.MS_RDONLY, ("ro",)),
    ("ro rw", 0, ("rw",)),
    ("rootflags=noatime", linux.MS_RDONLY | linux.MS_NOATIME, ("ro", "noatime")),
    ("rw rootflags=noatime,nodev", linux.MS_NOATIME | linux.MS_NODEV,
     ("rw", "nodev", "noatime")),
])
def test_root_mount_flags(images: dict[str, bytes], cmdline: str, flags: int,
                          names: tuple[str, ...]) -> None:
    m = root_machine(f"root=LABEL=rootfs {cmdline}", {"vda": images["root"]})
    Root().run(m.ctx)
    op = root_mount(m)
    assert op.flags == flags
    assert op.flag_names == names
    assert op.data == ""


def test_root_flags_data_goes_to_the_file_system(images: dict[str, bytes]) -> None:
    m = root_machine("root=/dev/vda rootflags=noatime,data=journal,nofail,x-foo=1",
                     {"vda": images["root"]})
    Root().run(m.ctx)
    assert root_mount(m) == ops.Mount("/dev/vda", "/sysroot", "ext4",
                                      linux.MS_RDONLY | linux.MS_NOATIME, "data=journal",
                                      ("ro", "noatime"))


def test_rootfstype_overrides_the_probe(images: dict[str, bytes]) -> None:
    m = root_machine("root=/dev/vda rootfstype=ext2", {"vda": images["root"]},
                     filesystems=b"nodev\tproc\n\text2\n")
    Root().run(m.ctx)
    assert root_mount(m).fstype == "ext2"
    assert m.ctx.state.root_fstype == "ext2"


def test_root_without_a_kernel_driver_names_the_module(images: dict[str, bytes]) -> None:
    m = root_machine("root=/dev/vda", {"vda": images["root"]}, filesystems=b"nodev\tproc\n")
    with pytest.raises(StageError) as info:
        Root().run(m.ctx)
    assert info.value.cause == "the kernel has no ext4 driver"
    assert info.value.hint.endswith("--module ext4")
    assert not [o for o in m.sys.applied if isinstance(o, ops.Mount)]


def test_root_ext2_via_a_loaded_ext4_module(images: dict[str, bytes]) -> None:
    m = root_machine("root=/dev/vda rootfstype=ext2", {"vda": images["root"]},
                     filesystems=b"nodev\tproc\n")
    m.ctx.state.loaded_modules.append("ext4")
    Root().run(m.ctx)
    assert root_mount(m).fstype == "ext2"


def test_root_mount_failure_is_a_stage_error(images: dict[str, bytes]) -> None:
    def refuse(sys: MemorySystem, op: ops.Op) -> None:
        if isinstance(op, ops.Mount):
            raise OSError(errno.EINVAL, "Invalid argument")

    m = root_machine("root=/dev/vda rootflags=bogus", {"vda": images["root"]})
    m.sys.on_apply = refuse
    with pytest.raises(StageError) as info:
        Root().run(m.ctx)
    assert info.value.cause == "mount -t ext4 /dev/vda /sysroot -o ro,bogus: Invalid argument"
    assert "rootflags=" in info.value.hint


def test_root_missing_option() -> None:
    m = root_machine("", {})
    with pytest.raises(StageError) as info:
        Root().run(m.ctx)
    assert info.value.cause == "no root= on the kernel command line"
    assert "root=UUID=" in info.value.hint


def test_root_bad_spec() -> None:
    m = root_machine("root=/dev/../etc/shadow", {})
    with pytest.raises(StageError) as info:
        Root().run(m.ctx)
    assert info.value.cause == "root=/dev/../etc/shadow: not a plain device path"
    assert info.value.hint == "fix root= on the kernel command line"
    assert m.sys.now == 0.0


def test_root_empty_disk_has_no_file_system() -> None:
    """Nothing recognised: the kernel's block file systems are tried in turn, as it does."""
    def refuse(sys: MemorySystem, op: ops.Op) -> None:
        if isinstance(op, ops.Mount):
            raise OSError(errno.EINVAL, "Invalid argument")

    m = root_machine("root=/dev/vda rd.timeout=0.2", {"vda": bytes(8192)},
                     filesystems=b"nodev\tproc\n\text4\nnodev\ttmpfs\n\tvfat\n")
    m.sys.on_apply = refuse
    with pytest.raises(StageError) as info:
        Root().run(m.ctx)
    assert info.value.cause == ("/dev/vda: no file system recognised, and none of the kernel's "
                                "would mount it (ext4: Invalid argument; vfat: Invalid argument)")
    assert "rootfstype=" in info.value.hint


def test_an_unknown_file_system_is_mounted_by_the_first_type_that_takes_it() -> None:
    tried: list[str] = []

    def only_f2fs(sys: MemorySystem, op: ops.Op) -> None:
        if isinstance(op, ops.Mount):
            tried.append(op.fstype)
            if op.fstype != "f2fs":
                raise OSError(errno.EINVAL, "Invalid argument")

    m = root_machine("root=/dev/vda", {"vda": bytes(8192)},
                     filesystems=b"nodev\tproc\n\text4\n\tf2fs\n\tvfat\n")
    m.sys.on_apply = only_f2fs
    Root().run(m.ctx)
    assert tried == ["ext4", "f2fs"]
    assert m.ctx.state.root_fstype == "f2fs"
    assert ("/dev/vda", "/sysroot", "f2fs") in m.sys.mounted


def md_member(inner: bytes, array_uuid: str) -> bytes:
    """One half of a RAID1 with metadata 1.0 at the end: the ext4 inside starts at 0."""
    size = max(len(inner), 4 << 20) + (1 << 20)
    data = bytearray(size)
    data[: len(inner)] = inner
    offset = (size & ~0xFFF) - 0x2000
    data[offset : offset + 260] = md1_superblock(offset, array_uuid, b"h:0")
    return bytes(data)


ARRAY_UUID = "7b0e5a2c-1d3f-4e5a-8b6c-9d0e1f2a3b4c"


def test_a_raw_half_of_a_mirror_never_answers_for_the_file_system(
        images: dict[str, bytes]) -> None:
    m = root_machine(f"root=UUID={ROOT_UUID} rd.timeout=1", {
        "vda": md_member(images["root"], ARRAY_UUID)})
    with pytest.raises(StageError) as info:
        Root().run(m.ctx)
    assert info.value.cause.startswith(f"no block device with UUID={ROOT_UUID} after 1.0 s; "
                                       f"seen: vda (linux_raid_member UUID={ARRAY_UUID}")
    assert not m.sys.mounted


@pytest.mark.parametrize(("fstype", "what", "hint"), [
    ("linux_raid_member", "an md RAID member", f"add rd.md.uuid={ARRAY_UUID}"),
])
def test_root_naming_a_container_says_what_would_open_it(
        images: dict[str, bytes], fstype: str, what: str, hint: str) -> None:
    m = root_machine(f"root=UUID={ARRAY_UUID}", {"vda": md_member(images["root"], ARRAY_UUID)})
    with pytest.raises(StageError) as info:
        Root().run(m.ctx)
    assert info.value.cause.startswith(f"root=UUID={ARRAY_UUID} names {what} (vda ({fstype} ")
    assert info.value.cause.endswith("not a file system")
    assert hint in info.value.hint
    assert "driver" not in info.value.cause + info.value.hint
    assert not m.sys.mounted


def test_container_messages_for_every_container_type() -> None:
    from initium.blockdev import BlockDevice
    from initium.probe import FsInfo
    from initium.stages.root import container_error

    spec = parse_root_spec("UUID=abc")
    expected = {"crypto_LUKS": "rd.luks.uuid=abc", "LVM2_member": "rd.lvm.vg=",
                "isw_raid_member": "rd.md.uuid=", "ddf_raid_member": "rd.md.uuid=",
                "swap": "swap cannot be the root", "jbd": "ext file system that uses it"}
    for fstype, hint in expected.items():
        err = container_error(spec, BlockDevice("vdb", "/dev/vdb", FsInfo(fstype, "abc", None)))
        assert err is not None and hint in err.hint, fstype
    assert container_error(spec, BlockDevice("vdb", "/dev/vdb", FsInfo("ext4", "abc", None))) \
        is None


@pytest.mark.parametrize("spec", ["254:16", "fe10", "0xfe10"])
def test_root_by_major_minor(images: dict[str, bytes], spec: str) -> None:
    # root_machine gives the n-th disk (sorted by name) minor n*16: vdb is 254:16.
    m = root_machine(f"root={spec}", {"vda": images["other"], "vdb": images["root"]})
    Root().run(m.ctx)
    assert m.ctx.state.root_device == "/dev/vdb"


LINUX_FS = "0fc63daf-8483-4772-8e79-3d69d8477de4"


def gpt_disk(parts: list[tuple[str, bytes]], ss: int = 512) -> tuple[bytes, list[int]]:
    """A GPT disk holding ``parts`` (PARTUUID, contents); their start offsets in bytes."""
    lba = 2048
    rows: list[tuple[int, int, str, str, str]] = []
    starts: list[int] = []
    for puuid, body in parts:
        sectors = -(-len(body) // ss)
        rows.append((lba, lba + sectors - 1, LINUX_FS, puuid, f"p{len(rows) + 1}"))
        starts.append(lba * ss)
        lba += sectors
    image = build_gpt(ss, lba + 64, "8a0f4f8e-7a55-4b4f-9d4e-2a7c1b3e5f60", rows)
    for start, (_, body) in zip(starts, parts, strict=True):
        image[start : start + len(body)] = body
    return bytes(image), starts


def test_root_by_partuuid_with_partnroff(images: dict[str, bytes]) -> None:
    first, second = "11111111-2222-4333-8444-555555555555", "66666666-7777-4888-9999-aaaaaaaaaaaa"
    image, starts = gpt_disk([(first, images["other"]), (second, images["root"])])
    files = {"/proc/filesystems": FILESYSTEMS, **disk("vda", image, 0)}
    for number, (start, (_, body)) in enumerate(zip(starts, [(first, images["other"]),
                                                             (second, images["root"])],
                                                    strict=True), 1):
        sysdir = f"/sys/block/vda/vda{number}"
        files[f"{sysdir}/partition"] = f"{number}\n".encode()
        files[f"{sysdir}/size"] = f"{len(body) // 512}\n".encode()
        files[f"{sysdir}/dev"] = f"254:{number}\n".encode()
        files[f"/dev/vda{number}"] = image[start : start + len(body)]
    m = Machine(CountedSleep(files=files), cmdline=f"root=PARTUUID={first}/PARTNROFF=1")
    m.ctx.stage = "root"
    Root().run(m.ctx)
    assert m.ctx.state.root_device == "/dev/vda2"


def test_root_path_matches_an_unreadable_device(images: dict[str, bytes]) -> None:
    # a label changed without fixing the superblock checksum: probe refuses it
    broken = bytearray(images["root"])
    broken[FS_OFFSET_LABEL] ^= 0x20
    m = root_machine("root=/dev/vda", {"vda": bytes(broken)})
    with pytest.raises(StageError) as info:
        Root().run(m.ctx)
    assert info.value.cause.startswith("/dev/vda: no file system recognised (")
    assert "checksum" in info.value.cause
    assert m.sys.now == 0.0
    # ... and with rootfstype= the user can still mount it
    m = root_machine("root=/dev/vda rootfstype=ext4", {"vda": bytes(broken)})
    Root().run(m.ctx)
    assert root_mount(m).fstype == "ext4"


def test_root_unreadable_device_does_not_match_by_uuid(images: dict[str, bytes]) -> None:
    broken = bytearray(images["root"])
    broken[FS_OFFSET_LABEL] ^= 0x20
    m = root_machine(f"root=UUID={ROOT_UUID} rd.timeout=0.1", {"vda": bytes(broken)})
    with pytest.raises(StageError) as info:
        Root().run(m.ctx)
    assert "seen: vda (unreadable: " in info.value.cause


def test_root_empty_device_is_listed_and_never_matches() -> None:
    m = root_machine("root=/dev/vda rd.timeout=0.1", {})
    m.sys.files["/sys/block/vda/size"] = b"0\n"
    m.sys.files["/dev/vda"] = b""
    with pytest.raises(StageError) as info:
        Root().run(m.ctx)
    assert info.value.cause == "no block device with /dev/vda after 0.1 s; seen: vda (empty)"


# --------------------------------------------------------------------------
# root: waiting


def test_root_that_appears_late_is_found_within_the_budget(images: dict[str, bytes]) -> None:
    m = root_machine("root=LABEL=rootfs", {"vda": images["root"], "vdb": images["other"]},
                     appear_at={"vda": 2.0})
    Root().run(m.ctx)
    assert m.ctx.state.root_device == "/dev/vda"
    assert 2.0 <= m.sys.now < 2.1
    assert "waiting for LABEL=rootfs (up to 30 s)" in m.text


def test_rootwait_waits_without_limit(images: dict[str, bytes]) -> None:
    m = root_machine("root=LABEL=rootfs rootwait", {"vda": images["root"]},
                     appear_at={"vda": 120.0})
    Root().run(m.ctx)
    assert m.ctx.state.root_device == "/dev/vda"
    assert 120.0 <= m.sys.now < 120.1
    assert "waiting for LABEL=rootfs (no time limit)" in m.text


def test_root_times_out_at_rd_timeout(images: dict[str, bytes]) -> None:
    m = root_machine("root=LABEL=rootfs rd.timeout=1",
                     {"vda": images["root"], "vdb": images["other"]}, appear_at={"vda": 2.0})
    with pytest.raises(StageError) as info:
        Root().run(m.ctx)
    assert info.value.cause == (f"no block device with LABEL=rootfs after 1.0 s; seen: "
                                f"vdb (ext4 UUID={OTHER_UUID} LABEL=other)")
    assert "LABEL=" in info.value.hint
    assert 1.0 <= m.sys.now <= 1.05
    assert m.ctx.state.root_device is None
    assert not [o for o in m.sys.applied if isinstance(o, ops.Mount)]


def test_root_times_out_without_any_disk() -> None:
    m = root_machine("root=/dev/vda rootdelay=3", {})
    with pytest.raises(StageError) as info:
        Root().run(m.ctx)
    assert info.value.cause == "no block device with /dev/vda after 3.0 s; seen: no block devices"
    assert "no block devices at all" in info.value.hint
    assert "virtio_blk" in info.value.hint
    assert 3.0 <= m.sys.now <= 3.05


def test_root_default_budget_is_thirty_seconds() -> None:
    m = root_machine("root=UUID=" + ROOT_UUID, {})
    with pytest.raises(StageError, match=r"after 30\.0 s"):
        Root().run(m.ctx)
    assert 30.0 <= m.sys.now <= 30.05


# --------------------------------------------------------------------------
# root: a hostile label


def test_hostile_label_fixture_is_what_we_think(images: dict[str, bytes]) -> None:
    from initium.probe import probe_filesystem

    image = images["hostile"]
    info = probe_filesystem(lambda o, n: image[o:o + n])
    assert info is not None
    assert info.label == HOSTILE_LABEL.decode("utf-8", "surrogateescape")
    assert len(HOSTILE_LABEL) == 16


def test_hostile_label_is_printed_escaped(images: dict[str, bytes]) -> None:
    m = root_machine("root=LABEL=rootfs rd.timeout=0.5",
                     {"vdb": images["other"], "vdc": images["hostile"]})
    with pytest.raises(StageError) as info:
        Root().run(m.ctx)
    cause = info.value.cause
    assert cause == (f"no block device with LABEL=rootfs after 0.5 s; seen: "
                     f"vdb (ext4 UUID={OTHER_UUID} LABEL=other), "
                     f"vdc (ext4 UUID={HOSTILE_UUID} LABEL={HOSTILE_PRINTED})")
    assert "\x1b" not in cause
    assert "\x07" not in cause
    assert not any(0xDC80 <= ord(ch) <= 0xDCFF for ch in cause)


def test_hostile_label_reaches_the_console_escaped(images: dict[str, bytes]) -> None:
    m = root_machine("root=LABEL=rootfs rd.timeout=0.2", {"vdc": images["hostile"]})
    outcome = Runner([Root()], m.ctx).run()
    assert outcome.failed_stage == "root"
    (line,) = [line for line in m.out if "root failed" in line]
    assert HOSTILE_PRINTED in line
    assert "\x1b" not in line
    assert line.count("\n") == 1


@pytest.mark.parametrize("spec", ["LABEL=..", "LABEL=/", "LABEL=/..", f"LABEL={HOSTILE_PRINTED}",
                                  "LABEL=\\xff\\xfe", "/dev/disk/by-label/..",
                                  "/dev/disk/by-label/\\x2f..", "PARTLABEL=..",
                                  f"UUID={OTHER_UUID}", "/dev/vdb"])
def test_hostile_label_matches_nothing_else(images: dict[str, bytes], spec: str) -> None:
    m = root_machine(f"root={spec} rd.timeout=0.1", {"vdc": images["hostile"]})
    with pytest.raises(StageError, match="no block device with"):
        Root().run(m.ctx)


def test_hostile_label_matches_its_own_exact_bytes(images: dict[str, bytes]) -> None:
    m = root_machine(b"root=LABEL=" + HOSTILE_LABEL, {"vdb": images["other"],
                                                      "vdc": images["hostile"]})
    Root().run(m.ctx)
    assert m.ctx.state.root_device == "/dev/vdc"


# --------------------------------------------------------------------------
# all of it: the default stages on one in-memory machine


def test_a_whole_boot(images: dict[str, bytes]) -> None:
    entries = tuple(StageEntry(n, r) for n, r in (
        ("early-mounts", "initium.stages.early_mounts:EarlyMounts"),
        ("console", "initium.stages.console:KernelLog"),
        ("modules", "initium.stages.modules:Modules"),
        ("root", "initium.stages.root:Root"),
        ("switch-root", "initium.stages.switch_root:SwitchRoot")))
    plan = Plan(KVER, entries)
    files = {"/proc/filesystems": FILESYSTEMS,
             "/proc/cmdline": f"root=UUID={ROOT_UUID} rw initium.timeline -- splash\n".encode(),
             "/etc/initrd-release": b"ID=initium\n",
             **{f"/sysroot/{d}/": b"" for d in ("dev", "proc", "sys", "run")},
             **disk("vda", images["root"], 0)}
    sys = MemorySystem(files=files, release=KVER, executables={"/sysroot/lib/systemd/systemd"},
                       links={"/sysroot/sbin/init": "../lib/systemd/systemd"},
                       env=dict(LAUNCHER_ENV), init_args=["splash"])
    m = Machine(sys, cmdline=None, plan=plan)
    stages = plan.load_stages()
    assert [type(s) for s in stages] == [EarlyMounts, KernelLog, Modules, Root, SwitchRoot]
    outcome = Runner(stages, m.ctx, started=0.0).run()
    assert outcome.ok, m.text
    assert [(e.stage, e.status) for e in outcome.timeline] == [
        ("early-mounts", "ok"), ("console", "ok"), ("modules", "ok"), ("root", "ok"),
        ("switch-root", "ok")]
    assert root_mount_of(sys) == ops.Mount("/dev/vda", "/sysroot", "ext4", 0, "", ("rw",))
    assert sys.applied[-1] == ops.Exec("/sbin/init", ("/sbin/init", "splash"),
                                       (("HOME", "/"), ("TERM", "linux")))
    # Read as the real init does: the root is / now and /run was moved into it.
    doc = json.loads(sys.read_bytes(TIMELINE_PATH))
    assert [s["stage"] for s in doc["stages"]] == ["early-mounts", "console", "modules", "root"]
    assert sys.root == "/sysroot"
    assert ("/dev/vda", "/", "ext4") in sys.mounted
    assert not sys.exists("/etc/initrd-release")  # the initramfs was freed
    assert "initium timeline" in m.text
    # once /dev/kmsg was attached every message also went to the kernel log
    assert any("root: found UUID=" in line for line in sys.kmsg)


def root_mount_of(sys: MemorySystem) -> ops.Mount:
    (op,) = [o for o in sys.applied if isinstance(o, ops.Mount) and o.target == "/sysroot"]
    return op


def test_switch_root_is_not_retried_after_change_root() -> None:
    """After ChangeRoot the initramfs is gone: the shell may be offered, the stage not re-run."""
    failures = [OSError(errno.ENOEXEC, "Exec format error")]

    def exec_fails_once(sys: MemorySystem, op: ops.Op) -> None:
        if isinstance(op, ops.Exec) and failures:
            raise failures.pop()

    sys = MemorySystem(files=dict(SWITCH_FILES), mounted=list(SWITCH_MOUNTS),
                       executables={"/sysroot/sbin/init"}, on_apply=exec_fails_once)
    m = Machine(sys, plan=Plan(KVER, (), has_shell=True))
    m.ctx.state.root_device = "/dev/vda"
    Runner([SwitchRoot()], m.ctx).run()
    entered = sys.applied.index(ops.ChangeRoot("/sysroot"))
    after = sys.applied[entered + 1:]
    assert not [op for op in after
                if isinstance(op, ops.MoveMount | ops.RemoveInitramfs | ops.ChangeRoot)]
    assert [type(op) for op in after] == [ops.Exec, ops.Spawn, ops.MakeDir,
                                          ops.WriteFile, ops.PowerOff]


@pytest.mark.parametrize("ss", [512, 4096])
def test_partitions_of_a_disk_with_its_logical_block_size(images: dict[str, bytes],
                                                          ss: int) -> None:
    """The table's LBAs are in the disk's logical blocks: 4K disks are read in 4K units."""
    puuid = "11111111-2222-4333-8444-555555555555"
    image, (start,) = gpt_disk([(puuid, images["root"])], ss)
    files = {"/proc/filesystems": FILESYSTEMS, **disk("vda", image, 0),
             "/sys/block/vda/queue/logical_block_size": f"{ss}\n".encode(),
             "/sys/block/vda/vda1/partition": b"1\n",
             "/sys/block/vda/vda1/size": f"{len(images['root']) // 512}\n".encode(),
             "/sys/block/vda/vda1/dev": b"254:1\n",
             "/dev/vda1": image[start : start + len(images["root"])]}
    m = Machine(CountedSleep(files=files), cmdline=f"root=PARTUUID={puuid} rd.timeout=1")
    m.ctx.stage = "root"
    Root().run(m.ctx)
    assert m.ctx.state.root_device == "/dev/vda1"


def test_switch_root_runs_the_teardowns_before_moving_anything() -> None:
    m = switch_machine({"/sysroot/sbin/init"})
    m.ctx.at_switch_root("stop helper", lambda c: c.sys.apply(ops.WriteFile("/run/stopped", b"")))
    SwitchRoot().run(m.ctx)
    assert m.sys.applied[0] == ops.WriteFile("/run/stopped", b"")
    assert isinstance(m.sys.applied[1], ops.MoveMount)


def test_a_failing_teardown_fails_switch_root_before_the_point_of_no_return() -> None:
    def refuse(c: BootContext) -> None:
        raise StageError("udevd would not stop", "see its log")

    m = switch_machine({"/sysroot/sbin/init"})
    m.ctx.at_switch_root("stop udevd", refuse)
    with pytest.raises(StageError, match="udevd would not stop"):
        SwitchRoot().run(m.ctx)
    assert m.sys.point_of_no_return is None
    assert not [op for op in m.sys.applied if isinstance(op, ops.MoveMount)]


def test_a_disk_whose_reads_fail_is_reported_and_tried_again(images: dict[str, bytes]) -> None:
    m = root_machine(f"root=UUID={ROOT_UUID} rd.timeout=1", {"vda": images["root"]})
    m.sys.read_errors["/dev/vda"] = errno.EIO
    with pytest.raises(StageError) as info:
        Root().run(m.ctx)
    assert "seen: vda (unreadable: [Errno 5] Input/output error" in info.value.cause
    # tried again on every scan of the wait, not given up after the first error
    assert m.sys.reads > 10


def test_a_stalling_disk_is_named_and_does_not_hold_the_verdict(
        images: dict[str, bytes]) -> None:
    """A read that takes 20 s: the device is called stalled after the read deadline.

    The memory machine's clock advances by the whole read (a simulated read
    cannot be abandoned); on the machine the reader's child process stops waiting at
    the deadline (initium.storage.reader, tests/unit/test_storage.py).
    """
    m = root_machine("root=UUID=00000000-0000-4000-8000-000000000000 rd.timeout=3",
                     {"vda": images["root"], "vdb": images["other"]})
    m.sys.read_delays["/dev/vdb"] = 20.0
    with pytest.raises(StageError) as info:
        Root().run(m.ctx)
    assert "vdb (unreadable: stalled: no answer to a read within 2 s)" in info.value.cause
    assert f"vda (ext4 UUID={ROOT_UUID}" in info.value.cause
