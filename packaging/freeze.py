"""The stdlib subset and initium itself, as sourceless bytecode in one zip.

The module set is computed, not listed: the image's interpreter imports the
boot entry and the planned stages, and exactly what it loaded is zipped
(zipimport reads the whole central directory at start, so a smaller zip is a
faster boot).  Extension modules cannot load from a zip; they are returned
for the caller to place in lib-dynload with their libraries.
"""

from __future__ import annotations

import hashlib
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


def _sources_digest(h: hashlib._Hash) -> None:
    """Feed every file the trace can read from initium's own packages into ``h``."""
    for rel, directory in sorted(_package_dirs().items()):
        for here, dirs, files in os.walk(directory):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for name in sorted(files):
                if name.endswith((".py", ".pyi")):
                    path = os.path.join(here, name)
                    h.update(f"{rel}:{os.path.relpath(path, directory)}\0".encode())
                    with open(path, "rb") as f:
                        h.update(hashlib.sha256(f.read()).digest())


def freeze_key(interpreter: str, modules: list[str],
               interpreter_args: tuple[str, ...]) -> str:
    """What a freeze depends on: the interpreter's bytes, its arguments, the modules asked
    for, the helper and every source file of initium (a static interpreter's standard
    library is inside its own binary, so its digest covers it)."""
    h = hashlib.sha256()
    with open(interpreter, "rb") as f:
        h.update(hashlib.sha256(f.read()).digest())
    h.update(json.dumps([list(interpreter_args), modules, list(BOOT_EXTRA)]).encode())
    with open(HELPER, "rb") as f:
        h.update(hashlib.sha256(f.read()).digest())
    _sources_digest(h)
    return h.hexdigest()


def freeze(interpreter: str, modules: list[str],
           interpreter_args: tuple[str, ...] = (), cache: str | None = None) -> FrozenPython:
    """Trace and zip; ``interpreter_args`` come first (the static one's ``--hash-seed=0``).

    With ``cache`` (a directory), a freeze of the same inputs is taken from there: the
    trace runs the interpreter twice, half of a warm build.  Only initium's own stages
    are cached (a third-party stage's tree is not digested).
    """
    if cache is not None and not _plugin_paths(modules):
        key = freeze_key(interpreter, modules, interpreter_args)
        stored = os.path.join(cache, f"{key}.zip")
        listing = os.path.join(cache, f"{key}.json")
        if os.path.exists(stored) and os.path.exists(listing):
            with open(stored, "rb") as f, open(listing, encoding="utf-8") as g:
                report = json.load(g)
                return FrozenPython(f.read(), tuple(report["modules"]),
                                    tuple(report["extensions"]))
        frozen = freeze(interpreter, modules, interpreter_args)
        os.makedirs(cache, exist_ok=True)
        for path, data in ((stored, frozen.zip_bytes), (listing, json.dumps(
                {"modules": frozen.modules, "extensions": frozen.extensions}).encode())):
            tmp = f"{path}.{os.getpid()}.tmp"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)  # whole or absent, whoever builds beside us
        return frozen
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
