#!/usr/bin/env python3
"""Storage layouts: initium against dracut built for the same layout, booted interleaved.

For each layout (plain ext4 as the reference, LUKS2 with a key file in the
image, an LVM logical volume, MD RAID1, dm-verity, erofs under a tmpfs
overlay) two images for the same installed cloud kernel:

* **initium**: ``initium build --storage KIND`` (the flags the VM tests in
  tests/vm/test_storage.py use), with boot.py's configuration: the two virtio
  drivers and no SELinux policy;
* **dracut**: dracut with the modules that layout needs (crypt, lvm, mdraid,
  systemd-veritysetup, overlay-root), isolated from the build host's
  configuration by boot.py's empty --conf and --confdir.

The disks are tests/vm/storage_disks.py's (made once, cached), copied fresh
for every boot. Both images of every layout boot ``--runs`` times, interleaved
(every layout's initium, then its dracut, round after round), and each boot's
time in the initramfs is read as boot.py reads it: the root's init's uptime
minus the printk timestamp of "Run /init".

    .venv/bin/python benchmarks/storage.py --runs 3 --out benchmarks/README.md

prints a markdown table of medians and ratios and, with ``--out``, writes it
between ``<!-- storage:start -->`` and ``<!-- storage:end -->`` of that file.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _path in (ROOT, os.path.join(ROOT, "benchmarks"), os.path.join(ROOT, "scripts")):
    sys.path.insert(0, _path)

import boot as bench  # noqa: E402
import rootdisk  # noqa: E402
from initium.packaging.kernel import kernel_image  # noqa: E402

from tests.vm import storage_disks as sd  # noqa: E402

START, END = "<!-- storage:start -->", "<!-- storage:end -->"
KEY_PATH = "/etc/keys/root.key"
EROFS_UUID = "7f8091a2-b3c4-45d6-e7f8-091a2b3c4d5e"  # test_storage.py's


@dataclass
class Layout:
    name: str
    disks: Callable[[str, str], list[str]]  # (kver, work) -> the pristine disks, vda first
    initium_flags: list[str]  # beyond boot.py's configuration file
    append: str  # initium's command line (after console=ttyS0 panic=-1)
    dracut_modules: str  # dracut -m
    dracut_drivers: list[str]
    dracut_append: str
    dracut_flags: list[str] = field(default_factory=list)
    note: str = ""  # how the two command lines or images differ, or why dracut cannot


@dataclass
class Side:
    """One image of one layout."""
    tool: bench.Tool
    append: str

    @property
    def times(self) -> list[float]:
        return [b.in_initramfs for b in self.tool.boots if b.ok and b.in_initramfs is not None]


def _plain(kver: str, work: str) -> list[str]:
    path = os.path.join(work, "plain.img")
    rootdisk.make_disk(path, uuid=bench.ROOT_UUID)
    return [path]


def _verity(kver: str, work: str) -> list[str]:
    directory = os.path.join(work, "verity")
    os.makedirs(directory, exist_ok=True)
    data, tree, roothash = sd.verity_disks(directory)
    with open(os.path.join(directory, "roothash"), "w", encoding="utf-8") as f:
        f.write(roothash)
    return [data, tree]


def _roothash(work: str) -> str:
    with open(os.path.join(work, "verity", "roothash"), encoding="utf-8") as f:
        return f.read().strip()


def _erofs(kver: str, work: str) -> list[str]:
    path = os.path.join(work, "root.erofs")
    rootdisk.make_filesystem(path, fstype="erofs", uuid=EROFS_UUID)
    with open(path, "r+b") as f:  # whole sectors for QEMU
        f.truncate(-(-os.path.getsize(path) // (1 << 20)) << 20)
    return [path]


def layouts(work: str) -> list[Layout]:
    key = os.path.join(work, "root.key")
    with open(key, "wb") as f:
        f.write(sd.KEY)
    os.chmod(key, 0o400)
    virtio = list(bench.MODULES)
    verity_base = ("systemd.verity_root_data=/dev/vda systemd.verity_root_hash=/dev/vdb "
                   "roothash={roothash}")
    return [
        Layout("plain ext4", _plain, [], f"root=UUID={bench.ROOT_UUID}",
               "base rootfs-block", virtio, f"root=UUID={bench.ROOT_UUID}",
               note="boot.py's configuration: the reference"),
        Layout("LUKS2, key file in the image", lambda kver, work: [sd.luks_disk(kver)],
               ["--storage", "luks", "--include", key, KEY_PATH],
               f"root=UUID={sd.INNER_UUID} rd.luks.uuid={sd.LUKS_UUID} rd.luks.key={KEY_PATH}",
               "base rootfs-block crypt", virtio,
               f"root=UUID={sd.INNER_UUID} rd.luks.uuid={sd.LUKS_UUID} "
               f"rd.luks.key={KEY_PATH}:/",
               ["--include", key, KEY_PATH],
               note="dracut's rd.luks.key needs `:/` to read the key from the initramfs "
                    "itself"),
        Layout("LVM logical volume", lambda kver, work: [sd.lvm_disk(kver)],
               ["--storage", "lvm"], "root=/dev/vg0/root rd.lvm.lv=vg0/root",
               "base rootfs-block lvm", virtio, "root=/dev/vg0/root rd.lvm.lv=vg0/root"),
        Layout("MD RAID1", lambda kver, work: list(sd.md_disks(kver)),
               ["--storage", "md"], f"root=UUID={sd.MD_ROOT_UUID} rd.md.uuid={sd.MD_UUID}",
               "base rootfs-block mdraid", virtio,
               f"root=UUID={sd.MD_ROOT_UUID} rd.md.uuid={sd.MD_UUID}",
               note="both with rd.md.uuid=: dracut assembles no array without it (or "
                    "rd.auto)"),
        Layout("dm-verity", _verity, ["--storage", "verity"],
               f"root=UUID={sd.VERITY_ROOT_UUID} {verity_base}",
               "systemd systemd-initrd dracut-systemd systemd-veritysetup rootfs-block",
               virtio, f"root=/dev/mapper/root {verity_base}",
               note="dracut has verity only through systemd (systemd-veritysetup-generator), "
                    "so its image is systemd-based; it is given root=/dev/mapper/root (the "
                    "mapping the generator makes), because root=UUID= also matches the raw "
                    "data disk"),
        Layout("erofs + tmpfs overlay", _erofs, ["--module", "erofs", "--module", "overlay"],
               f"root=UUID={EROFS_UUID} rw rd.overlay",
               "base rootfs-block overlay-root", [*virtio, "erofs", "overlay"],
               f"root=UUID={EROFS_UUID} rootovl",
               note="dracut's overlay-root module (`rootovl`): a tmpfs overlay over the "
                    "mounted root at pre-pivot, as `rd.overlay` does"),
    ]


def initium_argv(kver: str, config: str, flags: Sequence[str]) -> Callable[[str], list[str]]:
    base = bench.initium_argv(kver, config)
    return lambda out: [*base(out), *flags]


def _med(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def _verdict(ratio: float | None, limit: float) -> str:
    if ratio is None:
        return "n/a"
    return f"**{ratio:.2f}** {'✓' if ratio <= limit else '✗'}"


def table(pairs: list[tuple[Layout, Side, Side]], runs: int) -> str:
    rows = ["| layout | initium image bytes | dracut image bytes | size ratio | "
            "initium in initramfs s | dracut in initramfs s | time ratio | boots ok "
            "(initium, dracut) |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    for layout, mine, theirs in pairs:
        cells = [layout.name]
        for side in (mine, theirs):
            cells.append(f"{side.tool.image_bytes:,}" if not side.tool.error else "—")
        size = (mine.tool.image_bytes / theirs.tool.image_bytes
                if mine.tool.image_bytes and theirs.tool.image_bytes else None)
        cells.append(_verdict(size, 0.5))
        for side in (mine, theirs):
            cells.append(bench._cell(side.times, 3) if side.times else "n/a")
        a, b = _med(mine.times), _med(theirs.times)
        cells.append(_verdict(a / b if a is not None and b else None, 0.5))
        status = []
        for side in (mine, theirs):
            t = side.tool
            if t.error:
                status.append(f"build failed: {t.error}")
                continue
            failed = sorted({bo.reason for bo in t.boots if not bo.ok})
            status.append(f"{sum(bo.ok for bo in t.boots)}/{len(t.boots)}"
                          + (f" ({'; '.join(failed)})" if failed else ""))
        cells.append(", ".join(status))
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def commands(pairs: list[tuple[Layout, Side, Side]], work: str) -> str:
    def clean(text: str) -> str:
        return text.replace(work + "/", "")

    lines = []
    for layout, mine, theirs in pairs:
        build = clean(shlex.join(["initium", *mine.tool.build("initium.img")[1:]]))
        dracut = clean(shlex.join(theirs.tool.build("dracut.img")))
        lines += [f"* **{layout.name}**" + (f": {layout.note}" if layout.note else ""),
                  f"  * initium: `{build}`; command line `{mine.append}`",
                  f"  * dracut: `{dracut}`; command line `{theirs.append}`"]
    return "\n".join(lines)


def run(args: argparse.Namespace, work: str) -> str:
    kver = bench.cloud_kernel()
    kernel = kernel_image(kver)
    bench.log(f"kernel {kver} ({kernel}); work dir {work}")
    config = bench.write_initium_config(os.path.join(work, "initium.toml"))
    chosen = [lay for lay in layouts(work)
              if not args.only or any(o.lower() in lay.name.lower() for o in args.only)]
    pairs: list[tuple[Layout, Side, Side]] = []
    disks: dict[str, list[str]] = {}
    for i, layout in enumerate(chosen):
        disks[layout.name] = layout.disks(kver, work)
        roothash = _roothash(work) if "{roothash}" in layout.append else ""
        mine = Side(bench.Tool(f"initium {layout.name}",
                               initium_argv(kver, config, layout.initium_flags)),
                    layout.append.format(roothash=roothash))
        theirs = Side(bench.Tool(f"dracut {layout.name}", bench.dracut_argv(
            kver, work, modules=layout.dracut_modules, drivers=layout.dracut_drivers,
            extra_args=layout.dracut_flags)), layout.dracut_append.format(roothash=roothash))
        for n, side in enumerate((mine, theirs)):
            tool = side.tool
            tool.image = os.path.join(work, f"image{i}-{n}.img")
            try:
                tool.build_seconds.append(bench.timed_build(tool, tool.image))
                tool.image_bytes = os.path.getsize(tool.image)
                bench.log(f"built {tool.name}: {tool.image_bytes:,} bytes in "
                          f"{tool.build_seconds[0]:.2f} s")
            except (RuntimeError, OSError, subprocess.TimeoutExpired) as err:
                tool.error = str(err).replace("|", "/")
                bench.log(f"build {tool.name} failed: {tool.error}")
        pairs.append((layout, mine, theirs))

    loads = []
    for n in range(args.runs):
        loads.append(f"{os.getloadavg()[0]:.2f}")
        for i, (layout, mine, theirs) in enumerate(pairs):
            for side in (mine, theirs):
                tool = side.tool
                if tool.error:
                    continue
                # Fresh copies: dracut mounts a root read-write, and QEMU is killed with it
                # mounted; the cached disks themselves are never booted.
                copies = []
                for d, pristine in enumerate(disks[layout.name]):
                    copy = os.path.join(work, f"boot-disk{d}.img")
                    shutil.copyfile(pristine, copy)
                    copies.append(copy)
                boot, output = bench.boot_once(tool.image, copies, kernel, side.append)
                tool.boots.append(boot)
                if args.keep:
                    name = f"boot-{i}-{'initium' if side is mine else 'dracut'}-{n + 1}.log"
                    with open(os.path.join(work, name), "w", encoding="utf-8") as f:
                        f.write(output)
                status = (f"in initramfs {boot.in_initramfs:.3f} s"
                          if boot.ok and boot.in_initramfs is not None
                          else f"FAILED: {boot.reason}")
                bench.log(f"boot {n + 1}/{args.runs} {tool.name}: {status} "
                          f"(wall {boot.wall:.1f} s)")

    qemu = bench._cmd(["qemu-system-x86_64", "--version"]).splitlines()
    versions = bench._cmd(["dpkg-query", "-W", "dracut-core", "systemd", "cryptsetup-bin",
                           "lvm2", "mdadm", "erofs-utils"]).replace("\t", " ")
    return "\n\n".join([
        f"Medians (min..max) of {args.runs} interleaved boots per image, QEMU TCG, one vCPU, "
        f"{bench.MEMORY}; kernel {kver}. Ratios are initium / dracut; the issue's targets are "
        "≤ 0.5 for both (✓ met, ✗ not).",
        table(pairs, args.runs),
        "Images and command lines (after `console=ttyS0 panic=-1`; `initium.toml` is boot.py's "
        "configuration: `modules = [\"virtio_pci\", \"virtio_blk\"]`, "
        "`selinux_policy = \"none\"`; dracut's `--conf`/`--confdir` are empty):\n\n"
        + commands(pairs, work),
        f"Host: host load average (1 min) at the start of each round: {', '.join(loads)}; "
        f"{qemu[0] if qemu else 'qemu ?'}; " + "; ".join(versions.splitlines()) + ".",
    ])


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--runs", type=int, default=3, help="boots per image (default 3)")
    ap.add_argument("--out", metavar="MD", help="write the results into this markdown file")
    ap.add_argument("--keep", metavar="DIR", help="keep images, disks and boot logs in DIR")
    ap.add_argument("--only", action="append", metavar="NAME",
                    help="only the layouts whose name contains NAME (repeatable)")
    args = ap.parse_args(argv)
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    if shutil.which("qemu-system-x86_64") is None or shutil.which("dracut") is None:
        raise SystemExit("storage.py: needs qemu-system-x86 and dracut-core")
    section = bench.in_work_dir(args.keep, "initium-storage-", lambda work: run(args, work))
    print(section)
    if args.out:
        bench.replace_section(args.out, section, START, END, "Storage layouts")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
