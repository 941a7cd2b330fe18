"""Which kernel a build is for: the running one when its modules exist, else the newest."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from initium.packaging.kernel import KernelError, default_kver, installed_kernels, kernel_image


def _install(root: Path, *versions: str) -> None:
    for version in versions:
        (root / version).mkdir(parents=True)
        (root / version / "modules.dep").write_text("")


def test_newest_installed_by_version_not_by_text(tmp_path: Path) -> None:
    _install(tmp_path, "6.1.0-9-cloud-amd64", "6.1.0-50-cloud-amd64", "6.1.0-10-cloud-amd64")
    (tmp_path / "6.9.0-no-modules").mkdir()  # a leftover directory without modules.dep
    assert installed_kernels(str(tmp_path)) == [
        "6.1.0-9-cloud-amd64", "6.1.0-10-cloud-amd64", "6.1.0-50-cloud-amd64"]
    if os.uname().release not in installed_kernels(str(tmp_path)):
        assert default_kver(str(tmp_path)) == "6.1.0-50-cloud-amd64"


def test_running_kernel_wins_when_its_modules_exist(tmp_path: Path) -> None:
    _install(tmp_path, "999.0.0-newer", os.uname().release)
    assert default_kver(str(tmp_path)) == os.uname().release


def test_no_kernel_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(KernelError, match="no kernel modules under"):
        default_kver(str(tmp_path))
    with pytest.raises(KernelError, match=r"no kernel image for 1\.2\.3"):
        kernel_image("1.2.3", str(tmp_path))
