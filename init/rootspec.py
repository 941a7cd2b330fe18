"""What ``root=`` names, parsed without touching a device."""

from __future__ import annotations

import re

from initium.record import record

KINDS = ("path", "uuid", "label", "partuuid", "partlabel")
_PREFIXES = {"UUID=": "uuid", "LABEL=": "label", "PARTUUID=": "partuuid",
             "PARTLABEL=": "partlabel"}
# udev's /dev/disk/by-* links; there is no udev in the core, so these are
# resolved by probing like the tagged forms.
_BY_DIRS = {"/dev/disk/by-uuid/": "uuid", "/dev/disk/by-label/": "label",
            "/dev/disk/by-partuuid/": "partuuid", "/dev/disk/by-partlabel/": "partlabel"}
_UDEV_ESCAPE = re.compile(r"\\x([0-9a-fA-F]{2})")


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
            value = _UDEV_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), text[len(directory):])
            return RootSpec(kind, value)
    if text.startswith("/dev/") and len(text) > 5:
        parts = text.split("/")
        if any(p in ("", ".", "..") for p in parts[1:]):
            raise RootSpecError(f"root={text}: not a plain device path")
        return RootSpec("path", text)
    raise RootSpecError(f"root={text}: unknown form; use /dev/NAME, UUID=, LABEL=, "
                        "PARTUUID= or PARTLABEL=")
