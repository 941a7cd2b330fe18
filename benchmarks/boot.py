#!/usr/bin/env python3
"""Boot-time benchmark: initium against initramfs-tools, dracut and a busybox floor.

Every image is built for the same installed Debian cloud kernel and booted in
QEMU (TCG, one vCPU, 512M) with the same root disk and the same kernel command
line.  For each tool: the image size, the build time (median of ``--builds``
builds, each a child process timed with time.monotonic), then ``--runs`` boots
per tool, interleaved (A B C D A B C D …) so that drift of the host hits every
tool alike.  From each boot's console:

* the kernel's printk timestamp of "Run /init as init process";
* the guest uptime printed by the root disk's /sbin/init (scripts/rootdisk.py);
* time in the initramfs = uptime - Run /init;
* for the analysis, printk timestamps of the root disk's detection
  ("[vda]") and of the ext4 mount.

    python benchmarks/boot.py --runs 5 --out benchmarks/README.md

prints a markdown table and, with ``--out``, writes it (with the host facts)
between ``<!-- results:start -->`` and ``<!-- results:end -->`` of that file.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shlex
import shutil
import stat
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import rootdisk  # noqa: E402
from initium import process  # noqa: E402
from initium.packaging.compress import compress  # noqa: E402
from initium.packaging.cpio import Entry, write_archive  # noqa: E402
from initium.packaging.kernel import installed_kernels, kernel_image  # noqa: E402
from initium.packaging.kmodules import resolve_modules  # noqa: E402
from initium.packaging.qemu import boot_argv  # noqa: E402

ROOT_UUID = "3e5c1a7b-9d2f-4c8e-a6b0-5f1d2c3b4a59"
MODULES = ["virtio_pci", "virtio_blk"]
MEMORY = "512M"
BOOT_TIMEOUT = 120.0
BUILD_TIMEOUT = 600.0
START, END = "<!-- results:start -->", "<!-- results:end -->"

ROOT_INIT = re.compile(r"INITIUM-ROOT-INIT pid=(\d+)[^\r\n]*uptime=(\d+\.\d+)[\r\n]")
PANIC_END = re.compile(r"end Kernel panic[^\r\n]*[\r\n]")
ROOT_DONE = re.compile(r"INITIUM-INITRAMFS-LEFT[^\r\n]*[\r\n]")
TIMELINE = re.compile(r"INITIUM-TIMELINE (\{[^\r\n]*\})")
PANIC = re.compile(r"Kernel panic[^\r\n]*")


def _stamp(pattern: str) -> re.Pattern[str]:
    return re.compile(r"^\[\s*(\d+\.\d+)\][^\r\n]*" + pattern, re.MULTILINE)


RUN_INIT = _stamp(r"Run /init as init process")
VDA = _stamp(r"\[vda\]")
MOUNTED = _stamp(r"EXT4-fs \(vda\): mounted")

# Packages whose initramfs-tools hooks and boot scripts a minimal Debian system has.
# The build host also carries storage stacks (mdadm, lvm2, dmraid, btrfs-progs, …) for
# other tests; their hooks add RAID/LVM modules and tools to every image and scripts
# that run at every boot, so the fair initramfs-tools image is built without them.
ITOOLS_CORE = frozenset({"initramfs-tools", "initramfs-tools-core", "udev", "kmod",
                         "klibc-utils", "busybox", "busybox-static"})
ITOOLS_SHARE = "/usr/share/initramfs-tools"

TEMPLATE = f"""# Boot benchmark

`benchmarks/boot.py` compares the time a boot spends in the initramfs, the image
size and the build time of **initium** against Debian's **initramfs-tools**,
**dracut** and a **floor**: the least an initramfs can do (a static busybox
shell script that loads the two virtio modules, waits for the root by UUID with
`findfs`, mounts it and `switch_root`s).

## What is measured

All images are built for the same installed Debian cloud kernel (found with
`installed_kernels()`, never hard-coded) with the same two drivers
(`virtio_pci`, `virtio_blk` and their dependencies; ext4 is built into this
kernel) and booted in QEMU with the same ext4 root disk (made once by
`scripts/rootdisk.py` with a fixed UUID) and the same kernel command line,
`console=ttyS0 panic=-1 root=UUID=<uuid>` (no `quiet`, so the kernel's lines and
their printk timestamps reach the serial console).

