"""initium.options: one table of options, typed values, warnings instead of failures."""

from __future__ import annotations

import math

import pytest
from initium.cmdline import parse
from initium.options import (
    EMERGENCY_ACTIONS,
    OPTIONS,
    BootOptions,
    ParsedOptions,
    parse_options,
)
from initium.record import asdict


def opts(text: str) -> BootOptions:
    parsed = parse_options(parse(text))
    assert parsed.warnings == (), parsed.warnings
    return parsed.options


def warnings(text: str) -> tuple[str, ...]:
    return parse_options(parse(text)).warnings


DEFAULTS = BootOptions()


def test_empty_command_line_gives_the_defaults() -> None:
    parsed = parse_options(parse(""))
    assert parsed == ParsedOptions(BootOptions(), ())
    assert DEFAULTS.root is None
    assert DEFAULTS.root_rw is None
    assert DEFAULTS.breaks == ()
    assert DEFAULTS.debug is False
    assert DEFAULTS.timeline is False
    assert DEFAULTS.quiet is False


# --------------------------------------------------------------------------
# each option


def test_root_rootfstype_rootflags() -> None:
    o = opts("root=UUID=0a1b rootfstype=ext4 rootflags=noatime,data=journal")
    assert o.root == "UUID=0a1b"
    assert o.rootfstype == "ext4"
    assert o.rootflags == "noatime,data=journal"


def test_root_last_one_wins() -> None:
    assert opts("root=/dev/sda root=/dev/vda").root == "/dev/vda"


@pytest.mark.parametrize(("text", "expected"), [
    ("", None), ("ro", False), ("rw", True), ("ro rw", True), ("rw ro", False),
    ("rw ro rw", True),
])
def test_ro_rw_last_wins(text: str, expected: bool | None) -> None:
    assert opts(text).root_rw is expected


def test_ro_takes_no_value() -> None:
    (warning,) = warnings("ro=1")
    assert "ro=1" in warning
    assert "takes no value" in warning


def test_init_must_be_absolute() -> None:
    assert opts("init=/lib/systemd/systemd").init == "/lib/systemd/systemd"
    parsed = parse_options(parse("init=bin/sh"))
    assert parsed.options.init is None
    (warning,) = parsed.warnings
    assert warning.startswith("init=bin/sh:")
    assert "absolute" in warning


@pytest.mark.parametrize(("text", "expected"), [
    ("rootwait", math.inf), ("rootwait=5", 5.0), ("rootwait=0.5", 0.5), ("rootwait=0", 0.0),
])
def test_rootwait(text: str, expected: float) -> None:
    assert opts(text).rootwait == expected


def test_rootdelay_and_rd_timeout() -> None:
    o = opts("rootdelay=7 rd.timeout=12.5")
    assert o.rootdelay == 7.0
    assert o.rd_timeout == 12.5
    assert opts("rd.timeout=0").rd_timeout == 0.0


@pytest.mark.parametrize("value", ["abc", "-1", "inf", "nan", "1e999", ""])
def test_bad_seconds_warn_and_keep_the_default(value: str) -> None:
    parsed = parse_options(parse(f"rootdelay={value}"))
    assert parsed.options.rootdelay is None
    (warning,) = parsed.warnings
    assert warning.startswith(f"rootdelay={value}:")
    assert warning.endswith("ignored")


def test_needs_a_value() -> None:
    parsed = parse_options(parse("rootdelay root"))
    assert parsed.options == DEFAULTS
    assert len(parsed.warnings) == 2
    assert all("needs a value" in w for w in parsed.warnings)
    assert parsed.warnings[0].startswith("rootdelay:")
    assert parsed.warnings[1].startswith("root:")


def test_bad_value_keeps_an_earlier_good_one() -> None:
    parsed = parse_options(parse("rootdelay=3 rootdelay=soon"))
    assert parsed.options.rootdelay == 3.0
    assert len(parsed.warnings) == 1


def test_rd_break_bare_is_switch_root() -> None:
    assert opts("rd.break").breaks == ("switch-root",)


def test_rd_break_lists_accumulate_across_repeats() -> None:
    parsed = parse_options(parse("rd.break=modules,root rd.break rd.break= udev "
                                 "rd.break=selinux"))
    assert parsed.options.breaks == ("modules", "root", "switch-root", "selinux")
    # only the empty "rd.break=" is reported; "udev" is not our option at all
    (warning,) = parsed.warnings
    assert warning.startswith("rd.break=:")


def test_rd_break_strips_blanks_and_empty_items() -> None:
    assert opts("rd.break=,root,,modules,").breaks == ("root", "modules")
    assert opts('"rd.break= root , udev "').breaks == ("root", "udev")


def test_rd_break_empty_warns() -> None:
    parsed = parse_options(parse("rd.break= rd.break=,"))
    assert parsed.options.breaks == ()
    assert len(parsed.warnings) == 2
    assert all("empty stage list" in w for w in parsed.warnings)


