#!/usr/bin/env python3
"""What the security stages cost: each configuration booted in turn, stage times from the timeline.

Three images for the same kernel, disk and modules, booted interleaved
(``--runs`` rounds) in QEMU TCG:

* **plain**: no SELinux policy, no xattr lists, no IMA policy;
* **selinux**: the build host's SELinux policy (Debian's refpolicy), booted
  with ``security=selinux selinux=1 enforcing=0``: policy load and relabel;
* **selinux+ima**: as selinux, plus ``security.ima`` digests for every file
  (so ``root=`` makes the rootfs stage move the initramfs into a tmpfs) and a
  one-rule IMA appraise policy, booted with ``ima_appraise=enforce``.

From each boot: every stage's time from the timeline the init leaves for the
root (``initium.timeline``), and the time in the initramfs (root init's
uptime - "Run /init"). Prints a markdown table and, with ``--out``, writes
it between ``<!-- security:start -->`` and ``<!-- security:end -->``.

    .venv/bin/python benchmarks/security.py --runs 3 --out benchmarks/README.md
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import boot as bench  # noqa: E402
import rootdisk  # noqa: E402
from initium.cli import main as initium  # noqa: E402
from initium.packaging.kernel import kernel_image  # noqa: E402

START, END = "<!-- security:start -->", "<!-- security:end -->"
SECURITY_STAGES = ("rootfs", "xattrs", "selinux", "ima")
APPRAISE = "appraise func=BPRM_CHECK fsmagic=0x01021994\n"


def configurations(work: str) -> list[tuple[str, list[str], str]]:
    """(name, extra build arguments, extra kernel command line)."""
    policy = os.path.join(work, "ima.policy")
    with open(policy, "w", encoding="utf-8") as f:
        f.write(APPRAISE)
    selinux = "security=selinux selinux=1 enforcing=0"
    return [
        ("plain", ["--selinux-policy", "none"], ""),
        ("selinux", [], selinux),
        ("selinux+ima", ["--ima-digest", "--ima-policy", policy],
         f"{selinux} ima_appraise=enforce"),
    ]


def timeline(output: str) -> dict[str, float]:
    """Stage → seconds, from the INITIUM-TIMELINE line the root's init prints."""
    m = bench.TIMELINE.search(output)
    if not m:
        return {}
    doc = json.loads(m.group(1))
    return {s["stage"]: s["end"] - s["start"] for s in doc["stages"]}


# The selinux stage's own split of its time, from its log lines.
SELINUX_PARTS = (("policy load", re.compile(r"selinux: SELinux policy \S+ loaded in ([\d.]+) s")),
                 ("labelling", re.compile(r"selinux: SELinux policy .* labelled in ([\d.]+) s")),
                 ("new nodes at switch-root",
                  re.compile(r"since the policy load labelled in ([\d.]+) s")))


def selinux_parts(output: str) -> dict[str, float]:
    found = {}
    for name, pattern in SELINUX_PARTS:
        m = pattern.search(output)
        if m:
            found[name] = float(m.group(1))
    return found


def run(runs: int, work: str) -> str:
    kver = bench.cloud_kernel()
    kernel = kernel_image(kver)
    pristine = os.path.join(work, "root.pristine.img")
    rootdisk.make_disk(pristine, uuid=bench.ROOT_UUID)
    disk = os.path.join(work, "root.img")
    configs = configurations(work)
    images = {}
    for name, extra, _ in configs:
        out = os.path.join(work, f"{name}.img")
        argv = ["build", "--output", out, "--kver", kver, *(f"--module={m}" for m in
                                                             bench.MODULES), *extra]
        if initium(argv) != 0:
            raise SystemExit(f"build of {name} failed")
        images[name] = out
    stages: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in configs}
    totals: dict[str, list[float]] = {name: [] for name, _, _ in configs}
    for n in range(runs):
        for name, _, append in configs:
            shutil.copyfile(pristine, disk)
            boot, output = bench.boot_once(images[name], disk, kernel,
                                           f"root=UUID={bench.ROOT_UUID} initium.timeline "
                                           f"{append}".strip())
            if not boot.ok or boot.in_initramfs is None:
                raise SystemExit(f"{name} boot {n + 1} failed: {boot.reason}\n{output[-2000:]}")
            stages[name].append({**timeline(output), **selinux_parts(output)})
            totals[name].append(boot.in_initramfs)
            bench.log(f"{name} #{n + 1}: in initramfs {boot.in_initramfs:.3f} s; "
                      + ", ".join(f"{s} {t:.3f}" for s, t in stages[name][-1].items()
                                  if s in SECURITY_STAGES))
    parts = tuple(name for name, _ in SELINUX_PARTS)
    columns = SECURITY_STAGES + parts
    rows = ["| image | " + " | ".join(f"selinux: {c}" if c in parts else c for c in columns)
            + " | security stages together | in initramfs | over plain |",
            "|---|" + "---:|" * (len(columns) + 3)]
    plain = statistics.median(totals["plain"])
    for name, _, _ in configs:
        cells = []
        together = []
        for per_boot in stages[name]:
            together.append(sum(per_boot.get(s, 0.0) for s in SECURITY_STAGES)
                            + per_boot.get("new nodes at switch-root", 0.0))
        for s in columns:
            values = [b[s] for b in stages[name] if s in b]
            cells.append(f"{statistics.median(values):.3f}" if values else "—")
        total = statistics.median(totals[name])
        rows.append(f"| {name} | " + " | ".join(cells) + f" | {statistics.median(together):.3f}"
                    f" | {total:.3f} | {total - plain:+.3f} |")
    return (f"Medians of {runs} interleaved boots per image, seconds (QEMU TCG, one vCPU; "
            f"kernel {kver}):\n\n" + "\n".join(rows) + "\n\nTarget: all security stages "
            "together ≤ 0.4 s over the plain boot.")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", metavar="MD")
    args = ap.parse_args()
    section = bench.in_work_dir(None, "initium-security-", lambda work: run(args.runs, work))
    print(section)
    if args.out:
        bench.replace_section(args.out, section, START, END, "Security stages")
    return 0


if __name__ == "__main__":
    sys.exit(main())
