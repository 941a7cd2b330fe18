"""Measured components: the manifest, verify, the keylime export, one-component rebuilds,
and the digests the init copies into its timeline.

Images here are assembled from small archives (gzip and uncompressed, so no
tool runs); tests/host builds real ones.
"""

from __future__ import annotations

import hashlib
import json
import marshal
import re
import stat
from typing import Any

import pytest
from initium import components, ops
from initium.components import DIGESTS_PATH, DigestsError
from initium.memsystem import MemorySystem
from initium.packaging.compress import compress
from initium.packaging.cpio import Entry, write_archive
from initium.packaging.image import (
    Part,
    assemble,
    describe_part,
    manifest_bytes,
    parts_of,
    stitch,
)
from initium.packaging.keylime import runtime_policy
from initium.packaging.verify import (
    ManifestError,
    Mismatch,
    Work,
    parse_manifest,
    verify,
)
from initium.packaging.xattrs import list_path, records_of
from initium.runner import TIMELINE_PATH
from initium.xattrlist import serialize

from tests.unit.test_runner import Machine, stage

IMA = b"\x04\x04" + bytes(range(32))


def part(name: str, files: dict[str, bytes], method: str = "gzip", *,
         xattrs: dict[str, dict[str, bytes]] | None = None,
         links: dict[str, str] | None = None) -> Part:
    entries = [Entry(p, stat.S_IFREG | 0o644, d) for p, d in files.items()]
    entries += [Entry(p, stat.S_IFLNK | 0o777, t.encode()) for p, t in (links or {}).items()]
    xattrs = xattrs or {}
    if xattrs:
        entries.append(Entry(list_path(name), stat.S_IFREG | 0o644,
                             serialize(records_of(xattrs), ("security.",))))
    archive = write_archive(entries, mtime=7)
    data = compress(archive, method) if method != "none" else archive
    return describe_part(name, method, data, archive, xattrs)


def sample_parts() -> list[Part]:
    return [
        part("early", {"kernel/x86/microcode/GenuineIntel.bin": b"u" * 301}, "none"),
        part("core", {"init": b"#!/bin/sh\n" * 40, "etc/initrd-release": b"ID=initium\n"},
             links={"bin": "usr/bin", "etc/mtab": "/proc/self/mounts"}),
        part("modules", {"usr/lib/modules/6.1/a.ko": bytes(range(256)) * 9,
                         "usr/lib/modules/6.1/modules.dep": b"a.ko:\n"},
             xattrs={"usr/lib/modules/6.1/a.ko": {"security.ima": IMA}}),
        part("policy", {"etc/initium/plan.marshal": b"\xfb" * 40}),
    ]


def sample() -> tuple[bytes, dict[str, Any]]:
    image, manifest = assemble(sample_parts(), 7)
    manifest["kver"] = "6.1"
    return image, manifest


