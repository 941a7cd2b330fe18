"""Ordering stages (at build time) and running them (at boot).

Ordering uses the declared ``after``/``before``/``requires`` only, with ties
broken by name so the same set of stages always gives the same order.  The
runner is the only place where a stage failure becomes an outcome.
"""

from __future__ import annotations

import heapq

from initium import jsonlite, ops
from initium.components import read_digests
from initium.failure import Decision, carry_out, decide, decide_break
from initium.options import OptionTableError, option_table
from initium.record import asdict, field, record
from initium.stage import BootContext, Stage, StageError

TYPE_CHECKING = False  # typing's import cost is not paid at boot
if TYPE_CHECKING:
    from collections.abc import Sequence

TIMELINE_PATH = "/run/initium/timeline.json"
# Rounds of emergency shell per stage before giving up and halting: a shell
# that exits at once (no console input) must not loop forever.
MAX_SHELL_ROUNDS = 3

# dracut's rd.break hook names and the stages that play their part here: a
# break stops before the first of them the image has.  "cmdline" is special:
# dracut stops once the command line is parsed, which here is right after
# early-mounts (it reads /proc/cmdline as soon as /proc is mounted).
DRACUT_BREAKS: dict[str, tuple[str, ...]] = {
    "pre-udev": ("udev", "modules"),
    "pre-trigger": ("udev", "modules"),
    "initqueue": ("storage", "root"),
    "pre-mount": ("root",),
    "mount": ("root",),
    "pre-pivot": ("measure", "switch-root"),
    "cleanup": ("switch-root",),
}


def break_stage(name: str, stages: Sequence[str]) -> str | None:
    """The stage ``rd.break=name`` stops before: a stage name, or a dracut hook's stand-in."""
    if name in stages:
        return name
    if name == "cmdline":
        if "early-mounts" in stages:
            index = list(stages).index("early-mounts") + 1
            return stages[index] if index < len(stages) else None
        return stages[0] if stages else None
    return next((s for s in DRACUT_BREAKS.get(name, ()) if s in stages), None)


class OrderError(ValueError):
    """The stages cannot be ordered; the message names the cycle or the missing stage."""


def order(stages: Sequence[Stage]) -> list[Stage]:
    by_name: dict[str, Stage] = {}
    for stage in stages:
        if stage.name in by_name:
            raise OrderError(f"two stages are named {stage.name!r}")
        by_name[stage.name] = stage
    for stage in stages:
        missing = [r for r in stage.requires if r not in by_name]
        if missing:
            raise OrderError(f"stage {stage.name} requires {', '.join(missing)}, "
                             "which is not in the image")
    preds: dict[str, set[str]] = {name: set() for name in by_name}
    for stage in stages:
        preds[stage.name].update(a for a in (*stage.after, *stage.requires) if a in by_name)
        for b in stage.before:
            if b in by_name:
                preds[b].add(stage.name)
    succs: dict[str, set[str]] = {name: set() for name in by_name}
    for name, ps in preds.items():
        for p in ps:
            succs[p].add(name)
    waiting = {name: len(ps) for name, ps in preds.items()}
    ready = [name for name, n in waiting.items() if n == 0]
    heapq.heapify(ready)
    result: list[Stage] = []
    while ready:
        name = heapq.heappop(ready)
        result.append(by_name[name])
        for s in succs[name]:
            waiting[s] -= 1
            if waiting[s] == 0:
                heapq.heappush(ready, s)
    if len(result) != len(by_name):
        raise OrderError("stages form a cycle: " + " => ".join(_find_cycle(preds)))
    try:
        option_table([o for s in result for o in s.options])
    except OptionTableError as err:
        raise OrderError(str(err)) from None
    return result


