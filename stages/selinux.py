"""Load the SELinux policy before anything else runs, and label what already exists.

Right after the API file systems and the xattr lists: mount selinuxfs, write
the image's binary policy to /sys/fs/selinux/load (one write; no libselinux
is needed for it), set the mode from ``enforcing=`` or the image's
configuration, then label the initramfs files (contexts computed by the
builder from the policy's file_contexts) and the nodes under /dev and /run
that the kernel made before the policy existed (they read ``device_t`` or
``unlabeled_t`` until then), with rules the builder compiled for the init.

``selinux=0`` skips the stage.  When enforcement is asked for
(``enforcing=1``, or the image's ``selinux_mode = "enforcing"``) every
failure stops the boot with no shell offered; otherwise it is logged with
", ignoring" and the boot goes on, as systemd's selinux-setup does.

Right after the load PID 1 leaves the kernel's domain (``kernel_t``, shared
with every kernel thread) for its own, ``initium_t`` from policy/initium.te,
when the image's policy has it: the helpers it starts and the files it
creates are then told apart from the kernel's.  From there, executing the
real root's /sbin/init (``init_exec_t``) enters ``init_t``; see
docs/selinux.md.
"""

from __future__ import annotations

import marshal
import os
import stat

from initium import ops
from initium.options import Option
from initium.record import record
from initium.stage import JSON, BootContext, Image, Stage, StageError
from initium.stages.selinux_rules import Rules
from initium.xattrlist import SetXattr, XattrListError, parse

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from initium.system import System

    Failed = Callable[[str, str], None]

SELINUXFS = "/sys/fs/selinux"
XATTR = "security.selinux"
RELABEL_TOPS = ("/dev", "/run")
CURRENT = "/proc/self/attr/current"  # writing it is a dynamic transition of this process
MAX_RULES_BYTES = 16 << 20


def _bit(value: str) -> bool:
    """The kernel's reading of selinux= and enforcing=: a number, nonzero is on."""
    try:
        return int(value, 0) != 0
    except ValueError:
        raise ValueError(f"{value!r} is not 0 or 1") from None


SELINUX = Option("selinux", "selinux", "0 skips the selinux stage (the kernel then boots with "
                 "SELinux disabled too); 1 runs it when the kernel has SELinux (Debian's "
                 "kernel also needs security=selinux).", "kernel: selinux=", _bit,
                 metavar="0|1", owner="selinux")
ENFORCING = Option("enforcing", "enforcing", "SELinux mode after the policy load: 1 enforcing "
                   "(and any failure of the selinux stage stops the boot, no shell), 0 "
                   "permissive. Default: the image's selinux_mode, else the kernel's.",
                   "kernel: enforcing=", _bit, metavar="0|1", owner="selinux")


@record
class LoadPolicy(ops.Op):
    """Write the binary policy to selinuxfs' load file, in one write as the kernel wants."""

    irreversible = True  # a policy, once loaded, cannot be unloaded
    path: str
    target: str = f"{SELINUXFS}/load"

    def describe(self) -> str:
        return f"load the SELinux policy {self.path} into {self.target}"

    def perform(self, sys: System) -> int:
        with open(self.path, "rb") as f:
            data = f.read()
        fd = os.open(self.target, os.O_WRONLY | os.O_CLOEXEC)
        try:
            written = os.write(fd, data)
        finally:
            os.close(fd)
        if written != len(data):
            raise OSError(5, f"short write: {written} of {len(data)} bytes", self.target)
        return written

    def simulate(self, sys: System) -> int:
        return 0


@record
class WriteKernelFile(ops.Op):
    """Write a value to an existing kernel file (selinuxfs, procfs): no create, no truncate."""

    path: str
    value: bytes

    def describe(self) -> str:
        return f"echo {self.value.decode(errors='replace')} > {self.path}"

    def perform(self, sys: System) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, self.value)
        finally:
            os.close(fd)

    def simulate(self, sys: System) -> None:
        return None


# The last rules table read, by (path, size, mtime): the switch-root pass
# reads the same 380 KB table as the first, whose unmarshalling and
# indexing cost tens of milliseconds under emulation.
_RULES: dict[tuple[str, int, int], Rules] = {}


def _load_rules(path: str) -> Rules:
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        key = (path, st.st_size, st.st_mtime_ns)
        rules = _RULES.get(key)
        if rules is None:
            rules = Rules.from_data(marshal.loads(f.read(MAX_RULES_BYTES)))
            _RULES.clear()
            _RULES[key] = rules
    return rules


