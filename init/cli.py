"""``initium``: build, dry-run, boot-test and inspect images.

Host-side only (never imported at boot). Errors that users cause end in one
line on stderr and exit status 2; a dry run that finds the host would not
boot exits 1.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from initium.options import OPTIONS


def _cmdline_epilog() -> str:
    from initium.packaging.stages import builtin_stages, declared_options

    rows = []
    for o in (*OPTIONS, *declared_options(builtin_stages())):
        head = o.key + (f"={o.metavar}" if o.metavar else "")
        rows.append(f"  {head:<22} {o.help.split('. ')[0].rstrip('.')}")
    return ("kernel command-line options understood at boot (see initium.cmdline(7)):\n"
            + "\n".join(rows))


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="initium",
        description="An initramfs whose PID 1 is Python: build it, dry-run it on this host, "
                    "boot it in QEMU, inspect it.",
        epilog=_cmdline_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    build = sub.add_parser("build", help="write an image and its manifest",
                           description="Build a reproducible initramfs image and write "
                                       "IMG.manifest.json beside it.")
    build.add_argument("--output", "-o", required=True, metavar="IMG",
                       help="where to write the image")
    build.add_argument("--kver", help="kernel version (default: the running kernel when its "
                                      "modules are installed, else the newest installed)")
    build.add_argument("--config", metavar="FILE",
                       help="TOML configuration (see initium.conf(5)); flags override it")
    build.add_argument("--module", action="append", default=[], metavar="NAME",
                       help="add a kernel module (with its dependencies); repeatable")
    build.add_argument("--compress", choices=("zstd", "gzip", "none"),
                       help="compression of the core, modules and policy components")
    build.add_argument("--fsck", action="store_true", default=None,
                       help="add e2fsck: check an ext2/3/4 root before a read-write mount")
    build.add_argument("--shell", action="store_true", default=None,
                       help="add busybox for the emergency shell (rd.break, failures)")
    build.add_argument("--keep-xattrs", action="store_true", default=None,
                       help="carry the host files' xattrs into the image's xattr lists")
    build.add_argument("--ima-digest", action="store_true", default=None,
                       help="give every file a security.ima digest")
    build.add_argument("--ima-sign-key", metavar="PEM",
                       help="give every file a security.ima signature made with this key")
    build.add_argument("--evm-sign-key", metavar="PEM",
                       help="give every file a portable security.evm signature made with "
                            "this key")
    build.add_argument("--ima-policy", metavar="FILE",
                       help="IMA policy to load at boot (see ima.md)")
    build.add_argument("--ima-cert", action="append", default=[], metavar="DER",
                       help="X.509 certificate (DER) for the .ima keyring; repeatable")
    build.add_argument("--evm-cert", action="append", default=[], metavar="DER",
                       help="X.509 certificate (DER) for the .evm keyring; repeatable")
    build.add_argument("--storage", metavar="KINDS",
                       help="storage handlers: luks,lvm,md,verity,udev (comma separated), auto "
                            "(what this host's root needs) or none")
    build.add_argument("--include", nargs=2, action="append", default=[],
                       metavar=("SRC", "DST"),
                       help="add host file SRC as DST in the image (mode 0400); repeatable")
    build.add_argument("--kernel-xattr-list", action="store_true", default=None,
                       help="also write .xattr-list for kernels with the in-kernel xattr patch")
    build.add_argument("--selinux-policy", metavar="DIR",
                       help="SELinux policy store to load at boot, e.g. /etc/selinux/default, "
                            "or 'none' (default: the host's configured policy)")
    build.add_argument("--interpreter", choices=("host", "static"),
                       help="host: this host's Python and its libraries; static: one static "
                            "ELF built from CPython's source and cached (default: static)")
    build.add_argument("--component", choices=("early", "core", "modules", "policy"),
                       help="with --reuse: build only this component, keep the others' bytes")
    build.add_argument("--reuse", metavar="OLD_IMG",
                       help="with --component: the image (and OLD_IMG.manifest.json) whose "
                            "other components are kept byte for byte")

    run = sub.add_parser("run", help="run the stage plan on this host, changing nothing",
                         description="Run the stages through the dry-run system: print every "
                                     "action, change nothing, exit 0 when this host would boot.")
    run.add_argument("--dry-run", action="store_true", required=True,
                     help="required: initium never runs stages for real outside PID 1")
    run.add_argument("--cmdline", help="kernel command line (default: /proc/cmdline)")
    run.add_argument("--image", metavar="IMG",
                     help="use this image's plan and files (default: a plan for this host)")
    run.add_argument("--config", metavar="FILE", help="configuration, when no --image")

    qemu = sub.add_parser("qemu", help="boot an image in QEMU with the serial console here",
                          description="Boot IMG with its kernel in QEMU (TCG), serial console "
                                      "on stdout.")
    qemu.add_argument("image", metavar="IMG")
    qemu.add_argument("--disk", action="append", default=[], metavar="FILE",
                      help="a raw disk image (virtio); repeatable")
    qemu.add_argument("--append", default="", help="extra kernel command line")
    qemu.add_argument("--kernel", help="kernel image (default: /boot/vmlinuz-KVER of the image)")
    qemu.add_argument("--memory", default="512M", help="guest memory (default 512M)")
    qemu.add_argument("--timeout", type=float, default=None,
                      help="kill QEMU after this many seconds")

    inspect = sub.add_parser("inspect", help="list an image's files and stage order")
    inspect.add_argument("image", metavar="IMG")

    verify = sub.add_parser(
        "verify", help="check an image against its manifest",
        description="Check every component's byte range and digests and every file against "
                    "the manifest; name the first mismatch. Exit status: 0 the image matches, "
                    "1 it does not, 2 the image or the manifest cannot be used.")
    verify.add_argument("image", metavar="IMG")
    verify.add_argument("--manifest", metavar="M", help="default: IMG.manifest.json")

    manifest = sub.add_parser(
        "manifest", help="print an image's manifest or its keylime reference digests",
        description="Verify IMG against its manifest, then print the manifest (json) or a "
                    "keylime runtime policy allowing exactly its files (keylime).")
    manifest.add_argument("image", metavar="IMG")
    manifest.add_argument("--manifest", metavar="M", help="default: IMG.manifest.json")
    manifest.add_argument("--format", choices=("json", "keylime"), default="json")
    return top


class UserError(Exception):
    """A problem to report in one line, not a traceback."""


def _build(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from initium.packaging.config import include_entry, load_config
    from initium.packaging.image import build_image, manifest_bytes
    from initium.packaging.kernel import default_kver
    from initium.packaging.stages import load_stages
    from initium.packaging.storage import resolve_storage

    started = time.monotonic()
    config = load_config(args.config)
    overrides: dict[str, Any] = {}
    if args.compress:
        overrides["compress"] = args.compress
    if args.shell:
        overrides["shell"] = True
    if args.fsck:
        overrides["fsck"] = True
    if args.module:
        overrides["add_modules"] = (*config.add_modules, *args.module)
    if args.kver:
        overrides["kver"] = args.kver
    for flag in ("keep_xattrs", "ima_digest", "kernel_xattr_list"):
        if getattr(args, flag):
            overrides[flag] = True
    for flag in ("ima_sign_key", "evm_sign_key"):
        if getattr(args, flag):
            overrides[flag] = os.path.abspath(getattr(args, flag))
    if args.ima_policy:
        overrides["ima_policy"] = os.path.abspath(args.ima_policy)
    for flag in ("ima_cert", "evm_cert"):
        if getattr(args, flag):
            key = flag + "s"
            overrides[key] = tuple(dict.fromkeys((*getattr(config, key),
                                                  *map(os.path.abspath, getattr(args, flag)))))
    if args.selinux_policy:
        overrides["selinux_policy"] = args.selinux_policy if args.selinux_policy == "none" \
            else os.path.abspath(args.selinux_policy)
    if args.interpreter:
        overrides["interpreter_kind"] = args.interpreter
    if args.storage:
        overrides["storage"] = tuple(w for w in args.storage.split(",") if w)
    try:
        if args.include:
            overrides["include"] = (*config.include,
                                    *(include_entry(os.path.abspath(src), dst)
                                      for src, dst in args.include))
        config = replace(config, **overrides)
        config = replace(config, storage=resolve_storage(config.storage))
    except ValueError as err:
        raise UserError(str(err)) from None
    kver = config.kver or default_kver()
    epoch_env = os.environ.get("SOURCE_DATE_EPOCH")
    try:
        mtime = int(epoch_env) if epoch_env else (config.source_date_epoch or 0)
    except ValueError:
        raise UserError(f"SOURCE_DATE_EPOCH={epoch_env!r} is not an integer") from None
    if (args.component is None) != (args.reuse is None):
        raise UserError("--component and --reuse go together")
    if args.reuse:
        from initium.packaging.image import rebuild_image

        old_image, old_manifest = _load_pair(args.reuse, None)
        image, manifest, plan, notes = rebuild_image(
            config, kver, load_stages(config.all_stages), mtime, component=args.component,
            old_image=old_image, old_manifest=old_manifest)
        for note in notes:
            print(f"initium build: note: {note}")
    else:
        image, manifest, plan = build_image(config, kver, load_stages(config.all_stages), mtime)
    _write_atomically(args.output, image)
    _write_atomically(args.output + ".manifest.json", manifest_bytes(manifest))
    parts = ", ".join(f"{c['name']} {c['length']} ({c['compression']})"
                      + (" kept" if c["name"] in manifest.get("reused", {}).get("components", ())
                         else "")
                      for c in manifest["components"])
    print(f"initium: wrote {args.output}: {len(image)} bytes [{parts}] for {kver}; "
          f"stages: {' → '.join(plan.names)}; {time.monotonic() - started:.2f} s")
    return 0


def _write_atomically(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _inspect(args: argparse.Namespace) -> int:
    import stat

    from initium.packaging.reader import read_image, suspicious
    from initium.plan import PLAN_PATH, Plan

    files = read_image(args.image)
    for problem in suspicious(files):
        print(f"warning: {problem}")
    for path, (label, entry) in sorted(files.items()):
        kind = stat.filemode(entry.mode)
        extra = f" -> {entry.data.decode(errors='replace')}" if stat.S_ISLNK(entry.mode) else ""
        size = len(entry.data) if stat.S_ISREG(entry.mode) else 0
        print(f"{kind} {size:>10} {label:<12} {path}{extra}")
    if PLAN_PATH in files:
        plan = Plan.from_bytes(files[PLAN_PATH][1].data)
        print(f"kernel: {plan.kver}")
        print(f"stages: {' → '.join(plan.names)}")
    else:
        print("no initium plan in this image")
    _print_interpreter({path: entry.data for path, (_, entry) in files.items()
                        if stat.S_ISREG(entry.mode)})
    return 0


def _print_interpreter(files: dict[str, bytes]) -> None:
    from initium.packaging.interpreter import describe_interpreter

    kind, size, modules = describe_interpreter(files)
    print(f"interpreter: {kind}, {size} bytes, {len(modules)} frozen modules")
    print(f"frozen: {' '.join(modules)}")


MAX_MANIFEST_BYTES = 256 << 20


def _load_pair(image_path: str, manifest_path: str | None) -> tuple[bytes, Any]:
    """The image's bytes and its decoded manifest; UserError (exit 2) when unusable."""
    import json

    manifest_path = manifest_path or image_path + ".manifest.json"
    try:
        with open(image_path, "rb") as f:
            image = f.read()
        with open(manifest_path, "rb") as f:
            text = f.read(MAX_MANIFEST_BYTES + 1)
    except OSError as err:
        raise UserError(f"{err.filename}: {err.strerror}") from None
    if len(text) > MAX_MANIFEST_BYTES:
        raise UserError(f"{manifest_path}: over {MAX_MANIFEST_BYTES} bytes; not a manifest")
    try:
        return image, json.loads(text)
    except (ValueError, RecursionError) as err:
        raise UserError(f"{manifest_path}: not JSON: {err}") from None