def _find_cycle(preds: dict[str, set[str]]) -> list[str]:
    """One cycle among the stages left over, for the error message."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for p in sorted(preds[node]):
            if state.get(p) == 1:
                cycle = [*path[path.index(p):], p]
                return list(reversed(cycle))
            if p not in state:
                found = visit(p)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(preds):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return []


@record(frozen=False)
class TimelineEntry:
    stage: str
    start: float
    end: float
    status: str  # ok, skipped, failed, break


@record(frozen=False)
class Outcome:
    ok: bool
    failed_stage: str | None = None
    reason: str | None = None
    action: str | None = None
    problems: list[str] = field(default_factory=list)
    timeline: list[TimelineEntry] = field(default_factory=list)


def _text(value: object) -> str:
    """str(value), which can itself raise for a hostile or broken exception."""
    try:
        text = str(value)
    except BaseException:  # a failing __str__ must not take PID 1 down
        return "(no message)"
    return text if isinstance(text, str) else "(no message)"


def _type_name(err: BaseException) -> str:
    try:
        return str(type(err).__name__)
    except BaseException:
        return "exception"


def text_of(err: BaseException) -> str:
    """``Type: message`` for any exception, even one whose ``__str__`` raises."""
    return f"{_type_name(err)}: {_text(err)}"


def failure_message(stage: str, cause: str, hint: str) -> str:
    return f"{stage} failed: {cause}" + (f"; try: {hint}" if hint else "")


def format_timeline(entries: Sequence[TimelineEntry], started: float | None,
                    python_ready: float | None = None) -> str:
    lines = ["initium timeline (seconds since kernel start):",
             f"  {'stage':<14} {'start':>8} {'end':>8} {'took':>8}  status"]
    if python_ready is not None:
        lines.append(f"  {'(python up)':<14} {python_ready:8.3f}")
    if started is not None:
        lines.append(f"  {'(init start)':<14} {started:8.3f}")
    for e in entries:
        lines.append(f"  {e.stage:<14} {e.start:8.3f} {e.end:8.3f} {e.end - e.start:8.3f}  "
                     f"{e.status}")
    return "\n".join(lines) + "\n"


class Runner:
    def __init__(self, stages: Sequence[Stage], ctx: BootContext,
                 started: float | None = None, python_ready: float | None = None) -> None:
        self.stages = list(stages)
        self.ctx = ctx
        ctx.stage_options = tuple(o for s in self.stages for o in s.options)
        self.started = started
        self.python_ready = python_ready
        self.timeline: list[TimelineEntry] = []
        # What the builder recorded about the components this boot came from:
        # read before anything can delete the initramfs, copied into the timeline.
        self.components: list[dict[str, object]] | None = None
        self.components_error: str | None = None

    def _breaks(self, outcome: Outcome) -> set[str]:
        names = [s.name for s in self.stages]
        found: set[str] = set()
        for wanted in dict.fromkeys(self.ctx.options.breaks):
            stage = break_stage(wanted, names)
            if stage is None:
                problem = (f"rd.break={wanted}: no such stage or dracut hook in this image "
                           f"(stages: {', '.join(names)})")
                outcome.problems.append(problem)
                self.ctx.console.warn(problem + ", ignored")
                continue
            if stage != wanted:
                self.ctx.console.debug(f"rd.break={wanted}: stopping before {stage}")
            found.add(stage)
        return found

    def run(self) -> Outcome:
        """Run every stage; return only when done, in a dry run, or after a halt that returned."""
        ctx, sys = self.ctx, self.ctx.sys
        outcome = Outcome(ok=True, timeline=self.timeline)
        digests, self.components_error = read_digests(sys)
        if digests is not None:
            self.components = [d.as_dict() for d in digests]
        breaks: set[str] | None = None
        for stage in self.stages:
            ctx.stage = stage.name
            if breaks is None and ctx.cmdline_loaded:
                breaks = self._breaks(outcome)
            if breaks and stage.name in breaks:
                t = sys.monotonic()
                ctx.console.warn(f"rd.break: stopping before {stage.name}", stage=stage.name)
                decision = decide_break(ctx.plan)
                if decision.action != "shell":
                    ctx.console.warn(f"no shell ({decision.why}); {decision.action}",
                                     stage=stage.name)
                    self.timeline.append(TimelineEntry(stage.name, t, sys.monotonic(), "break"))
                    return self._stop(outcome, stage.name, "rd.break", decision)
                self._shell(decision)
                self.timeline.append(TimelineEntry(stage.name, t, sys.monotonic(), "break"))
            if stage.final:
                self._write_timeline()
            if not self._run_stage(stage, outcome):
                return outcome
        ctx.stage = ""
        return outcome

    def _run_stage(self, stage: Stage, outcome: Outcome) -> bool:
        ctx, sys = self.ctx, self.ctx.sys
        for _round in range(MAX_SHELL_ROUNDS + 1):
            start = sys.monotonic()
            try:
                if not stage.enabled(ctx):
                    self.timeline.append(TimelineEntry(stage.name, start, start, "skipped"))
                    return True
                stage.run(ctx)
            except StageError as err:
                cause, hint = _text(err.cause), _text(err.hint)
                security, retry = err.security is True, err.retry is not False
            except BaseException as err:  # PID 1 must survive anything, even KeyboardInterrupt
                cause = f"unexpected {_type_name(err)}: {_text(err)}"
                hint = "this is a bug in initium; boot with rd.debug and report the log"
                security, retry = False, True
            else:
                self.timeline.append(TimelineEntry(stage.name, start, sys.monotonic(), "ok"))
                ctx.debug(f"done in {sys.monotonic() - start:.3f} s")
                return True
            self.timeline.append(TimelineEntry(stage.name, start, sys.monotonic(), "failed"))
            ctx.console.error(failure_message(stage.name, cause, hint))
            crossed = sys.point_of_no_return
            if crossed is not None:
                retry = False
                ctx.console.warn(f"{stage.name} cannot be retried: '{crossed}' was already "
                                 "done; a shell, if offered, runs in that half-switched system "
                                 "to look around: the real root may be at / or /sysroot; "
                                 "reboot when done")
            decision = decide(ctx.options, ctx.plan, security=security)
            if decision.why:
                ctx.console.warn(f"{decision.why}; {decision.action}")
            if decision.action != "shell" or sys.dry_run or _round == MAX_SHELL_ROUNDS:
                if decision.action == "shell":
                    decision = Decision("halt", "emergency shell exhausted")
                self._stop(outcome, stage.name, cause, decision)
                return False
            self._shell(decision, then="continue" if retry else "halt")
            if not retry:
                self._stop(outcome, stage.name, cause, Decision("halt", "cannot be retried"))
                return False
            ctx.console.info(f"shell exited; retrying {stage.name}")
        return False  # pragma: no cover - the loop always returns

    def _shell(self, decision: Decision, then: str = "continue") -> None:
        self.ctx.console.warn(f"starting the emergency shell; exit it to {then}")
        try:
            carry_out(self.ctx.sys, decision)
        except Exception as err:
            self.ctx.console.error(f"emergency shell failed: {err}")

    def _stop(self, outcome: Outcome, stage: str, reason: str, decision: Decision) -> Outcome:
        outcome.ok = False
        outcome.failed_stage = stage
        outcome.reason = reason
        outcome.action = decision.action
        self._write_timeline()
        self.ctx.console.error(f"boot stopped in {stage}: {decision.action}")
        try:
            carry_out(self.ctx.sys, decision)
        except Exception as err:
            self.ctx.console.error(f"{decision.action} failed: {err}")
        return outcome

    def _write_timeline(self) -> None:
        """Leave the timeline for the real root, and print it when asked."""
        ctx = self.ctx
        doc: dict[str, object] = {"python_ready": self.python_ready,
                                  "init_start": self.started,
                                  "stages": [asdict(e) for e in self.timeline],
                                  "components": self.components}
        if self.components_error is not None:
            doc["components_error"] = self.components_error
        try:
            ctx.sys.apply(ops.MakeDir("/run/initium"))
            ctx.sys.apply(ops.WriteFile(TIMELINE_PATH, jsonlite.dumps(doc).encode() + b"\n"))
        except OSError as err:
            ctx.console.warn(f"cannot write {TIMELINE_PATH}: {err}")
        if ctx.options.timeline or ctx.options.debug:
            ctx.console.raw(format_timeline(self.timeline, self.started, self.python_ready))