def component(manifest: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(c for c in manifest["components"] if c["name"] == name)
    return found


# -- the manifest ---------------------------------------------------------------


def test_manifest_round_trip_describes_every_byte() -> None:
    image, manifest = sample()
    doc = json.loads(manifest_bytes(manifest))
    assert doc == manifest
    assert verify(image, doc) is None
    ref = parse_manifest(doc)
    assert [c.name for c in ref.components] == ["early", "core", "modules", "policy",
                                                "digests"]
    assert ref.size == len(image) and ref.sha256 == hashlib.sha256(image).hexdigest()
    for comp in ref.components:
        data = image[comp.offset:comp.end]
        assert hashlib.sha256(data).hexdigest() == comp.sha256
        assert comp.offset % 4 == 0
    # Every entry the kernel will unpack is listed, implicit parent directories too.
    core = component(doc, "core")
    assert {f["path"] for f in core["files"]} >= {"/etc", "/etc/mtab", "/init", "/bin"}
    ko = [f for f in component(doc, "modules")["files"] if f["path"].endswith("a.ko")]
    assert ko[0]["xattrs"] == {"security.ima": IMA.hex()}


def test_digests_component_holds_every_earlier_component() -> None:
    image, manifest = sample()
    last = manifest["components"][-1]
    assert (last["name"], last["compression"]) == ("digests", "none")
    parts = parts_of(image, manifest)
    assert "digests" not in parts
    from initium.packaging.cpio import read_archive

    (entry,) = [e for e in read_archive(image[last["offset"]:]) if not stat.S_ISDIR(e.mode)]
    assert "/" + entry.path == DIGESTS_PATH
    held = [d.as_dict() for d in components.from_bytes(entry.data)]
    keys = ("name", "offset", "length", "compression", "sha256", "uncompressed_sha256")
    assert held == [{k: c[k] for k in keys} for c in manifest["components"][:-1]]


def test_two_assemblies_are_byte_identical_whatever_objects_carry_the_values() -> None:
    image, manifest = sample()
    again = parts_of(image, json.loads(manifest_bytes(manifest)))  # strings from JSON
    image2, _ = assemble([again[n] for n in ("early", "core", "modules", "policy")], 7)
    assert image2 == image


# -- verify ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["early", "core", "modules", "policy", "digests"])
@pytest.mark.parametrize("where", [0, 0.5, 1])
def test_a_flipped_byte_names_its_component(name: str, where: float) -> None:
    image, manifest = sample()
    comp = component(manifest, name)
    pos = comp["offset"] + min(int(comp["length"] * where), comp["length"] - 1)
    bad = bytearray(image)
    bad[pos] ^= 0x10
    found = verify(bytes(bad), manifest)
    assert isinstance(found, Mismatch)
    assert found.component == name, found
    assert found.offset is not None
    assert comp["offset"] <= found.offset <= pos
    if comp["compression"] == "none":
        assert found.offset < comp["offset"] + comp["length"]


def test_a_flipped_byte_in_an_uncompressed_file_names_the_file() -> None:
    image, manifest = sample()
    comp = component(manifest, "early")
    pos = image.index(b"u" * 301) + 100
    bad = bytearray(image)
    bad[pos] ^= 1
    found = verify(bytes(bad), manifest)
    assert found is not None
    assert (found.component, found.path) == ("early", "/kernel/x86/microcode/GenuineIntel.bin")
    assert comp["offset"] <= found.offset < pos  # type: ignore[operator]
    assert "sha256" in found.reason


def _with_files(change: dict[str, bytes | None]) -> bytes:
    """The sample image with the core component's files changed (None removes one)."""
    files = {"init": b"#!/bin/sh\n" * 40, "etc/initrd-release": b"ID=initium\n"}
    for path, data in change.items():
        if data is None:
            del files[path]
        else:
            files[path] = data
    parts = sample_parts()
    parts[1] = part("core", files, links={"bin": "usr/bin", "etc/mtab": "/proc/self/mounts"})
    return assemble(parts, 7)[0]


def test_a_file_added_is_named() -> None:
    _, manifest = sample()
    found = verify(_with_files({"etc/extra": b"x"}), manifest)
    assert found is not None
    assert (found.component, found.path) == ("core", "/etc/extra")
    assert "added" in found.reason and found.inner_offset is not None


def test_a_file_removed_is_named() -> None:
    _, manifest = sample()
    found = verify(_with_files({"etc/initrd-release": None}), manifest)
    assert found is not None
    assert (found.component, found.path) == ("core", "/etc/initrd-release")
    assert "removed" in found.reason


def test_a_manifest_that_lies_about_a_file_is_caught_though_the_bytes_match() -> None:
    image, manifest = sample()
    lying = json.loads(manifest_bytes(manifest))
    item = next(f for f in component(lying, "core")["files"] if f["path"] == "/init")
    item["sha256"] = "0" * 64
    found = verify(image, lying)
    assert found is not None and (found.component, found.path) == ("core", "/init")


def test_a_manifest_that_lies_about_xattrs_is_caught() -> None:
    image, manifest = sample()
    lying = json.loads(manifest_bytes(manifest))
    for f in component(lying, "modules")["files"]:
        f["xattrs"] = {}
    found = verify(image, lying)
    assert found is not None and found.component == "modules"
    assert found.path == "/usr/lib/modules/6.1/a.ko" and "xattrs differ" in found.reason


def test_a_truncated_image_is_named_with_its_length() -> None:
    image, manifest = sample()
    cut = component(manifest, "modules")["offset"] + 10
    found = verify(image[:cut], manifest)
    assert found is not None
    assert (found.component, found.offset) == ("modules", cut) and "truncated" in found.reason


def test_appended_data_is_named() -> None:
    image, manifest = sample()
    found = verify(image + b"0707", manifest)
    assert found is not None and found.offset == len(image)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda m: m.update(format="other/1"), "format"),
    (lambda m: m["components"][1].update(offset=0), "after the previous component"),
    (lambda m: m["components"][0].update(sha256="XYZ"), "hex"),
    (lambda m: m["components"][1]["files"][0].update(path="/a/../b"), "'..'"),
    (lambda m: m["components"][1].update(uncompressed_size=1 << 40), "uncompressed_size"),
    (lambda m: m.update(components=[]), "components"),
])
def test_an_unusable_manifest_is_one_clear_error(edit: Any, message: str) -> None:
    image, manifest = sample()
    doc = json.loads(manifest_bytes(manifest))
    edit(doc)
    with pytest.raises(ManifestError, match=re.escape(message)):
        verify(image, doc)


def test_work_is_bounded_by_the_inputs() -> None:
    image, manifest = sample()
    work = Work()
    assert verify(image, manifest, work) is None
    declared = sum(c["uncompressed_size"] for c in manifest["components"]
                   if c["compression"] != "none")
    assert 0 < work.decompressed == declared
    assert 0 < work.hashed <= 3 * len(image) + 2 * work.decompressed


