"""Reading images back: their files by path, with the segment each came from.

Images handed to ``initium inspect`` or ``run --dry-run --image`` may come
from anywhere, so this goes through the strict, bounded cpio reader and
decompressor and reports problems as ValueError subclasses.
"""

from __future__ import annotations

from initium.plan import PLAN_PATH, Plan

from .compress import split_image
from .cpio import Entry, read_archive


class ImageError(ValueError):
    pass


def read_image(path: str) -> dict[str, tuple[str, Entry]]:
    """Files of an image: absolute path → (segment label such as "#1 zstd", entry)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise ImageError(f"{path}: {err.strerror}") from None
    files: dict[str, tuple[str, Entry]] = {}
    for index, segment in enumerate(split_image(data)):
        label = f"#{index} {segment.compression}"
        for entry in read_archive(segment.payload_uncompressed):
            files["/" + entry.path] = (label, entry)
    return files


def plan_in(files: dict[str, tuple[str, Entry]], path: str) -> Plan:
    """The boot plan among an image's files (ImageError when it has none)."""
    if PLAN_PATH not in files:
        raise ImageError(f"{path}: no initium plan inside; is it an initium image?")
    return Plan.from_bytes(files[PLAN_PATH][1].data)


def image_plan(path: str) -> Plan:
    """The boot plan stored in an image file."""
    return plan_in(read_image(path), path)
