"""The ima stage's decisions on the memory machine, and its parsers and operations."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from initium import ops
from initium.cmdline import Cmdline, parse
from initium.console import Console
from initium.memsystem import MemorySystem
from initium.options import BootOptions
from initium.plan import Plan, StageEntry
from initium.stage import BootContext, StageError
from initium.stages.ima import Ima
from initium.stages.ima_ops import (
    KEY_SPEC_USER_KEYRING,
    AddKey,
    EnableEvm,
    KeyEntry,
    LoadImaPolicy,
    NewKeyring,
    evm_bits,
    find_keyring,
    parse_proc_keys,
)

POLICY = "/etc/initium/ima/policy"
KEY = "/etc/initium/ima/keys/00-test.der"
EVM_KEY = "/etc/initium/evm/keys/00-test.der"
DATA = {"policy": POLICY, "ima_keys": [KEY], "evm_keys": [], "evm_mode": None,
        "required": False}
# /proc/keys of a kernel with CONFIG_INTEGRITY_TRUSTED_KEYRING (.ima made at boot).
KEYS_TRUSTED = """\
0b9f8d2e I------     1 perm 1f0b0000     0     0 keyring   .builtin_trusted_keys: 1
1c3e7a55 I------     1 perm 1f0f0000     0     0 keyring   .ima: empty
2a1d0c4b I--Q---     1 perm 3f030000     0     0 asymmetri Debian CA: 6cce: X509.rsa []
"""
# Debian 6.1 (no trusted .ima): only the user's keyrings.
KEYS_PLAIN = """\
0b9f8d2e I------     1 perm 1f0b0000     0     0 keyring   .builtin_trusted_keys: 1
3f00aa01 I--Q---     2 perm 3f010000     0 65534 keyring   _uid.0: empty
"""


def machine(keys: str = KEYS_PLAIN, *, refuse: dict[type[ops.Op], list[int]] | None = None,
            ima: bool = True, policy: bool = True, policy_file: bool = True,
            evm: bool = True) -> MemorySystem:
    files = {"/proc/keys": keys.encode(), KEY: b"0\x03\x30\x01\x00", EVM_KEY: b"der"}
    if ima:
        files["/sys/kernel/security/ima/"] = b""
        if policy_file:
            files["/sys/kernel/security/ima/policy"] = b""
    if evm:
        files["/sys/kernel/security/evm"] = b"0"
    if policy:
        files[POLICY] = b"appraise func=BPRM_CHECK fsmagic=0x01021994\n"
    errors = {kind: list(codes) for kind, codes in (refuse or {}).items()}

    def on_apply(_: MemorySystem, op: ops.Op) -> None:
        codes = errors.get(type(op))
        if codes:
            code = codes.pop(0)  # 0: this one succeeds
            if code:
                raise OSError(code, os.strerror(code), type(op).__name__)

    return MemorySystem(files=files, on_apply=on_apply)


def context(sys: MemorySystem, cmdline: str = "", data: dict[str, object] | None = None,
            out: list[str] | None = None) -> BootContext:
    plan = Plan("6.1.0-test", (StageEntry("ima", "initium.stages.ima:Ima",
                                          DATA if data is None else data),))
    ctx = BootContext(sys, Cmdline(), BootOptions(), plan,
                      Console((out if out is not None else []).append), stage="ima")
    ctx.stage_options = Ima.options
    ctx.set_cmdline(parse(cmdline))
    return ctx


def test_proc_keys_parsing() -> None:
    keys = parse_proc_keys(KEYS_TRUSTED)
    assert keys[1] == KeyEntry(0x1C3E7A55, "keyring", ".ima")
    assert keys[2].type == "asymmetri" and keys[2].description.startswith("Debian CA")
    assert find_keyring(keys, ".ima") == 0x1C3E7A55
    assert find_keyring(parse_proc_keys(KEYS_PLAIN), ".ima") is None
    assert find_keyring(parse_proc_keys(KEYS_PLAIN), "_uid.0") == 0x3F00AA01
    assert parse_proc_keys("garbage\nzz x x x x x x keyring .ima: 1\n") == []


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=2000))
def test_proc_keys_parser_takes_any_text(text: str) -> None:
    for key in parse_proc_keys(text):
        assert isinstance(key.serial, int) and key.serial >= 0


def test_keys_go_to_the_trusted_ima_keyring_when_the_kernel_has_one() -> None:
    sys = machine(KEYS_TRUSTED)
    out: list[str] = []
    Ima().run(context(sys, out=out))
    assert sys.applied == [AddKey(KEY, 0x1C3E7A55, ".ima"), LoadImaPolicy(POLICY)]
    assert "1 of 1 keys into .ima; IMA policy /etc/initium/ima/policy loaded" in "".join(out)


def test_without_a_trusted_keyring_ima_is_made_in_the_user_keyring() -> None:
    sys = machine(KEYS_PLAIN)
    Ima().run(context(sys))
    assert sys.applied[:2] == [NewKeyring("_ima", KEY_SPEC_USER_KEYRING),
                               AddKey(KEY, 0, "_ima")]
    # an _ima already there (a retried stage) is used as it is
    sys = machine(KEYS_PLAIN + "00abcdef I------     1 perm 3f030000     0     0 keyring   "
                               "_ima: 1\n")
    Ima().run(context(sys))
    assert sys.applied[0] == AddKey(KEY, 0xABCDEF, "_ima")


def test_evm_keys_then_policy_then_evm_mode() -> None:
    sys = machine(KEYS_TRUSTED)
    out: list[str] = []
    Ima().run(context(sys, data={**DATA, "evm_keys": [EVM_KEY], "evm_mode": 0x80000002},
                      out=out))
    assert [type(op).__name__ for op in sys.applied] == [
        "AddKey", "NewKeyring", "AddKey", "LoadImaPolicy", "EnableEvm"]
    assert sys.applied[1] == NewKeyring("_evm")
    assert sys.applied[-1] == EnableEvm(0x80000002)
    assert "EVM enabled (0x80000002 = EVM_INIT_X509|EVM_SETUP_COMPLETE)" in "".join(out)


def test_evm_off_without_its_key_unless_required() -> None:
    """A refused EVM key: EVM stays off (it would fail every appraised file), a warning."""
    sys = machine(refuse={AddKey: [0, errno.EBADMSG]})
    out: list[str] = []
    Ima().run(context(sys, data={**DATA, "evm_keys": [EVM_KEY], "evm_mode": 0x80000002},
                      out=out))
    assert not any(isinstance(op, EnableEvm) for op in sys.applied)
    assert "1 of 1 keys into _ima; 0 of 1 keys into _evm" in "".join(out)
    assert "EVM not enabled (0x80000002 = EVM_INIT_X509|EVM_SETUP_COMPLETE): no key is in " \
           "the .evm/_evm keyring" in "".join(out)


def test_evm_over_selinux_labels_needs_selinux_active() -> None:
    """Signatures that cover labels verify nowhere without SELinux: EVM stays off."""
    data: dict[str, object] = {**DATA, "evm_keys": [EVM_KEY], "evm_mode": 0x80000002,
                               "evm_covers_labels": True}
    sys = machine(KEYS_TRUSTED)
    out: list[str] = []
    Ima().run(context(sys, data=data, out=out))
    assert not any(isinstance(op, EnableEvm) for op in sys.applied)
    assert "cover SELinux labels, and SELinux is not active" in "".join(out)
    with pytest.raises(StageError, match="SELinux is not active"):
        Ima().run(context(machine(KEYS_TRUSTED), data={**data, "required": True}))
    sys = machine(KEYS_TRUSTED)
    sys.files["/sys/fs/selinux/enforce"] = b"0"
    Ima().run(context(sys, data=data))
    assert sys.applied[-1] == EnableEvm(0x80000002)


def test_nothing_to_do_without_ima_data() -> None:
    sys = machine()
    Ima().run(context(sys, data={"policy": None, "ima_keys": [], "evm_keys": [],
                                 "evm_mode": None, "required": False}))
    assert sys.applied == []


REQUIRED: dict[str, object] = {**DATA, "required": True}


@pytest.mark.parametrize(("sys", "data", "cause"), [
    (machine(KEYS_TRUSTED, refuse={AddKey: [errno.ENOKEY]}), REQUIRED,
     "the kernel refused key /etc/initium/ima/keys/00-test.der for .ima: it accepts only keys "
     "signed by a built-in or secondary trusted key (Required key not available)"),
    (machine(KEYS_TRUSTED, refuse={AddKey: [errno.EKEYREJECTED]}), REQUIRED,
     "it accepts only keys signed by a built-in or secondary trusted key"),
    (machine(refuse={AddKey: [errno.EBADMSG]}), REQUIRED,
     "refused key /etc/initium/ima/keys/00-test.der for _ima: it cannot use it as an X.509"),
    (machine(refuse={NewKeyring: [errno.EDQUOT]}), REQUIRED, "cannot make the keyring _ima"),
    (machine(policy=False), REQUIRED, "the IMA policy /etc/initium/ima/policy is missing"),
    (machine(), {**REQUIRED, "policy": None}, "IMA is required but this image has no IMA "
     "policy"),
    (machine(refuse={LoadImaPolicy: [errno.EINVAL]}), REQUIRED,
     "the kernel refused the IMA policy /etc/initium/ima/policy: Invalid argument"),
    (machine(refuse={LoadImaPolicy: [errno.EACCES, errno.EACCES]}), REQUIRED,
     "the kernel requires a signed IMA policy and refused /etc/initium/ima/policy"),
    (machine(policy_file=False), REQUIRED, "the kernel takes no IMA policy now"),
    (machine(ima=False), REQUIRED, "the kernel has no IMA"),
    (machine(refuse={EnableEvm: [errno.EPERM]}), {**REQUIRED, "evm_mode": 2,
                                                   "evm_keys": [EVM_KEY]},
     "the kernel refused EVM mode 0x2 = EVM_INIT_X509: Operation not permitted"),
    (machine(evm=False), {**REQUIRED, "evm_mode": 2}, "the kernel has no EVM"),
    (machine(), {**REQUIRED, "evm_mode": 2}, "EVM not enabled (0x2 = EVM_INIT_X509): no key "
     "is in the .evm/_evm keyring"),
    (machine(refuse={AddKey: [0, errno.EBADMSG]}), {**REQUIRED, "evm_mode": 2,
                                                    "evm_keys": [EVM_KEY]},
     "refused key /etc/initium/evm/keys/00-test.der for _evm: it cannot use it as an X.509"),
])
def test_required_ima_fails_closed(sys: MemorySystem, data: dict[str, object],
                                   cause: str) -> None:
    with pytest.raises(StageError) as caught:
        Ima().run(context(sys, data=data))
    assert caught.value.security
    assert cause in caught.value.cause
    assert "IMA is required (the image's ima_required), so the boot stops" in caught.value.hint


def test_the_command_line_can_require_but_not_relax() -> None:
    sys = machine(refuse={AddKey: [errno.EBADMSG]})
    with pytest.raises(StageError) as caught:
        Ima().run(context(sys, "rd.ima.require_policy=1"))
    assert "IMA is required (rd.ima.require_policy=1)" in caught.value.hint
    with pytest.raises(StageError):
        Ima().run(context(machine(refuse={AddKey: [errno.EBADMSG]}), "rd.ima.require_policy=0",
                          data=REQUIRED))
    # required with nothing in the image: the missing policy is the failure
    with pytest.raises(StageError, match="no IMA policy"):
        Ima().run(context(machine(), "rd.ima.require_policy=1",
                          data={"policy": None, "ima_keys": [], "evm_keys": []}))


def test_failures_are_warnings_unless_required() -> None:
    sys = machine(KEYS_TRUSTED, refuse={AddKey: [errno.ENOKEY],
                                        LoadImaPolicy: [errno.EINVAL]})
    out: list[str] = []
    Ima().run(context(sys, out=out))
    text = "".join(out)
    assert "accepts only keys signed by a built-in or secondary trusted key (Required key not " \
           "available), ignoring" in text
    assert "the kernel refused the IMA policy /etc/initium/ima/policy: Invalid argument, " \
           "ignoring" in text
    assert "0 of 1 keys into .ima" in text


def test_a_signed_policy_is_loaded_by_path() -> None:
    sys = machine(refuse={LoadImaPolicy: [errno.EACCES]})
    out: list[str] = []
    Ima().run(context(sys, data=REQUIRED, out=out))
    assert sys.applied[-2:] == [LoadImaPolicy(POLICY), LoadImaPolicy(POLICY, by_path=True)]
    assert "loaded by path (the kernel requires a signed policy)" in "".join(out)


def test_policy_is_written_one_rule_per_write(tmp_path: Path) -> None:
    policy, target = tmp_path / "policy", tmp_path / "kernel"
    policy.write_text("# comment\n\nmeasure func=BPRM_CHECK\n  appraise func=BPRM_CHECK  \n")
    target.write_bytes(b"")
    op = LoadImaPolicy(str(policy), target=str(target))
    assert op.perform(MemorySystem()) == 2
    assert target.read_text() == "measure func=BPRM_CHECK\nappraise func=BPRM_CHECK\n"
    assert LoadImaPolicy(str(policy), by_path=True, target=str(target)).perform(
        MemorySystem()) == 1
    assert target.read_text().startswith(str(policy) + "\n")
    assert "rule by rule" in op.describe()


def test_policy_write_errors_name_the_line(tmp_path: Path) -> None:
    policy = tmp_path / "policy"
    policy.write_text("measure func=BPRM_CHECK\n")
    op = LoadImaPolicy(str(policy), target="/dev/full")
    with pytest.raises(OSError, match=r"line 1: measure func=BPRM_CHECK") as caught:
        op.perform(MemorySystem())
    assert caught.value.errno == errno.ENOSPC


def test_evm_mode_written_in_hex(tmp_path: Path) -> None:
    # evm_secfs.c (6.1) reads the mask with kstrtouint(): hex is taken, and the
    # signed form (-2147483646) was refused with EINVAL in a VM boot.
    target = tmp_path / "evm"
    target.write_bytes(b"")
    EnableEvm(0x80000002, target=str(target)).perform(MemorySystem())
    assert target.read_bytes() == b"0x80000002"
    assert "echo 0x80000002 > /sys/kernel/security/evm" in EnableEvm(0x80000002).describe()
    assert evm_bits(6) == "0x6 = EVM_INIT_X509|EVM_ALLOW_METADATA_WRITES"
    assert "EVM_SETUP_COMPLETE" in EnableEvm(0x80000000).describe()
