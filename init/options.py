"""The boot options initium understands, declared once.

One table drives the parser, the unknown-option warnings, ``initium --help``
and docs/initium.cmdline.7, so the three cannot drift apart.  A bad value is a
warning that names the key and is otherwise ignored (systemd's rule): a typo
on the command line must not stop a boot that would otherwise work.
"""

from __future__ import annotations

import math

from initium.cmdline import Cmdline, canonical_key
from initium.record import field, record, replace

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

EMERGENCY_ACTIONS = ("shell", "halt", "poweroff", "reboot")


@record
class BootOptions:
    """Typed result of the command line; the only view stages have of it."""

    root: str | None = None
    rootfstype: str | None = None
    rootflags: str | None = None
    root_rw: bool | None = None
    init: str | None = None
    rootwait: float | None = None
    rootdelay: float | None = None
    rd_timeout: float | None = None
    breaks: tuple[str, ...] = ()
    shell: bool | None = None
    emergency: str | None = None
    debug: bool = False
    timeline: bool = False
    quiet: bool = False
    kmsg_debug: bool = False


def seconds(value: str) -> float:
    """A parser for options that take a non-negative number of seconds (stages use it too)."""
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a number of seconds") from None
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{value!r} is not a non-negative number of seconds")
    return number


def boolean(value: str) -> bool:
    """A parser for 0/1-style options, as systemd reads them (stages use it too)."""
    lowered = value.lower()
    if lowered in ("1", "yes", "y", "true", "on"):
        return True
    if lowered in ("0", "no", "n", "false", "off"):
        return False
    raise ValueError(f"{value!r} is not a boolean (use 1 or 0)")


def _absolute_path(value: str) -> str:
    if not value.startswith("/") or "\0" in value:
        raise ValueError(f"{value!r} is not an absolute path")
    return value


def _text(value: str) -> str:
    if not value:
        raise ValueError("empty value")
    return value


def choice(choices: tuple[str, ...]) -> Callable[[str], str]:
    """A parser for options that take one of ``choices`` (stages use it too)."""
    def parse(value: str) -> str:
        if value not in choices:
            raise ValueError(f"{value!r} is not one of {', '.join(choices)}")
        return value

    return parse


def _stage_list(value: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in value.split(",") if n.strip())
    if not names:
        raise ValueError("empty stage list")
    return names


@record
class Option:
    """One command-line option: how it parses, where it lands, how it is documented.

    ``flag`` is the value a bare ``key`` (no ``=``) stands for; ``None`` means
    the option needs a value. ``accumulate`` options collect every occurrence.
    """

    key: str
    dest: str
    help: str
    equivalent: str
    parse: Callable[[str], Any] | None = None
    flag: Any = None
    accumulate: bool = False
    metavar: str = ""
    # What a stage reads when the option is absent (stage-declared options
    # only; the core's land in BootOptions, whose fields carry the defaults).
    default: Any = None
    # The stage that declares the option ("" for the core's own).
    owner: str = ""


