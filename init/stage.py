"""The stage interface: what a plugin declares, what it may touch, how it fails.

A stage has two halves that share one class: ``install`` runs in the builder
and returns the facts the boot half needs (resolved at build, stored in the
image's plan); ``run`` runs in PID 1 and acts only through ``ctx.sys``.
Stages talk to each other only through the typed ``BootState``.
"""

from __future__ import annotations

from initium.cmdline import Cmdline, CmdlineError, parse
from initium.options import BootOptions, parse_options
from initium.record import field, record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, ClassVar, Protocol

    from initium.console import Console
    from initium.plan import Plan
    from initium.system import System

    JSON = dict[str, Any]

    class Image(Protocol):
        """What a stage's ``install`` may add to the image (implemented by the builder)."""

        kver: str

        def add_file(self, path: str, data: bytes, mode: int = 0o644) -> None: ...

        def add_binary(self, host_path: str, image_path: str | None = None) -> None: ...

        def add_modules(self, names: list[str], optional: list[str] | None = None,
                        ) -> list[JSON]: ...

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
    """The only mutable state stages share; every field says who writes it."""

    new_root: str = "/sysroot"  # where `root` mounts and `switch-root` enters
    root_device: str | None = None  # written by `root`
    root_fstype: str | None = None  # written by `root`
    loaded_modules: list[str] = field(default_factory=list)  # written by `modules`


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
        parsed = parse_options(cmdline)
        self.cmdline, self.options, self.cmdline_loaded = cmdline, parsed.options, True
        self.console.quiet = parsed.options.quiet
        self.console.debug_enabled = parsed.options.debug
        for warning in parsed.warnings:
            self.console.warn(warning, stage="cmdline")

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

    def install(self, image: Image) -> JSON:
        """Build time: add files to the image; return facts for ``run``."""
        return {}

    def enabled(self, ctx: BootContext) -> bool:
        """Boot time: whether the command line asks for this stage at all."""
        return True

    def run(self, ctx: BootContext) -> None:
        raise NotImplementedError
