#!/usr/bin/env python3
"""Make small root disks for trying and testing initium, as regular files (no loop devices).

The root holds a static busybox and an init script that prints markers the
tests look for (its pid, whether / is ro or rw, the uptime, the initium
timeline) and powers the VM off.  Layouts: a bare file system, or a GPT or
DOS partition table with the file system in partition 1, written at its
offset with dd semantics, so no root privileges beyond writing files are
needed for the disk itself.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile

BUSYBOX = "/bin/busybox"
ROOT_INIT = r"""#!/bin/busybox sh
B=/bin/busybox
read up idle < /proc/uptime
echo "INITIUM-ROOT-INIT pid=$$ init=$0 args=$* uptime=$up"
mode=$($B awk '$2 == "/" && $1 != "rootfs" { m = $4 } END { split(m, o, ","); print o[1] }' \
  /proc/mounts)
echo "INITIUM-ROOT-MODE $mode"
if [ -f /run/initium/timeline.json ]; then
  echo "INITIUM-TIMELINE $($B cat /run/initium/timeline.json)"
fi
echo "INITIUM-ENV $($B env | $B sort | $B tr '\n' ' ')"
echo "INITIUM-SIGNALS $($B grep -E '^Sig(Ign|Blk):' /proc/$$/status | $B tr '\n\t' '  ')"
echo "INITIUM-MOUNTS $($B grep -E ' /(run|dev|dev/pts|dev/shm) ' /proc/mounts | $B tr '\n' ';')"
echo "INITIUM-MODPARAM queue_depth=$($B cat /sys/module/virtio_blk/parameters/queue_depth)"
echo "INITIUM-INITRAMFS-LEFT $($B ls / | $B tr '\n' ' ')"
if [ -x /bin/getlabel ]; then
  echo "INITIUM-LABELS $(/bin/getlabel /dev/null /dev/console /dev/vda /sbin/init)"
fi
if [ -d /sys/fs/selinux ]; then
  echo "INITIUM-SELINUX enforce=$($B cat /sys/fs/selinux/enforce 2>&1)" \
    "pid1=$($B cat /proc/1/attr/current 2>&1 | $B tr -d '\0')" \
    "prev=$($B cat /proc/1/attr/prev 2>&1 | $B tr -d '\0')"
fi
# Files a test wants read (one path a line): each read reports ok or the reader's error.
for f in $($B cat /etc/initium-read-check 2>/dev/null); do
  if err=$($B cat "$f" 2>&1 >/dev/null); then echo "INITIUM-READ $f ok"
  else echo "INITIUM-READ $f failed: $err"; fi
done
$B sync
$B poweroff -f
"""
OTHER_INIT = ROOT_INIT.replace("INITIUM-ROOT-INIT", "INITIUM-OTHER-INIT")


def _run(argv: list[str], **kwargs: object) -> None:
    subprocess.run(argv, check=True, capture_output=True, **kwargs)  # type: ignore[call-overload]


def populate(root: str, extra: dict[str, bytes] | None = None) -> None:
    """The tree of the root file system, with ``extra`` files (path in the root: content)."""
    for d in ("bin", "sbin", "proc", "sys", "dev", "run", "etc", "tmp"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    shutil.copy2(BUSYBOX, os.path.join(root, "bin/busybox"))
    os.symlink("busybox", os.path.join(root, "bin/sh"))
    # Executable but not a program: exec fails with ENOEXEC only after the
    # initramfs has been freed (tests of the late failure path).
    with open(os.path.join(root, "sbin/broken"), "wb") as f:
        f.write(b"\x7fELF-not-really\n")
    os.chmod(os.path.join(root, "sbin/broken"), 0o755)
    for name, text in (("sbin/init", ROOT_INIT), ("sbin/other", OTHER_INIT)):
        path = os.path.join(root, name)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, 0o755)
    with open(os.path.join(root, "etc/os-release"), "w") as f:
        f.write("NAME=initium-test-root\n")
    for name, data in (extra or {}).items():
        path = os.path.join(root, name.lstrip("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)


# Prints each path's security.selinux: busybox has no SELinux applets.
GETLABEL_C = r"""
#include <stdio.h>
#include <sys/xattr.h>
int main(int argc, char **argv) {
    char value[512];
    for (int i = 1; i < argc; i++) {
        ssize_t n = lgetxattr(argv[i], "security.selinux", value, sizeof value - 1);
        if (n < 0) { printf("%s=(none) ", argv[i]); continue; }
        value[n] = 0;
        printf("%s=%s ", argv[i], value);
    }
    printf("\n");
    return 0;
}
"""


def add_getlabel(root: str) -> None:
    """A static /bin/getlabel, so the root's init can show what labels it was handed."""
    with tempfile.TemporaryDirectory() as tmp:
        source = os.path.join(tmp, "getlabel.c")
        with open(source, "w") as f:
            f.write(GETLABEL_C)
        _run(["gcc", "-static", "-Os", "-s", "-o", os.path.join(root, "bin/getlabel"), source])