* **image bytes**: the file the builder wrote;
* **build s**: median of 3 builds, each run as a child process and timed with
  `time.monotonic()` around it;
* **Run /init at s**: the kernel's printk timestamp of
  `Run /init as init process`: the kernel's boot, which includes unpacking the
  image (decompression and cpio extraction), so larger images start /init later;
* **root init at s**: the guest's `/proc/uptime` as printed by the root disk's
  `/sbin/init` (it prints `INITIUM-ROOT-INIT … uptime=…`);
* **in initramfs s**: root init at - Run /init at: the initramfs's own cost
  (root init at is the end-to-end figure, unpacking included);
* the milestones table: printk timestamps of the disk's detection (`[vda]`)
  and of the ext4 mount, relative to Run /init.

Boots are interleaved (A B C D E A B C D E …), each a fresh QEMU killed as soon
as the root's init has printed its line, each on a fresh copy of the root disk
(dracut mounts it read-write, and a disk killed while mounted would make the
next boot replay its journal); medians are shown with min..max, and
ratios are to initium (initium = 1.00). A boot that does not reach the root's
init counts as failed and is shown as such.

Note: printk timestamps (`local_clock()`) and `/proc/uptime` (CLOCK_BOOTTIME)
count from the same origin (timekeeping starts the monotonic clocks at the
`local_clock()` value of its initialisation), and whatever skew remains is the
same for every tool.

## Configurations

* **initium**: `initium build --kver K --config C`, C being
  `modules = ["virtio_pci", "virtio_blk"]` (replacing the default driver set, so
  that it loads exactly what the others load).
