"""The selinux stage's decisions, the builder's labels, and the boot-time matcher."""

from __future__ import annotations

import errno
import os
import re
import stat

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from initium import ops
from initium.cmdline import Cmdline, parse
from initium.console import Console
from initium.memsystem import MemorySystem
from initium.options import BootOptions
from initium.packaging.selinux import Labeller, Spec, host_policy_dir, parse_file_contexts
from initium.plan import Plan, StageEntry
from initium.runner import Runner
from initium.stage import BootContext, StageError
from initium.stages.selinux import LoadPolicy, Relabel, Selinux, WriteKernelFile
from initium.stages.selinux_rules import RuleError, Rules, compile_regex, literal_prefix, matches
from initium.xattrlist import SetXattr, XattrRecord, serialize

POLICY = "/etc/initium/selinux/policy.33"
LABELS = "/etc/initium/selinux/labels"
DATA = {"mode": "kernel", "policy": POLICY, "labels": LABELS,
        "rules": "/etc/initium/selinux/rules.marshal"}
BIN_T = b"system_u:object_r:bin_t:s0\0"


def machine(policy: bool = True, selinuxfs: bool = True,
            refuse: type[ops.Op] | None = None) -> MemorySystem:
    files = {"/proc/filesystems": b"nodev\tsysfs\n" + (b"nodev\tselinuxfs\n" if selinuxfs
                                                       else b""),
             "/sys/fs/selinux/": b"", "/init": b"",
             LABELS: serialize([XattrRecord("init", (("security.selinux", BIN_T),))])}
    if policy:
        files[POLICY] = b"policy"

    def on_apply(_: MemorySystem, op: ops.Op) -> None:
        if refuse is not None and isinstance(op, refuse):
            raise OSError(errno.EINVAL, "Invalid argument", "/sys/fs/selinux/load")

    return MemorySystem(files=files, on_apply=on_apply)


def context(sys: MemorySystem, cmdline: str = "", data: dict[str, object] | None = None,
            out: list[str] | None = None) -> BootContext:
    plan = Plan("6.1.0-test", (StageEntry("selinux", "initium.stages.selinux:Selinux",
                                          DATA if data is None else data),))
    ctx = BootContext(sys, Cmdline(), BootOptions(), plan,
                      Console((out if out is not None else []).append), stage="selinux")
    ctx.stage_options = Selinux.options
    ctx.set_cmdline(parse(cmdline))
    return ctx


def kinds(sys: MemorySystem) -> list[str]:
    return [type(op).__name__ for op in sys.applied]


def test_loads_sets_the_mode_and_labels() -> None:
    sys = machine()
    out: list[str] = []
    Selinux().run(context(sys, "enforcing=1", out=out))
    assert kinds(sys) == ["Mount", "LoadPolicy", "WriteKernelFile", "SetXattr", "Relabel"]
    assert sys.mounted == [("selinuxfs", "/sys/fs/selinux", "selinuxfs")]
    assert WriteKernelFile("/sys/fs/selinux/enforce", b"1") in sys.applied
    assert SetXattr("init", "security.selinux", BIN_T) in sys.applied
    assert "loaded in 0.000 s (enforcing); 1 initramfs files" in "".join(out)


DOMAIN = "system_u:system_r:initium_t:s0"


def test_pid_1_enters_its_domain_after_the_mode_and_before_labelling() -> None:
    sys = machine()
    out: list[str] = []
    Selinux().run(context(sys, "enforcing=1", data={**DATA, "domain": DOMAIN}, out=out))
    assert kinds(sys) == ["Mount", "LoadPolicy", "WriteKernelFile", "WriteKernelFile",
                          "SetXattr", "Relabel"]
    assert sys.applied[3] == WriteKernelFile("/proc/self/attr/current", DOMAIN.encode())
    assert "PID 1 in initium_t" in "".join(out)


