"""The core is open: a plugin outside the package adds an operation, an option, state, a hook.

The plugin lives in tests/plugins/netdemo.py; nothing in initium knows it.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from initium import ops
from initium.cmdline import Cmdline, parse
from initium.console import Console, KmsgWriter
from initium.memsystem import MemorySystem
from initium.options import BootOptions, Option, OptionTableError, option_table, parse_options
from initium.plan import Plan
from initium.record import record
from initium.runner import OrderError, Runner, order
from initium.stage import BootContext, Stage, StageError
from initium.system import DryRunSystem

from tests.plugins.netdemo import LINK, BringLink, Lease, NetDemo


class Finish(Stage):
    name = "switch-root"
    final = True

    def run(self, ctx: BootContext) -> None:
        ctx.run_teardowns()


def context(sys: MemorySystem | DryRunSystem, _unused: str, out: list[str]) -> BootContext:
    ctx = BootContext(sys, Cmdline(), BootOptions(), Plan("6.1.0-test", ()), Console(out.append))
    return ctx


def test_a_plugin_operation_option_state_and_teardown_on_the_memory_machine() -> None:
    out: list[str] = []
    sys = MemorySystem()
    ctx = context(sys, "", out)
    runner = Runner([NetDemo(), Finish()], ctx)
    ctx.set_cmdline(parse("netdemo.link=wlan0 rd.unknown=1"))
    outcome = runner.run()
    assert outcome.ok, out
    assert ctx.state.get(Lease) == Lease("wlan0", 7)
    assert [op for op in sys.applied if isinstance(op, BringLink)] == [
        BringLink("wlan0"), BringLink("wlan0", up=False)]
    # the teardown ran inside switch-root, after the timeline was left for the real root
    assert isinstance(sys.applied[-2], ops.WriteFile)
    assert sys.applied[-1] == BringLink("wlan0", up=False)
    text = "".join(out)
    assert "unknown option rd.unknown=1" in text
    assert "netdemo.link" not in text  # known: declared by the stage


def test_the_option_default_applies_when_absent() -> None:
    out: list[str] = []
    ctx = context(MemorySystem(), "", out)
    Runner([NetDemo()], ctx)
    ctx.set_cmdline(parse(""))
    assert ctx.value(LINK) == "eth0"


def test_a_dry_run_prints_the_plugin_operation_in_its_own_words() -> None:
    lines: list[str] = []
    sys = DryRunSystem(log=lines.append)
    ctx = context(sys, "", [])
    stage = NetDemo()
    Runner([stage], ctx)
    ctx.set_cmdline(parse("netdemo.link=eth1"))
    stage.run(ctx)
    assert lines == ["ip link set eth1 up"]
    assert sys.plan == [BringLink("eth1")]


@record
class Unmodelled(ops.Op):
    def describe(self) -> str:
        return "something the memory machine cannot know"


def test_the_memory_machine_refuses_what_it_does_not_model() -> None:
    with pytest.raises(TypeError, match="does not model Unmodelled"):
        MemorySystem().apply(Unmodelled())


def test_teardowns_run_in_reverse_order_of_registration() -> None:
    out: list[str] = []
    ctx = context(MemorySystem(), "", out)
    order_seen: list[str] = []
    def stopper(name: str) -> Callable[[BootContext], None]:
        return lambda c: order_seen.append(f"{name}@{c.stage}")

    for name in ("udevd", "links", "pcr"):
        ctx.stage = name
        ctx.at_switch_root(name, stopper(name))
    ctx.stage = "switch-root"
    ctx.run_teardowns()
    assert order_seen == ["pcr@pcr", "links@links", "udevd@udevd"]
    assert ctx.stage == "switch-root"
    assert ctx.teardowns == []


def test_state_is_typed_by_class() -> None:
    @dataclass
    class Keys:
        loaded: list[str]

    ctx = context(MemorySystem(), "", [])
    assert ctx.state.get(Keys) is None
    ctx.state.put(Keys(["ima"]))
    ctx.state.put(Lease("eth0", 2))
    assert ctx.state.get(Keys) == Keys(["ima"])
    assert ctx.state.get(Lease) == Lease("eth0", 2)


def test_option_clashes_are_found_when_the_stages_are_ordered() -> None:
    class Thief(Stage):
        name = "thief"
        options = (Option("rd.timeout", "mine", "x", "x", str, owner="thief"),)

    class Squatter(Stage):
        name = "squatter"
        options = (Option("squatter.x", "root", "x", "x", str, owner="squatter"),)

    for stage in (Thief(), Squatter()):
        with pytest.raises(OrderError):
            order([stage])
    with pytest.raises(OptionTableError):
        option_table([Option("a.b", "d1", "", "", str, owner="a"),
                      Option("a.b", "d2", "", "", str, owner="b")])


def test_a_bad_value_of_a_stage_option_is_a_warning_and_the_default_stays() -> None:
    number = Option("demo.n", "demo_n", "", "", int, default=3, owner="demo")
    parsed = parse_options(parse("demo.n=x demo.n=5 demo.n=y"), [number])
    assert parsed.values == {"demo_n": 5}
    assert len(parsed.warnings) == 2


# --------------------------------------------------------------------------
# messages: nothing lost, nothing fatal


class KernelLog:
    """/dev/kmsg as the kernel has it: 10 lines per open file per 5 s, the rest dropped."""

    BURST = 10

    def __init__(self) -> None:
        self.accepted: list[str] = []
        self.dropped: list[str] = []
        self.per_fd: dict[int, int] = {}
        self.next_fd = 3
        self.closed: list[int] = []

    def open(self) -> int:
        fd, self.next_fd = self.next_fd, self.next_fd + 1
        self.per_fd[fd] = 0
        return fd

    def write(self, fd: int, data: bytes) -> int:
        assert fd not in self.closed
        self.per_fd[fd] += 1
        (self.accepted if self.per_fd[fd] <= self.BURST else self.dropped).append(data.decode())
        return len(data)  # write() succeeds either way


def test_a_burst_of_warnings_then_a_failure_loses_nothing() -> None:
    kernel = KernelLog()
    writer = KmsgWriter(kernel.open, kernel.write, kernel.closed.append)
    console: list[str] = []
    c = Console(console.append, writer, kernel_echo_below=5)
    for i in range(40):
        c.warn(f"module m{i} misbehaves")
    c.error("root failed: no block device")
    assert kernel.dropped == []
    assert len(kernel.accepted) == 41
    assert kernel.accepted[-1] == "<3>initium: root failed: no block device\n"
    assert writer.reopened == 4


def test_the_skeleton_writer_would_have_lost_the_failure() -> None:
    """The same burst through one open file: what the kernel does to it (the old behaviour)."""
    kernel = KernelLog()
    fd = kernel.open()
    seen: list[str] = []

    def one_file(line: str) -> None:
        kernel.write(fd, line.encode())

    c = Console(seen.append, one_file, kernel_echo_below=5)
    for i in range(40):
        c.warn(f"module m{i} misbehaves")
    c.error("root failed")
    assert "<3>initium: root failed\n" in kernel.dropped


def test_debug_lines_stay_off_the_kernel_log_unless_asked() -> None:
    kmsg: list[str] = []
    console: list[str] = []
    c = Console(console.append, kmsg.append, kernel_echo_below=0, debug=True)
    c.debug("mount -t proc proc /proc")
    assert kmsg == []
    assert console == ["initium: mount -t proc proc /proc\n"]
    c.kmsg_debug = True
    c.debug("again")
    assert kmsg == ["<7>initium: again\n"]


class Hostile(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no")


def test_a_console_whose_sinks_fail_in_any_way_never_raises() -> None:
    def broken(line: str) -> None:
        raise ValueError("not an OSError")

    c = Console(broken, broken, kernel_echo_below=8)
    c.error("still here")
    c.raw("and here")


@pytest.mark.parametrize("error", [
    Hostile(), StageError(Hostile(), Hostile()),  # type: ignore[arg-type]
    KeyboardInterrupt(), SystemExit(1), MemoryError(), OSError(errno.EIO, "I/O")])
def test_any_exception_from_a_stage_ends_in_a_message_and_an_action(
        error: BaseException) -> None:
    class Breaks(Stage):
        name = "breaks"

        def run(self, ctx: BootContext) -> None:
            raise error

    out: list[str] = []
    sys = MemorySystem()
    ctx = context(sys, "", out)
    ctx.set_cmdline(parse(""))
    outcome = Runner([Breaks()], ctx).run()
    assert not outcome.ok
    assert sys.powered_off == "halt"
    assert "breaks failed: " in "".join(out)