def _verified(args: argparse.Namespace) -> tuple[Any, int]:
    """The manifest once the image matched it, or the exit status and a message printed."""
    from initium.packaging.verify import EXIT_MISMATCH, EXIT_OK, ManifestError, verify

    image, doc = _load_pair(args.image, args.manifest)
    try:
        mismatch = verify(image, doc)
    except ManifestError as err:
        raise UserError(f"{args.manifest or args.image + '.manifest.json'}: {err}") from None
    if mismatch is not None:
        print(f"initium {args.command}: {args.image} does not match its manifest: {mismatch}",
              file=sys.stderr)
        return doc, EXIT_MISMATCH
    return doc, EXIT_OK


def _verify(args: argparse.Namespace) -> int:
    from initium.packaging.verify import file_count

    doc, status = _verified(args)
    if status == 0:
        names = ", ".join(c["name"] for c in doc["components"])
        print(f"initium verify: {args.image} matches its manifest: {doc['size']} bytes, "
              f"sha256 {doc['sha256']}, components {names}, {file_count(doc)} entries")
    return status


def _manifest(args: argparse.Namespace) -> int:
    import json

    from initium.packaging.keylime import runtime_policy

    doc, status = _verified(args)
    if status == 0:
        out = runtime_policy(doc) if args.format == "keylime" else doc
        print(json.dumps(out, indent=1, sort_keys=args.format == "json"))
    return status