OPTIONS: tuple[Option, ...] = (
    Option("root", "root", "The root file system: /dev/NAME, UUID=, LABEL=, PARTUUID= or "
           "PARTLABEL= (also /dev/disk/by-uuid/… and friends, resolved without udev).",
           "kernel, dracut, systemd: root=", _text, metavar="DEVICE"),
    Option("rootfstype", "rootfstype", "File system type of the root; probed when absent.",
           "kernel, dracut, systemd: rootfstype=", _text, metavar="TYPE"),
    Option("rootflags", "rootflags", "Mount options for the root, as in fstab "
           "(flags such as noatime become mount flags, the rest is passed to the file system).",
           "kernel, dracut, systemd: rootflags=", _text, metavar="OPTS"),
    Option("ro", "root_rw", "Mount the root read-only (also the default when neither ro nor rw "
           "is given, as the kernel does).", "kernel, dracut, systemd: ro", flag=False),
    Option("rw", "root_rw", "Mount the root read-write.", "kernel, dracut, systemd: rw",
           flag=True),
    Option("init", "init", "Program to execute in the root instead of /sbin/init, /etc/init, "
           "/bin/init, /bin/sh.", "kernel, dracut, systemd: init=", _absolute_path,
           metavar="PATH"),
    Option("rootwait", "rootwait", "Wait for the root device without limit (or for N seconds); "
           "rd.timeout= still bounds the wait.", "kernel: rootwait, rootwait=N", seconds,
           flag=math.inf, metavar="[N]"),
    Option("rootdelay", "rootdelay", "Wait up to N seconds for the root device.",
           "kernel: rootdelay=N", seconds, metavar="N"),
    Option("rd.timeout", "rd_timeout", "Upper bound in seconds on every wait in the initramfs "
           "(0: no bound). Alone it sets the root wait to N seconds; without rootwait, "
           "rootdelay or rd.timeout the root wait is 30 s.",
           "dracut: rd.timeout=, systemd: rd.systemd.default_device_timeout_sec=", seconds,
           metavar="N"),
    Option("rd.break", "breaks", "Stop before the named stage(s) or dracut hook(s) (comma "
           "separated; bare: before switch-root) and open the emergency shell, whatever "
           "rd.shell and rd.emergency say; the boot continues when the shell exits. Without a "
           "shell in the image the machine halts. See BREAK POINTS for dracut's hook names.",
           "dracut: rd.break[=hook]", _stage_list, flag=("switch-root",), accumulate=True,
           metavar="[STAGE,…]"),
    Option("rd.shell", "shell", "Allow (1) or forbid (0) the emergency shell after a failure.",
           "dracut: rd.shell", boolean, flag=True, metavar="[0|1]"),
    Option("rd.emergency", "emergency", "What to do when a stage fails: shell, halt, poweroff "
           "or reboot. Default: a shell when the image has one and rd.shell is not 0, else halt.",
           "dracut: rd.emergency=, systemd: systemd.emergency", choice(EMERGENCY_ACTIONS),
           metavar="ACTION"),
    Option("rd.debug", "debug", "Log every action on the console and print the stage timeline.",
           "dracut: rd.debug", boolean, flag=True, metavar="[0|1]"),
    Option("initium.timeline", "timeline", "Print the stage timeline before switching root.",
           "systemd-analyze (after boot)", boolean, flag=True, metavar="[0|1]"),
    Option("quiet", "quiet", "Only warnings and errors on the console.", "kernel: quiet",
           flag=True),
    Option("initium.kmsg_debug", "kmsg_debug", "Also send debug lines to the kernel log "
           "(dmesg); without it they go to the console only, with rd.debug.",
           "systemd: systemd.log_target=kmsg with systemd.log_level=debug", boolean, flag=True,
           metavar="[0|1]"),
)

_BY_KEY = {canonical_key(o.key): o for o in OPTIONS}
_CORE_DESTS = frozenset(BootOptions.__record_fields__)  # type: ignore[attr-defined]

# Prefixes whose unknown keys deserve a warning; everything else belongs to the
# kernel or to the real root's init and is none of our business.
_OWNED_PREFIXES = ("rd.", "initium.")


@record
class ParsedOptions:
    options: BootOptions
    warnings: tuple[str, ...] = ()
    # Values of the options stages declared, by ``dest``; absent ones are not here.
    values: dict[str, Any] = field(default_factory=dict)


class OptionTableError(ValueError):
    """Two declarations claim one key or one destination: a bug in a stage, found at build."""


def option_table(extra: Sequence[Option] = ()) -> dict[str, Option]:
    """The core's options and the stages' own, by canonical key; clashes are refused."""
    table = dict(_BY_KEY)
    dests = {o.dest: o for o in OPTIONS}
    for option in extra:
        key = canonical_key(option.key)
        if key in table and table[key] is not option:
            raise OptionTableError(f"option {option.key} is declared twice "
                                   f"({table[key].owner or 'core'} and {option.owner or '?'})")
        clash = dests.get(option.dest)
        if option.dest in _CORE_DESTS or (clash is not None and clash.key != option.key
                                          and not (clash.owner == option.owner)):
            raise OptionTableError(f"option {option.key}: destination {option.dest!r} is taken")
        table[key] = option
        dests[option.dest] = option
    return table


def parse_options(cmdline: Cmdline, extra: Sequence[Option] = ()) -> ParsedOptions:
    """Turn the command line into typed options plus warnings; never raises.

    ``extra`` are the options the image's stages declare: they are parsed
    by the same rules and land in ``ParsedOptions.values``.
    """
    table = option_table(extra) if extra else _BY_KEY
    values: dict[str, Any] = {}
    warnings: list[str] = []
    for param in cmdline:
        option = table.get(param.key)
        if option is None:
            if param.key.startswith(_OWNED_PREFIXES):
                warnings.append(f"unknown option {param}, ignored")
            continue
        try:
            if param.value is None:
                if option.flag is None:
                    raise ValueError("needs a value")
                value = option.flag
            elif option.parse is None:
                raise ValueError("takes no value")
            else:
                value = option.parse(param.value)
        except ValueError as err:
            warnings.append(f"{param}: {err}, ignored")
            continue
        if option.accumulate:
            values[option.dest] = (*values.get(option.dest, ()), *value)
        else:
            values[option.dest] = value
    core = {k: v for k, v in values.items() if k in _CORE_DESTS}
    staged = {k: v for k, v in values.items() if k not in _CORE_DESTS}
    return ParsedOptions(replace(BootOptions(), **core), tuple(warnings), staged)
