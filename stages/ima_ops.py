"""The ima stage's operations and parsers: keyrings, keys, the policy file, EVM's switch.

Kernel facts they rely on (Linux 6.1, security/integrity/):

* digsig.c: with CONFIG_INTEGRITY_TRUSTED_KEYRING the kernel makes the
  keyrings ``.ima`` and ``.evm`` at boot and lets only keys signed by a
  built-in (or secondary) trusted key in; without it (Debian's 6.1 cloud
  and generic kernels) there is no such keyring and the kernel looks up a
  keyring called ``_ima`` / ``_evm`` with request_key() the first time it
  checks a signature, from the process whose file is checked.  A keyring of
  that name linked into root's user keyring is found from every root
  process, which is what ``evmctl import`` does.
* ima_fs.c: /sys/kernel/security/ima/policy takes one rule per write (at
  most PAGE_SIZE - 1 bytes), refuses a bad rule with EINVAL, and applies
  the rules written when the file is closed, or none if one was refused.
  A write that starts with ``/`` names a file the kernel reads as the
  policy itself; when the policy says policies must be signed (an
  ``appraise func=POLICY_CHECK`` rule, or the secure-boot arch policy)
  only that form is accepted (other writes get EACCES).  Without
  CONFIG_IMA_WRITE_POLICY the file disappears after the first policy that
  was applied: one custom policy per boot.
* evm/evm.h, evm_secfs.c: /sys/kernel/security/evm takes an unsigned bit
  mask (the EVM_* values below, read with kstrtouint(): "0x80000002" is
  taken, a negative number is refused with EINVAL, as a boot showed); bits
  once set stay set, and after EVM_SETUP_COMPLETE every write is refused
  with EPERM.
"""

from __future__ import annotations

import os

from initium import ops, syscalls
from initium.record import record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from initium.system import System

KEY_SPEC_USER_KEYRING = -4
SECURITYFS_IMA = "/sys/kernel/security/ima"
IMA_POLICY_FILE = f"{SECURITYFS_IMA}/policy"
EVM_FILE = "/sys/kernel/security/evm"
MAX_KEYS_LINES = 4096

# security/integrity/evm/evm.h (Linux 6.1)
EVM_INIT_HMAC = 0x1  # an HMAC key (encrypted "evm-key") is loaded: not done by initium
EVM_INIT_X509 = 0x2  # verify security.evm signatures with the .evm/_evm keys
EVM_ALLOW_METADATA_WRITES = 0x4  # allow changing protected metadata without a valid security.evm
EVM_SETUP_COMPLETE = 0x80000000  # no further writes to the file until reboot
EVM_BIT_NAMES = ((EVM_INIT_HMAC, "EVM_INIT_HMAC"), (EVM_INIT_X509, "EVM_INIT_X509"),
                 (EVM_ALLOW_METADATA_WRITES, "EVM_ALLOW_METADATA_WRITES"),
                 (EVM_SETUP_COMPLETE, "EVM_SETUP_COMPLETE"))


def evm_bits(mode: int) -> str:
    """The mask in words, for the log: 0x80000002 = EVM_INIT_X509|EVM_SETUP_COMPLETE."""
    names = [name for bit, name in EVM_BIT_NAMES if mode & bit]
    return f"{mode:#x} = {'|'.join(names) or 'nothing'}"


@record
class KeyEntry:
    """One line of /proc/keys: the fields the stage needs."""

    serial: int
    type: str
    description: str


def parse_proc_keys(text: str) -> list[KeyEntry]:
    """The keys /proc/keys lists (at most MAX_KEYS_LINES); lines that do not parse are skipped.

    A line: serial (hex), flags, usage, timeout, permissions, uid, gid, type,
    then "description: summary" (security/keys/proc.c; a keyring's summary
    is its number of keys or "empty").
    """
    keys = []
    for line in text.splitlines()[:MAX_KEYS_LINES]:
        fields = line.split(None, 8)
        if len(fields) < 9:
            continue
        try:
            serial = int(fields[0], 16)
        except ValueError:
            continue
        description = fields[8]
        if fields[7] == "keyring":
            description = description.partition(":")[0]
        keys.append(KeyEntry(serial, fields[7], description.strip()))
    return keys


