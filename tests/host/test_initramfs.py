"""Freeing the initramfs on real directory trees: the one routine that can erase a real root.

Each case runs remove_initramfs as PID 1 of a fresh PID and mount namespace
(``unshare --pid --fork --mount``), on a tmpfs or ramfs made for it under a
temporary directory, with a second file system mounted inside that must
survive, the new root's mount point that must not be entered, and a symlink
to a directory outside that must not be followed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.host

SCRIPT = r'''
import json, os, subprocess, sys
from initium import syscalls
from initium.initramfs import remove_initramfs

top, fstype, marker = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
root = os.path.join(top, "root")
os.makedirs(root, exist_ok=True)
if fstype == "ext4":
    # a loop-mounted file system: what a real root looks like to the guards
    subprocess.run(["mount", "-o", "loop", os.path.join(top, "ext4.img"), root], check=True)
else:
    syscalls.mount(fstype, root, fstype, 0, "")
for d in ("etc", "usr/lib/deep/er", "dev", "sysroot", "empty"):
    os.makedirs(os.path.join(root, d), exist_ok=True)
if marker:
    open(os.path.join(root, "etc/initrd-release"), "w").write("ID=initium\n")
open(os.path.join(root, "init"), "w").write("#!")
open(os.path.join(root, "usr/lib/deep/er/file"), "w").write("x")
os.symlink("/", os.path.join(root, "rootlink"))
os.symlink(os.path.join(top, "outside"), os.path.join(root, "outlink"))
os.mknod(os.path.join(root, "fifo"), 0o600 | 0o010000)
syscalls.mount("tmpfs", os.path.join(root, "dev"), "tmpfs", 0, "")
open(os.path.join(root, "dev/console"), "w").write("keep")
syscalls.mount("tmpfs", os.path.join(root, "sysroot"), "tmpfs", 0, "")
open(os.path.join(root, "sysroot/real-root-file"), "w").write("keep")
error = None
try:
    remove_initramfs(root, os.path.join(root, "sysroot"), syscalls.statfs_type(root))
except OSError as err:
    error = str(err)
left = sorted(os.path.relpath(os.path.join(d, n), root)
              for d, dirs, files in os.walk(root) for n in dirs + files)
outside = sorted(os.listdir(os.path.join(top, "outside")))
print(json.dumps({"pid": os.getpid(), "error": error, "left": left, "outside": outside}))
'''


def run_case(tmp_path: Path, fstype: str, *, marker: bool = True,
             as_pid1: bool = True) -> dict[str, Any]:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1)")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "precious").write_text("must survive")
    if fstype == "ext4":
        subprocess.run(["mkfs.ext4", "-q", "-F", str(tmp_path / "ext4.img"), "8M"], check=True)
    argv = [sys.executable, "-c", SCRIPT, str(tmp_path), fstype, "1" if marker else "0"]
    if as_pid1:
        argv = ["unshare", "--pid", "--fork", "--mount", "--propagation", "private", *argv]
    else:
        argv = ["unshare", "--mount", "--propagation", "private", *argv]
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@pytest.mark.parametrize("fstype", ["tmpfs", "ramfs"])
def test_frees_everything_but_mounts_and_the_new_root(tmp_path: Path, fstype: str) -> None:
    result = run_case(tmp_path, fstype)
    assert result["pid"] == 1
    assert result["error"] is None
    # Left: the mount points with their contents, and nothing else.
    assert result["left"] == ["dev", "dev/console", "sysroot", "sysroot/real-root-file"]
    assert result["outside"] == ["precious"]  # the symlinks were removed, not followed


def test_refuses_a_real_file_system(tmp_path: Path) -> None:
    result = run_case(tmp_path, "ext4")
    assert result["error"] is not None and "not a ramfs or tmpfs" in str(result["error"])
    assert "usr/lib/deep/er/file" in result["left"]  # nothing was touched


def test_refuses_without_the_initrd_marker(tmp_path: Path) -> None:
    result = run_case(tmp_path, "tmpfs", marker=False)
    assert "no /etc/initrd-release marker" in str(result["error"])
    assert "usr/lib/deep/er/file" in result["left"]


def test_refuses_when_not_pid_1(tmp_path: Path) -> None:
    result = run_case(tmp_path, "tmpfs", as_pid1=False)
    assert "not PID 1" in str(result["error"])
    assert "init" in result["left"]
