"""What ``root=`` names, parsed without touching a device."""

from __future__ import annotations

from initium.record import record

KINDS = ("path", "devno", "uuid", "label", "partuuid", "partlabel")
# include/linux/kdev_t.h: MINORBITS 20; majors have 12 bits.
_MAX_MAJOR = (1 << 12) - 1
_MAX_MINOR = (1 << 20) - 1
_PARTNROFF = "/PARTNROFF="
_MAX_PARTNROFF = 1 << 16
_PREFIXES = {"UUID=": "uuid", "LABEL=": "label", "PARTUUID=": "partuuid",
             "PARTLABEL=": "partlabel"}
# udev's /dev/disk/by-* links; there is no udev in the core, so these are
# resolved by probing like the tagged forms.
_BY_DIRS = {"/dev/disk/by-uuid/": "uuid", "/dev/disk/by-label/": "label",
            "/dev/disk/by-partuuid/": "partuuid", "/dev/disk/by-partlabel/": "partlabel"}
# Names that only udev or device-mapper create: waiting for them without
# those would only end in a timeout, so say so at once.
_NEEDS_MORE = (
    ("/dev/disk/", "/dev/disk/by-id, by-path and the like are udev links, "
                   "and this initramfs has no udev"),
    ("/dev/mapper/", "device-mapper roots need the storage stage, which this image lacks"),
)
_HEX = "0123456789abcdefABCDEF"


def _udev_unescape(text: str) -> str:
    """Undo udev's \\xNN escaping of by-label/by-partlabel link names."""
    out = bytearray()
    i = 0
    while i < len(text):
        chunk = text[i : i + 4]
        if len(chunk) == 4 and chunk[:2] == "\\x" and all(c in _HEX for c in chunk[2:]):
            out.append(int(chunk[2:], 16))  # an escaped byte, as udev wrote it
            i += 4
        else:
            out += text[i].encode("utf-8", errors="surrogateescape")
            i += 1
    # Labels are compared as probe decodes them: UTF-8, raw bytes kept.
    return out.decode("utf-8", errors="surrogateescape")


class RootSpecError(ValueError):
    pass


@record
class RootSpec:
    kind: str
    value: str
    devno: tuple[int, int] | None = None  # kind "devno"
    partnroff: int = 0  # kind "partuuid": the partition this many after the named one

    def __str__(self) -> str:
        if self.kind in ("path", "devno"):
            return self.value
        tail = f"{_PARTNROFF}{self.partnroff}" if self.partnroff else ""
        return f"{self.kind.upper()}={self.value}{tail}"

    def matches_uuid(self, uuid: str | None) -> bool:
        return uuid is not None and uuid.lower() == self.value.lower()


def _devno(text: str) -> tuple[int, int] | None:
    """``MAJ:MIN`` in decimal or a bare hex device number, as the kernel's name_to_dev_t.

    The hex form is the kernel's new_decode_dev encoding (``801`` is 8:1,
    ``fe00`` 254:0); None when ``text`` is neither form.
    """
    major, colon, minor = text.partition(":")
    if colon:
        if not (major.isdigit() and minor.isdigit() and major.isascii() and minor.isascii()):
            return None
        if len(major) > 10 or len(minor) > 10:
            return None
        pair = (int(major), int(minor))
    else:
        digits = text[2:] if text[:2].lower() == "0x" else text
        if not digits or len(digits) > 16 or any(c not in _HEX for c in digits):
            return None
        dev = int(digits, 16)
        pair = ((dev & 0xFFF00) >> 8, (dev & 0xFF) | ((dev >> 12) & 0xFFF00))
    if pair[0] > _MAX_MAJOR or pair[1] > _MAX_MINOR:
        return None
    return pair


def parse_root_spec(text: str, *, device_mapper: bool = False, udev: bool = False) -> RootSpec:
    """``device_mapper``: the image can make /dev/mapper devices (the storage stage);
    ``udev``: it runs udevd, so /dev/disk/by-id and the like are names it can wait for."""
    for prefix, kind in _PREFIXES.items():
        if text.startswith(prefix):
            value = text[len(prefix):]
            offset = 0
            if kind == "partuuid" and _PARTNROFF in value.upper():
                at = value.upper().index(_PARTNROFF)
                number = value[at + len(_PARTNROFF):]
                if not number.isdigit() or not number.isascii() or len(number) > 6 \
                        or int(number) > _MAX_PARTNROFF:
                    raise RootSpecError(f"root={text}: PARTNROFF= needs a partition count")
                value, offset = value[:at], int(number)
            if not value:
                raise RootSpecError(f"root={text}: empty {kind}")
            return RootSpec(kind, value, partnroff=offset)
    for directory, kind in _BY_DIRS.items():
        if text.startswith(directory) and len(text) > len(directory):
            value = _udev_unescape(text[len(directory):])
            return RootSpec(kind, value)
    for prefix, need in _NEEDS_MORE:
        if udev and prefix == "/dev/disk/":
            continue
        if text.startswith(prefix) and not (device_mapper and prefix == "/dev/mapper/"):
            raise RootSpecError(f"root={text}: {need}; use UUID=, LABEL=, PARTUUID= or "
                                "PARTLABEL= instead")
    if text.startswith("/dev/") and len(text) > 5:
        parts = text.split("/")
        if any(p in ("", ".", "..") for p in parts[1:]):
            raise RootSpecError(f"root={text}: not a plain device path")
        return RootSpec("path", text)
    devno = _devno(text)
    if devno is not None:
        return RootSpec("devno", f"{devno[0]}:{devno[1]}", devno=devno)
    raise RootSpecError(f"root={text}: unknown form; use /dev/NAME, UUID=, LABEL=, "
                        "PARTUUID=, PARTLABEL= or MAJ:MIN")