SYSTEMD = "/lib/systemd/systemd"
# systemd as the root's init, reporting after its own SELinux set-up: what
# it sees of PID 1's context and the mode, then the VM powers off.
SYSTEMD_REPORT = r"""#!/bin/busybox sh
B=/bin/busybox
exec >/dev/console 2>&1
echo "INITIUM-SYSTEMD pid1=$($B cat /proc/1/attr/current 2>&1 | $B tr -d '\0')" \
  "prev=$($B cat /proc/1/attr/prev 2>&1 | $B tr -d '\0')" \
  "enforce=$($B cat /sys/fs/selinux/enforce 2>&1)" \
  "comm=$($B cat /proc/1/comm)"
$B sync
$B poweroff -f
"""
SYSTEMD_UNIT = """[Unit]
Description=initium test: report what systemd found
DefaultDependencies=no

[Service]
Type=oneshot
ExecStart=/bin/initium-report
"""


def add_systemd(root: str, selinux_policy: str | None) -> None:
    """systemd 252 of the build host as /sbin/init, with its libraries and one unit.

    Boot it with ``systemd.unit=initium-report.service``. With a policy, the
    store is copied to /etc/selinux/default and configured permissive, so
    systemd's own set-up finds what it looks for on a Debian root.
    """
    from initium.packaging.elf import closure

    for target, host in closure([SYSTEMD]).items():
        dest = os.path.join(root, target.lstrip("/"))
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.copy2(host, dest)
    os.unlink(os.path.join(root, "sbin/init"))
    os.symlink(SYSTEMD, os.path.join(root, "sbin/init"))
    for name, text, mode in (("bin/initium-report", SYSTEMD_REPORT, 0o755),
                             ("etc/systemd/system/initium-report.service", SYSTEMD_UNIT, 0o644)):
        path = os.path.join(root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, mode)
    # Empty: systemd sets up a transient machine ID on a read-only /etc.
    open(os.path.join(root, "etc/machine-id"), "w").close()
    if selinux_policy:
        shutil.copytree(selinux_policy, os.path.join(root, "etc/selinux/default"), symlinks=True)
        with open(os.path.join(root, "etc/selinux/config"), "w") as f:
            f.write("SELINUX=permissive\nSELINUXTYPE=default\n")


def label_tree(tree: str, policy_dir: str) -> int:
    """Set security.selinux on every file of ``tree`` from the policy's file_contexts.

    ``mkfs.ext4 -d`` copies the xattrs into the image, so the root boots
    labelled as ``setfiles`` would leave it (the test of the handover needs
    /sbin/init to read init_exec_t).  Returns the number of files labelled.
    """
    from initium.packaging.selinux import Labeller

    labeller = Labeller.from_dir(policy_dir)
    count = 0
    for here, dirs, files in os.walk(tree):
        for name in [".", *dirs, *files]:
            full = os.path.normpath(os.path.join(here, name))
            rel = "/" + os.path.relpath(full, tree)
            spec = labeller.lookup("/" if rel == "/." else rel, os.lstat(full).st_mode)
            if spec is not None and spec.context is not None:
                os.setxattr(full, "security.selinux", spec.context.encode() + b"\0",
                            follow_symlinks=False)
                count += 1
    return count


