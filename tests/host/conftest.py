"""Fixtures for tests that use the host: an installed kernel and a built image."""

from __future__ import annotations

import os

import pytest
from initium.cli import main
from initium.packaging.kernel import installed_kernels


@pytest.fixture(scope="session")
def kver() -> str:
    kernels = [k for k in installed_kernels() if "cloud" in k] or installed_kernels()
    if not kernels:
        pytest.skip("no kernel installed (apt-get install linux-image-cloud-amd64)")
    return kernels[-1]


def build(out: str, kver: str, *extra: str) -> str:
    assert main(["build", "--output", out, "--kver", kver, *extra]) == 0
    return out


@pytest.fixture(scope="session")
def built(kver: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    os.environ.pop("SOURCE_DATE_EPOCH", None)
    return build(str(tmp_path_factory.mktemp("built") / "a.img"), kver)
