"""Property tests for the xattr list: it arrives in the image, so any bytes may be there.

Whatever the input, parsing gives records or one XattrListError (never
another exception), and applying what parsed never writes outside the tree.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from initium.xattrlist import NAMESPACES, SetXattr, XattrListError, XattrRecord, canonical, parse
from initium.xattrlist import serialize as write

FUZZ = settings(max_examples=500, deadline=None)

names = st.builds(lambda ns, rest: ns + rest, st.sampled_from(NAMESPACES),
                  st.text(st.characters(blacklist_characters="\0", codec="utf-8"),
                          min_size=1, max_size=20))
components = st.text(st.characters(blacklist_characters="/\0", codec="utf-8"),
                     min_size=1, max_size=8).filter(lambda c: c not in (".", ".."))
paths = st.lists(components, min_size=1, max_size=4).map("/".join)
records = st.lists(
    st.builds(XattrRecord, paths,
              st.dictionaries(names, st.binary(max_size=40), max_size=3)
              .map(lambda d: tuple(d.items()))),
    max_size=6, unique_by=lambda r: r.path)


def parse_or_error(data: bytes) -> list[XattrRecord] | None:
    try:
        result = parse(data, allowed_prefixes=NAMESPACES)
    except XattrListError as err:
        assert 0 <= err.offset <= len(data)
        assert str(err).startswith(f"offset {err.offset:#x}: ") and "\n" not in str(err)
        return None
    assert all(isinstance(r, XattrRecord) for r in result)
    return result


@FUZZ
@given(st.binary(max_size=300))
def test_any_bytes_give_records_or_one_error(data: bytes) -> None:
    parse_or_error(data)


@FUZZ
@given(records, st.data())
def test_mutated_lists_give_records_or_one_error(recs: list[XattrRecord],
                                                 data: st.DataObject) -> None:
    raw = bytearray(write(recs))
    for _ in range(data.draw(st.integers(0, 4))):
        if not raw:
            break
        at = data.draw(st.integers(0, len(raw) - 1))
        raw[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    parse_or_error(bytes(raw[:cut]))


@FUZZ
@given(records)
def test_round_trip(recs: list[XattrRecord]) -> None:
    data = write(recs)
    assert parse(data, allowed_prefixes=NAMESPACES) == canonical(recs)
    assert write(parse(data, allowed_prefixes=NAMESPACES)) == data


# -- applying: never a write outside the tree --------------------------------

SEGMENTS = ("d", "f", "link", "flink", "..", ".", "", "missing", "/")


def _tree(base: str) -> tuple[str, str]:
    root, outside = os.path.join(base, "root"), os.path.join(base, "outside")
    os.makedirs(os.path.join(root, "d/d"))
    os.makedirs(os.path.join(outside, "d"))
    for directory in (root, os.path.join(root, "d"), os.path.join(root, "d/d"), outside,
                      os.path.join(outside, "d")):
        Path(directory, "f").write_bytes(b"")
    os.symlink(outside, os.path.join(root, "link"))
    os.symlink("../../outside", os.path.join(root, "d/link"))
    os.symlink(os.path.join(outside, "f"), os.path.join(root, "flink"))
    return root, outside


def _outside_has_xattrs(outside: str) -> bool:
    return any(os.listxattr(os.path.join(d, n), follow_symlinks=False)
               for d, dirs, files in os.walk(outside) for n in (*dirs, *files, "."))


@pytest.fixture(scope="module")
def user_xattrs() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            os.setxattr(tmp, "user.initium-probe", b"1")
        except OSError as err:
            pytest.skip(f"{tmp}: no user xattrs here ({err.strerror})")


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=4).map("/".join),
                min_size=1, max_size=6))
@example(["d/f", "link/f", "d/link/f", "flink", "d/d/f", "link/d/f"])
def test_applying_never_writes_outside_the_tree(user_xattrs: None, wanted: list[str]) -> None:
    with tempfile.TemporaryDirectory() as base:
        root, outside = _tree(base)
        applied = []
        for path in dict.fromkeys(wanted):  # one list each, so one bad path hides no others
            raw = path.encode()
            recs = parse_or_error(b"%010x" % (10 + len(raw) + 1 + 17) + raw + b"\0"
                                  + b"%08x" % 17 + b"user.io\0v")
            for rec in recs or []:
                for name, value in rec.xattrs:
                    try:
                        SetXattr(rec.path, name, value, root=root).perform(None)
                    except OSError:
                        continue
                    applied.append(rec.path)
        assert not _outside_has_xattrs(outside)
        for path in applied:  # what was applied landed inside, on a real file
            target = os.path.realpath(os.path.join(root, path))
            assert target.startswith(root + "/")
            assert os.getxattr(target, "user.io", follow_symlinks=False) == b"v"
        for inside in ("d/f", "d/d/f"):
            assert (inside in wanted) == (inside in applied)