def find_keyring(keys: list[KeyEntry], name: str) -> int | None:
    """The serial of the keyring called ``name``, or None."""
    for key in keys:
        if key.type == "keyring" and key.description == name:
            return key.serial
    return None


def policy_rules(text: str) -> list[str]:
    """The rules of a policy: its lines without blanks and ``#`` comments, stripped."""
    return [line.strip() for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


@record
class NewKeyring(ops.Op):
    """Make the keyring ``name`` in ``parent`` (what ``keyctl newring NAME @u`` does)."""

    name: str
    parent: int = KEY_SPEC_USER_KEYRING

    def describe(self) -> str:
        where = "the user keyring" if self.parent == KEY_SPEC_USER_KEYRING else \
            f"keyring {self.parent:#x}"
        return f"keyctl newring {self.name} in {where}"

    def perform(self, sys: System) -> int:
        return syscalls.add_key("keyring", self.name, b"", self.parent)

    def simulate(self, sys: System) -> int:
        return 0


@record
class AddKey(ops.Op):
    """Add the X.509 certificate at ``path`` to keyring ``keyring`` (``keyring_name`` for words).

    The kernel parses the DER and, for a restricted keyring, checks who
    signed it; its refusal comes back as OSError with the errno it gave.
    """

    path: str
    keyring: int
    keyring_name: str

    def describe(self) -> str:
        return f"add the X.509 key {self.path} to {self.keyring_name} ({self.keyring:#x})"

    def perform(self, sys: System) -> int:
        with open(self.path, "rb") as f:
            der = f.read(1 << 20)
        return syscalls.add_key("asymmetric", "", der, self.keyring)

    def simulate(self, sys: System) -> int:
        return 0


@record
class LoadImaPolicy(ops.Op):
    """Write an IMA policy to securityfs: its rules one per write, or its path (``by_path``).

    The reply is the number of rules written (1 for a path).  A refused
    rule raises OSError naming its line; nothing of the policy applies then.
    """

    irreversible = True  # without CONFIG_IMA_WRITE_POLICY the policy is there for good
    path: str
    by_path: bool = False
    target: str = IMA_POLICY_FILE

    def describe(self) -> str:
        how = "its path" if self.by_path else "rule by rule"
        return f"load the IMA policy {self.path} into {self.target} ({how})"

    def perform(self, sys: System) -> int:
        if self.by_path:
            writes = [(0, self.path)]
        else:
            with open(self.path, "rb") as f:
                text = f.read(1 << 20).decode("ascii", errors="replace")
            numbered = [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1)]
            writes = [(n, rule) for n, rule in numbered if rule and not rule.startswith("#")]
        fd = os.open(self.target, os.O_WRONLY | os.O_CLOEXEC)
        try:
            for number, rule in writes:
                data = (rule + "\n").encode()
                try:
                    done = os.write(fd, data)
                except OSError as err:
                    where = f"line {number}: {rule}" if number else f"path {rule}"
                    raise OSError(err.errno, f"{err.strerror} ({where})", self.target) from None
                if done != len(data):
                    raise OSError(5, f"short write at line {number}", self.target)
        finally:
            os.close(fd)  # the kernel applies the rules on close
        return len(writes)

    def simulate(self, sys: System) -> int:
        return 0


@record
class EnableEvm(ops.Op):
    """Write EVM's bit mask to securityfs (bits add to what is set; see EVM_BIT_NAMES)."""

    irreversible = True
    mode: int
    target: str = EVM_FILE

    def describe(self) -> str:
        return f"echo {self.mode:#x} > {self.target} ({evm_bits(self.mode)})"

    def perform(self, sys: System) -> None:
        fd = os.open(self.target, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, f"{self.mode:#x}".encode())
        finally:
            os.close(fd)

    def simulate(self, sys: System) -> None:
        return None
