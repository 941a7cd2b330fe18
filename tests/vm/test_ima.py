"""The ima stage in real boots: keys into the kernel, appraisal by hash, IMA required.

Debian's 6.1 kernel is built without CONFIG_INTEGRITY_TRUSTED_KEYRING, so it
has no restricted .ima keyring: the stage makes _ima in root's user keyring
and the kernel takes any well-formed certificate there.  The key tests read
the kernel's configuration and expect what that kernel does; a certificate
the kernel cannot parse exercises the refusal path on every kernel.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from initium.cli import main

from tests.keys import self_signed
from tests.vm.conftest import ROOT_UUID, BootFn

pytestmark = pytest.mark.vm

STOPPED = r"System halted|Kernel panic"
# Appraise what is executed from a tmpfs (the initramfs once moved off ramfs),
# nothing else: the root disk's own init is not appraised.
APPRAISE = "appraise func=BPRM_CHECK fsmagic=0x01021994\n"
MEASURE = "measure func=BPRM_CHECK fsmagic=0x01021994\n"

# Runs after the ima stage: a listed binary, a copy whose content no longer
# matches the security.ima it carries, and a copy with no security.ima.
PROBE = '''
import os

from initium import ops
from initium.process import ProcessError
from initium.stage import BootContext, Stage


class Probe(Stage):
    name = "ima-probe"
    after = ("ima",)
    before = ("modules",)

    def run(self, ctx: BootContext) -> None:
        listed = "/usr/bin/busybox"
        with open(listed, "rb") as f:
            data = f.read()
        digest = os.getxattr(listed, "security.ima")
        for path, content, xattr in (("/tampered", data + b"\\0", digest),
                                     ("/unlisted", data, None)):
            with open(path, "wb") as f:
                f.write(content)
            os.chmod(path, 0o755)
            if xattr is not None:
                os.setxattr(path, "security.ima", xattr)
        for path in (listed, "/tampered", "/unlisted"):
            try:
                status = ctx.sys.apply(ops.Spawn((path, "true")))
                ctx.log(f"IMA-PROBE {path}: ran (status {status})")
            except ProcessError as err:
                ctx.log(f"IMA-PROBE {path}: denied ({err})")
'''


def _reached_root(output: str) -> None:
    m = re.search(r"INITIUM-ROOT-INIT pid=(\d+)", output)
    assert m and m.group(1) == "1", "the root's init never ran as PID 1:\n" + output[-4000:]


def _trusted_keyring(kver: str) -> bool:
    try:
        config = Path(f"/boot/config-{kver}").read_text()
    except OSError:
        pytest.skip(f"no /boot/config-{kver} to tell which keyring the kernel has")
    return "CONFIG_INTEGRITY_TRUSTED_KEYRING=y" in config


def _build(tmp: Path, kver: str, name: str, *extra: str, config: str = "") -> str:
    out = str(tmp / f"{name}.img")
    args = ["build", "--output", out, "--kver", kver, "--module", "virtio_blk", *extra]
    if config:
        (tmp / f"{name}.toml").write_text(config)
        args += ["--config", str(tmp / f"{name}.toml")]
    assert main(args) == 0
    return out


def test_a_self_made_key_with_ima_required(boot: BootFn, kver: str, ext4_disk: str,
                                           tmp_path: Path) -> None:
    cert = tmp_path / "self-made.der"
    self_signed(tmp_path / "key.pem", cert, "initium self-made")
    policy = tmp_path / "policy"
    policy.write_text(MEASURE)
    image = _build(tmp_path, kver, "key", "--shell", "--ima-cert", str(cert),
                   "--ima-policy", str(policy), config="ima_required = true\n")
    result = boot(image, ext4_disk, f"root=UUID={ROOT_UUID} initium.timeline",
                  until=STOPPED + "|reboot: Power")
    if _trusted_keyring(kver):
        assert result.has(r"ima failed: the kernel refused key /etc/initium/ima/keys/"
                          r"00-self-made\.der for \.ima: it accepts only keys signed by a "
                          r"built-in or secondary trusted key"), result.output[-4000:]
        assert result.has(r"reboot: System halted")
        assert not result.has(r"starting the emergency shell|INITIUM-ROOT-INIT")
    else:  # Debian 6.1: no .ima, so _ima in the user keyring, which takes it
        assert result.has(r"ima: 1 of 1 keys into _ima; IMA policy /etc/initium/ima/policy "
                          r"loaded \(1 rules\) in [\d.]+ s"), result.output[-4000:]
        _reached_root(result.output)
    assert not result.has("Kernel panic|Traceback")

    # A certificate the kernel cannot parse is refused on any kernel: fatal, no shell.
    bogus = tmp_path / "bogus.der"
    bogus.write_bytes(b"\x30\x05\x30\x03\x02\x01\x01")
    image = _build(tmp_path, kver, "bogus", "--shell", "--ima-cert", str(bogus),
                   "--ima-policy", str(policy), config="ima_required = true\n")
    result = boot(image, ext4_disk, f"root=UUID={ROOT_UUID}", until=STOPPED)
    assert result.has(r"ima failed: the kernel refused key /etc/initium/ima/keys/00-bogus\.der "
                      r"for [._]ima: it cannot use it as an X\.509 certificate"), \
        result.output[-4000:]
    assert result.has(r"IMA is required \(the image's ima_required\), so the boot stops")
    assert result.has(r"reboot: System halted")
    assert not result.has(r"starting the emergency shell|INITIUM-ROOT-INIT|Kernel panic|"
                          r"Traceback")


def test_appraise_by_hash_runs_the_listed_and_denies_the_tampered(
        boot: BootFn, kver: str, ext4_disk: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "ima_probe_initium.py").write_text(PROBE)
    monkeypatch.syspath_prepend(str(tmp_path))
    policy = tmp_path / "policy"
    policy.write_text("# initium VM test\n" + APPRAISE)
    image = _build(tmp_path, kver, "appraise", "--shell", "--ima-digest", "--ima-policy",
                   str(policy), config='stages = ["ima_probe_initium:Probe"]\n'
                                       'ima_required = true\n')
    result = boot(image, ext4_disk, f"root=UUID={ROOT_UUID} ima_appraise=enforce "
                                    "initium.timeline")
    out = result.output
    assert result.has(r"ima: IMA policy /etc/initium/ima/policy loaded \(1 rules\)"), out[-4000:]
    assert result.has(r"IMA-PROBE /usr/bin/busybox: ran \(status 0\)"), out[-4000:]
    assert result.has(r"IMA-PROBE /tampered: denied \(/tampered: not executable\)")
    assert result.has(r"IMA-PROBE /unlisted: denied \(/unlisted: not executable\)")
    # The kernel says why: the digest differs for one, there is none for the other.
    assert result.has(r'op=appraise_data cause=invalid-hash .*name="/tampered"'), out[-4000:]
    assert result.has(r'op=appraise_data cause=missing-hash .*name="/unlisted"')
    _reached_root(out)
    m = re.search(r"^\s+ima\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+ok", out, re.MULTILINE)
    assert m, out[-3000:]
    print(f"ima stage: {float(m.group(3)):.3f} s (timeline)")
    assert not result.has("Kernel panic|Traceback")


def test_ima_required_and_no_policy_stops(boot: BootFn, shell_image: str,
                                          ext4_disk: str) -> None:
    result = boot(shell_image, ext4_disk, f"root=UUID={ROOT_UUID} rd.ima.require_policy=1",
                  until=STOPPED)
    assert result.has(r"ima failed: IMA is required but this image has no IMA policy; try: "
                      r"rebuild the image with --ima-policy FILE; IMA is required "
                      r"\(rd\.ima\.require_policy=1\), so the boot stops"), result.output[-4000:]
    assert result.has(r"reboot: System halted")
    assert not result.has(r"starting the emergency shell|INITIUM-ROOT-INIT|Kernel panic|"
                          r"Traceback")
