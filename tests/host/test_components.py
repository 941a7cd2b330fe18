"""Measured components on a real build: verify, a flipped byte, keylime, a policy rebuild."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from initium.cli import main

from tests.host.conftest import build


def _manifest(image: str) -> dict:  # type: ignore[type-arg]
    return json.loads(Path(image + ".manifest.json").read_text())  # type: ignore[no-any-return]


def test_verify_accepts_the_build_and_names_a_flipped_byte(
        built: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", built]) == 0
    assert "matches its manifest" in capsys.readouterr().out
    manifest = _manifest(built)
    names = [c["name"] for c in manifest["components"]]
    assert names[-1] == "digests"
    for comp in manifest["components"]:
        bad = tmp_path / f"{comp['name']}.img"
        data = bytearray(Path(built).read_bytes())
        pos = comp["offset"] + comp["length"] // 2
        data[pos] ^= 0x20
        bad.write_bytes(data)
        assert main(["verify", str(bad), "--manifest", built + ".manifest.json"]) == 1
        err = capsys.readouterr().err
        assert f"component {comp['name']}, image offset " in err, err
        offset = int(err.split("image offset ")[1].split(",")[0].split(":")[0])
        assert comp["offset"] <= offset <= pos


def test_verify_exit_status_for_unusable_input(built: str, tmp_path: Path) -> None:
    assert main(["verify", str(tmp_path / "missing.img")]) == 2
    broken = tmp_path / "m.json"
    broken.write_text("{")
    assert main(["verify", built, "--manifest", str(broken)]) == 2
    broken.write_text(json.dumps({"format": "initium-manifest/1"}))
    assert main(["verify", built, "--manifest", str(broken)]) == 2


def test_keylime_export_lists_every_regular_file(
        built: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["manifest", built, "--format", "keylime"]) == 0
    policy = json.loads(capsys.readouterr().out)
    assert policy["meta"]["version"] == 1
    regular = {f["path"]: [f["sha256"]] for c in _manifest(built)["components"]
               for f in c["files"] if f["mode"].startswith("100")}
    assert policy["digests"] == regular and "/init" in regular
    assert main(["manifest", built]) == 0
    assert json.loads(capsys.readouterr().out) == _manifest(built)


def test_policy_rebuilt_alone_keeps_the_other_bytes(kver: str, tmp_path: Path) -> None:
    old = build(str(tmp_path / "old.img"), kver, "--module", "virtio_blk")
    kept_copy = tmp_path / "copy.img"
    shutil.copy(old, kept_copy)
    new = build(str(tmp_path / "new.img"), kver, "--module", "virtio_blk", "--module",
                "virtio_blk", "--compress", "gzip", "--component", "policy", "--reuse", old)
    assert main(["verify", new]) == 0
    a, b = Path(old).read_bytes(), Path(new).read_bytes()
    ma, mb = _manifest(old), _manifest(new)
    assert mb["reused"] == {"sha256": ma["sha256"], "components": ["core", "modules"]}
    by_name = {c["name"]: c for c in ma["components"]}
    for comp in mb["components"]:
        if comp["name"] in ("core", "modules"):
            was = by_name[comp["name"]]
            assert b[comp["offset"]:comp["offset"] + comp["length"]] == \
                a[was["offset"]:was["offset"] + was["length"]]
    policy = {c["name"]: c for c in mb["components"]}["policy"]
    assert policy["compression"] == "gzip"  # built anew, with this build's settings
    assert Path(old).read_bytes() == kept_copy.read_bytes()  # the old image is untouched