* **initramfs-tools**: `mkinitramfs -d CONFDIR -o OUT K` with its own
  configuration directory: `initramfs.conf` = `MODULES=list`, `BUSYBOX=auto`,
  `COMPRESS=zstd`, `RESUME=none` (so a swap device on the build host cannot make
  the image wait for a resume device), and `modules` naming `virtio_pci` and
  `virtio_blk`; `conf.d/`, `hooks/`, `scripts/` empty. Its fsck hook copies a
  fsck only for the root listed in the build host's `/etc/fstab`; this host's is
  unconfigured, so the image has none and skips the check (on an installed
  system it would run e2fsck, as dracut does).
  mkinitramfs also runs every hook under `/usr/share/initramfs-tools/hooks`, and
  this build host has `mdadm`, `lvm2`, `dmraid`, `btrfs-progs`, `xfsprogs`,
  `thin-provisioning-tools` installed (for other tests). Their hooks put RAID and
  LVM modules and tools in the image (the mdadm hook force-loads raid456, whose
  RAID6/xor benchmarks then run at every boot) and boot scripts (dmraid's
  local-top waits for udev and scans for arrays, btrfs's scans for btrfs devices,
  mdadm's local-block runs while the root is missing).
  The **fair** row is built with those hooks hidden: mkinitramfs runs in a private
  mount namespace in which a copy of `/usr/share/initramfs-tools` keeping only
  the hooks and scripts of initramfs-tools-core, udev, kmod, klibc-utils and
  busybox is bind-mounted over the original (nothing on the host changes). The
  **as installed** row is plain `mkinitramfs` on this host, for reference; the
  targets are measured against the fair row.
* **dracut**: `dracut --conf EMPTY --confdir EMPTYDIR --no-hostonly -m "base
  rootfs-block" --drivers "virtio_blk virtio_pci" --force --no-early-microcode
  --reproducible --zstd --kver K OUT` (`--zstd` like the others: dracut's default
  is gzip). The empty configuration keeps the build host's /etc/dracut.conf.d
  out: a package such as dracut-network adds modules there whatever -m says.
* **floor**: a cpio written with `initium.packaging.cpio.write_archive`,
  zstd-compressed: static busybox, `/dev/console`, the modules in load order
  from `resolve_modules()`, and a busybox `sh` `/init`. Its build runs this
  script in a child process (`--build-floor`).

## How to run

    .venv/bin/python benchmarks/boot.py --runs 5 --out benchmarks/README.md

Needs root (mkinitramfs, dracut, the mount namespace), qemu-system-x86,
linux-image-cloud-amd64, initramfs-tools, dracut-core, busybox-static, zstd.
It takes several minutes (TCG boots). `--keep DIR` keeps the images and every
boot's console log for a closer look.

## Results

{START}
{END}
"""


# -- building ------------------------------------------------------------------


@dataclass(frozen=True)
class Boot:
    ok: bool
    reason: str = ""
    run_init: float | None = None
    uptime: float | None = None
    vda: float | None = None
    mounted: float | None = None
    wall: float = 0.0
    pid: int | None = None
    # initium only, from the timeline its init leaves for the root: "Run /init"
    # to the launcher's first statement, and that to the init's own start.
    python_up: float | None = None
    imports: float | None = None

    @property
    def in_initramfs(self) -> float | None:
        if self.run_init is None or self.uptime is None:
            return None
        return self.uptime - self.run_init


@dataclass
class Tool:
    name: str
    build: Callable[[str], list[str]]  # output path -> argv
    note: str = ""
    image: str = ""
    image_bytes: int = 0
    build_seconds: list[float] = field(default_factory=list)
    error: str = ""
    core_bytes: int = 0  # initium: the `core` component, from the manifest
    boots: list[Boot] = field(default_factory=list)


def _last_lines(text: str, n: int = 3) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " / ".join(lines[-n:]) if lines else "no output"


def timed_build(tool: Tool, out: str) -> float:
    argv = tool.build(out)
    if os.path.exists(out):
        os.unlink(out)
    started = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, errors="replace",
                          timeout=BUILD_TIMEOUT, check=False)
    seconds = time.monotonic() - started
    if done.returncode != 0 or not os.path.isfile(out):
        detail = _last_lines(done.stderr or done.stdout)
        raise RuntimeError(f"exit status {done.returncode}: {detail}")
    return seconds


def initium_argv(kver: str, config: str) -> Callable[[str], list[str]]:
    exe = os.path.join(os.path.dirname(sys.executable), "initium")
    cmd = [exe] if os.path.isfile(exe) else [sys.executable, "-m", "initium"]
    return lambda out: [*cmd, "build", "--output", out, "--kver", kver, "--config", config]


def write_initium_config(path: str) -> str:
    """The modules the peers get, and no SELinux policy: none of the peers load one."""
    with open(path, "w") as f:
        f.write("modules = [" + ", ".join(f'"{m}"' for m in MODULES) + "]\n")
        f.write('selinux_policy = "none"\n')
    return path


def default_size(kver: str, work: str) -> tuple[int, int] | None:
    """Size of the image `initium build` makes with no configuration, and of its policy."""
    out = os.path.join(work, "default.img")
    exe = os.path.join(os.path.dirname(sys.executable), "initium")
    cmd = [exe] if os.path.isfile(exe) else [sys.executable, "-m", "initium"]
    done = subprocess.run([*cmd, "build", "--output", out, "--kver", kver], capture_output=True,
                          text=True, check=False, timeout=BUILD_TIMEOUT)
    if done.returncode != 0:
        log(f"default build failed: {done.stderr.strip()}")
        return None
    with open(out + ".manifest.json", encoding="utf-8") as f:
        policy = next((c["length"] for c in json.load(f)["components"]
                       if c["name"] == "policy"), 0)
    return os.path.getsize(out), policy


def write_itools_confdir(path: str) -> str:
    for sub in ("conf.d", "hooks", "scripts"):
        os.makedirs(os.path.join(path, sub), exist_ok=True)
    with open(os.path.join(path, "initramfs.conf"), "w") as f:
        f.write("MODULES=list\nBUSYBOX=auto\nCOMPRESS=zstd\nRESUME=none\n")
    with open(os.path.join(path, "modules"), "w") as f:
        f.write("".join(m + "\n" for m in MODULES))
    return path


def itools_share_copy(dest: str) -> list[str]:
    """Copy /usr/share/initramfs-tools without the hooks and scripts of non-core packages.

    Returns what was left out, as "package: path".
    """
    shutil.copytree(ITOOLS_SHARE, dest, symlinks=True)
    candidates = [os.path.join(d, n) for sub in ("hooks", "scripts")
                  for d, _, names in os.walk(os.path.join(ITOOLS_SHARE, sub)) for n in names]
    done = subprocess.run(["dpkg", "-S", *candidates], capture_output=True, text=True,
                          check=False)
    owner: dict[str, str] = {}
    for line in done.stdout.splitlines():
        pkgs, _, path = line.partition(": ")
        owner[path.strip()] = pkgs.split(":")[0].split(",")[0].strip()
    dropped = []
    for path in candidates:
        pkg = owner.get(path)
        if pkg is not None and pkg not in ITOOLS_CORE:
            os.unlink(os.path.join(dest, os.path.relpath(path, ITOOLS_SHARE)))
            dropped.append(f"{pkg}: {os.path.relpath(path, ITOOLS_SHARE)}")
    return sorted(dropped)


def itools_argv(kver: str, confdir: str, share: str | None) -> Callable[[str], list[str]]:
    def argv(out: str) -> list[str]:
        mk = ["mkinitramfs", "-d", confdir, "-o", out, kver]
        if share is None:
            return mk
        script = f'mount --bind "$1" {ITOOLS_SHARE} && shift && exec "$@"'
        return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script,
                "sh", share, *mk]
    return argv


def dracut_argv(kver: str, work: str, *, modules: str = "base rootfs-block",
                drivers: Sequence[str] = MODULES,
                extra_args: Sequence[str] = ()) -> Callable[[str], list[str]]:
    """dracut isolated from the build host's configuration.

    A package such as dracut-network drops files into /etc/dracut.conf.d
    (and /usr/lib/dracut/dracut.conf.d) that add modules whatever -m says;
    the image then waits for the network and times out. An empty --conf and
    --confdir of our own keep only what the command line asks for.
    ``modules``, ``drivers`` and ``extra_args`` are for benchmarks/storage.py's
    layouts (crypt, lvm, mdraid …, an --include of a key file).
    """
    conf = os.path.join(work, "dracut.conf")
    confdir = os.path.join(work, "dracut.conf.d")
    os.makedirs(confdir, exist_ok=True)
    with open(conf, "w", encoding="utf-8") as f:
        f.write("# initium benchmark: no host configuration\n")
    try:
        help_text = subprocess.run(["dracut", "--help"], capture_output=True, text=True,
                                   check=False).stdout
    except FileNotFoundError:
        help_text = ""  # the build then fails and says so, in the benchmark's own words
    extra = [flag for flag in ("--no-early-microcode", "--reproducible", "--zstd")
             if flag in help_text]
    return lambda out: ["dracut", "--conf", conf, "--confdir", confdir, "--no-hostonly",
                        "-m", modules, "--drivers", " ".join(drivers), *extra_args,
                        "--force", *extra, "--kver", kver, out]


def floor_argv(kver: str) -> Callable[[str], list[str]]:
    me = os.path.abspath(__file__)
    return lambda out: [sys.executable, me, "--build-floor", out, "--kver", kver,
                        "--uuid", ROOT_UUID]


FLOOR_INIT = """#!/bin/busybox sh
B=/bin/busybox
$B mount -t proc proc /proc
$B mount -t sysfs sysfs /sys
$B mount -t devtmpfs devtmpfs /dev
{insmods}
until dev=$($B findfs UUID={uuid} 2>/dev/null); do $B usleep 10000; done
$B mount -o ro "$dev" /newroot
for d in dev proc sys; do $B mount -o move /$d /newroot/$d; done
exec $B switch_root /newroot /sbin/init
"""


def build_floor(out: str, kver: str, uuid: str) -> None:
    modules = resolve_modules(kver, MODULES)
    with open(rootdisk.BUSYBOX, "rb") as f:
        busybox = f.read()
    init = FLOOR_INIT.format(
        uuid=uuid, insmods="\n".join(f"$B insmod {m.image_path}" for m in modules))
    entries = [Entry(d, stat.S_IFDIR | 0o755) for d in ("dev", "proc", "sys", "newroot")]
    entries += [
        Entry("bin/busybox", stat.S_IFREG | 0o755, busybox),
        Entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)),
        Entry("init", stat.S_IFREG | 0o755, init.encode()),
    ]
    entries += [Entry(m.image_path.lstrip("/"), stat.S_IFREG | 0o644, m.data) for m in modules]
    image = compress(write_archive(entries), "zstd")
    tmp = f"{out}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(image)
    os.replace(tmp, out)


# -- booting -------------------------------------------------------------------


def _first(pattern: re.Pattern[str], text: str, after: int = 0) -> float | None:
    m = pattern.search(text, after)
    return float(m.group(1)) if m else None


def parse_boot(output: str, finished: bool, wall: float) -> Boot:
    run = RUN_INIT.search(output)
    root = ROOT_INIT.search(output)
    run_init = float(run.group(1)) if run else None
    after = run.end() if run else 0
    vda, mounted = _first(VDA, output, after), _first(MOUNTED, output, after)
    if root and finished:
        uptime, pid = float(root.group(2)), int(root.group(1))
        ok = run_init is not None
        reason = "" if ok else "no 'Run /init' line"
        python_up = imports = None
        timeline = TIMELINE.search(output)
        if timeline and run_init is not None:
            try:
                doc = json.loads(timeline.group(1))
                python_up = float(doc["python_ready"]) - run_init
                imports = float(doc["init_start"]) - float(doc["python_ready"])
            except (ValueError, KeyError, TypeError):
                pass
        return Boot(ok, reason, run_init, uptime, vda, mounted, wall, pid, python_up, imports)
    panic = PANIC.search(output)
    if panic:
        reason = panic.group(0).strip()
    elif not finished and wall >= BOOT_TIMEOUT - 1:
        reason = f"timeout after {BOOT_TIMEOUT:g} s"
    else:
        reason = "QEMU ended before the root's init ran"
    return Boot(False, reason, run_init, None, vda, mounted, wall)


def boot_once(image: str, disk: str | Sequence[str], kernel: str,
              append: str) -> tuple[Boot, str]:
    """One boot; ``disk`` is the root disk, or every disk of a layout in order (vda, vdb …)."""
    disks = [disk] if isinstance(disk, str) else list(disk)
    argv = boot_argv(image, disks=disks, append=append, kernel=kernel, memory=MEMORY)
    started = time.monotonic()
    # Until the root's init has printed everything (it powers off last).
    output, finished = process.watch(
        argv, done=lambda text: bool(ROOT_DONE.search(text) or PANIC_END.search(text)),
        timeout=BOOT_TIMEOUT)
    wall = time.monotonic() - started
    return parse_boot(output, finished and ROOT_INIT.search(output) is not None, wall), output


# -- reporting -----------------------------------------------------------------


def _med(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def _cell(values: Sequence[float], digits: int = 2) -> str:
    if not values:
        return "n/a"
    med = statistics.median(values)
    if len(values) == 1:
        return f"{med:.{digits}f}"
    return f"{med:.{digits}f} ({min(values):.{digits}f}..{max(values):.{digits}f})"


def _ratio(value: float | None, base: float | None) -> str:
    if value is None or base is None or base == 0:
        return "n/a"
    return f"{value / base:.2f}"


def _series(tool: Tool, what: str) -> list[float]:
    out = []
    for b in tool.boots:
        if not b.ok:
            continue
        v = {"run_init": b.run_init, "uptime": b.uptime, "initramfs": b.in_initramfs,
             "vda": None if b.vda is None or b.run_init is None else b.vda - b.run_init,
             "mounted": (None if b.mounted is None or b.run_init is None
                         else b.mounted - b.run_init),
             "python_up": b.python_up, "imports": b.imports,
             "wall": b.wall}[what]
        if v is not None:
            out.append(v)
    return out


def results_table(tools: list[Tool]) -> str:
    base = tools[0]
    base_bytes = float(base.image_bytes) if base.image_bytes else None
    base_build = _med(base.build_seconds)
    base_boot = {k: _med(_series(base, k)) for k in ("run_init", "uptime", "initramfs")}
    heads = ["image bytes", "build s", "Run /init at s", "root init at s (uptime)",
             "in initramfs s"]
    rows = ["| tool | " + " | ".join(f"{h} | ratio" for h in heads) + " | boots ok |",
            "|---|" + "---:|" * (2 * len(heads)) + "---|"]
    for t in tools:
        if t.error:
            rows.append(f"| {t.name} | failed: {t.error} |" + " n/a |" * 10)
            continue
        cells = [t.name, f"{t.image_bytes:,}", _ratio(float(t.image_bytes), base_bytes),
                 _cell(t.build_seconds), _ratio(_med(t.build_seconds), base_build)]
        for k in ("run_init", "uptime", "initramfs"):
            s = _series(t, k)
            cells += [_cell(s, 3 if k == "initramfs" else 2), _ratio(_med(s), base_boot[k])]
        ok = sum(b.ok for b in t.boots)
        failed = [b.reason for b in t.boots if not b.ok]
        cells.append(f"{ok}/{len(t.boots)}" + (f" (failed: {'; '.join(failed)})"
                                                if failed else ""))
        rows.append("| " + " | ".join(cells) + " |")
    notes = [f"* {t.name}: {t.note}" for t in tools if t.note]
    return "\n".join(rows) + ("\n\n" + "\n".join(notes) if notes else "")


def milestones_table(tools: list[Tool]) -> str:
    rows = ["| tool | first Python statement | init's imports done | disk `[vda]` seen | "
            "root ext4 mounted | root init | QEMU wall s (launch → root init) |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for t in tools:
        if t.error:
            continue
        up = _series(t, "python_up")
        done = [a + b for a, b in zip(up, _series(t, "imports"), strict=False)]
        rows.append(f"| {t.name} | {_cell(up, 3) if up else '—'} | "
                    f"{_cell(done, 3) if done else '—'} | {_cell(_series(t, 'vda'), 3)} | "
                    f"{_cell(_series(t, 'mounted'), 3)} | {_cell(_series(t, 'initramfs'), 3)}"
                    f" | {_cell(_series(t, 'wall'))} |")
    return "\n".join(rows)


def boots_table(tools: list[Tool]) -> str:
    rows = ["| tool | run | Run /init at | root init at | in initramfs | status |",
            "|---|---:|---:|---:|---:|---|"]
    for t in tools:
        for i, b in enumerate(t.boots, 1):
            def f(v: float | None) -> str:
                return "n/a" if v is None else f"{v:.3f}"
            rows.append(f"| {t.name} | {i} | {f(b.run_init)} | {f(b.uptime)} | "
                        f"{f(b.in_initramfs)} | {'ok' if b.ok else 'FAILED: ' + b.reason} |")
    return "\n".join(rows)


def _verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def targets(tools: list[Tool], default_image: tuple[int, int] | None) -> str:
    """The static-interpreter issue's targets, from this run's figures."""
    initium = tools[0]
    itools = next((t for t in tools if t.name == "initramfs-tools"), None)
    floor = next((t for t in tools if t.name.startswith("floor")), None)
    lines = []
    mine = _med(_series(initium, "initramfs"))
    for base, limit, label in ((floor, 1.2, "the busybox-sh floor"),
                               (itools, 0.2, "initramfs-tools (fair row)")):
        theirs = _med(_series(base, "initramfs")) if base else None
        if mine is not None and theirs:
            r = mine / theirs
            lines.append(f"* time in the initramfs ≤ {limit} x {label}: {mine:.3f} s / "
                         f"{theirs:.3f} s = **{r:.2f}** → {_verdict(r <= limit)}")
        else:
            lines.append(f"* time in the initramfs ≤ {limit} x {label}: not measurable")
    for what, limit, label in (("python_up", 0.2, "exec of /init → first statement"),
                               ("imports", 0.1, "the init's imports")):
        value = _med(_series(initium, what))
        lines.append(f"* {label} ≤ {limit} s: " + (
            f"median {value:.3f} s → {_verdict(value <= limit)}" if value is not None
            else "not measurable (no timeline)"))
    if initium.core_bytes:
        lines.append(f"* `core` ≤ 2.5 MB compressed: {initium.core_bytes:,} bytes → "
                     f"{_verdict(initium.core_bytes <= 2_500_000)}")
    if initium.image_bytes:
        lines.append(f"* image ≤ 3 MB (this run's image, no SELinux policy): "
                     f"{initium.image_bytes:,} bytes → "
                     f"{_verdict(initium.image_bytes <= 3_000_000)}")
    if default_image:
        size, policy = default_image
        lines.append(f"* image ≤ 3 MB (`initium build` with no configuration on this host): "
                     f"{size:,} bytes → {_verdict(size <= 3_000_000)}" + (
                         f"; {policy:,} bytes of it are the `policy` component, which "
                         "carries the host's configured SELinux policy" if policy > 100_000
                         else ""))
    build = _med(initium.build_seconds[1:] or initium.build_seconds)
    if build is not None:
        lines.append(f"* warm build ≤ 1.0 s: median {build:.2f} s (first build not counted) → "
                     f"{_verdict(build <= 1.0)}")
    return "\n".join(lines)


def _cmd(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, check=False,
                              timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def host_facts(kver: str, kernel: str, cmdline: str, *, runs: int, builds: int,
               dropped: list[str], load: str) -> str:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), "?")
    except OSError:
        pass
    versions = _cmd(["dpkg-query", "-W", "initramfs-tools", "dracut-core", "busybox-static",
                     "udev", "zstd"]).replace("\t", " ")
    storage = _cmd(["dpkg-query", "-W", "-f", "${Package} ${Version} ${db:Status-Status}\\n",
                    "mdadm", "lvm2"])
    qemu = _cmd(["qemu-system-x86_64", "--version"]).splitlines()
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"* date: {now}",
        f"* machine: {os.cpu_count()} CPUs (nproc), {cpu}; host kernel {os.uname().release}",
        f"* host load average (1 min) at the first and the last boot: {load} (the host is "
        "shared; TCG timings move with it, hence interleaving and medians)",
        f"* guest: QEMU TCG (no KVM), one vCPU, {MEMORY}; "
        f"{qemu[0] if qemu else 'qemu version unknown'}",
        f"* guest kernel: {kver} ({kernel})",
        f"* kernel command line: `{cmdline}`",
        f"* {runs} boots per tool, interleaved; build time = median of {builds} builds",
        "* tool versions (`dpkg-query -W`): " + "; ".join(versions.splitlines()),
        "* storage stacks on the build host (`dpkg-query`): "
        + ("; ".join(storage.splitlines()) or "mdadm and lvm2 not installed"),
        f"* Python {sys.version.split()[0]}",
    ]
    if dropped:
        lines.append("* hooks/scripts left out of the fair initramfs-tools build: "
                     + ", ".join(f"`{d}`" for d in dropped))
    return "\n".join(lines)


def replace_section(path: str, section: str, start: str = START, end: str = END,
                    heading: str = "Results") -> None:
    """Put ``section`` between the ``start`` and ``end`` markers of the README.

    Every benchmark script writes its own pair of markers; a file without
    them gets them appended under ``heading``.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        text = TEMPLATE
    if start not in text or end not in text:
        text = text.rstrip("\n") + f"\n\n## {heading}\n\n{start}\n{end}\n"
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(f"{head}{start}\n{section.strip()}\n{end}{tail}")
    os.replace(tmp, path)


def write_out(path: str, section: str) -> None:
    replace_section(path, section)


def in_work_dir(keep: str | None, prefix: str, run: Callable[[str], str]) -> str:
    """``run`` in ``keep`` (created, left for looking at) or in a temporary directory."""
    if keep:
        os.makedirs(keep, exist_ok=True)
        return run(os.path.abspath(keep))
    with tempfile.TemporaryDirectory(prefix=prefix) as work:
        return run(work)


# -- main ----------------------------------------------------------------------


def cloud_kernel() -> str:
    kernels = [k for k in installed_kernels() if "cloud" in k] or installed_kernels()
    if not kernels:
        raise SystemExit("boot.py: no kernel installed (apt-get install linux-image-cloud-amd64)")
    return kernels[-1]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(args: argparse.Namespace, work: str) -> str:
    kver = cloud_kernel()
    kernel = kernel_image(kver)
    log(f"kernel {kver} ({kernel}); work dir {work}")

    pristine = os.path.join(work, "root.pristine.img")
    rootdisk.make_disk(pristine, uuid=ROOT_UUID)
    disk = os.path.join(work, "root.img")
    append = f"root=UUID={ROOT_UUID}"
    cmdline = f"console=ttyS0 panic=-1 {append}"

    config = write_initium_config(os.path.join(work, "initium.toml"))
    confdir = write_itools_confdir(os.path.join(work, "initramfs-tools.conf"))
    dropped = itools_share_copy(os.path.join(work, "initramfs-tools.share"))
    extra_hooks = sorted({d.split(":")[0] for d in dropped})
    tools = [
        Tool("initium", initium_argv(kver, config)),
        Tool("initramfs-tools", itools_argv(kver, confdir, os.path.join(
            work, "initramfs-tools.share")),
             note="fair configuration: only the hooks and scripts of "
                  + ", ".join(sorted(ITOOLS_CORE)) + "; no fsck in the image (the build "
                  "host's /etc/fstab names no root), so the boot skips it"),
        Tool("initramfs-tools as installed", itools_argv(kver, confdir, None),
             note=f"with the hooks of {', '.join(extra_hooks)}"),
        Tool("dracut", dracut_argv(kver, work),
             note="with no `ro` on the command line dracut mounts the root, unmounts it, "
                  "runs e2fsck, and mounts it read-write (its default behaviour)"),
        Tool("floor (busybox sh)", floor_argv(kver)),
    ]
    if not extra_hooks:  # nothing to hide: the two initramfs-tools rows would be one
        del tools[2]

    for i, tool in enumerate(tools):
        tool.image = os.path.join(work, f"image{i}.img")
        try:
            for n in range(args.builds):
                seconds = timed_build(tool, tool.image)
                tool.build_seconds.append(seconds)
                log(f"build {tool.name} #{n + 1}: {seconds:.2f} s")
            tool.image_bytes = os.path.getsize(tool.image)
            manifest = tool.image + ".manifest.json"
            if os.path.isfile(manifest):
                with open(manifest, encoding="utf-8") as f:
                    tool.core_bytes = next((c["length"] for c in json.load(f)["components"]
                                            if c["name"] == "core"), 0)
            log(f"  {tool.name}: {tool.image_bytes:,} bytes; "
                f"{shlex.join(tool.build(tool.image))}")
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as err:
            tool.error = str(err).replace("|", "/")
            log(f"build {tool.name} failed: {tool.error}")

    loads = []
    for n in range(args.runs):
        if n in (0, args.runs - 1):
            loads.append(f"{os.getloadavg()[0]:.2f}")
        for i, tool in enumerate(tools):
            if tool.error:
                continue
            # Every boot gets the disk as made: dracut mounts it read-write (no "ro" on
            # the command line) and QEMU is killed with it mounted, so a shared disk would
            # make the next boot replay the ext4 journal.
            shutil.copyfile(pristine, disk)
            boot, output = boot_once(tool.image, disk, kernel, append)
            tool.boots.append(boot)
            if args.keep:
                with open(os.path.join(work, f"boot-{i}-{n + 1}.log"), "w") as f:
                    f.write(output)
            status = (f"Run /init {boot.run_init} s, root init {boot.uptime} s, in initramfs "
                      f"{boot.in_initramfs:.3f} s" if boot.ok and boot.in_initramfs is not None
                      else f"FAILED: {boot.reason}")
            log(f"boot {n + 1}/{args.runs} {tool.name}: {status} (wall {boot.wall:.1f} s)")

    return "\n\n".join([
        results_table(tools),
        "Targets (initium):\n\n" + targets(tools, default_size(kver, work)),
        "Milestones, median (min..max) seconds after `Run /init` (printk timestamps; root "
        "init is the uptime it prints):\n\n" + milestones_table(tools),
        "Host:\n\n" + host_facts(kver, kernel, cmdline, runs=args.runs, builds=args.builds,
                                 dropped=dropped, load=" / ".join(loads)),
        "<details><summary>Every boot</summary>\n\n" + boots_table(tools) + "\n\n</details>",
    ])


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--runs", type=int, default=5, help="boots per tool (default 5)")
    ap.add_argument("--builds", type=int, default=3, help="builds per tool (default 3)")
    ap.add_argument("--out", metavar="MD", help="write the results into this markdown file")
    ap.add_argument("--keep", metavar="DIR", help="keep images and boot logs in DIR")
    ap.add_argument("--build-floor", metavar="IMG", help=argparse.SUPPRESS)
    ap.add_argument("--kver", help=argparse.SUPPRESS)
    ap.add_argument("--uuid", default=ROOT_UUID, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.build_floor:
        build_floor(args.build_floor, args.kver or cloud_kernel(), args.uuid)
        return 0
    if args.runs < 1 or args.builds < 1:
        ap.error("--runs and --builds must be at least 1")
    if shutil.which("qemu-system-x86_64") is None:
        raise SystemExit("boot.py: qemu-system-x86_64 missing (apt-get install qemu-system-x86)")
    section = in_work_dir(args.keep, "initium-bench-", lambda work: run(args, work))
    print(section)
    if args.out:
        write_out(args.out, section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
