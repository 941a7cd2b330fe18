"""Where the image's extended attributes come from, and the lists that carry them.

cpio carries no xattrs, so the builder decides each file's attributes here
and writes them, per component, as an xattr list (initium.xattrlist) that
the ``xattrs`` stage applies at boot.  Sources, later ones winning:

* the host file an entry was copied from (``keep_xattrs``), filtered to the
  namespaces the configuration allows;
* IMA: ``security.ima`` as a digest (``ima_digest``) or as a signature made
  with the user's key (``ima_sign_key``), in the formats ``evmctl`` writes
  and the kernel's IMA appraisal reads.

The digest and signature layouts follow the kernel's ``enum
evm_ima_xattr_type`` and ``struct signature_v2_hdr``
(security/integrity/integrity.h) and ``enum hash_algo``
(include/uapi/linux/hash_info.h); tests compare them with ``evmctl``.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import struct
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from initium.xattrlist import LIST_DIR, XattrRecord, serialize

from .cpio import Entry

if TYPE_CHECKING:
    from .image import ImageBuilder

IMA_XATTR_DIGEST = 0x01  # sha1 only, no algorithm byte (what evmctl writes for sha1)
EVM_IMA_XATTR_DIGSIG = 0x03
IMA_XATTR_DIGEST_NG = 0x04
DIGSIG_VERSION_2 = 2
# enum hash_algo, include/uapi/linux/hash_info.h
HASH_ALGOS = {"sha1": 2, "sha256": 4, "sha384": 5, "sha512": 6, "sha224": 7}
IMA = "security.ima"
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


def signature_v2(key_ident: bytes, algo: str, signature: bytes) -> bytes:
    """``security.ima`` holding a v2 signature: the header of ``struct signature_v2_hdr``."""
    return struct.pack(">BBB4sH", EVM_IMA_XATTR_DIGSIG, DIGSIG_VERSION_2, HASH_ALGOS[algo],
                       key_ident, len(signature)) + signature


class ImaSigner:
    """Signs file digests with a PEM private key through ``openssl pkeyutl``.

    PKCS#1 v1.5 for RSA (deterministic: the same bytes ``evmctl ima_sign``
    writes), DER ECDSA for EC keys.  Keys with a passphrase are refused
    rather than prompted for.
    """

    def __init__(self, key_path: str, algo: str = "sha256") -> None:
        from initium import process

        if algo not in HASH_ALGOS:
            raise XattrSourceError(f"IMA hash {algo!r} is not one of {', '.join(HASH_ALGOS)}")
        self.key_path, self.algo = key_path, algo
        try:
            spki = process.capture(["openssl", "pkey", "-in", key_path, "-passin", "pass:",
                                    "-pubout", "-outform", "DER"], timeout=30)
            self.key_id = key_id(spki)
        except (process.ProcessError, ValueError) as err:
            raise XattrSourceError(f"--ima-sign-key {key_path}: not a usable PEM private key "
                                   f"without passphrase ({err})") from None

    def sign(self, data: bytes) -> bytes:
        from initium import process

        digest = hashlib.new(self.algo, data).digest()
        try:
            signature = process.capture(
                ["openssl", "pkeyutl", "-sign", "-inkey", self.key_path, "-passin", "pass:",
                 "-pkeyopt", f"digest:{self.algo}"], input=digest, timeout=30)
        except process.ProcessError as err:
            raise XattrSourceError(f"--ima-sign-key {self.key_path}: {err}") from None
        return signature_v2(self.key_id, self.algo, signature)


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
                 ima: str | None, signer: ImaSigner | None) -> dict[str, bytes]:
    """Every attribute one image file gets (``ima``: the digest algorithm, or None)."""
    found = host_xattrs(source, namespaces) if keep and source is not None else {}
    if stat.S_ISREG(entry.mode):
        if signer is not None:
            found[IMA] = signer.sign(entry.data)
        elif ima is not None:
            found[IMA] = ima_digest(entry.data, ima)
    return found


def list_path(component: str) -> str:
    return f"{LIST_DIR}/{component}".lstrip("/")


def records_of(xattrs: Mapping[str, Mapping[str, bytes]]) -> list[XattrRecord]:
    return [XattrRecord(path, tuple(attrs.items())) for path, attrs in xattrs.items() if attrs]


def attach_xattrs(builder: ImageBuilder) -> None:
    """Decide every file's xattrs and add each component's list to that component.

    The lists themselves get no attributes: a list cannot carry its own
    digest, and the stage reads it before applying anything.
    """
    config = builder.config
    keep = config.keep_xattrs
    ima = config.ima_hash if config.ima_digest or config.ima_sign_key else None
    signer = ImaSigner(config.ima_sign_key, config.ima_hash) if config.ima_sign_key else None
    if not keep and ima is None:
        return
    for comp in builder.components.values():
        own = {list_path(comp.name), KERNEL_LIST}
        for path, entry in sorted(comp.entries.items()):
            if path in own:
                continue
            attrs = entry_xattrs(entry, builder.sources.get(path), keep=keep,
                                 namespaces=config.xattr_namespaces, ima=ima, signer=signer)
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

