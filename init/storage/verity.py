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
"""

from __future__ import annotations

from initium import ops
from initium.blockdev import EMPTY
from initium.process import ProcessError
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
_FLAGS = {"ignore-corruption": "--ignore-corruption",
          "restart-on-corruption": "--restart-on-corruption",
          "panic-on-corruption": "--panic-on-corruption",
          "ignore-zero-blocks": "--ignore-zero-blocks",
          "check-at-most-once": "--check-at-most-once"}


def valid_hash(text: str) -> bool:
    return 32 <= len(text) <= 128 and len(text) % 2 == 0 and all(
        c in "0123456789abcdefABCDEF" for c in text)


class Verity(Handler):
    name = "verity"

    def __init__(self, ctx: BootContext, tool: str, *, roothash: str, data: str | None,
                 hash_device: str | None, options: tuple[str, ...] = ()) -> None:
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
        self.flags: list[str] = []
        for option in options:
            if option in _FLAGS:
                self.flags.append(_FLAGS[option])
            else:
                ctx.warn(f"verity option {option!r} not understood, ignored")
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
                             "the image or roothash= was changed; boot a good image",
                             security=True)
        self.opened = True
        self.data_path, self.hash_path = data.device.path, hashes.device.path
        self.ctx.log(f"dm-verity: {data.device.path} mapped as /dev/mapper/{NAME}, "
                     "every read checked against roothash=")

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
                         "the image or roothash= was changed; boot a good image",
                         security=True)

    def missing(self, loop: Assembly) -> list[str]:
        if self.opened:
            return []
        wanted = []
        if loop.entry_for(self.data) is None:
            wanted.append(f"verity data device {self.data} (systemd.verity_root_data=)")
        if loop.entry_for(self.hash) is None:
            wanted.append(f"verity hash device {self.hash} (systemd.verity_root_hash=)")
        return wanted or [f"/dev/mapper/{NAME} (roothash=)"]
