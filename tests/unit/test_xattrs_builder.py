"""The builder's xattrs: IMA digest and signature bytes, host xattrs, lists per component."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from initium.packaging.config import BuildConfig, ConfigError, parse_config
from initium.packaging.cpio import Entry, read_archive
from initium.packaging.image import Component, _describe
from initium.packaging.xattrs import (
    EVM,
    EVM_XATTRS,
    IMA,
    SELINUX,
    ImaSigner,
    XattrSourceError,
    attach_xattrs,
    evm_portable_data,
    host_xattrs,
    ima_digest,
    key_id,
    signature_v2,
    subject_public_key,
)
from initium.xattrlist import NAMESPACES, parse

HELLO = b"hello\n"
HELLO_SHA256 = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"


def test_ima_digest_vector() -> None:
    # type IMA_XATTR_DIGEST_NG (0x04), HASH_ALGO_SHA256 (4), then the digest
    assert ima_digest(HELLO).hex() == "0404" + HELLO_SHA256
    assert ima_digest(HELLO, "sha512")[:2] == b"\x04\x06"
    assert ima_digest(HELLO, "sha1").hex() == "01" + hashlib.sha1(HELLO).hexdigest()


def test_signature_header() -> None:
    value = signature_v2(b"\xd2\x81\x90\x4c", "sha256", b"\xaa" * 256)
    # EVM_IMA_XATTR_DIGSIG, version 2, sha256, key id, big-endian size 0x0100
    assert value[:9].hex() == "030204d281904c0100"
    assert value[9:] == b"\xaa" * 256


def test_evm_portable_data_layout() -> None:
    ima = ima_digest(HELLO)
    label = b"system_u:object_r:bin_t:s0\0"
    caps = b"\x01\x00\x00\x02" + b"\0" * 16
    data = evm_portable_data({"security.capability": caps, IMA: ima, SELINUX: label,
                              "user.other": b"not covered"}, stat.S_IFREG | 0o751)
    # the kernel's order (selinux ... ima, capability), whatever order the dict has,
    # then struct h_misc: ino 0 (8 bytes), generation 0, uid 0, gid 0, i_mode, 2 padding
    assert data == label + ima + caps + bytes(20) + bytes.fromhex("e981") + bytes(2)
    owned = evm_portable_data({IMA: ima}, 0o100644, uid=1000, gid=5)
    assert owned[-12:] == bytes.fromhex("e8030000" "05000000" "a481" "0000")
    assert EVM_XATTRS.index(SELINUX) < EVM_XATTRS.index("security.apparmor") < \
        EVM_XATTRS.index(IMA) < EVM_XATTRS.index("security.capability")
    assert EVM not in EVM_XATTRS
    with pytest.raises(ValueError, match=r"needs security\.ima"):
        evm_portable_data({SELINUX: label}, 0o100644)


def test_evm_signature_header() -> None:
    value = signature_v2(b"\xd2\x81\x90\x4c", "sha256", b"\xaa" * 256, kind=0x05)
    assert value[:9].hex() == "050204d281904c0100"  # EVM_XATTR_PORTABLE_DIGSIG, v2


# A 2048-bit RSA SubjectPublicKeyInfo header (30 82 01 22, algorithm id, 03 82 01 0f 00).
SPKI_HEAD = bytes.fromhex("30820122300d06092a864886f70d01010105000382010f00")


def test_key_id_is_the_tail_of_sha1_of_the_key_bits() -> None:
    key_bits = bytes.fromhex("3082010a0282010100") + b"\x11" * 256 + bytes.fromhex("0203010001")
    assert len(key_bits) == 270
    spki = SPKI_HEAD + key_bits
    assert subject_public_key(spki) == key_bits
    assert key_id(spki) == hashlib.sha1(key_bits).digest()[-4:]
    for bad in (b"", spki[:-1], b"\x31" + spki[1:], SPKI_HEAD[:-1] + b"\x01" + key_bits):
        with pytest.raises(ValueError):
            subject_public_key(bad)


# -- against the real tools --------------------------------------------------

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl")
needs_evmctl = pytest.mark.skipif(shutil.which("evmctl") is None,
                                  reason="no evmctl (apt-get install ima-evm-utils)")


def _user_xattrs(path: Path) -> bool:
    try:
        os.setxattr(path, "user.initium-probe", b"1")
    except OSError:
        return False
    os.removexattr(path, "user.initium-probe")
    return True


@pytest.fixture(scope="module")
def rsa_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("openssl") is None:
        pytest.skip("no openssl")
    key = tmp_path_factory.mktemp("key") / "ima.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt",
                    "rsa_keygen_bits:2048", "-out", str(key)], check=True, capture_output=True)
    return key


@needs_evmctl
def test_digest_equals_evmctl_ima_hash(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(HELLO * 100)
    if not _user_xattrs(f):
        pytest.skip("no user xattrs here")
    subprocess.run(["evmctl", "ima_hash", "--xattr-user", "-a", "sha256", str(f)], check=True,
                   capture_output=True)
    assert os.getxattr(f, "user.ima") == ima_digest(HELLO * 100)


@needs_evmctl
def test_signature_equals_evmctl_ima_sign_and_verifies(tmp_path: Path, rsa_key: Path) -> None:
    data = os.urandom(5000)
    theirs, ours = tmp_path / "theirs", tmp_path / "ours"
    theirs.write_bytes(data)
    ours.write_bytes(data)
    if not _user_xattrs(theirs):
        pytest.skip("no user xattrs here")
    subprocess.run(["evmctl", "ima_sign", "--xattr-user", "--key", str(rsa_key), str(theirs)],
                   check=True, capture_output=True)
    value = ImaSigner(str(rsa_key)).sign(data)
    assert value == os.getxattr(theirs, "user.ima")  # PKCS#1 v1.5 is deterministic
    os.setxattr(ours, "user.ima", value)
    # evmctl verifies with a DER certificate and finds it by its subjectKeyIdentifier,
    # which openssl makes the SHA-1 of the key bits: the key id must match it.
    pub = tmp_path / "cert.der"
    subprocess.run(["openssl", "req", "-x509", "-new", "-key", str(rsa_key), "-subj", "/CN=ima",
                    "-days", "1", "-outform", "DER", "-out", str(pub)],
                   check=True, capture_output=True)
    ok = subprocess.run(["evmctl", "ima_verify", "--xattr-user", "--key", str(pub), str(ours)],
                        capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    ours.write_bytes(data + b"x")  # a changed file no longer verifies
    bad = subprocess.run(["evmctl", "ima_verify", "--xattr-user", "--key", str(pub), str(ours)],
                         capture_output=True, text=True, check=False)
    assert bad.returncode != 0


@needs_openssl
def test_signer_refuses_what_is_not_a_key(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a key\n")
    with pytest.raises(XattrSourceError, match="not a usable PEM private key"):
        ImaSigner(str(junk))
    with pytest.raises(XattrSourceError, match="is not one of"):
        ImaSigner(str(junk), "md5")


def test_host_xattrs_filters_namespaces(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"")
    if not _user_xattrs(f):
        pytest.skip("no user xattrs here")
    os.setxattr(f, "user.keep", b"1")
    os.setxattr(f, "user.other", b"2")
    assert host_xattrs(str(f), ("user.",)) == {"user.keep": b"1", "user.other": b"2"}
    assert host_xattrs(str(f), ("security.",)) == {}
    with pytest.raises(XattrSourceError, match="cannot list xattrs"):
        host_xattrs(str(tmp_path / "missing"), ("user.",))


# -- lists per component -----------------------------------------------------


class FakeBuilder:
    """What attach_xattrs uses of ImageBuilder: config, components, host sources."""

    def __init__(self, config: BuildConfig) -> None:
        self.config = config
        self.components = {n: Component(n, n != "early") for n in ("core", "policy")}
        self.sources: dict[str, str] = {}

    def put(self, comp: str, path: str, data: bytes = b"", mode: int = stat.S_IFREG | 0o644,
            source: str | None = None) -> None:
        self.components[comp].entries[path] = Entry(path, mode, data)
        if source is not None:
            self.sources[path] = source


def test_no_sources_no_lists() -> None:
    b = FakeBuilder(BuildConfig())
    b.put("core", "init", b"#!")
    attach_xattrs(b)  # type: ignore[arg-type]
    assert set(b.components["core"].entries) == {"init"}


def test_ima_digests_per_component_with_kernel_list() -> None:
    b = FakeBuilder(BuildConfig(ima_digest=True, kernel_xattr_list=True))
    b.put("core", "init", HELLO)
    b.put("core", "usr", mode=stat.S_IFDIR | 0o755)
    b.put("core", "bin", b"usr/bin", mode=stat.S_IFLNK | 0o777)
    b.put("policy", "etc/initium/plan.json", b"{}")
    attach_xattrs(b)  # type: ignore[arg-type]
    core = b.components["core"]
    assert parse(core.entries[".initium/xattrs/core"].data) == [
        parse_one("init", ima_digest(HELLO))]
    assert core.tail[".xattr-list"].data == core.entries[".initium/xattrs/core"].data
    policy = b.components["policy"]
    assert [r.path for r in parse(policy.entries[".initium/xattrs/policy"].data)] == [
        "etc/initium/plan.json"]
    assert ".initium/xattrs/core" not in policy.entries
    described = _describe(core.entries["init"], core.xattrs["init"])
    assert described["xattrs"] == {"security.ima": "0404" + HELLO_SHA256}


def parse_one(path: str, value: bytes) -> object:
    from initium.xattrlist import XattrRecord

    return XattrRecord(path, (("security.ima", value),))


@needs_openssl
def test_evm_signatures_in_the_lists_cover_ima_and_the_boot_label(rsa_key: Path) -> None:
    """--evm-sign-key alone: digests for security.ima, then security.evm over them, the
    label the selinux stage sets at boot (from the policy component's label list) and
    the mode; directories and links get nothing."""
    from initium.packaging.selinux import LABELS_PATH
    from initium.xattrlist import XattrRecord, serialize

    b = FakeBuilder(BuildConfig(evm_sign_key=str(rsa_key)))
    b.put("core", "init", HELLO, mode=stat.S_IFREG | 0o755)
    b.put("core", "usr", mode=stat.S_IFDIR | 0o755)
    b.put("core", "bin", b"usr/bin", mode=stat.S_IFLNK | 0o777)
    label = b"system_u:object_r:bin_t:s0\0"
    labels = serialize([XattrRecord("init", ((SELINUX, label),))], ("security.",))
    b.put("policy", LABELS_PATH.lstrip("/"), labels)
    attach_xattrs(b)  # type: ignore[arg-type]
    records = parse(b.components["core"].entries[".initium/xattrs/core"].data)
    assert [(r.path, sorted(n for n, _ in r.xattrs)) for r in records] == [("init", [EVM, IMA])]
    attrs = dict(records[0].xattrs)
    signer = ImaSigner(str(rsa_key))
    assert attrs[IMA] == ima_digest(HELLO)
    assert attrs[EVM][:3] == b"\x05\x02\x04"
    assert attrs[EVM] == signer.sign_evm({IMA: attrs[IMA], SELINUX: label},
                                         stat.S_IFREG | 0o755)
    assert attrs[EVM] != signer.sign_evm({IMA: attrs[IMA]}, stat.S_IFREG | 0o755)
    # the label list itself has no label for itself here: its signature covers ima only
    (policy,) = parse(b.components["policy"].entries[".initium/xattrs/policy"].data)
    assert dict(policy.xattrs)[EVM] == signer.sign_evm({IMA: ima_digest(labels)},
                                                       stat.S_IFREG | 0o644)


@needs_openssl
def test_evm_sign_key_must_be_a_key(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a key\n")
    b = FakeBuilder(BuildConfig(evm_sign_key=str(junk)))
    with pytest.raises(XattrSourceError, match=r"--evm-sign-key .*junk\.pem: not a usable PEM"):
        attach_xattrs(b)  # type: ignore[arg-type]


def test_keep_xattrs_from_the_host_file(tmp_path: Path) -> None:
    host = tmp_path / "tool"
    host.write_bytes(b"t")
    if not _user_xattrs(host):
        pytest.skip("no user xattrs here")
    os.setxattr(host, "user.label", b"x")
    b = FakeBuilder(BuildConfig(keep_xattrs=True, xattr_namespaces=("security.", "user.")))
    b.put("core", "usr/bin/tool", b"t", source=str(host))
    b.put("core", "usr/bin/plain", b"p")
    attach_xattrs(b)  # type: ignore[arg-type]
    recs = parse(b.components["core"].entries[".initium/xattrs/core"].data,
                 allowed_prefixes=NAMESPACES)
    assert [(r.path, r.xattrs) for r in recs] == [("usr/bin/tool", (("user.label", b"x"),))]
    assert ".xattr-list" not in b.components["core"].tail


def test_settings_validate_namespaces() -> None:
    assert parse_config('xattr_namespaces = ["user.", "security."]').xattr_namespaces == (
        "user.", "security.")
    with pytest.raises(ConfigError, match="xattr_namespaces must name namespaces"):
        parse_config('xattr_namespaces = ["system."]')
    assert replace(BuildConfig(), ima_hash="sha512").ima_hash == "sha512"
    with pytest.raises(ConfigError, match="ima_hash"):
        parse_config('ima_hash = "md5"')


def test_tail_archive_follows_the_trailer() -> None:
    from initium.packaging.cpio import write_archive

    main = write_archive([Entry("a", stat.S_IFREG | 0o644, b"1")])
    tail = write_archive([Entry(".xattr-list", stat.S_IFREG | 0o644, b"2")])
    assert [e.path for e in read_archive(main + tail)] == ["a", ".xattr-list"]
