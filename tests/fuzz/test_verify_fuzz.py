"""Property tests for verify and inspect: the image and the manifest may be anything.

Whatever the bytes, ``verify`` gives None, one Mismatch or one ManifestError,
and ``image_files`` (what ``inspect`` reads) gives files or one ImageError;
never another exception.  Work is bounded by counting (``Work``: bytes hashed
and decompressed, records read), not by a clock.
"""

from __future__ import annotations

import copy
import json
import stat
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from initium.packaging.cpio import HEADER_LEN, MAGIC, Entry, write_archive
from initium.packaging.image import manifest_bytes
from initium.packaging.reader import ImageError, image_files, suspicious
from initium.packaging.verify import ManifestError, Mismatch, Work, slack, verify

from tests.unit.test_components import sample

FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
IMAGE, MANIFEST = sample()
MANIFEST_DOC = json.loads(manifest_bytes(MANIFEST))
INSPECT_LIMIT = 1 << 20


def check_verify(image: bytes, doc: dict[str, Any]) -> Mismatch | None:
    work = Work()
    try:
        found = verify(image, doc, work)
    except ManifestError as err:
        assert "\n" not in str(err)
        return None
    declared = sum(slack(c["uncompressed_size"]) for c in doc["components"]
                   if c["compression"] != "none")
    assert work.decompressed <= declared
    assert work.hashed <= 3 * len(image) + 2 * work.decompressed
    assert work.records <= (len(image) + work.decompressed) // HEADER_LEN + 1
    if found is not None:
        text = str(found)
        assert "\n" not in text and found.reason
        assert found.offset is None or 0 <= found.offset <= max(len(image), doc["size"])
    return found


def check_inspect(image: bytes) -> None:
    try:
        files = image_files(image, limit=INSPECT_LIMIT)
    except ImageError as err:
        assert "\n" not in str(err)
        return
    assert sum(len(e.data) for _, e in files.values()) <= INSPECT_LIMIT + len(image)
    for line in suspicious(files):
        assert "\n" not in line


edits = st.lists(st.tuples(st.sampled_from(["flip", "cut", "insert", "overwrite"]),
                           st.integers(0, len(IMAGE) - 1), st.binary(min_size=1, max_size=16)),
                 min_size=1, max_size=4)


def mutate(image: bytes, steps: list[tuple[str, int, bytes]]) -> bytes:
    data = bytearray(image)
    for kind, where, blob in steps:
        pos = min(where, max(len(data) - 1, 0))
        if kind == "flip" and data:
            data[pos] ^= blob[0] or 1
        elif kind == "cut":
            del data[pos:]
        elif kind == "insert":
            data[pos:pos] = blob
        else:
            data[pos:pos + len(blob)] = blob
    return bytes(data)


@FUZZ
@given(edits)
def test_verify_any_damaged_image(steps: list[tuple[str, int, bytes]]) -> None:
    image = mutate(IMAGE, steps)
    found = check_verify(image, MANIFEST_DOC)
    assert (found is None) == (image == IMAGE)
    check_inspect(image)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.text(max_size=70),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=3),
    max_leaves=8)


def _spots(doc: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [path]
    if isinstance(doc, dict):
        for key, value in doc.items():
            found += _spots(value, (*path, key))
    elif isinstance(doc, list):
        for index, value in enumerate(doc[:3]):
            found += _spots(value, (*path, index))
    return found


SPOTS = _spots(MANIFEST_DOC)


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(SPOTS), json_values), min_size=1, max_size=3))
def test_verify_any_lying_manifest(changes: list[tuple[tuple[Any, ...], Any]]) -> None:
    doc = copy.deepcopy(MANIFEST_DOC)
    for path, value in changes:
        if not path:
            doc = value
            continue
        target = doc
        try:
            for key in path[:-1]:
                target = target[key]
            target[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue
    try:
        found = verify(IMAGE, doc, Work())
    except ManifestError as err:
        assert "\n" not in str(err)
        return
    if found is not None:
        assert "\n" not in str(found)


def header(name: bytes, mode: int, filesize: int, namesize: int | None = None) -> bytes:
    namesize = len(name) + 1 if namesize is None else namesize
    fields = (1, mode, 0, 0, 1, 0, filesize, 0, 0, 0, 0, namesize, 0)
    head = MAGIC + b"".join(b"%08X" % v for v in fields) + name + b"\0"
    return head + bytes(-len(head) % 4)


hostile_records = st.one_of(
    st.builds(lambda n, size: header(n, stat.S_IFREG | 0o644, size),
              st.sampled_from([b"a", b"../../etc/shadow", b"/abs", b"a/./b", b"x//y"]),
              st.sampled_from([0xFFFFFFFF, 0x7FFFFFFF, 1 << 20, 3])),
    st.builds(lambda n, size: header(n, stat.S_IFREG, 0, size),
              st.just(b"n"), st.sampled_from([0, 0xFFFFFFFF, 4097, 5000])),
    st.builds(lambda t: header(b"link", stat.S_IFLNK | 0o777, len(t)) + t + bytes(-len(t) % 4),
              st.sampled_from([b"/etc/passwd", b"../../../../root", b"/", b"x" * 5000])),
    st.builds(lambda n: write_archive([Entry("ok", stat.S_IFREG | 0o644, b"ok")])[:n],
              st.integers(0, 200)),
)


@FUZZ
@given(st.lists(hostile_records, min_size=1, max_size=4), st.sampled_from(["early", "digests"]))
def test_hostile_cpio_in_an_uncompressed_component(records: list[bytes], name: str) -> None:
    (comp,) = [c for c in MANIFEST_DOC["components"] if c["name"] == name]
    hostile = b"".join(records)
    image = IMAGE[:comp["offset"]] + hostile + IMAGE[comp["offset"] + len(hostile):]
    found = check_verify(image, MANIFEST_DOC)
    if image != IMAGE:
        assert found is not None and found.offset is not None
    check_inspect(image)
    check_inspect(hostile)


def test_dot_dot_and_absolute_names_are_reported_by_inspect() -> None:
    data = header(b"../../etc/shadow", stat.S_IFREG | 0o644, 0) + \
        header(b"link", stat.S_IFLNK | 0o777, 11) + b"/etc/passwd" + b"\0" + \
        write_archive([])
    files = image_files(data)
    assert files["/link"][1].data == b"/etc/passwd"
    (problem,) = suspicious(files)
    assert "'../../etc/shadow'" in problem and "'..'" in problem


def test_huge_sizes_are_named_with_their_offset() -> None:
    data = write_archive([Entry("a", stat.S_IFREG | 0o644, b"x")])[:-124]
    data += header(b"b", stat.S_IFREG | 0o644, 0xFFFFFFFF)
    try:
        image_files(data)
    except ImageError as err:
        assert "image offset" in str(err) and "runs past the end" in str(err)
    else:
        raise AssertionError("a body of 4 GiB in a small image was accepted")
