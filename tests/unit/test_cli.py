"""The command line of the initium tool: help for each command, one-line errors."""

from __future__ import annotations

import pytest
from initium.cli import main, parser
from initium.options import OPTIONS


def _help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as info:
        parser().parse_args(argv)
    assert info.value.code == 0
    return capsys.readouterr().out


def test_top_level_help_lists_commands_and_boot_options(
        capsys: pytest.CaptureFixture[str]) -> None:
    out = _help(["--help"], capsys)
    for command in ("build", "run", "qemu", "inspect"):
        assert command in out
    for option in OPTIONS:
        assert option.key in out


@pytest.mark.parametrize(("command", "flags"), [
    ("build", ["--output", "--kver", "--config", "--module", "--compress", "--shell"]),
    ("run", ["--dry-run", "--cmdline", "--image"]),
    ("qemu", ["--disk", "--append", "--kernel"]),
    ("inspect", ["IMG"]),
])
def test_each_command_explains_its_flags(command: str, flags: list[str],
                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = _help([command, "--help"], capsys)
    for flag in flags:
        assert flag in out


def test_missing_image_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", "/nonexistent/initium.img"]) == 2
    err = capsys.readouterr().err
    assert err == "initium inspect: /nonexistent/initium.img: No such file or directory\n"


def test_dry_run_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["run"])
    assert info.value.code == 2
    assert "--dry-run" in capsys.readouterr().err
