"""PID 1 never dies: a broken plan or a stage that crashes ends in a message and a halt.

Both images are made to fail on purpose: one gets a corrupt plan appended (a
later cpio archive overwrites an earlier file, as the kernel unpacks them in
order), the other carries a third-party stage that raises.
"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from initium.cli import main
from initium.packaging.cpio import Entry, write_archive
from initium.plan import PLAN_PATH

from tests.vm.conftest import ROOT_UUID, BootFn

pytestmark = pytest.mark.vm

BOOM = '''
from initium.stage import BootContext, Stage


class Boom(Stage):
    name = "boom"
    after = ("console",)
    before = ("modules",)

    def run(self, ctx: BootContext) -> None:
        raise ZeroDivisionError("the plugin divided by zero")
'''


def test_a_corrupt_plan_halts_with_the_reason(boot: BootFn, image: str, ext4_disk: str,
                                              tmp_path: Path) -> None:
    broken = tmp_path / "broken.img"
    overlay = write_archive([Entry(PLAN_PATH.lstrip("/"), stat.S_IFREG | 0o644, b"{broken")])
    broken.write_bytes(Path(image).read_bytes() + overlay)
    result = boot(str(broken), ext4_disk, f"root=UUID={ROOT_UUID}",
                  until=r"System halted|Kernel panic")
    assert result.has(r"the image is broken: plan is not readable.*rebuild it with "
                      r"initium build")
    assert result.has(r"reboot: System halted"), result.output[-2000:]
    assert not result.has("Kernel panic|Traceback")


def test_a_crashing_stage_is_reported_and_the_machine_halts(
        boot: BootFn, kver: str, ext4_disk: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "boom_initium.py").write_text(BOOM)
    monkeypatch.syspath_prepend(str(tmp_path))
    conf = tmp_path / "initium.toml"
    conf.write_text('stages = ["boom_initium:Boom"]\nmodules = ["virtio_pci", "virtio_blk"]\n')
    out = str(tmp_path / "boom.img")
    assert main(["build", "--output", out, "--kver", kver, "--config", str(conf)]) == 0
    result = boot(out, ext4_disk, f"root=UUID={ROOT_UUID}", until=r"System halted|Kernel panic")
    assert result.has(r"boom failed: unexpected ZeroDivisionError: the plugin divided by zero; "
                      r"try: this is a bug in initium"), result.output[-2000:]
    assert result.has(r"boot stopped in boom: halt")
    assert result.has(r"reboot: System halted")
    assert not result.has("Kernel panic|Traceback")
