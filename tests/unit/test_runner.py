"""initium.runner: ordering stages, running them, and what happens when one fails."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, cast

import pytest
from initium import ops
from initium.cmdline import Cmdline, parse
from initium.console import Console
from initium.failure import SHELL
from initium.memsystem import MemorySystem
from initium.options import BootOptions
from initium.plan import Plan
from initium.runner import (
    MAX_SHELL_ROUNDS,
    TIMELINE_PATH,
    OrderError,
    Outcome,
    Runner,
    TimelineEntry,
    break_stage,
    failure_message,
    format_timeline,
    order,
)
from initium.stage import BootContext, Stage, StageError

# --------------------------------------------------------------------------
# fakes


class FakeStage(Stage):
    """Records each run as an operation, then fails with the next queued error, if any."""

    def __init__(self, errors: Sequence[BaseException] = (), enabled: bool = True,
                 takes: float = 0.0) -> None:
        self.errors = list(errors)
        self.is_enabled = enabled
        self.takes = takes
        self.runs = 0

    def enabled(self, ctx: BootContext) -> bool:
        return self.is_enabled

    def run(self, ctx: BootContext) -> None:
        self.runs += 1
        ctx.sys.apply(ops.MakeDir(f"/ran/{self.name}"))
        ctx.sys.sleep(self.takes)
        if self.errors:
            raise self.errors.pop(0)


def stage(name: str, *, after: Sequence[str] = (), before: Sequence[str] = (),
          requires: Sequence[str] = (), final: bool = False,
          errors: Sequence[BaseException] = (), enabled: bool = True,
          takes: float = 0.0) -> FakeStage:
    attrs: dict[str, Any] = {"name": name, "after": tuple(after), "before": tuple(before),
                             "requires": tuple(requires), "final": final}
    cls = cast("type[FakeStage]", type(f"Fake_{name}", (FakeStage,), attrs))
    return cls(errors, enabled, takes)


class Machine:
    """A BootContext on a MemorySystem, with the console captured line by line."""

    def __init__(self, cmdline: str | None = "", *, has_shell: bool = False,
                 default_emergency: str | None = None, sys: MemorySystem | None = None) -> None:
        self.sys = sys if sys is not None else MemorySystem()
        self.out: list[str] = []
        self.console = Console(self.out.append)
        plan = Plan("6.1.0-test", (), has_shell, default_emergency)
        self.ctx = BootContext(self.sys, Cmdline(), BootOptions(), plan, self.console)
        if cmdline is not None:
            self.ctx.set_cmdline(parse(cmdline))

    def run(self, stages: Sequence[Stage], started: float | None = None) -> Outcome:
        return Runner(stages, self.ctx, started).run()

    @property
    def text(self) -> str:
        return "".join(self.out)

    def lines(self, needle: str) -> list[str]:
        return [line for line in self.text.splitlines() if needle in line]

    def ran(self) -> list[str]:
        """Stage runs and shells, in order."""
        seq: list[str] = []
        for op in self.sys.applied:
            if isinstance(op, ops.MakeDir) and op.path.startswith("/ran/"):
                seq.append(op.path[len("/ran/"):])
            elif isinstance(op, ops.Spawn):
                seq.append("SHELL")
        return seq

    def stops(self) -> list[str]:
        return [op.action for op in self.sys.applied if isinstance(op, ops.PowerOff)]

    def shells(self) -> list[ops.Spawn]:
        return [op for op in self.sys.applied if isinstance(op, ops.Spawn)]


def statuses(outcome: Outcome) -> list[tuple[str, str]]:
    return [(e.stage, e.status) for e in outcome.timeline]


# --------------------------------------------------------------------------
# order


def names(stages: Sequence[Stage]) -> list[str]:
    return [s.name for s in stages]


def test_order_ties_broken_by_name() -> None:
    assert names(order([stage("c"), stage("a"), stage("b")])) == ["a", "b", "c"]


def test_order_after() -> None:
    assert names(order([stage("a", after=["c"]), stage("b"), stage("c")])) == ["b", "c", "a"]


def test_order_before() -> None:
    assert names(order([stage("a"), stage("b"), stage("z", before=["a"])])) == ["b", "z", "a"]


def test_order_requires_implies_after() -> None:
    assert names(order([stage("a", requires=["b"]), stage("b")])) == ["b", "a"]


def test_order_ignores_after_and_before_of_absent_stages() -> None:
    assert names(order([stage("b", after=["nope"]), stage("a", before=["gone"])])) == ["a", "b"]


def test_order_is_stable_whatever_the_input_order() -> None:
    stages = [stage("root", after=["modules"]), stage("modules", after=["early-mounts"]),
              stage("early-mounts"), stage("console", after=["early-mounts"]),
              stage("switch-root", after=["root"], requires=["root"])]
    expected = ["early-mounts", "console", "modules", "root", "switch-root"]
    assert names(order(stages)) == expected
    assert names(order(list(reversed(stages)))) == expected


def test_order_the_default_stages() -> None:
    from initium.stages.console import KernelLog
    from initium.stages.early_mounts import EarlyMounts
    from initium.stages.modules import Modules
    from initium.stages.root import Root
    from initium.stages.switch_root import SwitchRoot

    got = order([SwitchRoot(), Root(), Modules(), KernelLog(), EarlyMounts()])
    assert names(got) == ["early-mounts", "console", "modules", "root", "switch-root"]


def test_order_two_cycle_names_it() -> None:
    with pytest.raises(OrderError) as info:
        order([stage("a", after=["b"]), stage("b", after=["a"]), stage("c")])
    assert str(info.value) == "stages form a cycle: a => b => a"


def test_order_three_cycle_in_run_order() -> None:
    # b runs after a, c after b, a after c
    with pytest.raises(OrderError) as info:
        order([stage("a", after=["c"]), stage("b", after=["a"]), stage("c", after=["b"]),
               stage("d", after=["a"])])
    assert str(info.value) == "stages form a cycle: a => b => c => a"


def test_order_cycle_through_before() -> None:
    with pytest.raises(OrderError, match="cycle: x => y => x"):
        order([stage("x", before=["y"]), stage("y", before=["x"])])


def test_order_self_cycle() -> None:
    with pytest.raises(OrderError, match="cycle: a => a"):
        order([stage("a", after=["a"])])


def test_order_missing_requirement_names_both() -> None:
    with pytest.raises(OrderError) as info:
        order([stage("switch-root", requires=["root"]), stage("modules")])
    message = str(info.value)
    assert "switch-root" in message
    assert "root" in message.replace("switch-root", "")
    assert "not in the image" in message


def test_order_duplicate_names() -> None:
    with pytest.raises(OrderError, match="two stages are named 'a'"):
        order([stage("a"), stage("b"), stage("a")])


def test_order_empty() -> None:
    assert order([]) == []


# --------------------------------------------------------------------------
# a boot that works


def test_all_stages_run_in_the_given_order() -> None:
    m = Machine()
    stages = [stage("b"), stage("a"), stage("c")]
    outcome = m.run(stages)
    assert outcome.ok
    assert outcome.failed_stage is None
    assert outcome.action is None
    assert outcome.problems == []
    assert m.ran() == ["b", "a", "c"]
    assert statuses(outcome) == [("b", "ok"), ("a", "ok"), ("c", "ok")]
    assert m.stops() == []
    assert "ERROR" not in m.text
    assert m.ctx.stage == ""


def test_timeline_uses_the_system_clock() -> None:
    m = Machine()
    outcome = m.run([stage("a", takes=1.5), stage("b", takes=0.25)])
    (a, b) = outcome.timeline
    assert (a.start, a.end) == (0.0, 1.5)
    assert (b.start, b.end) == (1.5, 1.75)


def test_disabled_stage_is_skipped_in_the_timeline() -> None:
    m = Machine()
    off = stage("b", enabled=False)
    outcome = m.run([stage("a"), off, stage("c")])
    assert outcome.ok
    assert off.runs == 0
    assert m.ran() == ["a", "c"]
    assert statuses(outcome) == [("a", "ok"), ("b", "skipped"), ("c", "ok")]
    skipped = outcome.timeline[1]
    assert skipped.start == skipped.end


# --------------------------------------------------------------------------
# failures


def test_stage_error_gives_one_line_then_the_action() -> None:
    m = Machine()
    stages = [stage("a"), stage("b", errors=[StageError("disk gone", "plug it in")]),
              stage("c")]
    outcome = m.run(stages)
    assert not outcome.ok
    assert outcome.failed_stage == "b"
    assert outcome.reason == "disk gone"
    assert outcome.action == "halt"
    assert m.lines("failed") == ["initium: ERROR b failed: disk gone; try: plug it in"]
    assert m.ran() == ["a", "b"]
    assert m.stops() == ["halt"]
    assert isinstance(m.sys.applied[-1], ops.PowerOff)
    assert m.shells() == []
    assert statuses(outcome) == [("a", "ok"), ("b", "failed")]
    assert m.lines("boot stopped in b: halt")


def test_stage_error_without_hint() -> None:
    m = Machine()
    m.run([stage("a", errors=[StageError("no luck")])])
    assert m.lines("failed") == ["initium: ERROR a failed: no luck"]
    assert "try:" not in m.text


def test_multi_line_cause_stays_one_console_line() -> None:
    m = Machine()
    m.run([stage("a", errors=[StageError("first\nsecond\x1b[2J", "x\ny")])])
    (line,) = m.lines("a failed")
    assert line == "initium: ERROR a failed: first\\x0asecond\\x1b[2J; try: x\\x0ay"


def test_failure_message() -> None:
    assert failure_message("root", "gone", "") == "root failed: gone"
    assert failure_message("root", "gone", "wait") == "root failed: gone; try: wait"


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyError("k"), KeyboardInterrupt(),
                                   SystemExit(3), GeneratorExit(), MemoryError()],
                         ids=lambda e: type(e).__name__)
def test_unexpected_exceptions_are_caught(error: BaseException) -> None:
    m = Machine()
    outcome = m.run([stage("a", errors=[error]), stage("b")])
    assert not outcome.ok
    assert outcome.failed_stage == "a"
    assert outcome.reason is not None
    assert outcome.reason.startswith(f"unexpected {type(error).__name__}")
    (line,) = m.lines("a failed")
    assert f"unexpected {type(error).__name__}" in line
    assert "this is a bug in initium" in line
    assert m.stops() == ["halt"]
    assert m.ran() == ["a"]


@pytest.mark.parametrize("action", ["halt", "poweroff", "reboot"])
def test_rd_emergency_actions(action: str) -> None:
    m = Machine(f"rd.emergency={action}", has_shell=True)
    outcome = m.run([stage("a", errors=[StageError("x")])])
    assert outcome.action == action
    assert m.stops() == [action]
    assert m.shells() == []


def test_plan_default_emergency_is_used() -> None:
    m = Machine(has_shell=True, default_emergency="reboot")
    m.run([stage("a", errors=[StageError("x")])])
    assert m.stops() == ["reboot"]


def test_shell_then_retry_succeeds() -> None:
    m = Machine(has_shell=True)
    a = stage("a", errors=[StageError("not yet")])
    outcome = m.run([a, stage("b")])
    assert outcome.ok
    assert a.runs == 2
    assert m.ran() == ["a", "SHELL", "a", "b"]
    assert m.shells() == [ops.Spawn((SHELL,), timeout=None, console=True)]
    assert m.stops() == []
    assert m.lines("shell exited; retrying a")
    assert statuses(outcome) == [("a", "failed"), ("a", "ok"), ("b", "ok")]


def test_no_shell_in_the_image_means_halt() -> None:
    m = Machine(has_shell=False)
    m.run([stage("a", errors=[StageError("x")])])
    assert m.shells() == []
    assert m.stops() == ["halt"]


def test_rd_shell_0_forbids_the_shell() -> None:
    m = Machine("rd.shell=0", has_shell=True)
    m.run([stage("a", errors=[StageError("x")])])
    assert m.shells() == []
    assert m.stops() == ["halt"]


def test_rd_emergency_shell_without_a_shell_says_why() -> None:
    m = Machine("rd.emergency=shell rd.shell=0", has_shell=True)
    outcome = m.run([stage("a", errors=[StageError("x")])])
    assert outcome.action == "halt"
    assert m.lines("rd.shell=0 forbids the shell; halt")


def test_never_a_shell_after_a_security_failure() -> None:
    m = Machine("rd.shell=1", has_shell=True)
    outcome = m.run([stage("selinux", errors=[StageError("policy", security=True)]),
                     stage("b")])
    assert outcome.action == "halt"
    assert m.shells() == []
    assert m.ran() == ["selinux"]


def test_security_failure_with_rd_emergency_shell_halts_and_says_why() -> None:
    m = Machine("rd.emergency=shell", has_shell=True)
    m.run([stage("ima", errors=[StageError("appraise", security=True)])])
    assert m.shells() == []
    assert m.stops() == ["halt"]
    assert m.lines("no shell after a security failure; halt")


def test_shell_rounds_are_bounded_then_halt() -> None:
    m = Machine(has_shell=True)
    errors = [StageError(f"try {i}") for i in range(MAX_SHELL_ROUNDS + 5)]
    a = stage("a", errors=errors)
    outcome = m.run([a, stage("b")])
    assert not outcome.ok
    assert outcome.action == "halt"
    assert a.runs == MAX_SHELL_ROUNDS + 1
    assert len(m.shells()) == MAX_SHELL_ROUNDS
    assert m.ran() == ["a", "SHELL"] * MAX_SHELL_ROUNDS + ["a"]
    assert m.stops() == ["halt"]
    assert outcome.reason == f"try {MAX_SHELL_ROUNDS}"
    assert statuses(outcome) == [("a", "failed")] * (MAX_SHELL_ROUNDS + 1)


def test_dry_run_never_starts_a_shell() -> None:
    sys = MemorySystem()
    sys.dry_run = True
    m = Machine(has_shell=True, sys=sys)
    a = stage("a", errors=[StageError("x")])
    outcome = m.run([a])
    assert not outcome.ok
    assert a.runs == 1
    assert m.shells() == []


def test_a_shell_that_cannot_start_is_reported_and_the_stage_retried() -> None:
    class NoShell(MemorySystem):
        def spawn(self, op: ops.Spawn) -> int:
            raise FileNotFoundError(2, "No such file or directory", op.argv[0])

    m = Machine(has_shell=True, sys=NoShell())
    a = stage("a", errors=[StageError("x")])
    outcome = m.run([a])
    assert outcome.ok
    assert a.runs == 2
    assert m.lines("emergency shell failed")


def test_a_failing_halt_is_reported_not_raised() -> None:
    def refuse(sys: MemorySystem, op: ops.Op) -> None:
        if isinstance(op, ops.PowerOff):
            raise PermissionError(1, "Operation not permitted")

    m = Machine(sys=MemorySystem(on_apply=refuse))
    outcome = m.run([stage("a", errors=[StageError("x")])])
    assert outcome.action == "halt"
    assert m.lines("halt failed")


def test_exception_in_enabled_is_a_stage_failure() -> None:
    class Broken(FakeStage):
        name = "broken"

        def enabled(self, ctx: BootContext) -> bool:
            raise RuntimeError("bad config")

    m = Machine()
    outcome = m.run([stage("a"), Broken(), stage("c")])
    assert not outcome.ok
    assert outcome.failed_stage == "broken"
    assert m.lines("failed") == ["initium: ERROR broken failed: unexpected RuntimeError: bad "
                                 "config; try: this is a bug in initium; boot with rd.debug "
                                 "and report the log"]
    assert m.stops() == ["halt"]
    assert m.ran() == ["a"]
    assert statuses(outcome) == [("a", "ok"), ("broken", "failed")]


def test_exception_with_a_broken_str_is_still_caught() -> None:
    class Weird(Exception):
        def __str__(self) -> str:
            raise ValueError("no text")

    m = Machine()
    outcome = m.run([stage("a", errors=[Weird()])])
    assert outcome.failed_stage == "a"
    assert outcome.reason == "unexpected Weird: (no message)"
    assert m.stops() == ["halt"]


# --------------------------------------------------------------------------
# rd.break


def test_rd_break_spawns_the_shell_before_the_stage_then_continues() -> None:
    m = Machine("rd.break=b", has_shell=True)
    outcome = m.run([stage("a"), stage("b"), stage("c")])
    assert outcome.ok
    assert m.ran() == ["a", "SHELL", "b", "c"]
    assert statuses(outcome) == [("a", "ok"), ("b", "break"), ("b", "ok"), ("c", "ok")]
    assert m.lines("rd.break: stopping before b")


def test_rd_break_several_stages() -> None:
    m = Machine("rd.break=c rd.break=a", has_shell=True)
    m.run([stage("a"), stage("b"), stage("c")])
    assert m.ran() == ["SHELL", "a", "b", "SHELL", "c"]


def test_bare_rd_break_stops_before_switch_root() -> None:
    m = Machine("rd.break", has_shell=True)
    m.run([stage("root"), stage("switch-root", final=True)])
    assert m.ran() == ["root", "SHELL", "switch-root"]


def test_rd_break_without_a_shell_stops_the_boot() -> None:
    m = Machine("rd.break=b", has_shell=False)
    b = stage("b")
    outcome = m.run([stage("a"), b, stage("c")])
    assert not outcome.ok
    assert outcome.failed_stage == "b"
    assert outcome.reason == "rd.break"
    assert outcome.action == "halt"
    assert b.runs == 0
    assert m.stops() == ["halt"]
    assert statuses(outcome) == [("a", "ok"), ("b", "break")]


@pytest.mark.parametrize("policy", ["rd.emergency=poweroff", "rd.shell=0",
                                    "rd.shell=0 rd.emergency=halt"])
def test_rd_break_opens_the_shell_whatever_the_failure_policy(policy: str) -> None:
    """dracut: rd.shell= and rd.emergency= govern failures, not an explicit break."""
    m = Machine(f"rd.break=a {policy}", has_shell=True)
    outcome = m.run([stage("a")])
    assert outcome.ok
    assert m.ran() == ["SHELL", "a"]
    assert m.stops() == []


@pytest.mark.parametrize(("hook", "stages", "stops_before"), [
    ("cmdline", ["early-mounts", "console", "modules", "root", "switch-root"], "console"),
    ("pre-udev", ["early-mounts", "modules", "udev", "root"], "udev"),
    ("pre-udev", ["early-mounts", "modules", "root"], "modules"),
    ("pre-trigger", ["early-mounts", "modules", "root"], "modules"),
    ("initqueue", ["modules", "storage", "root"], "storage"),
    ("initqueue", ["modules", "root", "switch-root"], "root"),
    ("pre-mount", ["modules", "root", "switch-root"], "root"),
    ("mount", ["modules", "root", "switch-root"], "root"),
    ("pre-pivot", ["root", "measure", "switch-root"], "measure"),
    ("pre-pivot", ["root", "switch-root"], "switch-root"),
    ("cleanup", ["root", "measure", "switch-root"], "switch-root"),
])
def test_dracut_hook_names_stop_where_a_dracut_user_expects(
        hook: str, stages: list[str], stops_before: str) -> None:
    assert break_stage(hook, stages) == stops_before
    chain = [stage(n, after=stages[:i][-1:]) for i, n in enumerate(stages)]
    m = Machine(f"rd.break={hook}", has_shell=True)
    m.run(chain)
    ran = m.ran()
    assert ran[ran.index("SHELL") + 1] == stops_before


def test_a_failure_past_the_point_of_no_return_is_not_retried() -> None:
    """Once /dev was moved, running the stage again would act on a half-switched machine."""
    class Moves(FakeStage):
        name = "switch-root"

        def run(self, ctx: BootContext) -> None:
            self.runs += 1
            ctx.sys.apply(ops.MoveMount("/dev", "/sysroot/dev"))
            raise OSError(5, "Input/output error")

    sys = MemorySystem(files={"/sysroot/dev/": b""}, mounted=[("devtmpfs", "/dev", "devtmpfs")])
    m = Machine(has_shell=True, sys=sys)
    moves = Moves()
    outcome = m.run([moves])
    assert moves.runs == 1
    assert m.ran() == ["SHELL"]
    assert m.stops() == ["halt"]
    assert not outcome.ok
    assert m.lines("switch-root cannot be retried: 'mount --move /dev /sysroot/dev' was "
                   "already done")


def test_a_failure_before_the_point_of_no_return_is_retried_after_the_shell() -> None:
    m = Machine(has_shell=True)
    a = stage("a", errors=[OSError(5, "Input/output error")])
    outcome = m.run([a])
    assert outcome.ok
    assert a.runs == 2
    assert m.sys.point_of_no_return is None


def test_unknown_rd_break_stage_is_a_problem_not_a_stop() -> None:
    m = Machine("rd.break=nope,b", has_shell=True)
    outcome = m.run([stage("a"), stage("b")])
    assert outcome.ok
    assert outcome.problems == ["rd.break=nope: no such stage or dracut hook in this image "
                                "(stages: a, b)"]
    assert m.lines("rd.break=nope: no such stage or dracut hook in this image")
    assert m.ran() == ["a", "SHELL", "b"]


def test_rd_break_honoured_once_the_command_line_is_loaded() -> None:
    class LoadsCmdline(FakeStage):
        name = "early-mounts"

        def run(self, ctx: BootContext) -> None:
            super().run(ctx)
            ctx.set_cmdline(parse("rd.break=b"))

    m = Machine(None, has_shell=True)
    assert not m.ctx.cmdline_loaded
    outcome = m.run([LoadsCmdline(), stage("b")])
    assert outcome.ok
    assert m.ran() == ["early-mounts", "SHELL", "b"]


# --------------------------------------------------------------------------
# the timeline file


def read_timeline(m: Machine) -> dict[str, Any]:
    doc = json.loads(m.sys.files[TIMELINE_PATH])
    assert isinstance(doc, dict)
    return doc


def test_timeline_written_before_the_final_stage() -> None:
    m = Machine()
    outcome = m.run([stage("a", takes=1.0), stage("off", enabled=False),
                     stage("switch-root", final=True)], started=0.5)
    assert outcome.ok
    assert ops.MakeDir("/run/initium") in m.sys.applied
    doc = read_timeline(m)
    assert doc["init_start"] == 0.5
    assert [(s["stage"], s["status"]) for s in doc["stages"]] == [("a", "ok"),
                                                                   ("off", "skipped")]
    assert doc["stages"][0] == {"stage": "a", "start": 0.0, "end": 1.0, "status": "ok"}
    # the file is written before the final stage runs (it does not return)
    writes = [i for i, op in enumerate(m.sys.applied) if isinstance(op, ops.WriteFile)]
    final = m.sys.applied.index(ops.MakeDir("/ran/switch-root"))
    assert writes and writes[-1] < final
    assert "initium timeline" not in m.text


def test_timeline_written_when_the_boot_stops() -> None:
    m = Machine()
    m.run([stage("a"), stage("b", errors=[StageError("x")]), stage("switch-root", final=True)])
    doc = read_timeline(m)
    assert [(s["stage"], s["status"]) for s in doc["stages"]] == [("a", "ok"), ("b", "failed")]


@pytest.mark.parametrize("flag", ["initium.timeline", "rd.debug"])
def test_timeline_printed_when_asked(flag: str) -> None:
    m = Machine(flag)
    m.run([stage("early", takes=0.5), stage("switch-root", final=True)], started=0.125)
    assert "initium timeline (seconds since kernel start):" in m.text
    (row,) = [line for line in m.text.splitlines() if line.split()[:1] == ["early"]]
    assert row.split() == ["early", "0.000", "0.500", "0.500", "ok"]
    assert "(init start)" in m.text


def test_timeline_not_printed_by_default() -> None:
    m = Machine("")
    m.run([stage("a"), stage("switch-root", final=True)])
    assert TIMELINE_PATH in m.sys.files
    assert "initium timeline" not in m.text


def test_format_timeline() -> None:
    text = format_timeline([TimelineEntry("root", 1.0, 3.5, "ok")], None)
    lines = text.splitlines()
    assert lines[0] == "initium timeline (seconds since kernel start):"
    assert lines[-1].split() == ["root", "1.000", "3.500", "2.500", "ok"]
    assert "(init start)" not in text
    assert text.endswith("\n")
