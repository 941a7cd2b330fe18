"""EVM in a real boot: portable security.evm signatures from the builder, checked live.

One boot of Debian's cloud kernel (6.1) with ``ima_appraise=enforce``, an
appraise policy for what is executed from a tmpfs (the initramfs once moved
off ramfs), our self-made key in ``_evm`` and ``evm_mode = 0x80000002``
(EVM_INIT_X509 | EVM_SETUP_COMPLETE).  Every image file carries
``security.ima`` (a digest) and ``security.evm`` (a portable signature).

The image has no SELinux policy and the kernel runs its default LSM
(AppArmor, which stores no xattr): so nothing at boot gives the files a
``security.selinux``, and the signatures cover ``security.ima``, owner and
mode.  With an SELinux policy in the image the builder also signs the
label the selinux stage sets: a second boot, with ``security=selinux``.

A stage placed between ``xattrs`` and ``ima`` (EVM still off, so the kernel
lets any attribute be written) makes copies of the listed busybox; a stage
after ``ima`` (EVM on) executes them:

* /usr/bin/busybox, signed by the builder: runs;
* /evm-copy/true, another inode with the same attributes, owner and mode: runs
  (a portable signature leaves out inode, generation and file system);
* /evm-tampered/true, the signature with its last byte changed: denied;
* /evm-mode/true, mode 0750 instead of 0755 under the same signature: denied;
* /evm-missing/true, ``security.ima`` but no ``security.evm``: denied
  (``missing-HMAC``).

(each copy is called ``true``, so busybox runs that applet).  Then it
tries to chmod /evm-copy/true (EVM refuses to change metadata a portable
signature covers) and reads EVM's state back.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from initium.cli import main

from tests.keys import self_signed
from tests.vm.conftest import ROOT_UUID, BootFn

pytestmark = pytest.mark.vm

APPRAISE = "appraise func=BPRM_CHECK fsmagic=0x01021994\n"

PROBE = '''
import os

from initium import ops
from initium.process import ProcessError
from initium.stage import BootContext, Stage

LISTED = "/usr/bin/busybox"
IMA, EVM = "security.ima", "security.evm"
CASES = ("/evm-copy/true", "/evm-tampered/true", "/evm-mode/true", "/evm-missing/true")


def _copy(path: str, mode: int, attrs: dict[str, bytes]) -> None:
    with open(LISTED, "rb") as f:
        data = f.read()
    os.mkdir(os.path.dirname(path))
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)
    for name, value in attrs.items():
        os.setxattr(path, name, value)


class Plant(Stage):
    name = "evm-plant"
    after = ("xattrs",)
    before = ("ima",)

    def run(self, ctx: BootContext) -> None:
        ima, evm = os.getxattr(LISTED, IMA), os.getxattr(LISTED, EVM)
        ctx.log(f"EVM-PLANT {LISTED}: security.evm type {evm[0]}, {len(evm)} bytes, "
                f"mode {os.stat(LISTED).st_mode:o}")
        _copy("/evm-copy/true", 0o755, {IMA: ima, EVM: evm})
        _copy("/evm-tampered/true", 0o755, {IMA: ima, EVM: evm[:-1] + bytes([evm[-1] ^ 1])})
        _copy("/evm-mode/true", 0o750, {IMA: ima, EVM: evm})
        _copy("/evm-missing/true", 0o755, {IMA: ima})


class Probe(Stage):
    name = "evm-probe"
    after = ("ima",)
    before = ("modules",)

    def run(self, ctx: BootContext) -> None:
        # each copy is called "true" so that busybox runs that applet
        for path in (LISTED, *CASES):
            try:
                status = ctx.sys.apply(ops.Spawn((path, "true")))
                ctx.log(f"EVM-PROBE {path}: ran (status {status})")
            except ProcessError as err:
                ctx.log(f"EVM-PROBE {path}: denied ({err})")
        try:
            os.chmod("/evm-copy/true", 0o700)
            ctx.log("EVM-PROBE chmod /evm-copy/true: allowed")
        except OSError as err:
            ctx.log(f"EVM-PROBE chmod /evm-copy/true: {err.strerror}")
        with open("/sys/kernel/security/evm") as f:
            ctx.log(f"EVM-PROBE state {f.read().strip()}")
'''


def _reached_root(output: str) -> None:
    m = re.search(r"INITIUM-ROOT-INIT pid=(\d+)", output)
    assert m and m.group(1) == "1", "the root's init never ran as PID 1:\n" + output[-4000:]


def test_portable_evm_signatures_are_checked_at_boot(
        boot: BootFn, kver: str, ext4_disk: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    key, cert = self_signed(tmp_path / "evm.pem", tmp_path / "evm.der", "initium evm test")
    (tmp_path / "evm_probe_initium.py").write_text(PROBE)
    monkeypatch.syspath_prepend(str(tmp_path))
    policy = tmp_path / "policy"
    policy.write_text(APPRAISE)
    (tmp_path / "evm.toml").write_text(
        'stages = ["evm_probe_initium:Plant", "evm_probe_initium:Probe"]\n'
        'selinux_policy = "none"\n'
        "evm_mode = 0x80000002\n"
        "ima_required = true\n")
    image = str(tmp_path / "evm.img")
    assert main(["build", "--output", image, "--kver", kver, "--module", "virtio_blk",
                 "--shell", "--evm-sign-key", str(key), "--evm-cert", str(cert),
                 "--ima-policy", str(policy), "--config", str(tmp_path / "evm.toml")]) == 0

    result = boot(image, ext4_disk, f"root=UUID={ROOT_UUID} ima_appraise=enforce "
                                    "initium.timeline")
    out = result.output
    # on failure: what the stages and the kernel said about EVM and IMA
    tail = "\n".join(line for line in out.splitlines()
                     if re.search(r"EVM|evm|ima|audit|failed|Traceback", line))[-6000:]
    assert result.has(r"EVM-PLANT /usr/bin/busybox: security.evm type 5, 265 bytes, "
                      r"mode 100755"), tail
    assert result.has(r"ima: 1 of 1 keys into _evm; IMA policy /etc/initium/ima/policy "
                      r"loaded \(1 rules\); EVM enabled \(0x80000002 = "
                      r"EVM_INIT_X509\|EVM_SETUP_COMPLETE\)"), tail
    assert result.has(r"EVM-PROBE /usr/bin/busybox: ran \(status 0\)"), tail
    assert result.has(r"EVM-PROBE /evm-copy/true: ran \(status 0\)"), tail
    for case in ("tampered", "mode", "missing"):
        path = f"/evm-{case}/true"
        assert result.has(rf"EVM-PROBE {path}: denied \({path}: not executable\)"), tail
    # The kernel's reasons (security/integrity/ima/ima_appraise.c): a portable
    # signature that does not verify is "invalid-fail-immutable", none is "missing-HMAC".
    causes = {name: cause for cause, name in re.findall(
        r'op=appraise_data cause=([\w-]+) .*?name="(/evm-[\w/-]+)"', out)}
    assert causes == {"/evm-tampered/true": "invalid-fail-immutable",
                      "/evm-mode/true": "invalid-fail-immutable",
                      "/evm-missing/true": "missing-HMAC"}, tail
    # metadata a valid portable signature covers cannot change once EVM is on
    assert result.has(r"EVM-PROBE chmod /evm-copy/true: Operation not permitted"), tail
    assert result.has(r'op=appraise_metadata cause=pass_immutable .*name="true"'), tail
    assert result.has(r"EVM-PROBE state 2\r?$"), tail  # EVM_INIT_X509 (SETUP_COMPLETE not shown)
    _reached_root(out)
    assert not result.has("Kernel panic|Traceback")
    m = re.search(r"^\s+ima\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+ok", out, re.MULTILINE)
    assert m, tail
    print(f"ima stage with EVM: {float(m.group(3)):.3f} s (timeline)")


def test_a_refused_evm_key_leaves_evm_off(boot: BootFn, kver: str, ext4_disk: str,
                                          tmp_path: Path) -> None:
    """A DER the kernel cannot parse as --evm-cert: add_key answers EBADMSG for _evm, and
    without a key EVM stays off (it would refuse every appraised file); IMA is not
    required here, so both are warnings and the boot goes on."""
    bogus = tmp_path / "bogus.der"
    bogus.write_bytes(b"\x30\x05\x30\x03\x02\x01\x01")
    policy = tmp_path / "policy"
    policy.write_text(APPRAISE)
    (tmp_path / "evm.toml").write_text('selinux_policy = "none"\nevm_mode = 0x80000002\n')
    key = tmp_path / "evm.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt",
                    "rsa_keygen_bits:2048", "-out", str(key)], check=True, capture_output=True)
    image = str(tmp_path / "bogus.img")
    assert main(["build", "--output", image, "--kver", kver, "--module", "virtio_blk",
                 "--evm-sign-key", str(key), "--evm-cert", str(bogus), "--ima-policy",
                 str(policy), "--config", str(tmp_path / "evm.toml")]) == 0
    result = boot(image, ext4_disk, f"root=UUID={ROOT_UUID} ima_appraise=enforce")
    out = result.output
    assert result.has(r"ima: the kernel refused key /etc/initium/evm/keys/00-bogus\.der for "
                      r"_evm: it cannot use it as an X\.509 certificate \(Bad message\), "
                      r"ignoring"), out[-4000:]
    assert result.has(r"ima: EVM not enabled \(0x80000002 = EVM_INIT_X509\|EVM_SETUP_COMPLETE"
                      r"\): no key is in the \.evm/_evm keyring .*, ignoring"), out[-4000:]
    assert result.has(r"ima: 0 of 1 keys into _evm; IMA policy /etc/initium/ima/policy "
                      r"loaded \(1 rules\) in")
    _reached_root(out)
    assert not result.has("Kernel panic|Traceback|op=appraise_data")


SELINUX_POLICY = "/etc/selinux/default"

LABEL_PROBE = '''
import os

from initium import ops
from initium.process import ProcessError
from initium.stage import BootContext, Stage


class Probe(Stage):
    name = "evm-probe"
    after = ("ima",)
    before = ("modules",)

    def run(self, ctx: BootContext) -> None:
        path = "/usr/bin/busybox"
        label = os.getxattr(path, "security.selinux").rstrip(b"\\0").decode()
        try:
            status = ctx.sys.apply(ops.Spawn((path, "true")))
            ctx.log(f"EVM-PROBE {path} ({label}): ran (status {status})")
        except ProcessError as err:
            ctx.log(f"EVM-PROBE {path} ({label}): denied ({err})")
'''


def test_with_selinux_the_boot_label_is_signed(boot: BootFn, kver: str, ext4_disk: str,
                                               tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """An image with Debian's SELinux policy, booted with security=selinux: the selinux
    stage labels busybox before EVM is on, and the builder signed that label."""
    if not Path(SELINUX_POLICY, "policy").is_dir():
        pytest.skip("apt-get install selinux-policy-default")
    key, cert = self_signed(tmp_path / "evm.pem", tmp_path / "evm.der", "initium evm test")
    (tmp_path / "evm_label_probe_initium.py").write_text(LABEL_PROBE)
    monkeypatch.syspath_prepend(str(tmp_path))
    policy = tmp_path / "policy"
    policy.write_text(APPRAISE)
    (tmp_path / "evm.toml").write_text('stages = ["evm_label_probe_initium:Probe"]\n'
                                       "evm_mode = 0x80000002\nima_required = true\n")
    image = str(tmp_path / "selinux-evm.img")
    assert main(["build", "--output", image, "--kver", kver, "--module", "virtio_blk",
                 "--shell", "--selinux-policy", SELINUX_POLICY, "--evm-sign-key", str(key),
                 "--evm-cert", str(cert), "--ima-policy", str(policy),
                 "--config", str(tmp_path / "evm.toml")]) == 0
    result = boot(image, ext4_disk, f"root=UUID={ROOT_UUID} security=selinux selinux=1 "
                                    "enforcing=0 ima_appraise=enforce")
    out = result.output
    tail = "\n".join(line for line in out.splitlines()
                     if re.search(r"EVM|evm|ima|audit|SELinux|selinux|failed", line))[-6000:]
    assert result.has(r"EVM enabled \(0x80000002"), tail
    assert result.has(r"EVM-PROBE /usr/bin/busybox \(system_u:object_r:\w+:s0\): ran "
                      r"\(status 0\)"), tail
    _reached_root(out)
    assert not result.has("Kernel panic|Traceback|op=appraise_data")
