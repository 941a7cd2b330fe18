"""An image whose policy component was rebuilt alone boots, and the init reports the
digests of the components it booted from, equal to the manifest's."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from initium.cli import main

from tests.vm.conftest import ROOT_UUID, BootFn, _build

pytestmark = pytest.mark.vm

KEYS = ("name", "offset", "length", "compression", "sha256", "uncompressed_sha256")


def test_policy_rebuilt_alone_boots_and_reports_its_digests(
        boot: BootFn, kver: str, ext4_disk: str, tmp_path: Path) -> None:
    old = _build(str(tmp_path), kver)
    new = str(tmp_path / "policy-rebuilt.img")
    # gzip instead of zstd: the policy bytes change, the plan does not.
    assert main(["build", "--output", new, "--kver", kver, "--module", "virtio_blk",
                 "--compress", "gzip", "--component", "policy", "--reuse", old]) == 0
    assert main(["verify", new]) == 0
    manifest = json.loads(Path(new + ".manifest.json").read_text())
    comps = {c["name"]: c for c in manifest["components"]}
    assert comps["policy"]["compression"] == "gzip"
    assert comps["core"]["compression"] == "zstd"
    assert manifest["reused"]["components"] == ["core", "modules"]
    assert os.path.getsize(new) == manifest["size"]

    result = boot(new, ext4_disk, f"root=UUID={ROOT_UUID}")
    assert result.has(r"^INITIUM-ROOT-INIT"), result.output[-3000:]
    m = re.search(r"INITIUM-TIMELINE (\{.*\})", result.output)
    assert m, "the root cannot read /run/initium/timeline.json"
    timeline = json.loads(m.group(1))
    expected = [{k: c[k] for k in KEYS} for c in manifest["components"]
                if c["name"] != "digests"]
    assert timeline["components"] == expected
    assert "components_error" not in timeline
    assert not result.has("Kernel panic")


def test_core_rebuilt_alone_still_boots(boot: BootFn, kver: str, ext4_disk: str,
                                        tmp_path: Path) -> None:
    """The interpreter and the init replaced (gzip'd core), modules and policy kept as built."""
    old = _build(str(tmp_path), kver)
    new = str(tmp_path / "core-rebuilt.img")
    assert main(["build", "--output", new, "--kver", kver, "--module", "virtio_blk",
                 "--compress", "gzip", "--component", "core", "--reuse", old]) == 0
    assert main(["verify", new]) == 0
    manifest = json.loads(Path(new + ".manifest.json").read_text())
    comps = {c["name"]: c for c in manifest["components"]}
    assert comps["core"]["compression"] == "gzip"
    assert comps["policy"]["compression"] == "zstd"
    old_manifest = json.loads(Path(old + ".manifest.json").read_text())
    kept = {c["name"]: c["sha256"] for c in old_manifest["components"]}
    assert comps["modules"]["sha256"] == kept["modules"]
    assert comps["policy"]["sha256"] == kept["policy"]
    result = boot(new, ext4_disk, f"root=UUID={ROOT_UUID}")
    assert result.has(r"^INITIUM-ROOT-INIT pid=1"), result.output[-3000:]
    assert not result.has("Kernel panic")
