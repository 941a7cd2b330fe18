"""dm-verity: the root is the data device checked block by block against a hash tree.

The names are systemd-veritysetup-generator's: ``roothash=`` (hex), with
``systemd.verity_root_data=`` and ``systemd.verity_root_hash=`` naming the
devices (a path, UUID=, LABEL=, PARTUUID=, PARTLABEL=), and
``systemd.verity_root_options=`` (veritytab options: ignore-corruption,
restart-on-corruption, panic-on-corruption …). The mapping is
/dev/mapper/root, the default root when ``root=`` is absent. The data and
hash devices are hidden from ``root=``: the unchecked file system on the data
device carries the same UUID as the checked one, and must never be mounted.
A wrong ``roothash=`` shows at the mapping's first read (the kernel checks
the hash path of every block it reads up to the root hash) as an I/O error
of the probe, and stops the boot as a security failure.

``initium.verity=DATA,HASH,ROOTHASH[,OPTION…]`` says the same in one
option (veritytab's fields after the name, comma separated, so a device
named by a path with a comma in it must be named by UUID= or PARTUUID=).

What a corrupted block does once the root is mounted is the corruption
policy: ``io-error`` (the kernel's default: the read fails with EIO, so no
corrupted byte reaches the reader, and the machine goes on), or veritytab's
``ignore-corruption`` (logged, then read as it is), ``restart-on-corruption``
or ``panic-on-corruption``. The image's config (``verity_corruption``) gives
the default, a policy word among the command line's options overrides it.
"""

from __future__ import annotations

from initium import ops
from initium.blockdev import EMPTY
from initium.process import ProcessError
from initium.record import record
from initium.rootspec import RootSpecError, parse_root_spec
from initium.stage import StageError
from initium.storage.loop import Handler

TYPE_CHECKING = False
if TYPE_CHECKING:
    from initium.rootspec import RootSpec
    from initium.stage import BootContext
    from initium.storage.loop import Assembly

NAME = "root"
TIMEOUT = 120.0
# The corruption policies, each with its veritysetup flag (io-error: none, the kernel's default).
POLICIES = {"io-error": "", "ignore-corruption": "--ignore-corruption",
            "restart-on-corruption": "--restart-on-corruption",
            "panic-on-corruption": "--panic-on-corruption"}
DEFAULT_POLICY = "io-error"
_POLICY_WORDS = {"io-error": "a corrupted block reads as an I/O error",
                 "ignore-corruption": "a corrupted block is logged and READ AS IT IS",
                 "restart-on-corruption": "a corrupted block restarts the machine",
                 "panic-on-corruption": "a corrupted block panics the kernel"}
_FLAGS = {"ignore-zero-blocks": "--ignore-zero-blocks",
          "check-at-most-once": "--check-at-most-once"}
MAX_SPEC = 4096


class VerityError(ValueError):
    """An initium.verity= value that cannot be used."""


@record
class VeritySpec:
    """The verity root as ``initium.verity=`` names it."""

    data: str
    hash: str
    roothash: str
    options: tuple[str, ...] = ()


def valid_hash(text: str) -> bool:
    return 32 <= len(text) <= 128 and len(text) % 2 == 0 and all(
        c in "0123456789abcdefABCDEF" for c in text)


def parse_verity(text: str) -> VeritySpec:
    """``DATA,HASH,ROOTHASH[,OPTION…]``: both devices must parse, the hash must be hex."""
    if len(text) > MAX_SPEC:
        raise VerityError(f"initium.verity=: longer than {MAX_SPEC} characters")
    fields = text.split(",")
    if len(fields) < 3 or not all(fields[:3]):
        raise VerityError("initium.verity=: expected DATA,HASH,ROOTHASH[,OPTION…]")
    data, hash_device, roothash = fields[:3]
    for what, spec in (("data", data), ("hash", hash_device)):
        try:
            parse_root_spec(spec)
        except RootSpecError as err:
            raise VerityError(f"initium.verity=: {what} device: "
                              f"{str(err).replace('root=', '')}") from None
    if not valid_hash(roothash):
        raise VerityError("initium.verity=: the root hash is not a hex digest "
                          "(32 to 128 hex digits)")
    return VeritySpec(data, hash_device, roothash.lower(), tuple(o for o in fields[3:] if o))


def choose_policy(default: str, options: tuple[str, ...]) -> tuple[str, list[str]]:
    """The corruption policy: the last policy word among ``options``, else ``default``.

    Returns it with the options that are not policy words.
    """
    words = [o for o in options if o in POLICIES]
    rest = [o for o in options if o not in POLICIES]
    return (words[-1] if words else default), rest


