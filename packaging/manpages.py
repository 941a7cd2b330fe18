"""Man pages generated from the option tables, so the docs cannot drift from the code.

``scripts/gen-docs.py`` writes them into docs/; a test fails when the
committed pages differ from what the tables say.
"""

from __future__ import annotations

from initium.options import OPTIONS
from initium.runner import DRACUT_BREAKS

from .config import SETTINGS
from .stages import builtin_stages, declared_options


def _roff(text: str) -> str:
    escaped = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + line if line.startswith((".", "'")) else line
                     for line in escaped.splitlines())


def cmdline_page() -> str:
    lines = [
        '.TH INITIUM.CMDLINE 7 "" "initium" "initium manual"',
        ".SH NAME",
        "initium.cmdline \\- kernel command-line options understood by the initium initramfs",
        ".SH DESCRIPTION",
        "The init reads /proc/cmdline once /proc is mounted. Words follow the kernel's "
        "quoting rules (double quotes group words; a quote that opens or closes a value "
        "is removed). In option names \\- and _ are the same. Everything after a lone "
        "\\-\\- is passed to the real root's init as arguments.",
        ".PP",
        "A bad value is a warning that names the option; the option then keeps its "
        "default. Unknown rd.* and initium.* options are warned about and ignored; other "
        "words belong to the kernel or to the real init and are not ours to judge.",
        ".PP",
        "Options that are not yet implemented (rd.luks.*, rd.lvm.*, rd.md.*, roothash=, "
        "ip=, enforcing=, selinux=) are reported as unknown. Stages declare their own "
        "options; those are listed below with the stage that owns them.",
        ".SH OPTIONS",
    ]
    for option in (*OPTIONS, *declared_options(builtin_stages())):
        head = option.key + (f"={option.metavar}" if option.metavar else "")
        owner = f" (stage {option.owner})" if option.owner else ""
        lines += [".TP", f"\\fB{_roff(head)}\\fR", _roff(option.help + owner),
                  ".br", f"Equivalent: {_roff(option.equivalent)}."]
    lines += [
        ".SH BREAK POINTS",
        "rd.break=NAME stops before the stage NAME, or before the stage that plays the part "
        "of dracut's hook NAME: the first of the stages listed that the image has. A break "
        "always opens the emergency shell when the image has one, whatever rd.shell= and "
        "rd.emergency= say (they govern failures); without a shell the machine halts.",
        ".TP",
        "\\fBcmdline\\fR",
        "the stage right after early\\-mounts (the command line is read as soon as /proc "
        "is mounted)",
    ]
    for hook, stages in DRACUT_BREAKS.items():
        lines += [".TP", f"\\fB{_roff(hook)}\\fR", _roff(", then ".join(stages))]
    lines += [
        ".SH WAITING FOR THE ROOT",
        "Without rootwait, rootdelay= or rd.timeout= the root device is awaited for 30 "
        "seconds. rootwait waits without limit (rootwait=N: N seconds), rootdelay=N N "
        "seconds; rd.timeout=N caps any of them (0: no cap). When the time is up the "
        "message names the device wanted and every block device seen, with its file "
        "system, UUID and label.",
        ".SH SEE ALSO",
        "initium(8), initium.conf(5), dracut.cmdline(7), kernel-command-line(7), "
        "bootparam(7)",
    ]
    return "\n".join(lines) + "\n"


def conf_page() -> str:
    lines = [
        '.TH INITIUM.CONF 5 "" "initium" "initium manual"',
        ".SH NAME",
        "initium.conf \\- configuration of initium build",
        ".SH SYNOPSIS",
        "initium build \\-\\-config FILE ...",
        ".SH DESCRIPTION",
        "A TOML file read as data (never executed). Unknown keys and values of the wrong "
        "type are errors that name the key. A command-line flag given to initium build "
        "overrides the same setting in the file.",
        ".SH SETTINGS",
    ]
    for setting in SETTINGS:
        lines += [".TP", f"\\fB{_roff(setting.key)}\\fR", _roff(setting.help)]
        if setting.flag:
            lines += [".br", f"Command-line flag: {_roff(setting.flag)}."]
    lines += [
        ".SH EXAMPLE",
        ".nf",
        _roff('modules = ["virtio_pci", "virtio_blk"]\ncompress = "zstd"\nshell = true\n'
              'emergency = "halt"'),
        ".fi",
        ".SH SEE ALSO",
        "initium(8), initium.cmdline(7)",
    ]
    return "\n".join(lines) + "\n"


PAGES = {"initium.cmdline.7": cmdline_page, "initium.conf.5": conf_page}
