"""Boots of the static /init: the plain root, and a corrupted frozen module that must halt."""

from __future__ import annotations

import os
import re
import stat
import struct
from pathlib import Path

import pytest
from initium.packaging.cpio import Entry, write_archive
from initium.packaging.reader import read_image

from tests.vm.conftest import ROOT_UUID, BootFn, _build

pytestmark = pytest.mark.vm


@pytest.fixture(scope="session")
def static_image(kver: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    return _build(str(tmp_path_factory.mktemp("static-image")), kver, "--interpreter", "static")


def test_static_init_boots_the_root(boot: BootFn, static_image: str, ext4_disk: str) -> None:
    result = boot(static_image, ext4_disk, f"root=UUID={ROOT_UUID} initium.timeline")
    m = re.search(r"INITIUM-ROOT-INIT pid=(\d+) init=(\S+)", result.output)
    assert m and m.group(1) == "1", "the root's init never ran:\n" + result.output[-3000:]
    assert result.has(r"\(python up\)") and result.has(r"\(init start\)")
    env = re.search(r"INITIUM-ENV (.*)", result.output)
    assert env and "PYTHON" not in env.group(1)
    assert not result.has("Kernel panic")


def _corrupt_module(init: bytes, name: bytes) -> bytes:
    """/init with the body of one stored zip member overwritten (its 16-byte pyc header kept)."""
    pos = -1
    while True:
        pos = init.find(name, pos + 1)
        assert pos >= 0, f"{name!r} is not in /init's zip"
        header = pos - 30
        if init[header:header + 4] == b"PK\x03\x04":
            break
    size: int = struct.unpack_from("<I", init, header + 18)[0]
    extra: int = struct.unpack_from("<H", init, header + 28)[0]
    body = header + 30 + len(name) + extra
    return init[:body + 16] + b"\xff" * (size - 16) + init[body + size:]


def test_corrupted_frozen_module_halts_with_a_message(
        boot: BootFn, static_image: str, ext4_disk: str, tmp_path: Path) -> None:
    init = read_image(static_image)["/init"][1].data
    bad = _corrupt_module(init, b"initium/boot.pyc")
    # An appended archive replaces /init: the kernel unpacks the segments in order.
    with open(static_image, "rb") as f:
        image = f.read() + write_archive([Entry("init", stat.S_IFREG | 0o755, bad)])
    path = os.path.join(str(tmp_path), "corrupt.img")
    with open(path, "wb") as f:
        f.write(image)
    result = boot(path, ext4_disk, f"root=UUID={ROOT_UUID}")
    assert result.has(r"initium: cannot import the init: .*; halting"), result.output[-3000:]
    assert result.has(r"reboot: System halted")
    assert not result.has("Kernel panic")