def test_a_refused_domain_fails_closed_when_enforcing() -> None:
    def refuse(_: MemorySystem, op: ops.Op) -> None:
        if isinstance(op, WriteKernelFile) and op.path == "/proc/self/attr/current":
            raise OSError(errno.EACCES, "Permission denied", op.path)

    sys = machine()
    sys.on_apply = refuse
    with pytest.raises(StageError) as caught:
        Selinux().run(context(sys, "enforcing=1", data={**DATA, "domain": DOMAIN}))
    assert "cannot enter its domain" in caught.value.cause and caught.value.security
    out: list[str] = []
    Selinux().run(context(sys, "enforcing=0", data={**DATA, "domain": DOMAIN}, out=out))
    assert "cannot enter its domain" in "".join(out) and "PID 1 in kernel_t" in "".join(out)


def test_nodes_made_after_the_load_are_labelled_at_switch_root() -> None:
    visited = frozenset({(5, 1), (5, 2)})
    sys = machine()
    ctx = context(sys, "enforcing=1")
    # The walks' replies, first pass then second, as the kernel would give them.
    replies = iter([(7, (), ("/dev/null=x",), visited), (2, (), (), frozenset())])
    original = sys.apply

    def apply(op: ops.Op) -> object:
        result = original(op)
        return next(replies) if isinstance(op, Relabel) else result

    sys.apply = apply  # type: ignore[method-assign]
    out: list[str] = []
    ctx.console = Console(out.append)
    Selinux().run(ctx)
    assert [t.name for t in ctx.teardowns] == ["label the nodes made since the policy load"]
    ctx.run_teardowns()
    relabels = [op for op in sys.applied if isinstance(op, Relabel)]
    assert relabels[0].seen == frozenset() and relabels[0].tops == ("/dev", "/run")
    assert relabels[1] == Relabel(("/dev",), DATA["rules"], probes=(), seen=visited)
    assert "2 nodes made under /dev since the policy load labelled" in "".join(out)


def test_mode_from_the_image_when_the_command_line_says_nothing() -> None:
    sys = machine()
    Selinux().run(context(sys, data={**DATA, "mode": "permissive"}))
    assert WriteKernelFile("/sys/fs/selinux/enforce", b"0") in sys.applied
    sys = machine()
    Selinux().run(context(sys))
    assert not any(isinstance(op, WriteKernelFile) for op in sys.applied)


def test_selinux_0_skips_the_stage() -> None:
    assert not Selinux().enabled(context(machine(), "selinux=0"))
    assert Selinux().enabled(context(machine(), "selinux=1"))


@pytest.mark.parametrize(("sys", "cause"), [
    (machine(selinuxfs=False), "the kernel has no SELinux enabled"),
    (machine(policy=False), "no SELinux policy in this image"),
    (machine(refuse=LoadPolicy), "the kernel refused the policy"),
    (machine(refuse=Relabel), "cannot relabel /dev, /run"),
])
def test_enforcing_fails_closed(sys: MemorySystem, cause: str) -> None:
    with pytest.raises(StageError) as caught:
        Selinux().run(context(sys, "enforcing=1"))
    assert caught.value.security
    assert cause in caught.value.cause


def test_no_selinux_in_the_kernel_is_quiet_unless_enforcing() -> None:
    out: list[str] = []
    sys = machine(selinuxfs=False)
    Selinux().run(context(sys, out=out))
    assert sys.applied == [] and out == []


@pytest.mark.parametrize(("sys", "cause"), [
    (machine(policy=False), "no SELinux policy in this image"),
    (machine(refuse=LoadPolicy), "the kernel refused the policy"),
])
def test_permissive_failures_are_logged_and_ignored(sys: MemorySystem, cause: str) -> None:
    out: list[str] = []
    Selinux().run(context(sys, "enforcing=0", out=out))
    assert cause in "".join(out) and "ignoring" in "".join(out)


def test_enforcing_failure_stops_the_boot_without_a_shell() -> None:
    sys = machine(refuse=LoadPolicy)
    plan = Plan("6.1.0-test", (StageEntry("selinux", "initium.stages.selinux:Selinux", DATA),),
                has_shell=True)
    out: list[str] = []
    ctx = BootContext(sys, Cmdline(), BootOptions(), plan, Console(out.append))
    runner = Runner([Selinux()], ctx)
    ctx.set_cmdline(parse("enforcing=1 rd.shell"))
    outcome = runner.run()
    assert not outcome.ok and outcome.action == "halt"
    assert not any(isinstance(op, ops.Spawn) for op in sys.applied)


# -- the builder's labels -------------------------------------------------------

