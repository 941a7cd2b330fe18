"""The benchmark compares like with like: dracut does not read the build host's configuration."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import boot  # noqa: E402


def test_dracut_runs_with_an_empty_configuration_of_its_own(tmp_path: Path) -> None:
    argv = boot.dracut_argv("6.1.0-test", str(tmp_path))("/tmp/out.img")
    conf = argv[argv.index("--conf") + 1]
    confdir = argv[argv.index("--confdir") + 1]
    assert conf.startswith(str(tmp_path)) and confdir.startswith(str(tmp_path))
    assert os.listdir(confdir) == []
    with open(conf, encoding="utf-8") as f:
        assert all(line.startswith("#") for line in f.read().splitlines())
    assert not any(a.startswith("/etc/dracut") for a in argv)
    assert argv[-2:] == ["6.1.0-test", "/tmp/out.img"]
