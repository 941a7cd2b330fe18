"""initium build with xattrs: each component's list, the kernel's .xattr-list, the manifest."""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path

import pytest
from initium.cli import main
from initium.packaging.compress import split_image
from initium.packaging.cpio import read_archive
from initium.packaging.selinux import LABELS_PATH
from initium.packaging.xattrs import EVM, IMA, SELINUX, ImaSigner, ima_digest
from initium.xattrlist import parse

from tests.host.conftest import build


def test_ima_digests_in_every_component(kver: str, tmp_path: Path) -> None:
    image = build(str(tmp_path / "x.img"), kver, "--ima-digest", "--kernel-xattr-list")
    manifest = json.loads(Path(image + ".manifest.json").read_text())
    segments = split_image(Path(image).read_bytes())
    assert len(segments) == len(manifest["components"])
    checked = []
    for comp, segment in zip(manifest["components"], segments, strict=True):
        if comp["name"] in ("early", "digests"):
            # microcode is read by the kernel before any list could apply; the digests
            # component is the builder's record of the others and carries no list
            continue
        checked.append(comp["name"])
        entries = list(read_archive(segment.payload_uncompressed))
        by_path = {e.path: e for e in entries}
        listed = parse(by_path[f".initium/xattrs/{comp['name']}"].data)
        assert entries[-1].path == ".xattr-list"  # after the files it names
        assert entries[-1].data == by_path[f".initium/xattrs/{comp['name']}"].data
        regular = {p for p, e in by_path.items() if e.mode & 0o170000 == 0o100000
                   and not p.startswith(".initium/xattrs/") and p != ".xattr-list"}
        assert {r.path for r in listed} == regular
        for rec in listed:
            assert rec.xattrs == (("security.ima", ima_digest(by_path[rec.path].data)),)
        described = {f["path"].lstrip("/"): f["xattrs"] for f in comp["files"]}
        for rec in listed:
            assert described[rec.path] == {"security.ima": rec.xattrs[0][1].hex()}
    assert checked == ["core", "modules", "policy"]


def test_evm_signatures_in_the_lists_the_manifest_and_verify(
        kver: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--evm-sign-key alone: every regular file gets a security.ima digest and a portable
    security.evm over it (and over the boot label when the image has an SELinux policy);
    the manifest lists both and ``initium verify`` notices a changed security.evm."""
    key = tmp_path / "evm.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt",
                    "rsa_keygen_bits:2048", "-out", str(key)], check=True, capture_output=True)
    image = build(str(tmp_path / "evm.img"), kver, "--evm-sign-key", str(key))
    manifest = json.loads(Path(image + ".manifest.json").read_text())
    segments = split_image(Path(image).read_bytes())
    by_name = dict(zip((c["name"] for c in manifest["components"]), segments, strict=True))
    files = {e.path: e for e in read_archive(by_name["core"].payload_uncompressed)}
    listed = {r.path: dict(r.xattrs) for r in parse(files[".initium/xattrs/core"].data)}
    labels: dict[str, bytes] = {}
    policy_files = {e.path: e for e in read_archive(by_name["policy"].payload_uncompressed)}
    if LABELS_PATH.lstrip("/") in policy_files:  # the build host's SELinux policy
        labels = {r.path: dict(r.xattrs)[SELINUX]
                  for r in parse(policy_files[LABELS_PATH.lstrip("/")].data)}
    signer = ImaSigner(str(key))
    regular = sorted(p for p, e in files.items() if stat.S_ISREG(e.mode)
                     and not p.startswith(".initium/xattrs/"))
    assert set(listed) == set(regular)
    sampled = (regular[0], regular[len(regular) // 2], regular[-1])
    assert not labels or all(p in labels for p in sampled)  # the labels are covered
    for path in sampled:
        attrs = listed[path]
        assert sorted(attrs) == [EVM, IMA]
        assert attrs[IMA] == ima_digest(files[path].data)
        covered = {IMA: attrs[IMA], **({SELINUX: labels[path]} if path in labels else {})}
        assert attrs[EVM] == signer.sign_evm(covered, files[path].mode), path
    described = {f["path"]: f["xattrs"] for f in manifest["components"][
        [c["name"] for c in manifest["components"]].index("core")]["files"]}
    assert described["/" + regular[0]][EVM] == listed[regular[0]][EVM].hex()

    assert main(["verify", image]) == 0
    capsys.readouterr()
    flipped = listed[regular[0]][EVM][:-1] + bytes([listed[regular[0]][EVM][-1] ^ 1])
    for comp in manifest["components"]:
        for f in comp["files"]:
            if f["path"] == "/" + regular[0]:
                f["xattrs"][EVM] = flipped.hex()
    lying = tmp_path / "lying.json"
    lying.write_text(json.dumps(manifest))
    assert main(["verify", image, "--manifest", str(lying)]) == 1
    assert "xattrs differ (security.evm)" in capsys.readouterr().err
