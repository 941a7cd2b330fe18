"""The stdlib subset and initium itself, as sourceless bytecode in one zip.

The module set is computed, not listed: the image's interpreter imports the
boot entry and the planned stages, and exactly what it loaded is zipped
(zipimport reads the whole central directory at start, so a smaller zip is a
faster boot).  Extension modules cannot load from a zip; they are returned
for the caller to place in lib-dynload with their libraries.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass

from initium import process

HELPER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_freeze_helper.py")
# Imported lazily at boot (only when a helper or a shell is spawned), so the
# trace must import them explicitly.
BOOT_EXTRA = ("initium.process", "encodings.utf_8", "encodings.ascii", "encodings.latin_1")


@dataclass(frozen=True)
class FrozenPython:
    zip_bytes: bytes
    modules: tuple[str, ...]
    extensions: tuple[str, ...]


def _package_dirs() -> dict[str, str]:
    """Where the initium packages live now: an installed wheel or the source tree."""
    import initium
    import initium.stages

    return {"initium": initium.__path__[0], "initium/stages": initium.stages.__path__[0]}


def _link_tree(root: str) -> None:
    """Lay initium out as a plain package tree of symlinks (the source keeps it split)."""
    dirs = _package_dirs()
    for rel, directory in dirs.items():
        os.makedirs(os.path.join(root, rel), exist_ok=True)
        for name in sorted(os.listdir(directory)):
            path = os.path.join(directory, name)
            if name.endswith(".py"):
                os.symlink(path, os.path.join(root, rel, name))
            elif (
                f"{rel}/{name}" not in dirs
                and name != "__pycache__"
                and os.path.isfile(os.path.join(path, "__init__.py"))
            ):
                # A sub-package of the core (initium.probe): the whole directory.
                os.symlink(path, os.path.join(root, rel, name))


def _plugin_paths(modules: list[str]) -> list[str]:
    """sys.path entries for third-party stage modules (entry points live outside initium)."""
    import importlib.util

    paths = []
    for name in modules:
        top = name.split(".")[0]
        if top == "initium":
            continue
        spec = importlib.util.find_spec(top)
        if spec is None or spec.origin is None:
            raise ValueError(f"stage module {name} cannot be found")
        location = os.path.dirname(spec.origin)
        if spec.submodule_search_locations:  # a package: its parent directory
            location = os.path.dirname(location)
        paths.append(location)
    return list(dict.fromkeys(paths))


def freeze(interpreter: str, modules: list[str],
           interpreter_args: tuple[str, ...] = ()) -> FrozenPython:
    """Trace and zip; ``interpreter_args`` come first (the static one's ``--hash-seed=0``)."""
    with tempfile.TemporaryDirectory(prefix="initium-freeze-") as tmp:
        tree = os.path.join(tmp, "tree")
        _link_tree(tree)
        out = os.path.join(tmp, "stdlib.zip")
        wanted = ["initium.boot", *modules, *BOOT_EXTRA]
        paths = ":".join([tree, *_plugin_paths(modules)])
        report = json.loads(process.capture(
            [interpreter, *interpreter_args, "-I", "-S", "-X", "utf8", HELPER, paths, out, *wanted],
            env={"PYTHONHASHSEED": "0", "PATH": os.environ.get("PATH", "/usr/bin:/bin")}))
        with open(out, "rb") as f:
            data = f.read()
    return FrozenPython(data, tuple(report["modules"]), tuple(report["extensions"]))
