"""The builder's labels equal what libselinux's matchpathcon gives for the same paths."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess

import pytest
from initium.packaging.selinux import Labeller

POLICY = "/etc/selinux/default"
PATHS = [("/usr/bin/python3", stat.S_IFREG, "file"), ("/init", stat.S_IFREG, "file"),
         ("/usr/lib/modules/6.1.0/kernel/a.ko", stat.S_IFREG, "file"),
         ("/usr/lib/modules/6.1.0/modules.dep", stat.S_IFREG, "file"),
         ("/etc/initrd-release", stat.S_IFREG, "file"), ("/bin", stat.S_IFLNK, "link"),
         ("/lib/x86_64-linux-gnu/libc.so.6", stat.S_IFREG, "file"),
         ("/dev/null", stat.S_IFCHR, "chr_file"), ("/dev/vda", stat.S_IFBLK, "blk_file"),
         ("/dev/pts/0", stat.S_IFCHR, "chr_file"), ("/dev/tty1", stat.S_IFCHR, "chr_file"),
         ("/run", stat.S_IFDIR, "dir"), ("/sysroot", stat.S_IFDIR, "dir"),
         ("/usr/sbin/agetty", stat.S_IFREG, "file")]


@pytest.mark.skipif(shutil.which("matchpathcon") is None or not os.path.isdir(POLICY),
                    reason="needs selinux-utils and selinux-policy-default")
def test_labels_equal_matchpathcon() -> None:
    labeller = Labeller.from_dir(POLICY)
    for path, mode, cls in PATHS:
        spec = labeller.lookup(path, mode)
        mine = spec.context if spec is not None else None
        out = subprocess.run(["matchpathcon", "-m", cls, path], capture_output=True,
                             text=True, check=False).stdout.split()
        theirs = out[-1] if out and out[-1] != "<<none>>" else None
        assert mine == theirs, path