# -- keylime ----------------------------------------------------------------------

HEX = re.compile(r"[0-9a-f]{40,128}")


def test_keylime_policy_has_keylimes_runtime_policy_shape() -> None:
    _, manifest = sample()
    policy = json.loads(json.dumps(runtime_policy(manifest)))
    # keylime/ima/ima.py RUNTIME_POLICY_SCHEMA (version 1): required keys and types.
    assert set(policy) == {"meta", "release", "digests", "excludes", "keyrings", "ima",
                           "ima-buf", "verification-keys"}
    assert policy["meta"] == {"version": 1, "generator": 0}
    assert isinstance(policy["release"], int) and policy["release"] >= 0
    assert policy["excludes"] == [] and policy["keyrings"] == {} and policy["ima-buf"] == {}
    assert policy["ima"] == {"ignored_keyrings": [], "log_hash_alg": "sha1",
                             "dm_policy": None}
    assert policy["verification-keys"] == ""
    for path, digests in policy["digests"].items():
        assert path.startswith("/") and digests
        assert all(HEX.fullmatch(d) for d in digests)


def test_keylime_digests_are_every_regular_file() -> None:
    _, manifest = sample()
    digests = runtime_policy(manifest)["digests"]
    regular = {f["path"]: f["sha256"] for c in manifest["components"] for f in c["files"]
               if stat.S_ISREG(int(f["mode"], 8))}
    assert digests == {p: [d] for p, d in regular.items()}
    assert digests["/init"] == [hashlib.sha256(b"#!/bin/sh\n" * 40).hexdigest()]
    assert "/bin" not in digests and "/etc" not in digests  # a symlink, a directory
    assert DIGESTS_PATH in digests


# -- one component rebuilt ------------------------------------------------------


def test_one_rebuilt_component_keeps_the_others_bytes() -> None:
    image, manifest = sample()
    new_policy = part("policy", {"etc/initium/plan.marshal": b"\xfa" * 99})
    kept, chosen = stitch("policy", new_policy, image, manifest)
    assert sorted(kept) == ["core", "early", "modules"]
    image2, manifest2 = assemble(chosen, 7)
    assert verify(image2, manifest2) is None
    for name in ("early", "core", "modules"):
        a, b = component(manifest, name), component(manifest2, name)
        assert image[a["offset"]:a["offset"] + a["length"]] == \
            image2[b["offset"]:b["offset"] + b["length"]]
        assert {k: v for k, v in a.items() if k != "offset"} == \
            {k: v for k, v in b.items() if k != "offset"}
    assert component(manifest2, "policy")["sha256"] != component(manifest, "policy")["sha256"]
    # the xattr list stays with its own component
    assert component(manifest2, "modules")["files"] == component(manifest, "modules")["files"]


# -- the digests in the timeline ------------------------------------------------


def test_timeline_carries_the_embedded_digests_unchanged() -> None:
    image, manifest = sample()
    digests = parts_of(image, manifest)
    held = [components.ComponentDigest(c["name"], c["offset"], c["length"], c["compression"],
                                       c["sha256"], c["uncompressed_sha256"])
            for c in manifest["components"][:-1]]
    assert sorted(digests) == sorted(c.name for c in held)
    m = Machine(sys=MemorySystem(files={DIGESTS_PATH: components.to_bytes(held)}))
    m.run([stage("a"), stage("switch-root", final=True)])
    doc = json.loads(m.sys.files[TIMELINE_PATH])
    assert doc["components"] == [c.as_dict() for c in held]
    assert "components_error" not in doc
    assert ops.WriteFile(TIMELINE_PATH, m.sys.files[TIMELINE_PATH]) in m.sys.applied


def test_timeline_says_why_digests_are_missing() -> None:
    m = Machine(sys=MemorySystem(files={DIGESTS_PATH: b"garbage"}))
    outcome = m.run([stage("switch-root", final=True)])
    assert outcome.ok
    doc = json.loads(m.sys.files[TIMELINE_PATH])
    assert doc["components"] is None and DIGESTS_PATH in doc["components_error"]
    m = Machine()
    m.run([stage("switch-root", final=True)])
    assert "not in this image" in json.loads(m.sys.files[TIMELINE_PATH])["components_error"]


@pytest.mark.parametrize("data", [b"", b"\x00", b"garbage", marshal.dumps(
    {"version": 1, "components": [{"name": "core"}]}), marshal.dumps([1, 2])])
def test_malformed_digests_are_one_error(data: bytes) -> None:
    with pytest.raises(DigestsError):
        components.from_bytes(data)


def test_a_mismatch_prints_a_hostile_path_on_one_line() -> None:
    """A path from a damaged image (found by hypothesis: a newline in a name)."""
    text = str(Mismatch("not in the manifest", 0, "core", "/a\nb\x1b[2J"))
    assert text == "component core, image offset 0, /a\\x0ab\\x1b[2J: not in the manifest"