def make_filesystem(path: str, *, fstype: str = "ext4", uuid: str | None = None,
                    label: str | None = None, size_mb: int = 16,
                    selinux_policy: str | None = None, systemd: bool = False,
                    extra: dict[str, bytes] | None = None) -> None:
    with tempfile.TemporaryDirectory() as tree:
        populate(tree, extra)
        if systemd:
            add_systemd(tree, selinux_policy)
        if selinux_policy:
            add_getlabel(tree)
        if selinux_policy:
            label_tree(tree, selinux_policy)
        if fstype in ("ext4", "ext3", "ext2"):
            with open(path, "wb") as f:
                f.truncate(size_mb << 20)
            argv = [f"mkfs.{fstype}", "-q", "-F", "-d", tree, "-E",
                    "root_owner=0:0,lazy_itable_init=0"]
            if uuid:
                argv += ["-U", uuid]
            if label:
                argv += ["-L", label]
            _run([*argv, path], env={**os.environ, "E2FSPROGS_FAKE_TIME": "1"})
        elif fstype == "erofs":
            argv = ["mkfs.erofs", "-T0"]
            if uuid:
                argv += [f"-U{uuid}"]
            if label:
                argv += [f"-L{label}"]
            _run([*argv, path, tree])
        elif fstype == "squashfs":  # no UUID or label in squashfs: found by path or PARTUUID
            _run(["mksquashfs", tree, path, "-noappend", "-quiet", "-no-progress",
                  "-mkfs-time", "0", "-all-time", "0"])
        else:
            raise ValueError(f"unsupported root file system {fstype}")


def make_disk(path: str, *, table: str | None = None, fstype: str = "ext4",
              uuid: str | None = None, label: str | None = None,
              partuuid: str | None = None, partlabel: str | None = None,
              size_mb: int = 16, selinux_policy: str | None = None,
              systemd: bool = False) -> None:
    """A root disk: the bare file system, or it inside partition 1 of a ``gpt``/``dos`` table."""
    if table is None:
        make_filesystem(path, fstype=fstype, uuid=uuid, label=label, size_mb=size_mb,
                        selinux_policy=selinux_policy, systemd=systemd)
        return
    start = 2048  # sectors
    with tempfile.TemporaryDirectory() as tmp:
        fs = os.path.join(tmp, "fs.img")
        make_filesystem(fs, fstype=fstype, uuid=uuid, label=label, size_mb=size_mb)
        fs_size = os.path.getsize(fs)
        sectors = (fs_size + 511) // 512
        with open(path, "wb") as f:
            f.truncate((start + sectors + 2048) * 512)
        script = [f"label: {table}"]
        if table == "gpt":
            script.append("label-id: 8a0f4f8e-7a55-4b4f-9d4e-2a7c1b3e5f60")
            attrs = [f"start={start}", f"size={sectors}",
                     "type=0FC63DAF-8483-4772-8E79-3D69D8477DE4"]
            if partuuid:
                attrs.append(f"uuid={partuuid}")
            if partlabel:
                attrs.append(f'name="{partlabel}"')
        else:
            script.append("label-id: 0x1234abcd")
            attrs = [f"start={start}", f"size={sectors}", "type=83"]
        script.append(", ".join(attrs))
        _run(["sfdisk", "-q", path], input="\n".join(script).encode())
        with open(fs, "rb") as src, open(path, "r+b") as dst:
            dst.seek(start * 512)
            shutil.copyfileobj(src, dst)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("output")
    ap.add_argument("--table", choices=("gpt", "dos"))
    ap.add_argument("--fstype", default="ext4")
    ap.add_argument("--uuid")
    ap.add_argument("--label")
    ap.add_argument("--partuuid")
    ap.add_argument("--partlabel")
    ap.add_argument("--size-mb", type=int, default=16)
    ap.add_argument("--selinux-policy", metavar="DIR",
                    help="label the files from DIR's file_contexts (e.g. /etc/selinux/default)")
    a = ap.parse_args()
    make_disk(a.output, table=a.table, fstype=a.fstype, uuid=a.uuid, label=a.label,
              partuuid=a.partuuid, partlabel=a.partlabel, size_mb=a.size_mb,
              selinux_policy=a.selinux_policy)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