@record
class Relabel(ops.Op):
    """Label every file under ``tops`` (mounts included) from the builder's boot rules.

    The reply is (files labelled, failures as "path: reason", the labels
    read back from ``probes`` as "path=context" for the log, and every
    (device, inode) visited).  Entries in ``seen`` are passed over: the
    second pass at switch-root labels only the nodes made since the first
    (devtmpfs gives a node made after the load its directory's
    ``device_t``, and there is no udev to fix it, as there is on a
    running system).
    """

    tops: tuple[str, ...]
    rules: str
    probes: tuple[str, ...] = ("/dev/null", "/dev/console")
    seen: frozenset[tuple[int, int]] = frozenset()

    def describe(self) -> str:
        what = "nodes made since the last relabel under" if self.seen else "relabel"
        return f"{what} {', '.join(self.tops)} from {self.rules}"

    def perform(self, sys: System) -> tuple[int, tuple[str, ...], tuple[str, ...],
                                            frozenset[tuple[int, int]]]:
        rules = _load_rules(self.rules)
        done, failed = 0, []
        visited: set[tuple[int, int]] = set()

        def label(path: str, st: os.stat_result) -> None:
            nonlocal done
            key = (st.st_dev, st.st_ino)
            visited.add(key)
            if key in self.seen:
                return
            found, context = rules.lookup(path, st.st_mode)
            if not found or context is None:
                return
            try:
                os.setxattr(path, XATTR, context.encode() + b"\0", follow_symlinks=False)
                done += 1
            except OSError as err:
                failed.append(f"{path}: {err.strerror}")

        def walk(path: str) -> None:
            try:
                entries = list(os.scandir(path))
            except OSError as err:
                failed.append(f"{path}: {err.strerror}")
                return
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # gone since the listing (a device removed)
                label(entry.path, st)
                if stat.S_ISDIR(st.st_mode):
                    walk(entry.path)

        for top in self.tops:
            try:
                label(top, os.lstat(top))
            except OSError as err:
                failed.append(f"{top}: {err.strerror}")
                continue
            walk(top)
        read_back = []
        for probe in self.probes:
            try:
                value = os.getxattr(probe, XATTR, follow_symlinks=False)
            except OSError as err:
                read_back.append(f"{probe}=({err.strerror})")
            else:
                read_back.append(f"{probe}={value.rstrip(bytes(1)).decode(errors='replace')}")
        return done, tuple(failed), tuple(read_back), frozenset(visited)

    def simulate(self, sys: System) -> tuple[int, tuple[str, ...], tuple[str, ...],
                                             frozenset[tuple[int, int]]]:
        return 0, (), (), frozenset()


