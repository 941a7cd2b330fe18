"""ruff and mypy --strict are part of the suite: a lint error fails the tests."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)


def test_ruff() -> None:
    done = _run([sys.executable, "-m", "ruff", "check", "."])
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy_strict() -> None:
    done = _run([sys.executable, os.path.join(ROOT, "scripts", "typecheck.py")])
    assert done.returncode == 0, done.stdout + done.stderr
