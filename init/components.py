"""The digests of the image's components, as the builder recorded them.

A component cannot carry its own digest (writing it would change it), and
putting the others' digests into ``core`` would make ``core`` change
whenever ``policy`` or ``modules`` is rebuilt, so a one-component update
would no longer be measured alone.  The builder therefore appends a small
uncompressed last component, ``digests``, holding one file with the byte
range and the sha256 (as stored and uncompressed) of every component before
it; docs/design-notes.md says why there.

The init reads that file once and copies it into its timeline: nothing is
recomputed at boot (the bytes of the other components are gone by then, the
kernel unpacked and freed them).  The file is ``marshal`` data, read under
the same rules as the plan (initium.plan): plain values only, bounded size
and depth, one ``DigestsError`` line for anything else.
"""

from __future__ import annotations

import marshal

from initium.plan import check_plain, load_plain
from initium.record import record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from initium.system import System

DIGESTS_PATH = "/.initium/digests.marshal"
DIGESTS_COMPONENT = "digests"
DIGESTS_VERSION = 1
MAX_DIGESTS_BYTES = 64 << 10
# marshal's format 0 writes values only: from format 3 on, objects referenced
# twice become back-references (and from 1 on, interned strings are flagged),
# so equal digests would give different bytes depending on whether they came
# from a fresh build or from an old manifest read back (single-component
# rebuilds), and the image would not be reproducible.
DIGESTS_MARSHAL_FORMAT = 0
MAX_COMPONENTS = 64
_HEXDIGITS = "0123456789abcdef"
_COMPRESSIONS = ("none", "zstd", "gzip", "xz", "lzma", "bzip2")


class DigestsError(ValueError):
    """The embedded digests are missing or malformed."""


@record
class ComponentDigest:
    name: str
    offset: int
    length: int
    compression: str
    sha256: str  # of the bytes as stored in the image
    uncompressed_sha256: str

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "offset": self.offset, "length": self.length,
                "compression": self.compression, "sha256": self.sha256,
                "uncompressed_sha256": self.uncompressed_sha256}


def _is_sha256(text: object) -> bool:
    return isinstance(text, str) and len(text) == 64 and all(c in _HEXDIGITS for c in text)


def to_bytes(components: list[ComponentDigest]) -> bytes:
    doc = {"version": DIGESTS_VERSION, "components": [c.as_dict() for c in components]}
    check_plain(doc)
    return marshal.dumps(doc, DIGESTS_MARSHAL_FORMAT)


def from_bytes(data: bytes) -> list[ComponentDigest]:
    try:
        doc: Any = load_plain(data, MAX_DIGESTS_BYTES)
    except ValueError as err:
        raise DigestsError(str(err)) from None
    if not isinstance(doc, dict) or doc.get("version") != DIGESTS_VERSION:
        raise DigestsError(f"version is not {DIGESTS_VERSION}")
    items = doc.get("components")
    if not isinstance(items, list) or len(items) > MAX_COMPONENTS:
        raise DigestsError(f"lacks a list of at most {MAX_COMPONENTS} components")
    found = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise DigestsError(f"component #{index} is not a mapping")
        name, offset, length = item.get("name"), item.get("offset"), item.get("length")
        compression = item.get("compression")
        if not (isinstance(name, str) and 0 < len(name) <= 32
                and type(offset) is int and type(length) is int
                and offset >= 0 and length > 0 and compression in _COMPRESSIONS
                and _is_sha256(item.get("sha256"))
                and _is_sha256(item.get("uncompressed_sha256"))):
            raise DigestsError(f"component #{index} is malformed")
        found.append(ComponentDigest(name, offset, length, compression, item["sha256"],
                                     item["uncompressed_sha256"]))
    return found


def read_digests(system: System) -> tuple[list[ComponentDigest] | None, str | None]:
    """The embedded digests, or None and why not (an image without them is not broken)."""
    try:
        return from_bytes(system.read_bytes(DIGESTS_PATH, MAX_DIGESTS_BYTES + 1)), None
    except FileNotFoundError:
        return None, f"{DIGESTS_PATH} is not in this image"
    except OSError as err:
        return None, f"{DIGESTS_PATH}: {err.strerror or err}"
    except DigestsError as err:
        return None, f"{DIGESTS_PATH}: {err}"