def _dry_run(args: argparse.Namespace) -> int:
    import stat

    from initium.cmdline import CmdlineError, parse
    from initium.console import Console
    from initium.options import BootOptions
    from initium.packaging.reader import plan_in, read_image
    from initium.runner import Runner
    from initium.stage import BootContext
    from initium.system import DryRunSystem

    overlay: dict[str, bytes] = {}
    if args.image:
        files = read_image(args.image)
        overlay = {p: e.data for p, (_, e) in files.items() if stat.S_ISREG(e.mode)}
        plan = plan_in(files, args.image)
        where = f"image {args.image}"
    else:
        from initium.kmod import ModuleError
        from initium.packaging.config import load_config
        from initium.packaging.image import plan_for_host

        try:
            plan = plan_for_host(load_config(args.config), os.uname().release)
        except ModuleError as err:
            print(f"result: this host would NOT boot (modules: {err})")
            return 1
        where = "a plan for this host"
    if args.cmdline is not None:
        text: str | bytes = args.cmdline
    else:
        try:
            with open("/proc/cmdline", "rb") as f:
                text = f.read()
        except OSError as err:
            raise UserError(f"/proc/cmdline: {err.strerror}; pass --cmdline") from None
    try:
        cmdline = parse(text)
    except CmdlineError as err:
        print(f"result: this host would NOT boot (cmdline: {err})")
        return 1
    contexts: list[BootContext] = []  # the plan lines name the runner's current stage
    system = DryRunSystem(overlay, log=lambda line: print(f"  [{contexts[0].stage}] {line}"),
                          init_args=list(cmdline.init_args))
    console = Console(lambda line: print(line, end=""), debug=False)
    ctx = BootContext(system, cmdline, BootOptions(), plan, console)
    contexts.append(ctx)
    runner = Runner(plan.load_stages(), ctx)  # first: it tells ctx the stages' own options
    ctx.set_cmdline(cmdline)
    console.debug_enabled = True  # a dry run shows every decision, not only actions
    print(f"initium dry run of {where} (kernel {plan.kver}) on {os.uname().release}")
    print(f"stages: {' → '.join(plan.names)}")
    outcome = runner.run()
    for note in system.notes:
        print(f"note: {note}")
    for problem in outcome.problems:
        print(f"problem: {problem}")
    if outcome.ok and not outcome.problems:
        print("result: this host would boot")
        return 0
    reason = outcome.reason if not outcome.ok else "; ".join(outcome.problems)
    stage = outcome.failed_stage or "plan"
    print(f"result: this host would NOT boot ({stage}: {reason})")
    return 1


def _qemu(args: argparse.Namespace) -> int:
    from initium import process
    from initium.packaging.qemu import boot_argv

    argv = boot_argv(args.image, disks=args.disk, append=args.append, kernel=args.kernel,
                     memory=args.memory)
    return process.run(argv, timeout=args.timeout, interactive=True, env=dict(os.environ))


def main(argv: Sequence[str] | None = None) -> int:
    from initium.process import ProcessError

    args = parser().parse_args(argv)
    handlers = {"build": _build, "run": _dry_run, "qemu": _qemu, "inspect": _inspect,
                "verify": _verify, "manifest": _manifest}
    try:
        return handlers[args.command](args)
    except UserError as err:
        print(f"initium: {err}", file=sys.stderr)
        return 2
    except (ValueError, OSError, ProcessError) as err:
        # Every typed error of the builder is a ValueError subclass with a
        # message meant for users (ConfigError, ModuleError, CpioError …).
        print(f"initium {args.command}: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
