"""Compression of the initramfs image, and taking existing images apart again.

An initramfs image as the kernel reads it (init/initramfs.c, ``unpack_to_rootfs``) is a
sequence of segments: uncompressed newc archives and compressed streams, with any number
of NUL bytes in between.  The kernel decompresses one stream (one gzip member, one zstd
frame, one xz stream) per step and then looks at what follows, so ``split_image`` finds
the exact end of every stream and reports one Segment per stream: a typical
"early microcode cpio + compressed main cpio" image comes back as two segments.

We only *write* zstd, gzip or nothing: both compressors are in every distribution kernel
config and both are deterministic for fixed input, level and tool version.  xz, bzip2 and
lzma are read too (with the standard library), because ``initium inspect`` looks at images
other tools made.  zstd runs as the ``zstd`` command rather than a pip dependency.

Decompression is bounded (``limit`` bytes of output) because inspected images are
untrusted and a few kilobytes of zstd can claim gigabytes of output.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import re
import shutil
import subprocess
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from .cpio import archive_end

COMPRESSORS = ("zstd", "gzip", "none")
DEFAULT_LEVELS = {"zstd": 10, "gzip": 9}
_LEVEL_RANGES = {"zstd": range(1, 20), "gzip": range(10)}
DEFAULT_LIMIT = 2 << 30
"""Default cap on decompressed output, far above any real initramfs."""
_LZMA_MEMLIMIT = 1 << 30

# Magic numbers, longest first where one could be a prefix of another.
_MAGICS: tuple[tuple[bytes, str], ...] = (
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bzip2"),
    (b"\x5d\x00\x00", "lzma"),
    (b"0707", "none"),
    (b"\x02\x21\x4c\x18", "lz4"),
    (b"\x89LZO", "lzo"),
)
_UNSUPPORTED = frozenset({"lz4", "lzo"})
_ZSTD_MISSING = "zstd not found; install zstd or use --compress gzip"
_ZSTD_MAX_BLOCK = 128 * 1024
_NOT_NUL = re.compile(rb"[^\x00]")


class CompressionError(ValueError):
    """Unknown, unsupported, corrupt or over-limit compressed data, or a failing tool."""


@dataclass(frozen=True)
class Segment:
    """One stream of an image: where it is, what it is, and its uncompressed bytes.

    For ``compression == "none"`` the segment is one newc archive up to and including the
    padding of its TRAILER!!! record and ``payload_uncompressed`` is those same bytes.
    """

    offset: int
    length: int
    compression: str
    payload_uncompressed: bytes


def _detect(data: bytes, pos: int) -> str | None:
    for magic, name in _MAGICS:
        if data.startswith(magic, pos):
            return name
    return None


def _skip_nuls(data: bytes, pos: int) -> int:
    found = _NOT_NUL.search(data, pos)
    return len(data) if found is None else found.start()


def _zstd_env() -> dict[str, str]:
    # ZSTD_CLEVEL / ZSTD_NBTHREADS in the caller's environment must not change our output.
    return {k: v for k, v in os.environ.items() if not k.startswith("ZSTD_")}


def _run_zstd(args: list[str], data: bytes, limit: int | None) -> bytes:
    exe = shutil.which("zstd")
    if exe is None:
        raise CompressionError(_ZSTD_MISSING)
    # stdin and stderr go through files so that reading stdout incrementally (to enforce
    # the output limit) cannot deadlock against a full pipe.
    with tempfile.TemporaryFile() as stdin_file, tempfile.TemporaryFile() as stderr_file:
        stdin_file.write(data)
        stdin_file.seek(0)
        try:
            proc = subprocess.Popen(
                [exe, *args], stdin=stdin_file, stdout=subprocess.PIPE, stderr=stderr_file,
                env=_zstd_env(),
            )  # fmt: skip
        except OSError as exc:
            raise CompressionError(f"cannot run zstd: {exc}") from None
        assert proc.stdout is not None
        chunks: list[bytes] = []
        total = 0
        with proc:
            while chunk := proc.stdout.read(1 << 20):
                total += len(chunk)
                if limit is not None and total > limit:
                    proc.kill()
                    raise CompressionError(f"zstd output exceeds the limit of {limit} bytes")
                chunks.append(chunk)
        if proc.returncode != 0:
            stderr_file.seek(0)
            lines = stderr_file.read().decode("utf-8", "replace").strip().splitlines()
            detail = lines[-1] if lines else f"exit status {proc.returncode}"
            raise CompressionError(f"zstd failed: {detail}")
    return b"".join(chunks)


def compress(data: bytes, method: str, level: int | None = None) -> bytes:
    """Compress an archive for the kernel; same input, method and level give the same bytes.

    gzip carries no timestamp or file name (mtime=0).  zstd is pinned to ``-T1`` with an
    explicit level, so neither the caller's environment nor the machine's core count can
    change the output; its default level 10 trades a little size for build speed.
    """
    if method not in COMPRESSORS:
        raise CompressionError(f"unknown compression {method!r}; choose one of {COMPRESSORS}")
    if method == "none":
        if level is not None:
            raise ValueError("a compression level makes no sense with --compress none")
        return data
    if level is None:
        level = DEFAULT_LEVELS[method]
    if level not in _LEVEL_RANGES[method]:
        valid = _LEVEL_RANGES[method]
        raise ValueError(f"{method} level {level} outside {valid.start}..{valid.stop - 1}")
    if method == "gzip":
        return gzip.compress(data, compresslevel=level, mtime=0)
    return _run_zstd(["-q", "-c", "--no-progress", f"-{level}", "-T1"], data, None)


def _zstd_frame_end(data: bytes, pos: int) -> int:
    """End of the zstd frame at ``pos``, from its headers alone (RFC 8878, section 3.1.1).

    Needed because the zstd tool decodes concatenated frames as one, while the kernel
    stops after each frame and then looks at what follows.
    """
    size = len(data)

    def truncated() -> CompressionError:
        return CompressionError(f"truncated zstd frame at offset {pos}")

    p = pos + 4
    if p >= size:
        raise truncated()
    descriptor = data[p]
    p += 1
    single_segment = (descriptor >> 5) & 1
    if descriptor & 0x08:
        raise CompressionError(f"zstd frame at offset {pos} has a reserved header bit set")
    p += 0 if single_segment else 1  # window descriptor
    p += (0, 1, 2, 4)[descriptor & 3]  # dictionary id
    p += (single_segment, 2, 4, 8)[descriptor >> 6]  # frame content size
    while True:
        if p + 3 > size:
            raise truncated()
        block = data[p] | data[p + 1] << 8 | data[p + 2] << 16
        p += 3
        block_type, block_size = (block >> 1) & 3, block >> 3
        if block_type == 3 or block_size > _ZSTD_MAX_BLOCK:
            raise CompressionError(f"corrupt zstd block header at offset {p - 3}")
        p += 1 if block_type == 1 else block_size  # an RLE block stores one byte
        if p > size:
            raise truncated()
        if block & 1:
            break
    if descriptor & 0x04:
        p += 4  # content checksum
    if p > size:
        raise truncated()
    return p


def _stdlib_stream(
    data: bytes,
    pos: int,
    limit: int,
    *,
    make: Callable[[], zlib._Decompress | lzma.LZMADecompressor | bz2.BZ2Decompressor],
    name: str,
    errors: tuple[type[Exception], ...],
) -> tuple[int, bytes]:
    decoder = make()
    try:
        out = decoder.decompress(memoryview(data)[pos:], limit + 1)
    except errors as exc:
        raise CompressionError(f"corrupt {name} stream at offset {pos}: {exc}") from None
    if len(out) > limit:
        raise CompressionError(f"{name} stream at offset {pos} exceeds the limit of {limit} bytes")
    if not decoder.eof:
        raise CompressionError(f"truncated {name} stream at offset {pos}")
    return len(data) - len(decoder.unused_data), out


def _one_stream(method: str, data: bytes, pos: int, limit: int) -> tuple[int, bytes | None]:
    """End offset of the stream at ``pos`` and its output (None for zstd: decoded later)."""
    if method == "zstd":
        return _zstd_frame_end(data, pos), None
    if method == "gzip":
        return _stdlib_stream(data, pos, limit, make=lambda: zlib.decompressobj(wbits=31),
                              name=method, errors=(zlib.error,))  # fmt: skip
    if method in ("xz", "lzma"):
        fmt = lzma.FORMAT_XZ if method == "xz" else lzma.FORMAT_ALONE
        return _stdlib_stream(
            data, pos, limit, make=lambda: lzma.LZMADecompressor(fmt, memlimit=_LZMA_MEMLIMIT),
            name=method, errors=(lzma.LZMAError,),
        )  # fmt: skip
    if method == "bzip2":
        return _stdlib_stream(data, pos, limit, make=bz2.BZ2Decompressor, name=method,
                              errors=(OSError, ValueError))  # fmt: skip
    raise CompressionError(f"{method} compressed data at offset {pos} is not supported")


def _unzstd(frames: bytes, limit: int) -> bytes:
    return _run_zstd(["-d", "-q", "-c", "--no-progress"], frames, limit)


def _unknown(data: bytes, pos: int) -> CompressionError:
    head = data[pos : pos + 6].hex(" ")
    return CompressionError(f"unknown magic {head} at offset {pos}: neither cpio nor compressed")


def decompress(data: bytes, *, limit: int = DEFAULT_LIMIT) -> bytes:
    """The uncompressed bytes of ``data``, whose kind is recognised by its magic number.

    All streams of that one kind are decoded and concatenated, with NUL padding between
    them allowed as the kernel allows it; anything else after them is an error, since it
    would be silently lost here.  Uncompressed cpio ("0707") is returned unchanged.  Use
    ``split_image`` for images that mix kinds.
    """
    if not data:
        raise CompressionError("no data to decompress")
    method = _detect(data, 0)
    if method is None:
        raise _unknown(data, 0)
    if method == "none":
        return data
    if method in _UNSUPPORTED:
        raise CompressionError(f"{method} compressed data is not supported")
    outputs: list[bytes] = []
    frames: list[bytes] = []
    total = 0
    pos = 0
    while True:
        end, out = _one_stream(method, data, pos, limit - total)
        if out is None:
            frames.append(data[pos:end])
        else:
            outputs.append(out)
            total += len(out)
        pos = _skip_nuls(data, end)
        if pos >= len(data):
            break
        if _detect(data, pos) != method:
            raise CompressionError(f"unexpected data at offset {pos} after the {method} stream")
    if frames:
        return _unzstd(b"".join(frames), limit)
    return b"".join(outputs)


def split_image(data: bytes, *, limit: int = DEFAULT_LIMIT) -> list[Segment]:
    """Take an image apart the way the kernel walks it, one Segment per archive or stream.

    NUL padding between segments belongs to no segment.  A raw archive must start on a
    4-byte boundary of the image (the kernel's rule).  Malformed raw archives raise
    CpioError; anything else raises CompressionError.  ``limit`` caps the total output.
    """
    segments: list[Segment] = []
    total = 0
    pos = _skip_nuls(data, 0)
    while pos < len(data):
        segment = segment_at(data, pos, limit=limit - total)
        if segment.compression != "none":
            total += len(segment.payload_uncompressed)
        segments.append(segment)
        pos = _skip_nuls(data, pos + segment.length)
    return segments


def segment_at(data: bytes, pos: int, *, limit: int = DEFAULT_LIMIT) -> Segment:
    """The one archive or stream that starts at ``pos``, as the kernel would read it."""
    method = _detect(data, pos)
    if method is None:
        raise _unknown(data, pos)
    if method == "none":
        if pos & 3:
            raise CompressionError(f"cpio archive at offset {pos} is not 4-byte aligned")
        end = archive_end(data, pos)
        return Segment(pos, end - pos, method, data[pos:end])
    end, out = _one_stream(method, data, pos, limit)
    payload = _unzstd(data[pos:end], limit) if out is None else out
    return Segment(pos, end - pos, method, payload)
