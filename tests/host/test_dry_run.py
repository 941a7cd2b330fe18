"""initium run --dry-run on this very host: the plan it prints and the verdict it gives.

The images here are made by hand with a plan for the running kernel (this
host's modules may not be installed), so the verdict depends only on what
the dry run finds on the host: its root device, the mounts, the init.
"""

from __future__ import annotations

import importlib
import os
import re
import stat
import time
from pathlib import Path

import pytest
from initium.cli import main
from initium.mounts import parse_mountinfo
from initium.packaging.cpio import Entry, write_archive
from initium.plan import PLAN_PATH, Plan, StageEntry
from initium.stages import DEFAULT_STAGES


def _image(tmp_path: Path, kver: str, modules: list[dict[str, str]] | None = None,
           storage: dict[str, object] | None = None) -> str:
    entries = []
    for ref in DEFAULT_STAGES:
        module, _, cls = ref.partition(":")
        name = getattr(importlib.import_module(module), cls).name
        data = {"modules": modules or []} if name == "modules" else {}
        if name == "root" and storage is not None:
            entries.append(StageEntry("storage", "initium.stages.storage:Storage", storage))
        entries.append(StageEntry(name, ref, data))
    plan = Plan(kver, tuple(entries))
    path = tmp_path / "plan-only.img"
    path.write_bytes(write_archive([Entry(PLAN_PATH.lstrip("/"), stat.S_IFREG | 0o644,
                                          plan.to_bytes())]))
    return str(path)


def _host_root_device() -> tuple[str, str]:
    """/dev/NAME and file system type of the block device mounted on / here, or skip."""
    with open("/proc/self/mountinfo") as f:
        mounts = parse_mountinfo(f.read())
    for m in mounts:
        if m.mount_point == "/" and m.root == "/":
            link = f"/sys/dev/block/{m.major}:{m.minor}"
            if os.path.exists(link):
                return "/dev/" + os.path.basename(os.path.realpath(link)), m.fstype
    pytest.skip("the root of this host is not a block device")


def _dry_run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(["run", "--dry-run", *argv])
    return code, capsys.readouterr().out


@pytest.fixture
def needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("probing block devices needs root")


@pytest.mark.usefixtures("needs_root")
def test_this_host_would_boot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    device, fstype = _host_root_device()
    image = _image(tmp_path, os.uname().release)
    # rootfstype: some sandboxes refuse even root a read of the disk under /.
    code, out = _dry_run(capsys, "--image", image, "--cmdline",
                         f"root={device} rootfstype={fstype} init=/bin/sh")
    assert code == 0, out
    assert f"found {device}:" in out
    assert f"[root] mount -t {fstype} {device} /sysroot -o ro" in out
    assert "[switch-root] mount --move /dev /sysroot/dev" in out
    assert "[switch-root] exec /bin/sh" in out
    assert out.rstrip().endswith("result: this host would boot")


@pytest.mark.usefixtures("needs_root")
def test_the_dry_run_explains_how_it_would_assemble_this_hosts_root(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With every storage handler in the plan: the devices, the handlers, the root's stack."""
    device, fstype = _host_root_device()
    tools = {"luks": "/usr/sbin/cryptsetup", "lvm": "/usr/sbin/lvm", "md": "/usr/sbin/mdadm"}
    image = _image(tmp_path, os.uname().release,
                   storage={"kinds": sorted(tools), "tools": tools, "modules": []})
    code, out = _dry_run(capsys, "--image", image, "--cmdline",
                         f"root={device} rootfstype={fstype} init=/bin/sh")
    name = device.removeprefix("/dev/")
    assert "initium: root: storage handlers in this image: md, crypt, lvm" in out, out
    assert re.search(rf"^initium: root: device {name} \(", out, re.MULTILINE), out
    if name.startswith(("dm-", "md")):  # a stacked root: assembled, or refused with its member
        assert (f"the root {device} would be assembled: {name} on " in out
                or f"the root {device} sits on " in out), out
    else:
        assert f"initium: root: the root {device} would be assembled: {name}\n" in out, out
        assert code == 0 and out.rstrip().endswith("result: this host would boot"), out


@pytest.mark.usefixtures("needs_root")
def test_absent_root_is_reported_without_waiting(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    image = _image(tmp_path, os.uname().release)
    started = time.monotonic()
    code, out = _dry_run(capsys, "--image", image, "--cmdline",
                         "root=UUID=00000000-1111-2222-3333-444444444444 rd.timeout=20")
    assert time.monotonic() - started < 10, "a dry run must not really wait for the device"
    assert code == 1
    assert "no block device with UUID=00000000-1111-2222-3333-444444444444 after 20.0 s" in out
    assert "result: this host would NOT boot (root:" in out


def test_kernel_mismatch_and_unknown_break(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    image = _image(tmp_path, "0.0.0-not-this-kernel")
    code, out = _dry_run(capsys, "--image", image, "--cmdline", "root=/dev/vda rd.break=nope")
    assert code == 1
    assert "problem: rd.break=nope: no such stage or dracut hook in this image" in out
    assert "this image was built for kernel 0.0.0-not-this-kernel" in out
    assert "--kver " + os.uname().release in out


def test_missing_module_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = _image(tmp_path, os.uname().release,
                   [{"name": "no_such_mod", "path": "/usr/lib/modules/x/no_such_mod.ko"}])
    code, out = _dry_run(capsys, "--image", image, "--cmdline", "root=/dev/vda")
    assert code == 1
    assert "module no_such_mod is missing" in out


def test_dry_run_changes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = os.listdir("/")
    mounts = Path("/proc/self/mountinfo").read_text()
    image = _image(tmp_path, os.uname().release)
    _dry_run(capsys, "--image", image, "--cmdline", "root=/dev/vda rd.timeout=1")
    assert os.listdir("/") == before
    assert Path("/proc/self/mountinfo").read_text() == mounts


def test_bad_cmdline_is_a_verdict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = _image(tmp_path, os.uname().release)
    code, out = _dry_run(capsys, "--image", image, "--cmdline", "root=/dev/vda\0x")
    assert code == 1 and "cmdline: command line contains a NUL byte" in out
