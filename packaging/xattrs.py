"""Where the image's extended attributes come from, and the lists that carry them.

cpio carries no xattrs, so the builder decides each file's attributes here
and writes them, per component, as an xattr list (initium.xattrlist) that
the ``xattrs`` stage applies at boot.  Sources, later ones winning:

* the host file an entry was copied from (``keep_xattrs``), filtered to the
  namespaces the configuration allows;
* IMA: ``security.ima`` as a digest (``ima_digest``) or as a signature made
  with the user's key (``ima_sign_key``), in the formats ``evmctl`` writes
  and the kernel's IMA appraisal reads;
* EVM: ``security.evm`` as a portable signature made with the user's key
  (``evm_sign_key``), over the file's other EVM-protected attributes and
  its owner and mode, as ``evmctl sign --portable`` writes it.

The digest and signature layouts follow the kernel's ``enum
evm_ima_xattr_type`` and ``struct signature_v2_hdr``
(security/integrity/integrity.h) and ``enum hash_algo``
(include/uapi/linux/hash_info.h); what an EVM signature covers follows
security/integrity/evm/evm_crypto.c and evm_main.c (Linux 6.1).  Tests
compare the bytes with ``evmctl``.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import struct
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from initium.xattrlist import LIST_DIR, XattrRecord, parse, serialize

from .cpio import Entry

if TYPE_CHECKING:
    from .image import ImageBuilder

IMA_XATTR_DIGEST = 0x01  # sha1 only, no algorithm byte (what evmctl writes for sha1)
EVM_IMA_XATTR_DIGSIG = 0x03
IMA_XATTR_DIGEST_NG = 0x04
EVM_XATTR_PORTABLE_DIGSIG = 0x05
DIGSIG_VERSION_2 = 2
# enum hash_algo, include/uapi/linux/hash_info.h
HASH_ALGOS = {"sha1": 2, "sha256": 4, "sha384": 5, "sha512": 6, "sha224": 7}
IMA = "security.ima"
EVM = "security.evm"
SELINUX = "security.selinux"
# evm_config_default_xattrnames (security/integrity/evm/evm_main.c, Linux 6.1), in the
# order EVM hashes them.  A portable signature covers every one the file has, whether
# or not the running kernel has the LSM that uses it (evm_calc_hmac_or_hash skips
# disabled names only for HMACs and non-portable signatures).
EVM_XATTRS = (SELINUX, "security.SMACK64", "security.SMACK64EXEC",
              "security.SMACK64TRANSMUTE", "security.SMACK64MMAP", "security.apparmor",
              IMA, "security.capability")
KERNEL_LIST = ".xattr-list"  # the name the in-kernel proposal reads from each archive


class XattrSourceError(ValueError):
    """A source of xattrs (a key, a host file) cannot be used; one line for the user."""


def ima_digest(data: bytes, algo: str = "sha256") -> bytes:
    """``security.ima`` holding the file's digest, as ``evmctl ima_hash`` writes it."""
    digest = hashlib.new(algo, data).digest()
    if algo == "sha1":
        return bytes([IMA_XATTR_DIGEST]) + digest
    return bytes([IMA_XATTR_DIGEST_NG, HASH_ALGOS[algo]]) + digest


