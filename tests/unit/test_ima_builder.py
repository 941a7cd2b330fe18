"""The builder's IMA inputs: the policy, the certificates, evm_mode, and where they go."""

from __future__ import annotations

import shutil
import stat
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from initium.cli import main
from initium.packaging.config import BuildConfig, ConfigError, parse_config
from initium.packaging.cpio import Entry
from initium.packaging.ima import (
    EVM_KEYS_DIR,
    IMA_KEYS_DIR,
    POLICY_PATH,
    ImaBuildError,
    attach_ima,
    check_cert,
    check_policy,
    image_name,
    plan_data,
)

from tests.keys import self_signed

POLICY = b"# appraise what runs from the initramfs\nappraise func=BPRM_CHECK fsmagic=0x01021994\n\n"


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("openssl") is None:
        pytest.skip("no openssl")
    folder = tmp_path_factory.mktemp("cert")
    self_signed(folder / "key.pem", folder / "ima cert.der")
    return folder / "ima cert.der"


def test_policy_rules_and_the_line_of_a_non_rule() -> None:
    assert check_policy(POLICY, "p") == ["appraise func=BPRM_CHECK fsmagic=0x01021994"]
    with pytest.raises(ImaBuildError, match=r"p:2: 'apraise' is not an IMA action"):
        check_policy(b"measure func=BPRM_CHECK\napraise func=BPRM_CHECK\n", "p")
    with pytest.raises(ImaBuildError, match="no rules"):
        check_policy(b"# nothing\n\n", "p")
    with pytest.raises(ImaBuildError, match="byte 8 is not ASCII"):
        check_policy("measure \u00e9".encode(), "p")


def test_certificates_must_be_der(cert: Path) -> None:
    check_cert(cert.read_bytes(), str(cert), "--ima-cert")
    pem = subprocess.run(["openssl", "x509", "-inform", "DER", "-in", str(cert)],
                         check=True, capture_output=True).stdout
    with pytest.raises(ImaBuildError, match="PEM, not DER"):
        check_cert(pem, "c.pem", "--ima-cert")
    with pytest.raises(ImaBuildError, match="1 bytes after the certificate"):
        check_cert(cert.read_bytes() + b"\0", "c", "--ima-cert")
    for junk in (b"", b"hello", b"\x30\x82\xff\xff", b"\x30\x03\x02\x01\x01"):
        with pytest.raises(ImaBuildError, match=r"not a DER X\.509 certificate"):
            check_cert(junk, "c", "--evm-cert")


def test_image_names_keep_the_order_and_a_readable_name() -> None:
    assert image_name(0, "/x/ima cert.der") == "00-ima_cert.der"
    assert image_name(12, "/x/key.crt") == "12-key.crt.der"


def test_evm_mode_bits() -> None:
    assert parse_config("evm_mode = 0x80000002").evm_mode == 0x80000002
    with pytest.raises(ConfigError, match="EVM_INIT_HMAC"):
        parse_config("evm_mode = 1")
    for bad in ("0", "8", "0x40000000", "true", '"2"'):
        with pytest.raises(ConfigError, match="evm_mode"):
            parse_config(f"evm_mode = {bad}")


def test_plan_and_files(tmp_path: Path, cert: Path) -> None:
    policy = tmp_path / "policy"
    policy.write_bytes(POLICY)
    config = BuildConfig(ima_policy=str(policy), ima_certs=(str(cert),),
                         evm_certs=(str(cert),), evm_mode=0x80000002, ima_required=True)
    assert plan_data(config) == {
        "policy": POLICY_PATH, "ima_keys": [f"{IMA_KEYS_DIR}/00-ima_cert.der"],
        "evm_keys": [f"{EVM_KEYS_DIR}/00-ima_cert.der"], "evm_mode": 0x80000002,
        "required": True, "evm_covers_labels": False}
    assert plan_data(BuildConfig()) == {"policy": None, "ima_keys": [], "evm_keys": [],
                                        "evm_mode": None, "required": False,
                                        "evm_covers_labels": False}
    signed = BuildConfig(evm_sign_key=str(cert), selinux_policy=str(tmp_path))
    assert plan_data(signed)["evm_covers_labels"] is True
    assert plan_data(BuildConfig(evm_sign_key=str(cert), selinux_policy="none")) \
        == {**plan_data(BuildConfig()), "evm_covers_labels": False}
    with pytest.raises(ImaBuildError, match="no --evm-cert"):
        plan_data(replace(config, evm_certs=()))
    with pytest.raises(ImaBuildError, match="--ima-cert /nonexistent: No such file"):
        plan_data(BuildConfig(ima_certs=("/nonexistent",)))

    class Builder:
        def __init__(self) -> None:
            self.config = config
            self.put: list[tuple[Entry, str | None]] = []

        def _put(self, entry: Entry, component: str | None = None) -> None:
            self.put.append((entry, component))

    builder = Builder()
    attach_ima(builder)  # type: ignore[arg-type]
    assert [(e.path, c, stat.S_IMODE(e.mode)) for e, c in builder.put] == [
        ("etc/initium/evm/keys/00-ima_cert.der", "policy", 0o644),
        ("etc/initium/ima/keys/00-ima_cert.der", "policy", 0o644),
        ("etc/initium/ima/policy", "policy", 0o644)]
    assert builder.put[2][0].data == POLICY


def test_build_flags_reach_the_image(tmp_path: Path, cert: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    """--ima-policy, --ima-cert, --evm-cert on the command line (the build is refused early)."""
    policy = tmp_path / "policy"
    policy.write_bytes(b"apraise func=BPRM_CHECK\n")
    assert main(["build", "-o", str(tmp_path / "i.img"), "--kver", "0-none",
                 "--ima-policy", str(policy), "--ima-cert", str(cert)]) != 0
    assert "'apraise' is not an IMA action" in capsys.readouterr().err
