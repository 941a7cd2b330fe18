"""Our classification of every corpus image equals ``blkid -p``'s.

TYPE, UUID, LABEL and USAGE for file systems and containers; PTTYPE, PTUUID
and each partition's place, PARTUUID and PARTLABEL (through partx, which
uses libblkid) for partition tables, on 512-byte and 4 KiB sectors.  Run
with ``-s`` to see the table of what both said.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from initium.probe import FsInfo, PartitionTable, probe_filesystem, probe_partitions
from initium.probe import ext as ext_probe

from tests.host.corpus import CORPUS, Builder, Image, made
from tests.unit.disk_images import need

pytestmark = pytest.mark.host

_ESC = re.compile(rb"\\x([0-9a-fA-F]{2})")


def blkid(path: str) -> dict[str, bytes]:
    """``blkid -p -o udev``: the _ENC values unescaped are the exact on-disk bytes."""
    need("blkid")
    proc = subprocess.run(["blkid", "-p", "-o", "udev", path], capture_output=True, check=False)
    assert proc.returncode in (0, 2), proc.stderr
    out: dict[str, bytes] = {}
    for line in proc.stdout.splitlines():
        key, _, value = line.partition(b"=")
        if key.endswith(b"_ENC"):
            value = _ESC.sub(lambda m: bytes([int(m.group(1), 16)]), value)
        out[key.decode()] = value
    return out


def enc(text: str | None) -> bytes | None:
    return None if text is None else text.encode("utf-8", "surrogateescape")


def partx(path: str) -> list[dict[str, str]]:
    need("partx")
    out = subprocess.run(
        ["partx", "-g", "-P", "-o", "NR,START,SECTORS,UUID,NAME", path],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return [dict(re.findall(r'(\w+)="([^"]*)"', line)) for line in out.splitlines()]


def ours(img: Image) -> tuple[FsInfo | None, PartitionTable | None, FsInfo | None]:
    size = img.path.stat().st_size
    with img.path.open("rb") as f:

        def read(off: int, n: int) -> bytes:
            f.seek(off)
            return f.read(n)

        table = probe_partitions(read, size, img.sector_size)
        info = probe_filesystem(read, size, disk_table=table)
        inner = ext_probe.probe(read)
    return info, table, inner


ROWS: list[str] = []


@pytest.mark.parametrize(("name", "builder"), CORPUS, ids=[n for n, _ in CORPUS])
def test_agrees_with_blkid(tmp_path: Path, name: str, builder: Builder) -> None:
    with made(builder, tmp_path) as img:
        info, table, inner = ours(img)
        seen = blkid(img.blkid_path)
        rows = partx(img.blkid_path) if table is not None else []
    ROWS.append(
        f"{name:18} ours: {info.fstype if info else table.kind if table else None} "
        f"{(info.uuid if info else table.uuid if table else None)} "
        f"{info.usage if info else ''} | blkid: "
        f"{(seen.get('ID_FS_TYPE') or seen.get('ID_PART_TABLE_TYPE') or b'').decode()} "
        f"{(seen.get('ID_FS_UUID_ENC') or seen.get('ID_PART_TABLE_UUID') or b'').decode()} "
        f"{(seen.get('ID_FS_USAGE') or b'').decode()}"
    )
    print(ROWS[-1])
    if info is not None:
        assert seen.get("ID_FS_TYPE") == info.fstype.encode()
        assert seen.get("ID_FS_UUID_ENC") == enc(info.uuid)
        assert seen.get("ID_FS_LABEL_ENC") == enc(info.label)
        assert seen.get("ID_FS_USAGE") == info.usage.encode()
    else:
        assert "ID_FS_TYPE" not in seen
    if img.inner_uuid is not None:
        # The array's file system is in the member at offset 0, yet the
        # member is reported as a member, never as that file system.
        assert inner is not None and inner.uuid == img.inner_uuid
        assert info is not None and info.usage == "raid"
    if table is None:
        assert "ID_PART_TABLE_TYPE" not in seen
        return
    assert seen.get("ID_PART_TABLE_TYPE") == table.kind.encode()
    assert seen.get("ID_PART_TABLE_UUID") == enc(table.uuid)
    assert len(rows) == len(table.partitions) > 0
    for row, part in zip(rows, table.partitions, strict=True):
        assert int(row["NR"]) == part.number
        # partx counts 512-byte units whatever the device's sector size.
        assert int(row["START"]) * 512 == part.start
        assert int(row["SECTORS"]) * 512 == part.size
        assert row["UUID"] == part.partuuid
        assert row.get("NAME", "") == (part.partlabel or "")
