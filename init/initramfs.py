"""Freeing the initramfs: the one routine in initium that can erase a real root.

Kept alone, with its guards in front, so it can be read (and tested on real
directory trees, tests/host/test_initramfs.py) without the rest of the
facade around it.
"""

from __future__ import annotations

import os
import stat

from initium import linux


def remove_initramfs(root: str, keep: str, fstype_magic: int) -> None:
    """Delete the initramfs by directory fd, never leaving its device.

    Guards first, as systemd and booster do: only PID 1, only on a ramfs or
    tmpfs, only when the initrd marker is there.  A mistake here deletes a
    real root file system.
    """
    if os.getpid() != 1:
        raise OSError(1, "refusing to remove files: not PID 1")
    if fstype_magic not in (linux.RAMFS_MAGIC, linux.TMPFS_MAGIC):
        raise OSError(22, f"refusing to remove files: {root} is not a ramfs or tmpfs")
    if not os.path.exists(os.path.join(root, "etc/initrd-release")):
        raise OSError(2, "refusing to remove files: no /etc/initrd-release marker")
    root_dev = os.stat(root).st_dev
    keep_name = os.path.relpath(keep, root)

    def clear(dir_fd: int, top: bool) -> None:
        for entry in os.scandir(dir_fd):
            if top and entry.name == keep_name:
                continue
            st = os.stat(entry.name, dir_fd=dir_fd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                if st.st_dev != root_dev:
                    continue  # a mount point (/dev, /proc …): not ours to empty
                child = os.open(entry.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW,
                                dir_fd=dir_fd)
                try:
                    clear(child, False)
                finally:
                    os.close(child)
                try:
                    os.rmdir(entry.name, dir_fd=dir_fd)
                except OSError:
                    pass  # still a mount point, or busy: leave it
            else:
                os.unlink(entry.name, dir_fd=dir_fd)

    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        clear(fd, True)
    finally:
        os.close(fd)
