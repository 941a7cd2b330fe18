"""Reading images back: their files by path, with the segment each came from.

Images handed to ``initium inspect`` or ``run --dry-run --image`` may come
from anywhere, so this goes through the strict, bounded cpio reader and
decompressor and reports problems as ValueError subclasses.
"""

from __future__ import annotations

from initium.plan import PLAN_PATH, Plan

from .compress import CompressionError, split_image
from .cpio import CpioError, Entry, read_records

INSPECT_LIMIT = 1 << 30
"""Most bytes ``inspect`` decompresses: a few kilobytes of zstd can claim gigabytes."""


class ImageError(ValueError):
    pass


def read_image(path: str) -> dict[str, tuple[str, Entry]]:
    """Files of an image: absolute path → (segment label such as "#1 zstd", entry)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise ImageError(f"{path}: {err.strerror}") from None
    return image_files(data)


def image_files(data: bytes, limit: int = INSPECT_LIMIT) -> dict[str, tuple[str, Entry]]:
    """``read_image`` over bytes; every fault is an ImageError naming the image offset.

    A later segment's entry replaces an earlier one of the same path, as the
    kernel's unpacking does.  At most ``limit`` bytes are decompressed.
    """
    try:
        segments = split_image(data, limit=limit)
    except CpioError as err:
        raise ImageError(f"image offset {err.offset}: {err.reason}") from None
    except CompressionError as err:
        raise ImageError(str(err)) from None
    files: dict[str, tuple[str, Entry]] = {}
    for index, segment in enumerate(segments):
        label = f"#{index} {segment.compression}"
        try:
            for _offset, entry in read_records(segment.payload_uncompressed):
                files["/" + entry.path] = (label, entry)
        except CpioError as err:
            where = f"image offset {segment.offset + err.offset}" \
                if segment.compression == "none" else \
                f"segment {label} at image offset {segment.offset}, uncompressed offset " \
                f"{err.offset}"
            raise ImageError(f"{where}: {err.reason}") from None
    return files


def suspicious(files: dict[str, tuple[str, Entry]]) -> list[str]:
    """Entries a reader of the image should know about: names that leave or dodge the root.

    The kernel resolves names against the rootfs it fills, so ``..`` cannot
    escape it there, but a tool that extracts the archive elsewhere could be
    led outside; an absolute symlink target is normal inside an initramfs
    and is only shown, never followed.
    """
    found = []
    for path, (label, _entry) in sorted(files.items()):
        parts = path[1:].split("/")
        if path.startswith("//") or any(p in ("", ".", "..") for p in parts):
            found.append(f"{label}: name {path[1:]!r} has an empty, '.' or '..' component")
    return found


def plan_in(files: dict[str, tuple[str, Entry]], path: str) -> Plan:
    """The boot plan among an image's files (ImageError when it has none)."""
    if PLAN_PATH not in files:
        raise ImageError(f"{path}: no initium plan inside; is it an initium image?")
    return Plan.from_bytes(files[PLAN_PATH][1].data)


def image_plan(path: str) -> Plan:
    """The boot plan stored in an image file."""
    return plan_in(read_image(path), path)