class Verity(Handler):
    name = "verity"

    def __init__(self, ctx: BootContext, tool: str, *, roothash: str, data: str | None,
                 hash_device: str | None, options: tuple[str, ...] = (),
                 policy: str = DEFAULT_POLICY, source: str = "") -> None:
        # The option(s) that named the devices, for the messages.
        self.source = source or "systemd.verity_root_data=/systemd.verity_root_hash="
        if not valid_hash(roothash):
            raise StageError(f"roothash={roothash}: not a hex digest", "fix roothash=",
                             security=True)
        if not data or not hash_device:
            raise StageError("roothash= needs systemd.verity_root_data= and "
                             "systemd.verity_root_hash=",
                             "name the data and hash devices (UUID=, PARTUUID=, /dev/…)",
                             security=True)
        self.ctx, self.tool, self.roothash = ctx, tool, roothash.lower()
        self.data, self.hash = self._spec(data), self._spec(hash_device)
        if policy not in POLICIES:
            raise StageError(f"verity corruption policy {policy!r} unknown",
                             f"use one of {', '.join(POLICIES)}", security=True)
        self.policy, rest = choose_policy(policy, options)
        self.flags: list[str] = [POLICIES[self.policy]] if POLICIES[self.policy] else []
        for option in rest:
            if option in _FLAGS:
                self.flags.append(_FLAGS[option])
            else:
                ctx.warn(f"verity option {option!r} not understood, ignored")
        if self.policy == "ignore-corruption":
            ctx.warn("dm-verity with ignore-corruption: corrupted blocks of the root are "
                     "logged and read as they are, not refused")
        self.opened = False
        self.data_path = self.hash_path = ""

    @staticmethod
    def _spec(text: str) -> RootSpec:
        try:
            return parse_root_spec(text)
        except RootSpecError as err:
            raise StageError(str(err).replace("root=", "verity device "),
                             "fix systemd.verity_root_data=/systemd.verity_root_hash=",
                             security=True) from None

    def tick(self, loop: Assembly) -> None:
        if self.opened:
            self._check(loop)
            return
        data, hashes = loop.entry_for(self.data), loop.entry_for(self.hash)
        for entry, role in ((data, "verity data"), (hashes, "verity hash tree")):
            if entry is not None:
                entry.hidden, entry.role, entry.owner = True, role, self.name
                entry.opened = True  # the mapping is made from it
        if data is None or hashes is None:
            return
        argv = (self.tool, "open", *self.flags, data.device.path, NAME, hashes.device.path,
                self.roothash)
        try:
            status = self.ctx.sys.spawn(ops.Spawn(argv, TIMEOUT))
        except ProcessError as err:
            raise StageError(f"cannot set up dm-verity: {err}",
                             "rebuild the image with initium build --storage verity",
                             security=True) from None
        if status != 0:
            raise StageError(f"dm-verity refused {data.device.path} with hash tree "
                             f"{hashes.device.path}: the root hash does not match "
                             f"(veritysetup exit status {status})",
                             "the image or its root hash was changed; boot a good image",
                             security=True)
        self.opened = True
        self.data_path, self.hash_path = data.device.path, hashes.device.path
        self.ctx.log(f"dm-verity: {data.device.path} mapped as /dev/mapper/{NAME}, "
                     f"every read checked against the root hash; "
                     f"{_POLICY_WORDS[self.policy]} ({self.policy})")

    def _check(self, loop: Assembly) -> None:
        """The mapping's first read: with a wrong root hash every read fails.

        veritysetup open checks nothing but the hash device's format; the
        kernel checks the root hash when a block is read. The probe of
        /dev/mapper/root reads its first blocks, so a wrong hash shows here
        as an I/O error, before anything could mount it.
        """
        mapped = next((e for e in loop.entries.values()
                       if f"/dev/mapper/{NAME}" in e.device.aliases), None)
        if mapped is None or mapped.device.error is None or mapped.device.error == EMPTY:
            return
        raise StageError(f"dm-verity refused the root on {self.data_path} with hash tree "
                         f"{self.hash_path}: the root hash does not match "
                         f"({mapped.device.name}: {mapped.device.error})",
                         "the image or its root hash was changed; boot a good image",
                         security=True)

    def missing(self, loop: Assembly) -> list[str]:
        if self.opened:
            return []
        wanted = []
        if loop.entry_for(self.data) is None:
            wanted.append(f"verity data device {self.data} ({self.source})")
        if loop.entry_for(self.hash) is None:
            wanted.append(f"verity hash device {self.hash} ({self.source})")
        return wanted or [f"/dev/mapper/{NAME} (the verity root)"]
