#!/usr/bin/env python3
"""Run mypy --strict over initium as the package it is installed as.

The source keeps ``initium``, ``initium.stages`` and ``initium.packaging`` in
three top-level folders (the design card's layout) and pyproject maps them;
mypy has no such mapping, so this lays the package out as a tree of symlinks
in a temporary folder and checks that, plus tests, benchmarks and scripts.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = {"initium": "init", "initium/probe": "init/probe", "initium/storage": "init/storage",
            "initium/stages": "stages",
            "initium/packaging": "packaging"}
# Stubs of the static interpreter's builtin modules: top-level names, kept beside the core.
TOP_LEVEL_STUBS = ("init/_initium.pyi", "init/_selinux_min.pyi")


def link_tree(dest: str) -> str:
    for rel, src in PACKAGES.items():
        os.makedirs(os.path.join(dest, rel), exist_ok=True)
        for name in sorted(os.listdir(os.path.join(ROOT, src))):
            if name.endswith((".py", ".typed")):
                os.symlink(os.path.join(ROOT, src, name), os.path.join(dest, rel, name))
    for stub in TOP_LEVEL_STUBS:
        os.symlink(os.path.join(ROOT, stub), os.path.join(dest, os.path.basename(stub)))
    return dest


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="initium-mypy-") as tmp:
        tree = link_tree(os.path.join(tmp, "src"))
        others = sorted(os.path.join(dirpath, name)
                        for d in ("tests", "benchmarks", "scripts")
                        for dirpath, _, names in os.walk(os.path.join(ROOT, d))
                        for name in names if name.endswith(".py"))
        env = {**os.environ, "MYPYPATH": tree}
        cmd = [sys.executable, "-m", "mypy", "--strict", "--config-file",
               os.path.join(ROOT, "pyproject.toml"), "--cache-dir", os.path.join(tmp, "cache"),
               os.path.join(tree, "initium"), *others]
        return subprocess.call(cmd, cwd=tree, env=env)


if __name__ == "__main__":
    raise SystemExit(main())
