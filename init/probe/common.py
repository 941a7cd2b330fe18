"""What every probe shares: the result values, the error, and byte helpers.

Each format module reads through a caller-supplied ``read(offset, length)``
and builds its answer from these pieces, so that the normalisation blkid
applies (labels cut at NUL and trimmed, all-zero UUIDs left out, GUIDs with
their mixed endianness) is written once and every format agrees on it.
"""

from __future__ import annotations

import struct

from initium.record import record

TYPE_CHECKING = False  # typing's import cost is not paid at boot
if TYPE_CHECKING:
    from collections.abc import Callable

    ReadAt = Callable[[int, int], bytes]
    """read(offset, length): may return fewer bytes at the end of the device."""


class ProbeError(ValueError):
    """A signature was found but the structure behind it cannot be trusted.

    Distinct from "nothing here" (None) so that the boot console can say why a
    disk the user expected to work was passed over, with the byte offset to
    look at in a hexdump.
    """

    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(offset, reason)
        self.offset = offset
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.reason} (at byte offset {self.offset})"


# blkid's USAGE for each TYPE we report.  Derived from the type rather than
# stored beside it, so a value can never claim that a RAID member is a
# mountable file system.
USAGE = {
    "linux_raid_member": "raid",
    "isw_raid_member": "raid",
    "ddf_raid_member": "raid",
    "LVM2_member": "raid",
    "crypto_LUKS": "crypto",
    "swap": "other",
    "jbd": "other",
}


@record
class FsInfo:
    """What identifies a filesystem (or container) for LABEL=/UUID= matching."""

    fstype: str
    uuid: str | None
    label: str | None

    @property
    def usage(self) -> str:
        """blkid's USAGE: "filesystem", "raid", "crypto" or "other".

        Only a "filesystem" can be mounted; anything else is a container (or
        a swap area, or an external journal) that a handler must open first.
        """
        return USAGE.get(self.fstype, "filesystem")


@record
class Partition:
    """One partition, numbered and named as the kernel exposes it."""

    number: int
    start: int
    size: int
    partuuid: str | None
    partlabel: str | None
    type: str


@record
class PartitionTable:
    """A parsed partition table; ``kind`` uses blkid's PTTYPE names."""

    kind: str
    uuid: str | None
    partitions: tuple[Partition, ...]


# --------------------------------------------------------------------------
# reading


def take(read: ReadAt, offset: int, length: int) -> bytes:
    """At most ``length`` bytes at ``offset``: fewer only at the device's end."""
    # A misbehaving reader may hand back more than asked for; never let that
    # shift the offsets of the fields parsed from the result.
    if offset < 0:
        return b""
    return bytes(read(offset, length)[:length])


def need(data: bytes, length: int, offset: int, what: str) -> None:
    if len(data) < length:
        raise ProbeError(
            offset, f"{what} truncated: device ends after {len(data)} of {length} bytes"
        )


# --------------------------------------------------------------------------
# names and identifiers as blkid prints them

# blkid trims with C isspace() in the "C" locale, so match exactly that set
# rather than str.strip(), which also eats Unicode spaces.
_C_SPACE = b" \t\n\v\f\r"


def label(raw: bytes) -> str | None:
    # Same normalisation as blkid_probe_set_label(): stop at NUL, drop
    # trailing whitespace, no label at all when nothing is left.  Bytes that
    # are not UTF-8 survive as surrogates so a label can be compared and
    # re-encoded byte for byte.
    text = raw.split(b"\0", 1)[0].rstrip(_C_SPACE)
    return text.decode("utf-8", "surrogateescape") if text else None


def uuid(raw: bytes) -> str | None:
    # blkid omits an all-zero UUID (e.g. "tune2fs -U clear"); reporting
    # 00000000-... would let UUID=00000000-... match every such device.
    if len(raw) != 16 or not any(raw):
        return None
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def guid(raw: bytes) -> str | None:
    # EFI GUIDs store the first three fields little-endian; printing the raw
    # bytes in order would give a PARTUUID no other tool agrees with.
    if len(raw) != 16 or not any(raw):
        return None
    d1, d2, d3 = struct.unpack_from("<IHH", raw, 0)
    tail = raw[8:].hex()
    return f"{d1:08x}-{d2:04x}-{d3:04x}-{tail[:4]}-{tail[4:]}"


def text_id(raw: bytes) -> str | None:
    # LUKS, LVM and DDF keep their UUIDs as text, and blkid passes them through.
    text = raw.split(b"\0", 1)[0].rstrip(_C_SPACE)
    return text.decode("ascii", "surrogateescape") if text else None


# --------------------------------------------------------------------------
# arithmetic


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return tuple(table)


_CRC32C = _crc32c_table()


def crc32c_raw(data: bytes, crc: int = 0xFFFFFFFF) -> int:
    # The kernel's crc32c() without the final inversion: ext4 and erofs store
    # exactly this; btrfs stores its complement.  zlib only offers CRC-32.
    table = _CRC32C
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc


def is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


# --------------------------------------------------------------------------
# console rendering


def printable(text: str | None, limit: int = 64) -> str:
    """Render a label or UUID from disk so it cannot garble the console.

    Labels are attacker-controlled bytes: escape sequences, bidi overrides
    or a few kilobytes of text must not reach the terminal unmodified.
    Non-printable characters become \\xNN per UTF-8 byte (surrogate-escaped
    bytes as the original byte), backslashes are doubled so the escaping is
    unambiguous, and the result never exceeds ``limit`` characters.
    """
    if limit < 1:
        raise ValueError(f"limit must be positive, got {limit}")
    if text is None:
        return ""
    pieces: list[str] = []
    used = 0
    for ch in text:
        code = ord(ch)
        if ch == "\\":
            piece = "\\\\"
        elif 0xDC80 <= code <= 0xDCFF:
            piece = f"\\x{code - 0xDC00:02x}"
        elif ch.isprintable():
            piece = ch
        else:
            piece = "".join(f"\\x{b:02x}" for b in ch.encode("utf-8", "surrogatepass"))
        if used + len(piece) > limit:
            # Make room for the ellipsis without cutting an escape in half.
            while pieces and used + 1 > limit:
                used -= len(pieces.pop())
            return "".join(pieces) + "…"
        pieces.append(piece)
        used += len(piece)
    return "".join(pieces)