@pytest.mark.parametrize(("text", "expected"), [
    ("rd.shell", True), ("rd.shell=1", True), ("rd.shell=0", False), ("rd.shell=yes", True),
    ("rd.shell=NO", False), ("rd.shell=off", False), ("rd.shell=true", True), ("", None),
])
def test_rd_shell(text: str, expected: bool | None) -> None:
    assert opts(text).shell is expected


def test_rd_shell_bad_value() -> None:
    parsed = parse_options(parse("rd.shell=maybe"))
    assert parsed.options.shell is None
    (warning,) = parsed.warnings
    assert "rd.shell=maybe" in warning
    assert "boolean" in warning


@pytest.mark.parametrize("action", EMERGENCY_ACTIONS)
def test_rd_emergency_choices(action: str) -> None:
    assert opts(f"rd.emergency={action}").emergency == action


def test_rd_emergency_bad_choice() -> None:
    parsed = parse_options(parse("rd.emergency=panic"))
    assert parsed.options.emergency is None
    (warning,) = parsed.warnings
    assert "rd.emergency=panic" in warning
    for action in EMERGENCY_ACTIONS:
        assert action in warning


def test_rd_emergency_bare_needs_a_value() -> None:
    (warning,) = warnings("rd.emergency")
    assert "needs a value" in warning


@pytest.mark.parametrize(("text", "expected"), [
    ("rd.debug", True), ("rd.debug=1", True), ("rd.debug=0", False), ("", False),
])
def test_rd_debug(text: str, expected: bool) -> None:
    assert opts(text).debug is expected


@pytest.mark.parametrize(("text", "expected"), [
    ("initium.timeline", True), ("initium.timeline=0", False), ("initium.timeline=on", True),
])
def test_initium_timeline(text: str, expected: bool) -> None:
    assert opts(text).timeline is expected


def test_quiet() -> None:
    assert opts("quiet").quiet is True
    assert opts("").quiet is False


def test_a_realistic_line() -> None:
    o = opts("BOOT_IMAGE=/vmlinuz-6.1 root=LABEL=root ro quiet console=ttyS0 rd.shell=0 "
             "rootwait rd.timeout=20 initium.timeline -- single")
    assert o == BootOptions(root="LABEL=root", root_rw=False, quiet=True, shell=False,
                            rootwait=math.inf, rd_timeout=20.0, timeline=True)


# --------------------------------------------------------------------------
# unknown options


@pytest.mark.parametrize("word", ["rd.luks.nope=1", "rd.whatever", "initium.frobnicate=2",
                                  "rd.brake=root"])
def test_unknown_owned_keys_warn_with_the_key(word: str) -> None:
    parsed = parse_options(parse(f"quiet {word}"))
    assert parsed.options == BootOptions(quiet=True)
    (warning,) = parsed.warnings
    assert word in warning
    assert "unknown option" in warning


@pytest.mark.parametrize("word", ["console=ttyS0,115200", "PYTHONHASHSEED=0", "BOOT_IMAGE=/x",
                                  "single", "systemd.unit=rescue.target", "rdinit=/init",
                                  "rd_NO_LUKS", "initiumx=1", "rdx.debug"])
def test_other_unknown_keys_are_silent(word: str) -> None:
    assert parse_options(parse(word)) == ParsedOptions(BootOptions(), ())


def test_unknown_key_warning_keeps_the_raw_spelling() -> None:
    (warning,) = warnings("rd.some_thing=1")
    assert "rd.some_thing=1" in warning


def test_init_args_are_not_options() -> None:
    assert parse_options(parse("-- rd.debug root=/dev/x rd.nope")) == ParsedOptions(
        BootOptions(), ())


# --------------------------------------------------------------------------
# one table drives everything


def test_every_boot_option_field_is_the_dest_of_an_option() -> None:
    fields = set(asdict(BootOptions()))
    dests = {o.dest for o in OPTIONS}
    assert fields == dests


def test_option_keys_are_unique_and_documented() -> None:
    keys = [o.key for o in OPTIONS]
    assert len(keys) == len(set(keys))
    for option in OPTIONS:
        assert option.help.strip(), option.key
        assert option.equivalent.strip(), option.key
        assert option.parse is not None or option.flag is not None, option.key
        assert option.key.startswith(("rd.", "initium.")) or "." not in option.key


def test_every_flag_option_works_bare() -> None:
    for option in OPTIONS:
        if option.flag is None:
            continue
        parsed = parse_options(parse(option.key))
        assert parsed.warnings == (), option.key
        value = getattr(parsed.options, option.dest)
        expected = option.flag
        assert value == expected, option.key


def test_every_valued_option_warns_on_a_bare_key() -> None:
    for option in OPTIONS:
        if option.flag is not None:
            continue
        parsed = parse_options(parse(option.key))
        assert parsed.options == DEFAULTS, option.key
        (warning,) = parsed.warnings
        assert warning.startswith(f"{option.key}:"), warning