class Selinux(Stage):
    name = "selinux"
    after = ("early-mounts", "console", "rootfs", "xattrs")
    before = ("ima", "modules", "udev", "storage", "root")
    options = (SELINUX, ENFORCING)

    def install(self, image: Image) -> JSON:
        from initium.packaging.selinux import plan_data

        return plan_data(image.option("selinux_policy"), image.option("selinux_mode"))

    def enabled(self, ctx: BootContext) -> bool:
        return ctx.value(SELINUX) is not False

    def run(self, ctx: BootContext) -> None:
        data = ctx.data()
        wanted = ctx.value(ENFORCING)
        if wanted is None and data.get("mode") in ("enforcing", "permissive"):
            wanted = data["mode"] == "enforcing"
        strict = wanted is True

        def failed(cause: str, hint: str) -> None:
            if strict:
                raise StageError(cause, hint + "; enforcement was asked for, so the boot "
                                 "stops", security=True)
            ctx.warn(f"{cause}, ignoring")

        sys = ctx.sys
        if not sys.has_filesystem("selinuxfs"):
            if not strict:  # the usual case on an AppArmor kernel: nothing to say
                ctx.debug("the kernel has no SELinux enabled (no selinuxfs): nothing to do")
                return
            failed("the kernel has no SELinux enabled (no selinuxfs)",
                   "boot with security=selinux selinux=1 (Debian's kernel starts AppArmor "
                   "by default)")
        policy = data.get("policy")
        if not policy or not sys.exists(policy):
            failed(f"no SELinux policy in this image ({policy or 'none was built in'})",
                   "rebuild with --selinux-policy DIR (e.g. /etc/selinux/default)")
            return
        try:
            if not sys.is_mounted(SELINUXFS):
                if not sys.exists(SELINUXFS):
                    sys.apply(ops.MakeDir(SELINUXFS))
                sys.apply(ops.Mount("selinuxfs", SELINUXFS, "selinuxfs", 0))
        except OSError as err:
            failed(f"cannot mount selinuxfs on {SELINUXFS}: {err.strerror}",
                   "check the kernel's SELinux configuration")
            return
        start = sys.monotonic()
        try:
            sys.apply(LoadPolicy(policy))
        except FileNotFoundError:  # listed, but gone (a dangling link, a damaged image)
            failed(f"no SELinux policy in this image ({policy} is missing)",
                   "rebuild with --selinux-policy DIR (e.g. /etc/selinux/default)")
            return
        except OSError as err:
            failed(f"the kernel refused the policy {policy}: {err.strerror}",
                   "is the policy built for this kernel's policy versions? See dmesg")
            return
        loaded = sys.monotonic()
        if wanted is not None:
            try:
                sys.apply(WriteKernelFile(f"{SELINUXFS}/enforce", b"1" if wanted else b"0"))
            except OSError as err:
                failed(f"cannot set the SELinux mode: {err.strerror}", "see dmesg")
        domain = self._enter_domain(ctx, data, failed)
        files = self._label_initramfs(ctx, data, failed)
        nodes = self._relabel(ctx, data, failed)
        mode = {True: "enforcing", False: "permissive", None: "the kernel's mode"}[wanted]
        ctx.log(f"SELinux policy {policy} loaded in {loaded - start:.3f} s ({mode}); "
                f"{files} initramfs files and {nodes} files under {', '.join(RELABEL_TOPS)} "
                f"labelled in {sys.monotonic() - loaded:.3f} s; PID 1 in {domain}")

    def _enter_domain(self, ctx: BootContext, data: JSON, failed: Failed) -> str:
        """Move PID 1 into initium_t; the domain it ends up in, for the log."""
        domain = data.get("domain")
        if not domain:
            ctx.debug("the image's policy has no initium_t (policy/initium.te is not linked "
                      "in): PID 1 stays in kernel_t")
            return "kernel_t"
        try:
            ctx.sys.apply(WriteKernelFile(CURRENT, str(domain).encode()))
        except OSError as err:
            failed(f"PID 1 cannot enter its domain {domain}: {err.strerror}",
                   "the policy must let kernel_t dyntransition to initium_t "
                   "(policy/initium.te); see dmesg for the denial")
            return "kernel_t"
        return str(domain).split(":")[2]

    def _label_initramfs(self, ctx: BootContext, data: JSON, failed: Failed) -> int:
        path = data.get("labels")
        if not path:
            return 0
        try:
            records = parse(ctx.sys.read_bytes(path), allowed_prefixes=("security.",))
        except (OSError, XattrListError) as err:
            failed(f"cannot read the initramfs labels {path}: {err}", "rebuild the image")
            return 0
        count = 0
        for rec in records:
            for name, value in rec.xattrs:
                if name != XATTR:
                    continue
                try:
                    ctx.sys.apply(SetXattr(rec.path, name, value))
                    count += 1
                except OSError as err:
                    if err.errno == 2:
                        continue  # freed or never unpacked (an earlier component's file)
                    failed(f"cannot label /{rec.path}: {err.strerror}", "see dmesg")
                    return count
        return count

    def _relabel(self, ctx: BootContext, data: JSON, failed: Failed) -> int:
        rules = data.get("rules")
        if not rules:
            return 0
        try:
            done, problems, read_back, visited = ctx.sys.apply(Relabel(RELABEL_TOPS, rules))
        except (OSError, ValueError, EOFError, TypeError) as err:
            failed(f"cannot relabel {', '.join(RELABEL_TOPS)}: {err}", "rebuild the image")
            return 0
        if problems:
            failed(f"{len(problems)} files under {', '.join(RELABEL_TOPS)} could not be "
                   f"labelled ({'; '.join(problems[:3])})", "see dmesg")
        if read_back:
            ctx.log(f"labels now: {', '.join(read_back)}")

        def label_new_nodes(ctx: BootContext) -> None:
            """The disks, mappings and other nodes the later stages made appear."""
            start = ctx.sys.monotonic()
            try:
                done, problems, _, _ = ctx.sys.apply(
                    Relabel(("/dev",), rules, probes=(), seen=visited))
            except (OSError, ValueError, EOFError, TypeError) as err:
                failed(f"cannot label the nodes made under /dev since the policy load: {err}",
                       "rebuild the image")
                return
            if problems:
                failed(f"{len(problems)} nodes made under /dev since the policy load could "
                       f"not be labelled ({'; '.join(problems[:3])})", "see dmesg")
            ctx.log(f"{done} nodes made under /dev since the policy load labelled in "
                    f"{ctx.sys.monotonic() - start:.3f} s")

        ctx.at_switch_root("label the nodes made since the policy load", label_new_nodes)
        return int(done)