def _der_item(der: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of contents, end of contents) of the DER item at ``pos``."""
    if pos + 2 > len(der):
        raise ValueError("truncated DER")
    tag, first = der[pos], der[pos + 1]
    pos += 2
    if first & 0x80:
        count = first & 0x7F
        if not 1 <= count <= 4 or pos + count > len(der):
            raise ValueError("bad DER length")
        length = int.from_bytes(der[pos : pos + count], "big")
        pos += count
    else:
        length = first
    if pos + length > len(der):
        raise ValueError("truncated DER")
    return tag, pos, pos + length


def subject_public_key(spki: bytes) -> bytes:
    """The key bits of a DER SubjectPublicKeyInfo (what evmctl hashes for the key id).

    For RSA that is the PKCS#1 RSAPublicKey, for EC the point: the bytes
    ``i2d_PublicKey`` gives and the X.509 subjectKeyIdentifier is usually
    the SHA-1 of.
    """
    tag, start, end = _der_item(spki, 0)
    if tag != 0x30:
        raise ValueError("not a SubjectPublicKeyInfo")
    tag, _, algo_end = _der_item(spki, start)
    if tag != 0x30:
        raise ValueError("no AlgorithmIdentifier")
    tag, bits, bits_end = _der_item(spki, algo_end)
    if tag != 0x03 or bits_end != end or bits == bits_end or spki[bits] != 0:
        raise ValueError("no subjectPublicKey BIT STRING")
    return spki[bits + 1 : bits_end]


def key_id(spki: bytes) -> bytes:
    """The 4-byte key id of IMA signatures v2: the last 4 bytes of SHA-1(subjectPublicKey)."""
    return hashlib.sha1(subject_public_key(spki)).digest()[-4:]


def signature_v2(key_ident: bytes, algo: str, signature: bytes,
                 kind: int = EVM_IMA_XATTR_DIGSIG) -> bytes:
    """A v2 signature xattr: the header of ``struct signature_v2_hdr``, then the signature.

    ``kind`` is the first byte: EVM_IMA_XATTR_DIGSIG for ``security.ima``,
    EVM_XATTR_PORTABLE_DIGSIG for a portable ``security.evm``.
    """
    return struct.pack(">BBB4sH", kind, DIGSIG_VERSION_2, HASH_ALGOS[algo],
                       key_ident, len(signature)) + signature


def evm_portable_data(xattrs: Mapping[str, bytes], mode: int, uid: int = 0,
                      gid: int = 0) -> bytes:
    """The bytes a portable EVM signature's digest is taken over.

    The raw values of the EVM-protected attributes the file has, in EVM's
    order, then ``struct h_misc`` as x86-64 lays it out: ``unsigned long
    ino`` and ``u32 generation`` zeroed (a portable signature leaves them
    out so it survives a copy), ``uid_t uid``, ``gid_t gid``, ``umode_t
    mode`` (the whole i_mode, type bits too), two bytes of padding; no file
    system UUID.  The kernel refuses a portable signature on a file without
    ``security.ima`` (-EPERM), so this does too.
    """
    if IMA not in xattrs:
        raise ValueError("a portable EVM signature needs security.ima on the file")
    values = b"".join(xattrs[name] for name in EVM_XATTRS if name in xattrs)
    return values + struct.pack("<QIIIH2x", 0, 0, uid, gid, mode & 0xFFFF)


class ImaSigner:
    """Signs file digests with a PEM private key through ``openssl pkeyutl``.

    PKCS#1 v1.5 for RSA (deterministic: the same bytes ``evmctl ima_sign``
    writes), DER ECDSA for EC keys.  Keys with a passphrase are refused
    rather than prompted for.
    """

    def __init__(self, key_path: str, algo: str = "sha256",
                 flag: str = "--ima-sign-key") -> None:
        from initium import process

        if algo not in HASH_ALGOS:
            raise XattrSourceError(f"IMA hash {algo!r} is not one of {', '.join(HASH_ALGOS)}")
        self.key_path, self.algo, self.flag = key_path, algo, flag
        try:
            spki = process.capture(["openssl", "pkey", "-in", key_path, "-passin", "pass:",
                                    "-pubout", "-outform", "DER"], timeout=30)
            self.key_id = key_id(spki)
        except (process.ProcessError, ValueError) as err:
            raise XattrSourceError(f"{flag} {key_path}: not a usable PEM private key "
                                   f"without passphrase ({err})") from None

    def sign(self, data: bytes, kind: int = EVM_IMA_XATTR_DIGSIG) -> bytes:
        """A v2 signature of ``kind`` over the digest of ``data``."""
        from initium import process

        digest = hashlib.new(self.algo, data).digest()
        try:
            signature = process.capture(
                ["openssl", "pkeyutl", "-sign", "-inkey", self.key_path, "-passin", "pass:",
                 "-pkeyopt", f"digest:{self.algo}"], input=digest, timeout=30)
        except process.ProcessError as err:
            raise XattrSourceError(f"{self.flag} {self.key_path}: {err}") from None
        return signature_v2(self.key_id, self.algo, signature, kind)

    def sign_evm(self, xattrs: Mapping[str, bytes], mode: int) -> bytes:
        """``security.evm``: a portable signature over ``xattrs`` and owner root:root, ``mode``."""
        return self.sign(evm_portable_data(xattrs, mode), EVM_XATTR_PORTABLE_DIGSIG)


def host_xattrs(path: str, namespaces: Iterable[str]) -> dict[str, bytes]:
    """The attributes of a host file (not following a final symlink) in ``namespaces``."""
    wanted = tuple(namespaces)
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as err:
        if err.errno in (errno.EOPNOTSUPP, errno.ENODATA):  # a file system without xattrs
            return {}
        raise XattrSourceError(f"{path}: cannot list xattrs: {err.strerror}") from None
    found = {}
    for name in sorted(names):
        if name.startswith(wanted) and name not in wanted:
            try:
                found[name] = os.getxattr(path, name, follow_symlinks=False)
            except OSError as err:
                raise XattrSourceError(f"{path}: cannot read {name}: {err.strerror}") from None
    return found


def entry_xattrs(entry: Entry, source: str | None, *, keep: bool, namespaces: Iterable[str],
                 ima: str | None, signer: ImaSigner | None,
                 evm: ImaSigner | None = None, label: bytes | None = None) -> dict[str, bytes]:
    """Every attribute one image file gets (``ima``: the digest algorithm, or None).

    ``security.evm`` comes last because it signs the others; the image's
    files are owned by root (the cpio writer stores uid and gid 0).
    ``label`` is the ``security.selinux`` the selinux stage will give the
    file at boot (before EVM is enabled): not in this list, but covered by
    the signature, unless the list labels the file itself.
    """
    found = host_xattrs(source, namespaces) if keep and source is not None else {}
    if stat.S_ISREG(entry.mode):
        if signer is not None:
            found[IMA] = signer.sign(entry.data)
        elif ima is not None:
            found[IMA] = ima_digest(entry.data, ima)
        if evm is not None:
            found.pop(EVM, None)
            covered = dict(found)
            if label is not None:
                covered.setdefault(SELINUX, label)
            found[EVM] = evm.sign_evm(covered, entry.mode)
    return found


def list_path(component: str) -> str:
    return f"{LIST_DIR}/{component}".lstrip("/")


def records_of(xattrs: Mapping[str, Mapping[str, bytes]]) -> list[XattrRecord]:
    return [XattrRecord(path, tuple(attrs.items())) for path, attrs in xattrs.items() if attrs]


def boot_labels(builder: ImageBuilder) -> dict[str, bytes]:
    """The ``security.selinux`` of each image path that the selinux stage sets at boot.

    They travel in the policy component's label list (packaging.selinux),
    which the builder wrote itself a moment ago.
    """
    from .selinux import LABELS_PATH

    for comp in builder.components.values():
        entry = comp.entries.get(LABELS_PATH.lstrip("/"))
        if entry is not None:
            return {r.path: value for r in parse(entry.data) for name, value in r.xattrs
                    if name == SELINUX}
    return {}


def attach_xattrs(builder: ImageBuilder) -> None:
    """Decide every file's xattrs and add each component's list to that component.

    The lists themselves get no attributes: a list cannot carry its own
    digest, and the stage reads it before applying anything.
    """
    config = builder.config
    keep = config.keep_xattrs
    # A portable EVM signature needs security.ima: EVM signing implies IMA digests.
    ima = config.ima_hash if config.ima_digest or config.ima_sign_key or \
        config.evm_sign_key else None
    signer = ImaSigner(config.ima_sign_key, config.ima_hash) if config.ima_sign_key else None
    evm = ImaSigner(config.evm_sign_key, config.ima_hash, "--evm-sign-key") \
        if config.evm_sign_key else None
    if not keep and ima is None:
        return
    labels = boot_labels(builder) if evm is not None else {}
    for comp in builder.components.values():
        own = {list_path(comp.name), KERNEL_LIST}
        for path, entry in sorted(comp.entries.items()):
            if path in own:
                continue
            attrs = entry_xattrs(entry, builder.sources.get(path), keep=keep,
                                 namespaces=config.xattr_namespaces, ima=ima, signer=signer,
                                 evm=evm, label=labels.get(path))
            if attrs:
                comp.xattrs[path] = attrs
        if not comp.xattrs:
            continue
        data = serialize(records_of(comp.xattrs), tuple(config.xattr_namespaces))
        comp.entries[list_path(comp.name)] = Entry(list_path(comp.name),
                                                   stat.S_IFREG | 0o644, data)
        if config.kernel_xattr_list:
            # The kernel's proposal applies the list when it has unpacked it, to files
            # that exist by then: it goes last, in an archive of its own.
            comp.tail[KERNEL_LIST] = Entry(KERNEL_LIST, stat.S_IFREG | 0o644, data)

