"""The stage interface: what a plugin declares, what it may touch, how it fails.

A stage has two halves that share one class: ``install`` runs in the builder
and returns the facts the boot half needs (resolved at build, stored in the
image's plan); ``run`` runs in PID 1 and acts only through ``ctx.sys``.
Stages talk to each other only through the typed ``BootState``.
"""

from __future__ import annotations

from initium.cmdline import Cmdline, CmdlineError, parse
from initium.options import BootOptions, Option, parse_options
from initium.record import field, record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, ClassVar, Protocol, TypeVar

    from initium.console import Console
    from initium.plan import Plan
    from initium.system import System

    JSON = dict[str, Any]
    T = TypeVar("T")

    class Image(Protocol):
        """What a stage's ``install`` may add to the image (implemented by the builder)."""

        kver: str

        def add_file(self, path: str, data: bytes, mode: int = 0o644) -> None: ...

        def add_binary(self, host_path: str, image_path: str | None = None) -> None: ...

        def add_symlink(self, path: str, target: str) -> None: ...

        def add_modules(self, names: list[str], optional: list[str] | None = None,
                        by_modalias: bool = False) -> list[JSON]: ...

        def option(self, name: str) -> Any: ...
else:
    JSON = dict
    Image = object


class StageError(Exception):
    """A stage cannot do its job: one-line cause, and what the user can try.

    Only the runner turns this into an outcome (message, then the emergency
    action); stages never exit, halt or print the failure themselves.
    """

    def __init__(self, cause: str, hint: str = "", *, security: bool = False,
                 retry: bool = True) -> None:
        super().__init__(cause)
        self.cause = cause
        self.hint = hint
        self.security = security
        # False once the stage has done what cannot be done twice (switch-root
        # after entering the new root): the shell is still offered, the stage
        # is not run again.
        self.retry = retry


@record(frozen=False)
class BootState:
    """The only mutable state stages share; every field says who writes it.

    Stages the core does not know keep their results (devices they made,
    keys they loaded, network leases) as one typed value per class, with
    ``put`` and ``get``: the class is the key, so two stages cannot collide
    by name and a reader gets the type it asked for.
    """

    new_root: str = "/sysroot"  # where `root` mounts and `switch-root` enters
    root_device: str | None = None  # written by `root`
    root_fstype: str | None = None  # written by `root`
    loaded_modules: list[str] = field(default_factory=list)  # written by `modules`
    extensions: dict[type, object] = field(default_factory=dict)

    def put(self, value: object) -> None:
        """Keep ``value`` as the state of its class (replacing an earlier one)."""
        self.extensions[type(value)] = value

    def get(self, kind: type[T]) -> T | None:
        """The value of class ``kind`` a stage put here, or None."""
        value = self.extensions.get(kind)
        return value if isinstance(value, kind) else None


@record
class Teardown:
    """Something a stage started and must stop before switch-root (udevd, a link, a PCR)."""

    stage: str
    name: str
    run: Callable[[BootContext], None]


@record(frozen=False)
class BootContext:
    sys: System
    cmdline: Cmdline
    options: BootOptions
    plan: Plan
    console: Console
    state: BootState = field(default_factory=BootState)
    stage: str = ""
    # False until /proc/cmdline has been read (it needs /proc, which the first
    # stage mounts); a dry run is handed its command line up front.
    cmdline_loaded: bool = False
    # The options the image's stages declare (set by the runner) and their values.
    stage_options: tuple[Option, ...] = ()
    values: dict[str, Any] = field(default_factory=dict)
    teardowns: list[Teardown] = field(default_factory=list)

    def load_cmdline(self) -> None:
        """Read /proc/cmdline through the facade; a bad line is reported, never fatal."""
        if self.cmdline_loaded:
            return
        try:
            self.set_cmdline(parse(self.sys.read_bytes("/proc/cmdline")))
        except (OSError, CmdlineError) as err:
            self.warn(f"cannot use the kernel command line ({err}); using defaults")
            self.cmdline_loaded = True

    def set_cmdline(self, cmdline: Cmdline) -> None:
        parsed = parse_options(cmdline, self.stage_options)
        self.cmdline, self.options, self.cmdline_loaded = cmdline, parsed.options, True
        self.values = dict(parsed.values)
        self.console.quiet = parsed.options.quiet
        self.console.debug_enabled = parsed.options.debug
        self.console.kmsg_debug = parsed.options.kmsg_debug
        for warning in parsed.warnings:
            self.console.warn(warning, stage="cmdline")

    def value(self, option: Option) -> Any:
        """A stage-declared option's value from the command line, or its default."""
        return self.values.get(option.dest, option.default)

    def at_switch_root(self, name: str, run: Callable[[BootContext], None]) -> None:
        """Have ``run`` called just before switch-root, in reverse order of registration."""
        self.teardowns.append(Teardown(self.stage, name, run))

    def run_teardowns(self) -> None:
        """Stop what the stages started, last started first; a failure fails switch-root."""
        current = self.stage
        try:
            while self.teardowns:
                teardown = self.teardowns.pop()
                self.stage = teardown.stage
                self.debug(f"teardown: {teardown.name}")
                teardown.run(self)
        finally:
            self.stage = current

    def log(self, message: str) -> None:
        self.console.info(message, stage=self.stage)

    def debug(self, message: str) -> None:
        self.console.debug(message, stage=self.stage)

    def warn(self, message: str) -> None:
        self.console.warn(message, stage=self.stage)

    def data(self) -> JSON:
        """What this stage's ``install`` recorded in the plan."""
        return self.plan.stage_data(self.stage)


class Stage:
    """Base class for stages; subclasses set ``name`` and override what they need."""

    name: ClassVar[str] = ""
    after: ClassVar[tuple[str, ...]] = ()
    before: ClassVar[tuple[str, ...]] = ()
    requires: ClassVar[tuple[str, ...]] = ()
    # The runner writes the timeline before a final stage: it does not return.
    final: ClassVar[bool] = False
    # Command-line options this stage owns: parsed, documented (--help,
    # initium.cmdline(7)) and known to the unknown-option warning like the
    # core's. Read them with ``ctx.value(option)``.
    options: ClassVar[tuple[Option, ...]] = ()

    def install(self, image: Image) -> JSON:
        """Build time: add files to the image; return facts for ``run``."""
        return {}

    def enabled(self, ctx: BootContext) -> bool:
        """Boot time: whether the command line asks for this stage at all."""
        return True

    def run(self, ctx: BootContext) -> None:
        raise NotImplementedError
