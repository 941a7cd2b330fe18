"""initium build with xattrs: each component's list, the kernel's .xattr-list, the manifest."""

from __future__ import annotations

import json
from pathlib import Path

from initium.packaging.compress import split_image
from initium.packaging.cpio import read_archive
from initium.packaging.xattrs import ima_digest
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
