"""What ``root=`` names, parsed without touching a device."""

from __future__ import annotations

from initium.record import record

KINDS = ("path", "uuid", "label", "partuuid", "partlabel")
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

    def __str__(self) -> str:
        return self.value if self.kind == "path" else f"{self.kind.upper()}={self.value}"

    def matches_uuid(self, uuid: str | None) -> bool:
        return uuid is not None and uuid.lower() == self.value.lower()


def parse_root_spec(text: str) -> RootSpec:
    for prefix, kind in _PREFIXES.items():
        if text.startswith(prefix):
            value = text[len(prefix):]
            if not value:
                raise RootSpecError(f"root={text}: empty {kind}")
            return RootSpec(kind, value)
    for directory, kind in _BY_DIRS.items():
        if text.startswith(directory) and len(text) > len(directory):
            value = _udev_unescape(text[len(directory):])
            return RootSpec(kind, value)
    for prefix, need in _NEEDS_MORE:
        if text.startswith(prefix):
            raise RootSpecError(f"root={text}: {need}; use UUID=, LABEL=, PARTUUID= or "
                                "PARTLABEL= instead")
    if text.startswith("/dev/") and len(text) > 5:
        parts = text.split("/")
        if any(p in ("", ".", "..") for p in parts[1:]):
            raise RootSpecError(f"root={text}: not a plain device path")
        return RootSpec("path", text)
    raise RootSpecError(f"root={text}: unknown form; use /dev/NAME, UUID=, LABEL=, "
                        "PARTUUID= or PARTLABEL=")