CONTEXTS = """\
/.*\tsystem_u:object_r:default_t:s0
/dev(/.*)?\tsystem_u:object_r:device_t:s0
/dev/null\t-c\tsystem_u:object_r:null_device_t:s0
/dev/[shmxv]d[^/]*\t-b\tsystem_u:object_r:fixed_disk_device_t:s0
/dev/pts(/.*)?\t<<none>>
/usr/bin(/.*)?\tsystem_u:object_r:bin_t:s0
/usr/bin/.*getty\t--\tsystem_u:object_r:getty_exec_t:s0
"""


def test_labeller_follows_libselinux_order_types_and_subs() -> None:
    labeller = Labeller(parse_file_contexts(CONTEXTS), [("/bin", "/usr/bin")])
    ctx = {p: (s.context if s else None) for p, s in (
        ("/dev/null", labeller.lookup("/dev/null", stat.S_IFCHR)),
        ("/dev/null-as-file", labeller.lookup("/dev/null", stat.S_IFREG)),
        ("/dev/vda", labeller.lookup("/dev/vda", stat.S_IFBLK)),
        ("/bin/agetty", labeller.lookup("/bin/agetty", stat.S_IFREG)),
        ("/init", labeller.lookup("/init", stat.S_IFREG)))}
    assert ctx == {"/dev/null": "system_u:object_r:null_device_t:s0",
                   "/dev/null-as-file": "system_u:object_r:device_t:s0",
                   "/dev/vda": "system_u:object_r:fixed_disk_device_t:s0",
                   "/bin/agetty": "system_u:object_r:getty_exec_t:s0",
                   "/init": "system_u:object_r:default_t:s0"}
    assert labeller.lookup("/dev/pts/0", stat.S_IFCHR) == Spec("/dev/pts(/.*)?", "", None)


def test_boot_rules_agree_with_the_builder() -> None:
    labeller = Labeller(parse_file_contexts(CONTEXTS))
    data, refused = labeller.boot_rules()
    assert refused == []
    rules = Rules.from_data(data)
    for path, mode in (("/dev/null", stat.S_IFCHR), ("/dev/vda", stat.S_IFBLK),
                       ("/dev/sda1", stat.S_IFBLK), ("/dev/pts/3", stat.S_IFCHR),
                       ("/dev/input/event0", stat.S_IFCHR), ("/run", stat.S_IFDIR)):
        spec = labeller.lookup(path, mode)
        assert rules.lookup(path, mode) == (spec is not None, spec.context if spec else None)


def test_host_policy_needs_selinux_not_disabled(tmp_path: object) -> None:
    from pathlib import Path

    root = Path(str(tmp_path))
    (root / "default/policy").mkdir(parents=True)
    (root / "default/policy/policy.33").write_bytes(b"x")
    (root / "config").write_text("SELINUX=permissive\nSELINUXTYPE=default\n")
    assert host_policy_dir(str(root / "config")) == str(root / "default")
    (root / "config").write_text("SELINUX=disabled\nSELINUXTYPE=default\n")
    assert host_policy_dir(str(root / "config")) is None


# -- the boot-time matcher against Python's re ---------------------------------------

PATTERNS = ["/dev/.*", "/dev/[shmxv]d[^/]*", "/dev/s(cd|r)[^/]*", "/dev/n?(raw)?[qr]ft[0-3]",
            "/dev/pts(/.*)?", "/run/\\.?acpid\\.socket", "/dev/tty[0-9]{1,3}", "/dev/(a|b|)x+",
            "/dev/ng[0-9]+n[0-9]+", "/dev/[^a-c-]?z"]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(PATTERNS),
       st.text(alphabet="/devnulsdabcrqft0123456789xz.-", max_size=14))
def test_matcher_agrees_with_re(pattern: str, tail: str) -> None:
    path = "/dev/" + tail if not tail.startswith("/") else tail
    assert matches(compile_regex(pattern), path) == bool(re.fullmatch(pattern, path))
    if matches(compile_regex(pattern), path):
        assert path.startswith(literal_prefix(pattern))


@pytest.mark.parametrize("pattern", ["/dev/\\d+", "/dev/[[:digit:]]", "/dev/(?:x)", "/dev/(x",
                                     "/dev/x{99}"])
