"""Portable EVM signatures against ``evmctl`` on a tmpfs, where security.* xattrs live.

RSA PKCS#1 v1.5 is deterministic, so the builder's ``security.evm`` must be
the very bytes ``evmctl sign --portable`` writes for the same attributes,
owner and mode; ``evmctl verify --portable`` must accept it, and refuse it
once the mode or an attribute it covers changes.  ``--generation ''`` tells
evmctl not to ask the file system for a generation (tmpfs has no such
ioctl); a portable signature leaves it out anyway.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from initium.packaging.xattrs import EVM, IMA, SELINUX, ImaSigner, ima_digest

from tests.keys import self_signed

pytestmark = pytest.mark.skipif(shutil.which("evmctl") is None or shutil.which("openssl")
                                is None, reason="no evmctl (apt-get install ima-evm-utils) "
                                                "or no openssl")

APPARMOR = "security.apparmor"


@pytest.fixture()
def tmpfs() -> Iterator[Path]:
    """A directory on a tmpfs that takes security.* attributes (root's /dev/shm)."""
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm")
    folder = Path(tempfile.mkdtemp(dir="/dev/shm", prefix="initium-evm-"))
    try:
        probe = folder / "probe"
        probe.write_bytes(b"")
        try:
            os.setxattr(probe, IMA, ima_digest(b""))
        except OSError as err:
            pytest.skip(f"cannot set security.ima on /dev/shm: {err.strerror}")
        yield folder
    finally:
        shutil.rmtree(folder)


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("evm-key")
    return self_signed(folder / "evm.pem", folder / "evm.der", "initium evm")


def _evmctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["evmctl", *args, "--portable", "-a", "sha256", "--generation", ""],
                          capture_output=True, text=True, check=False)


def _file(folder: Path, name: str, data: bytes, mode: int, attrs: dict[str, bytes]) -> Path:
    path = folder / name
    path.write_bytes(data)
    os.chmod(path, mode)
    for attr, value in attrs.items():
        os.setxattr(path, attr, value)
    return path


def test_the_builders_signature_is_evmctls(tmpfs: Path, key: tuple[Path, Path]) -> None:
    pem, cert = key
    data = os.urandom(3000)
    attrs = {IMA: ima_digest(data), SELINUX: b"system_u:object_r:bin_t:s0\0",
             APPARMOR: b"unconfined\0"}
    theirs = _file(tmpfs, "theirs", data, 0o751, attrs)
    ours = _file(tmpfs, "ours", data, 0o751, attrs)
    signed = _evmctl("sign", "--key", str(pem), str(theirs))
    assert signed.returncode == 0, signed.stdout + signed.stderr
    value = ImaSigner(str(pem)).sign_evm(attrs, os.stat(ours).st_mode)
    assert value[:3] == b"\x05\x02\x04"  # EVM_XATTR_PORTABLE_DIGSIG, v2, sha256
    assert value == os.getxattr(theirs, EVM)
    os.setxattr(ours, EVM, value)
    ok = _evmctl("verify", "--key", str(cert), str(ours))
    assert ok.returncode == 0, ok.stdout + ok.stderr

    os.chmod(ours, 0o755)  # the mode is covered
    assert _evmctl("verify", "--key", str(cert), str(ours)).returncode != 0
    os.chmod(ours, 0o751)
    os.setxattr(ours, SELINUX, b"system_u:object_r:shell_exec_t:s0\0")  # so is the label
    assert _evmctl("verify", "--key", str(cert), str(ours)).returncode != 0
    os.setxattr(ours, SELINUX, attrs[SELINUX])
    assert _evmctl("verify", "--key", str(cert), str(ours)).returncode == 0


def test_only_security_ima_and_the_mode(tmpfs: Path, key: tuple[Path, Path]) -> None:
    """What an image built without an SELinux policy carries (the VM test's case)."""
    pem, _ = key
    data = b"#!/bin/sh\n"
    theirs = _file(tmpfs, "theirs", data, 0o755, {IMA: ima_digest(data)})
    signed = _evmctl("sign", "--key", str(pem), str(theirs))
    assert signed.returncode == 0, signed.stdout + signed.stderr
    assert ImaSigner(str(pem)).sign_evm({IMA: ima_digest(data)}, 0o100755) == \
        os.getxattr(theirs, EVM)
