"""The IMA policy and the IMA/EVM keys in the image, checked at build time.

``--ima-policy FILE``, ``--ima-cert DER`` and ``--evm-cert DER`` (config
``ima_policy``, ``ima_certs``, ``evm_certs``) put into the ``policy``
component:

* /etc/initium/ima/policy: the policy as given, which the ``ima`` stage
  writes rule by rule to /sys/kernel/security/ima/policy (or whose path it
  writes when the kernel wants a signed policy);
* /etc/initium/ima/keys/NN-NAME.der and /etc/initium/evm/keys/NN-NAME.der:
  the certificates, in the order given, for the .ima and .evm keyrings.

Being image files, they get ``security.ima`` like any other when the image
is built with ``--ima-digest`` or ``--ima-sign-key``: a policy loaded by
path needs that signature.  The checks here catch what the kernel would
refuse for reasons visible on the build host (a PEM file given as DER, a
policy line that is not a rule); what only the running kernel can judge
(a key's signer, a rule's option) is reported at boot.
"""

from __future__ import annotations

import os
import re
import stat
from typing import TYPE_CHECKING, Any

from initium.stages.ima_ops import EVM_INIT_X509, policy_rules

from .config import BuildConfig
from .cpio import Entry
from .selinux import resolve_policy_dir

if TYPE_CHECKING:
    from .image import ImageBuilder

IMA_DIR = "/etc/initium/ima"
POLICY_PATH = f"{IMA_DIR}/policy"
IMA_KEYS_DIR = f"{IMA_DIR}/keys"
EVM_KEYS_DIR = "/etc/initium/evm/keys"
MAX_POLICY_BYTES = 1 << 20
MAX_RULE_BYTES = 4095  # the kernel takes at most PAGE_SIZE - 1 bytes per write
MAX_CERT_BYTES = 64 << 10
# The actions of security/integrity/ima/ima_policy.c (Linux 6.1).
ACTIONS = ("measure", "dont_measure", "appraise", "dont_appraise", "audit", "hash",
           "dont_hash")


class ImaBuildError(ValueError):
    """A policy or certificate the image cannot carry; one line for the user."""


def check_policy(data: bytes, source: str) -> list[str]:
    """The policy's rules, or the first reason the kernel would refuse the file."""
    if len(data) > MAX_POLICY_BYTES:
        raise ImaBuildError(f"--ima-policy {source}: over {MAX_POLICY_BYTES} bytes")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as err:
        raise ImaBuildError(f"--ima-policy {source}: byte {err.start} is not ASCII") from None
    rules = policy_rules(text)
    if not rules:
        raise ImaBuildError(f"--ima-policy {source}: no rules (only blank or # lines)")
    for number, line in enumerate(text.splitlines(), 1):
        rule = line.strip()
        if not rule or rule.startswith("#"):
            continue
        if len(rule) > MAX_RULE_BYTES:
            raise ImaBuildError(f"--ima-policy {source}:{number}: a rule over "
                                f"{MAX_RULE_BYTES} bytes")
        if rule.split()[0] not in ACTIONS:
            raise ImaBuildError(f"--ima-policy {source}:{number}: {rule.split()[0]!r} is not "
                                f"an IMA action ({', '.join(ACTIONS)})")
    return rules


def _der_length(data: bytes, pos: int) -> tuple[int, int]:
    """(start of contents, end of contents) of the DER item at ``pos``."""
    if pos + 2 > len(data):
        raise ValueError("truncated")
    first, pos = data[pos + 1], pos + 2
    if first & 0x80:
        count = first & 0x7F
        if not 1 <= count <= 4 or pos + count > len(data):
            raise ValueError("bad length")
        length, pos = int.from_bytes(data[pos : pos + count], "big"), pos + count
    else:
        length = first
    if pos + length > len(data):
        raise ValueError("truncated")
    return pos, pos + length


def check_cert(data: bytes, source: str, flag: str) -> None:
    """Refuse what is plainly not a DER certificate (PEM, another file, trailing bytes)."""
    if data.lstrip().startswith(b"-----BEGIN"):
        raise ImaBuildError(f"{flag} {source}: PEM, not DER (convert it with openssl x509 "
                            f"-in {source} -outform DER -out NAME.der)")
    if len(data) > MAX_CERT_BYTES:
        raise ImaBuildError(f"{flag} {source}: over {MAX_CERT_BYTES} bytes; not a certificate")
    try:
        if not data or data[0] != 0x30:
            raise ValueError("not a DER SEQUENCE")
        start, end = _der_length(data, 0)
        if end != len(data):
            raise ValueError(f"{len(data) - end} bytes after the certificate")
        if start >= end or data[start] != 0x30:
            raise ValueError("no tbsCertificate SEQUENCE")
    except ValueError as err:
        raise ImaBuildError(f"{flag} {source}: not a DER X.509 certificate ({err})") from None


def image_name(index: int, source: str) -> str:
    """NN-NAME.der: the order given, and a name a boot message can point back to."""
    base = os.path.basename(source)
    base = base[:-4] if base.endswith(".der") else base
    base = re.sub(r"[^A-Za-z0-9._-]", "_", base)[:64] or "cert"
    return f"{index:02d}-{base}.der"


def _read(path: str, flag: str, limit: int) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(limit + 1)
    except OSError as err:
        raise ImaBuildError(f"{flag} {path}: {err.strerror}") from None


def _files(config: BuildConfig) -> dict[str, bytes]:
    """Every image path the IMA settings add, with its checked content."""
    files: dict[str, bytes] = {}
    if config.ima_policy:
        data = _read(config.ima_policy, "--ima-policy", MAX_POLICY_BYTES)
        check_policy(data, config.ima_policy)
        files[POLICY_PATH] = data
    for flag, folder, certs in (("--ima-cert", IMA_KEYS_DIR, config.ima_certs),
                                ("--evm-cert", EVM_KEYS_DIR, config.evm_certs)):
        for index, source in enumerate(certs):
            data = _read(source, flag, MAX_CERT_BYTES)
            check_cert(data, source, flag)
            files[f"{folder}/{image_name(index, source)}"] = data
    return files


def plan_data(config: BuildConfig) -> dict[str, Any]:
    """What the ``ima`` stage needs to know (the files come with ``attach_ima``)."""
    if config.evm_mode is not None and config.evm_mode & EVM_INIT_X509 \
            and not config.evm_certs:
        raise ImaBuildError("evm_mode sets EVM_INIT_X509 (0x2) but no --evm-cert was given: "
                            "EVM would have no key to verify security.evm with")
    files = _files(config)
    return {
        "policy": POLICY_PATH if POLICY_PATH in files else None,
        "ima_keys": sorted(p for p in files if p.startswith(IMA_KEYS_DIR + "/")),
        "evm_keys": sorted(p for p in files if p.startswith(EVM_KEYS_DIR + "/")),
        "evm_mode": config.evm_mode,
        "required": config.ima_required,
        # The signatures then cover the labels the selinux stage sets: they
        # verify only on a boot where SELinux is active.
        "evm_covers_labels": bool(config.evm_sign_key)
        and resolve_policy_dir(config.selinux_policy) is not None,
    }


def attach_ima(builder: ImageBuilder) -> None:
    """Add the policy and the certificates to the ``policy`` component."""
    for path, data in sorted(_files(builder.config).items()):
        builder._put(Entry(path.lstrip("/"), stat.S_IFREG | 0o644, data), "policy")