def test_matcher_refuses_what_it_does_not_know(pattern: str) -> None:
    with pytest.raises(RuleError):
        compile_regex(pattern)


@pytest.mark.skipif(not os.path.exists("/etc/selinux/default/contexts/files/file_contexts"),
                    reason="selinux-policy-default not installed")
def test_debian_policy_compiles_for_boot() -> None:
    labeller = Labeller.from_dir("/etc/selinux/default")
    data, refused = labeller.boot_rules()
    assert refused == []
    rules = Rules.from_data(data)
    for path, mode in (("/dev/null", stat.S_IFCHR), ("/dev/console", stat.S_IFCHR),
                       ("/dev/vda", stat.S_IFBLK), ("/dev/tty1", stat.S_IFCHR),
                       ("/dev/pts", stat.S_IFDIR), ("/run/udev", stat.S_IFDIR)):
        spec = labeller.lookup(path, mode)
        assert rules.lookup(path, mode) == (spec is not None, spec.context if spec else None)
    assert rules.lookup("/dev/null", stat.S_IFCHR)[1] == "system_u:object_r:null_device_t:s0"
    # Every node this machine has, and names made up from the policy's own
    # literal prefixes: the indexed lookup answers as libselinux's order.
    paths = [(p, m) for p, m in _tree("/dev") + _tree("/run")][:3000]
    paths += [(spec.regex.split("(")[0].split("[")[0].rstrip("\\.?*+") + tail, mode)
              for spec in labeller.specs if spec.regex.startswith(("/dev", "/run"))
              for tail, mode in (("", stat.S_IFCHR), ("0", stat.S_IFBLK), ("/x", stat.S_IFDIR))]
    assert len(paths) > 500
    for path, mode in paths:
        spec = labeller.lookup(path, mode)
        assert rules.lookup(path, mode) == (spec is not None, spec.context if spec else None), path


def _tree(top: str) -> list[tuple[str, int]]:
    found = []
    for folder, dirs, files in os.walk(top):
        for name in dirs + files:
            path = os.path.join(folder, name)
            try:
                found.append((path, os.lstat(path).st_mode))
            except OSError:
                continue
    return found


def _type_record(name: bytes, value: int) -> bytes:
    """A type as policy version 24+ stores it: length, value, properties, bounds, name."""
    return b"".join(n.to_bytes(4, "little") for n in (len(name), value, 1, 0)) + name


def test_the_domain_only_when_the_policy_declares_initium_t(tmp_path: object) -> None:
    from initium.packaging.selinux import defines_type, domain_context

    with_it = b"junk" + _type_record(b"kernel_t", 3) + _type_record(b"initium_t", 9)
    longer = b"junk" + _type_record(b"initium_tmp_t", 9)
    assert defines_type(with_it, "initium_t")
    assert not defines_type(longer, "initium_t")
    assert not defines_type(b"initium_t" * 4, "initium_t")  # no length word before it
    directory = str(tmp_path)
    assert domain_context(directory, longer) is None
    assert domain_context(directory, with_it) == "system_u:system_r:initium_t:s0"
    os.makedirs(os.path.join(directory, "contexts"))
    with open(os.path.join(directory, "contexts", "initrc_context"), "w") as f:
        f.write("system_u:system_r:initrc_t:s0-s15:c0.c1023\n")
    assert domain_context(directory, with_it) == "system_u:system_r:initium_t:s0-s15:c0.c1023"


def test_the_rules_table_is_read_once_for_both_passes(tmp_path: object) -> None:
    import marshal as m
    import time

    from initium.stages.selinux import _load_rules

    path = os.path.join(str(tmp_path), "rules.marshal")
    data, _ = Labeller(parse_file_contexts(CONTEXTS)).boot_rules()
    with open(path, "wb") as f:
        f.write(m.dumps(data, 2))
    first = _load_rules(path)
    assert _load_rules(path) is first
    assert first.lookup("/dev/null", stat.S_IFCHR) == (True, "system_u:object_r:null_device_t:s0")
    time.sleep(0.01)
    with open(path, "wb") as f:  # another table: read again
        f.write(m.dumps({"exact": {}, "specs": []}, 2))
    assert _load_rules(path) is not first
    assert _load_rules(path).lookup("/dev/null", stat.S_IFCHR) == (False, None)
