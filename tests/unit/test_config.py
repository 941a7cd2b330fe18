"""initium.packaging.config.parse_config: TOML in, a validated BuildConfig or one clear error."""

from __future__ import annotations

from pathlib import Path

import pytest
from initium.packaging.config import (
    DEFAULT_MODULES,
    MAX_CONFIG_BYTES,
    SETTINGS,
    BuildConfig,
    ConfigError,
    load_config,
    parse_config,
)

FULL = """
kver = "6.1.0-13-amd64"
modules = ["virtio_blk", "ext4"]
add_modules = ["nvme"]
compress = "gzip"
compress_level = 9
shell = true
interpreter = "/usr/bin/python3.11"
emergency = "poweroff"
microcode = false
source_date_epoch = 1700000000
stages = ["mypkg.stages:Network"]
"""


def test_empty_file_gives_the_defaults() -> None:
    config = parse_config("")
    assert config == BuildConfig()
    assert config.kver is None
    assert config.modules is None
    assert config.compress == "zstd"
    assert config.shell is False
    assert config.microcode is True


def test_default_modules_are_optional() -> None:
    config = parse_config("")
    assert config.required_modules == []
    assert config.optional_modules == list(DEFAULT_MODULES)


def test_modules_replace_the_default_set() -> None:
    config = parse_config('modules = ["virtio_blk", "ext4"]')
    assert config.modules == ("virtio_blk", "ext4")
    assert config.required_modules == ["virtio_blk", "ext4"]
    assert config.optional_modules == []


def test_empty_modules_list_means_none_at_all() -> None:
    config = parse_config("modules = []")
    assert config.modules == ()
    assert config.required_modules == []
    assert config.optional_modules == []


def test_add_modules_keep_the_defaults_optional_and_dedupe() -> None:
    config = parse_config('add_modules = ["nvme", "nvme", "dm_crypt"]')
    assert config.required_modules == ["nvme", "dm_crypt"]
    assert config.optional_modules == list(DEFAULT_MODULES)
    both = parse_config('modules = ["ext4", "nvme"]\nadd_modules = ["nvme", "xfs"]')
    assert both.required_modules == ["ext4", "nvme", "xfs"]


def test_every_key() -> None:
    config = parse_config(FULL)
    assert config == BuildConfig(
        kver="6.1.0-13-amd64", modules=("virtio_blk", "ext4"), add_modules=("nvme",),
        compress="gzip", compress_level=9, shell=True, interpreter="/usr/bin/python3.11",
        emergency="poweroff", microcode=False, source_date_epoch=1700000000,
        stages=("mypkg.stages:Network",))


def test_every_setting_is_a_build_config_field() -> None:
    fields = set(BuildConfig.__dataclass_fields__)
    assert {s.key for s in SETTINGS} == fields
    for setting in SETTINGS:
        assert setting.help.strip(), setting.key


def test_unknown_key_is_named() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config('compres = "zstd"', "/etc/initium.toml")
    message = str(info.value)
    assert message.startswith("/etc/initium.toml: unknown key 'compres'")
    assert "compress" in message.split("known:")[1]


def test_unknown_table_is_named() -> None:
    with pytest.raises(ConfigError, match="unknown key 'modules_extra'"):
        parse_config("[modules_extra]\nx = 1")


@pytest.mark.parametrize(("text", "key", "rule"), [
    ('kver = 6', "kver", "non-empty string"),
    ('kver = ""', "kver", "non-empty string"),
    ('modules = "ext4"', "modules", "list of non-empty strings"),
    ('modules = ["ext4", 3]', "modules", "list of non-empty strings"),
    ('modules = [""]', "modules", "list of non-empty strings"),
    ('add_modules = [["a"]]', "add_modules", "list of non-empty strings"),
    ('compress = "xz"', "compress", "one of zstd, gzip, none"),
    ('compress = 1', "compress", "one of"),
    ('compress_level = 0', "compress_level", "integer from 1 to 19"),
    ('compress_level = 20', "compress_level", "integer from 1 to 19"),
    ('compress_level = "3"', "compress_level", "integer"),
    ('compress_level = true', "compress_level", "integer"),
    ('compress_level = 3.0', "compress_level", "integer"),
    ('shell = 1', "shell", "true or false"),
    ('shell = "yes"', "shell", "true or false"),
    ('interpreter = "python3"', "interpreter", "absolute path"),
    ('interpreter = 3', "interpreter", "absolute path"),
    ('emergency = "panic"', "emergency", "one of shell, halt, poweroff, reboot"),
    ('microcode = "no"', "microcode", "true or false"),
    ('source_date_epoch = -1', "source_date_epoch", "integer from 0"),
    ('source_date_epoch = 1700000000.5', "source_date_epoch", "integer"),
    ('stages = "x:y"', "stages", "list of non-empty strings"),
])
def test_wrong_types_name_the_key_and_the_rule(text: str, key: str, rule: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "my.toml")
    message = str(info.value)
    assert message.startswith(f"my.toml: {key} ")
    assert rule in message


@pytest.mark.parametrize("text", ["kver = ", "modules = [", "= 1", "a.b = 1\na = 2",
                                  'kver = "x"\nkver = "y"', "[[x]]\n[x]", "kver = 'unterminated",
                                  "\x00", "shell = True"])
def test_invalid_toml_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "bad.toml")
    message = str(info.value)
    assert message.startswith("bad.toml: not valid TOML: ")
    assert "\n" not in message.split("not valid TOML: ")[1].split("(", maxsplit=1)[0]


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


def test_load_config_none_is_the_defaults() -> None:
    assert load_config(None) == BuildConfig()


def test_load_config_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "initium.toml"
    path.write_text('compress = "none"\n')
    assert load_config(str(path)).compress == "none"


def test_load_config_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "absent.toml")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: cannot read: ")


def test_load_config_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'kver = "caf\xe9"\n')
    with pytest.raises(ConfigError, match=r"latin1\.toml: not UTF-8 \(byte 11\)"):
        load_config(str(path))


def test_deeply_nested_toml_is_a_config_error() -> None:
    # tomllib recurses once per level: the RecursionError must not become a traceback
    depth = 2000
    with pytest.raises(ConfigError) as info:
        parse_config("modules = " + "[" * depth + "]" * depth, "deep.toml")
    assert str(info.value) == "deep.toml: nested too deeply"


def test_load_config_refuses_a_huge_file_instead_of_truncating(tmp_path: Path) -> None:
    path = tmp_path / "big.toml"
    path.write_text("# " + "x" * MAX_CONFIG_BYTES + '\ncompress = "none"\n')
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert str(info.value).startswith(f"{path}: larger than {MAX_CONFIG_BYTES} bytes")


def test_load_config_at_the_size_limit(tmp_path: Path) -> None:
    path = tmp_path / "limit.toml"
    line = 'compress = "none"\n'
    path.write_text("#" * (MAX_CONFIG_BYTES - len(line) - 1) + "\n" + line)
    assert path.stat().st_size == MAX_CONFIG_BYTES
    assert load_config(str(path)).compress == "none"
