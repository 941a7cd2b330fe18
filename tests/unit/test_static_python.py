"""The static interpreter's recipe inputs, its cache key and the launcher patch (no compiler)."""

from __future__ import annotations

import ast
import inspect
import io
import os
import struct
import zipfile
from pathlib import Path

import pytest
from initium import _libc
from initium.packaging import static_python as sp
from initium.packaging.interpreter import describe_interpreter

BASE = {"source_sha256": "a" * 64, "configure_flags": ("--disable-shared",),
        "setup": "*static*\n_json _json.c\n",
        "recipe": {"launcher.c": b"int main(){}", "_initium.c": b"/* */", "build.sh": b"#!"},
        "compiler": "gcc (Debian 12.2.0-14) 12.2.0"}


def test_cache_key_is_stable_and_changes_with_every_input() -> None:
    key = sp.cache_key(**BASE)  # type: ignore[arg-type]
    assert key == sp.cache_key(**BASE)  # type: ignore[arg-type]
    changed = {
        "source_sha256": "b" * 64,
        "configure_flags": ("--disable-shared", "--without-doc-strings"),
        "setup": "*static*\n_json _json.c\nzlib zlibmodule.c\n",
        "recipe": {**BASE["recipe"], "launcher.c": b"int main(){return 1;}"},  # type: ignore[dict-item]
        "compiler": "gcc (Debian 13.1.0) 13.1.0",
    }
    for name, value in changed.items():
        other = sp.cache_key(**{**BASE, name: value})  # type: ignore[arg-type]
        assert other != key, f"the key ignores {name}"
    recipe: dict[str, bytes] = {"launcher.c": b"int main(){}", "_initium.c": b"/* changed */",
                                "build.sh": b"#!"}
    assert sp.cache_key(**{**BASE, "recipe": recipe}) != key  # type: ignore[arg-type]


def test_today_key_covers_the_recipe_files() -> None:
    assert set(sp.recipe_contents()) == {"build.sh", "launcher.c", "_initium.c", "_selinux_min.c"}


def test_setup_local_makes_every_listed_module_static() -> None:
    text = sp.setup_local({"zlib": "zlibmodule.c", "_json": "_json.c"})
    lines = text.splitlines()
    assert lines[1] == "*static*"
    assert lines[2:] == ["_json _json.c", "zlib zlibmodule.c"]
    assert "_initium _initium.c" in sp.setup_local()
    assert "_ctypes" not in sp.setup_local(), "ctypes cannot work in a static ELF"


def test_cache_root_follows_initium_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INITIUM_CACHE", "/var/cache/x")
    assert sp.cache_root() == "/var/cache/x/static-python"
    monkeypatch.delenv("INITIUM_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", "/c")
    assert sp.cache_root() == "/c/initium/static-python"


def _fake_launcher() -> bytes:
    field = b"INITIUM-EMERGENCY=halt".ljust(sp.EMERGENCY_FIELD, b"\0")
    return b"\x7fELF" + bytes(100) + field + b"tail"


@pytest.mark.parametrize("action", sp.LAUNCHER_ACTIONS)
def test_set_emergency_writes_the_action_in_place(action: str) -> None:
    elf = _fake_launcher()
    patched = sp.set_emergency(elf, action)
    assert len(patched) == len(elf)
    at = patched.index(sp.EMERGENCY_MARKER)
    value = patched[at + len(sp.EMERGENCY_MARKER):at + sp.EMERGENCY_FIELD]
    assert value.rstrip(b"\0") == action.encode()
    assert patched.endswith(b"tail")


def test_set_emergency_refuses_what_the_launcher_cannot_do() -> None:
    with pytest.raises(sp.StaticPythonError, match="not shell"):
        sp.set_emergency(_fake_launcher(), "shell")
    with pytest.raises(sp.StaticPythonError, match="missing or not unique"):
        sp.set_emergency(b"\x7fELF no field", "halt")
    with pytest.raises(sp.StaticPythonError, match="missing or not unique"):
        sp.set_emergency(_fake_launcher() * 2, "halt")


def test_the_launcher_field_matches_the_c_source() -> None:
    with open(os.path.join(sp.RECIPE_DIR, "launcher.c")) as f:
        source = f.read()
    assert f'char initium_emergency[{sp.EMERGENCY_FIELD}] = "INITIUM-EMERGENCY=halt";' in source


def _zip(names: list[str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for name in names:
            archive.writestr(name, b"")
    return buf.getvalue()


def test_describe_static_init() -> None:
    # A minimal ELF64 header whose section table ends at byte 200.
    header = bytearray(200)
    header[:5] = b"\x7fELF\x02"
    struct.pack_into("<Q", header, 0x28, 136)
    struct.pack_into("<HH", header, 0x3A, 64, 1)
    init = bytes(header) + _zip(["initium/__init__.pyc", "initium/boot.pyc", "os.pyc"])
    kind, size, modules = describe_interpreter({"/init": init})
    assert (kind, size) == ("static", 200)
    assert modules == ["initium", "initium.boot", "os"]


def test_describe_host_init() -> None:
    files = {"/init": b"#!/usr/bin/env -S python3\n", "/usr/bin/python3": bytes(1234),
             "/usr/lib/python311.zip": _zip(["encodings/__init__.pyc"])}
    assert describe_interpreter(files) == ("host", 1234, ["encodings"])
    assert describe_interpreter({"/init": b"garbage"})[0] == "unknown"


def _stub_signatures() -> dict[str, list[str]]:
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
                        "init", "_initium.pyi")
    with open(path) as f:
        tree = ast.parse(f.read())
    return {node.name: [a.arg for a in (*node.args.posonlyargs, *node.args.args)]
            for node in tree.body if isinstance(node, ast.FunctionDef)}


def test_ctypes_fallback_offers_what_the_c_module_offers() -> None:
    for name, params in _stub_signatures().items():
        if name == "spawn":  # initium.process falls back to os.posix_spawn instead
            continue
        if name == "reader_start":  # initium.storage.reader falls back to os.fork instead
            continue
        func = getattr(_libc, name)
        assert list(inspect.signature(func).parameters) == params, name


def test_a_freeze_is_reused_only_for_the_same_inputs(tmp_path: Path) -> None:
    """The trace is half of a warm build: same inputs, the stored zip; else a new trace."""
    import shutil
    import sys

    from initium.packaging.freeze import freeze, freeze_key

    python = str(tmp_path / "python3")
    shutil.copy(sys.executable, python)
    cache = str(tmp_path / "cache")
    first = freeze(python, [], cache=cache)
    key = freeze_key(python, [], ())
    assert (tmp_path / "cache" / f"{key}.zip").read_bytes() == first.zip_bytes
    (tmp_path / "cache" / f"{key}.zip").write_bytes(b"stored")
    assert freeze(python, [], cache=cache).zip_bytes == b"stored"
    assert freeze_key(python, [], ("--hash-seed=0",)) != key
    assert freeze_key(python, ["initium.stages.storage"], ()) != key
    with open(python, "ab") as f:
        f.write(b"\0")  # another interpreter: another key, a new trace
    assert freeze(python, [], cache=cache).zip_bytes == first.zip_bytes
