"""LUKS1/LUKS2 volumes, opened with cryptsetup as systemd-cryptsetup and dracut do.

Which volumes: those ``rd.luks.uuid=`` names, else those /etc/crypttab (in
the image) lists, else every LUKS volume seen. Their names: ``rd.luks.name=``,
then crypttab's, then ``luks-UUID``. Their key: ``rd.luks.key=`` (a file in
the image, or on a key device that is mounted read-only for the open), then
crypttab's key file, else a passphrase typed on the console: cryptsetup
itself asks, echo off, naming the device, ``tries`` times (3).
"""

from __future__ import annotations

from initium import linux, ops
from initium.probe import printable
from initium.process import ProcessError
from initium.record import record
from initium.rootspec import RootSpecError, parse_root_spec
from initium.stage import StageError
from initium.storage.loop import Declined, Handler

TYPE_CHECKING = False
if TYPE_CHECKING:
    from initium.stage import BootContext
    from initium.storage.loop import Assembly, Entry

CRYPTTAB = "/etc/crypttab"
MAX_CRYPTTAB = 64 << 10
DEFAULT_TRIES = 3
PASSPHRASE_TIMEOUT = 300.0  # seconds at the prompt before the boot gives up
KEYDEV_MOUNT = "/run/initium/keydev"
# cryptsetup exit statuses (cryptsetup(8), RETURN CODES)
_STATUS = {1: "wrong parameters", 2: "no key available with this passphrase or key file",
           3: "out of memory", 4: "wrong device specified", 5: "device already exists or "
           "device is busy"}
# crypttab options that map onto cryptsetup flags; the value, if any, follows.
_FLAGS = {"discard": "--allow-discards", "readonly": "--readonly", "read-only": "--readonly",
          "no-read-workqueue": "--perf-no_read_workqueue",
          "no-write-workqueue": "--perf-no_write_workqueue", "same-cpu-crypt":
          "--perf-same_cpu_crypt", "submit-from-crypt-cpus": "--perf-submit_from_crypt_cpus"}
_VALUED = {"keyfile-offset": "--keyfile-offset", "keyfile-size": "--keyfile-size",
           "header": "--header", "key-slot": "--key-slot"}
# Accepted and meaningless here (they steer systemd's units or the real root).
_IGNORED = ("luks", "none", "noauto", "auto", "nofail", "initramfs", "x-initrd.attach",
            "_netdev", "force")


class CryptError(ValueError):
    """A crypttab line or an rd.luks.* value that cannot be used."""


@record
class TabEntry:
    """One /etc/crypttab line."""

    name: str
    device: str
    keyfile: str | None
    options: tuple[str, ...]


def parse_crypttab(text: str) -> list[TabEntry]:
    """crypttab(5): ``name device [keyfile [options]]``; '-' or 'none' is no key file."""
    found = []
    for number, line in enumerate(text.splitlines()[:1024], 1):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if len(words) < 2 or len(words) > 4:
            raise CryptError(f"crypttab line {number}: expected 2 to 4 fields, got {len(words)}")
        name, device = words[0], words[1]
        if "/" in name or name in (".", ".."):
            raise CryptError(f"crypttab line {number}: {name!r} is not a device name")
        keyfile = words[2] if len(words) > 2 and words[2] not in ("-", "none") else None
        options = tuple(o for o in words[3].split(",") if o) if len(words) > 3 else ()
        found.append(TabEntry(name, device, keyfile, options))
    return found


def normal_uuid(text: str) -> str:
    """A LUKS UUID as compared: lower case, dracut's ``luks-`` prefix dropped."""
    text = text.strip().lower()
    return text[5:] if text.startswith("luks-") else text


def split_uuid(value: str) -> tuple[str | None, str]:
    """``[UUID=]VALUE`` (rd.luks.key=, rd.luks.options=, rd.luks.name=) as (uuid, value)."""
    head, eq, rest = value.partition("=")
    if eq and head and all(c in "0123456789abcdefABCDEF-" for c in head) and len(head) >= 8:
        return normal_uuid(head), rest
    return None, value


def open_flags(options: tuple[str, ...]) -> tuple[list[str], int | None, list[str]]:
    """cryptsetup flags for crypttab options; the tries count; the options not understood."""
    flags: list[str] = []
    tries: int | None = None
    unknown = []
    for option in options:
        key, eq, value = option.partition("=")
        if key in _FLAGS and not eq:
            flags.append(_FLAGS[key])
        elif key in _VALUED and eq and value:
            flags += [_VALUED[key], value]
        elif key == "tries" and value.isdigit():
            tries = int(value)
        elif key in _IGNORED:
            continue
        else:
            unknown.append(option)
    return flags, tries, unknown


@record
class Key:
    path: str
    device: str | None = None  # the key device's spec, when the file is on one


def parse_key(value: str) -> tuple[str | None, Key]:
    """``[UUID=]PATH[:KEYDEV]`` as systemd's rd.luks.key= has it."""
    uuid, rest = split_uuid(value)
    path, colon, device = rest.partition(":")
    if not path.startswith("/"):
        raise CryptError(f"rd.luks.key={value}: the key file must be an absolute path")
    return uuid, Key(path, device if colon and device else None)


@record
class Volume:
    """A LUKS volume about to be opened, and how."""

    path: str
    uuid: str
    name: str
    flags: tuple[str, ...] = ()
    tries: int | None = None


class Crypt(Handler):
    name = "crypt"
    fstypes = ("crypto_LUKS",)

    def __init__(self, ctx: BootContext, tool: str, *, enabled: bool = True,
                 uuids: tuple[str, ...] = (), names: tuple[str, ...] = (),
                 keys: tuple[str, ...] = (), options: tuple[str, ...] = (),
                 crypttab: list[TabEntry] | None = None) -> None:
        self.ctx, self.tool, self.enabled = ctx, tool, enabled
        self.uuids = tuple(normal_uuid(u) for u in uuids)
        self.names: dict[str, str] = {}
        for item in names:
            uuid, name = split_uuid(item)
            if uuid is None or not name or "/" in name:
                ctx.warn(f"rd.luks.name={item}: expected UUID=NAME, ignored")
                continue
            self.names[uuid] = name
        self.keys: dict[str | None, Key] = {}
        for item in keys:
            try:
                uuid, key = parse_key(item)
            except CryptError as err:
                ctx.warn(f"{err}, ignored")
                continue
            self.keys[uuid] = key
        self.options: dict[str | None, tuple[str, ...]] = {}
        for item in options:
            uuid, text = split_uuid(item)
            self.options[uuid] = tuple(o for o in text.split(",") if o)
        self.crypttab = crypttab or []
        self.opened: dict[str, str] = {}  # uuid -> mapped name
        self.needs: list[str] = []  # the key each volume asked for, in words (the dry run's)

    def _tab_entry(self, loop: Assembly, entry: Entry) -> TabEntry | None:
        for tab in self.crypttab:
            try:
                spec = parse_root_spec(tab.device, device_mapper=True)
            except RootSpecError:
                continue
            if entry.device.matches(spec, [e.device for e in loop.entries.values()]):
                return tab
        return None

    def claim(self, loop: Assembly, entry: Entry) -> str | None:
        device = entry.device
        uuid = normal_uuid(device.fs.uuid or "") if device.fs else ""
        if not self.enabled:
            return Declined("LUKS volume, left closed (rd.luks=0)")
        tab = self._tab_entry(loop, entry)
        if self.uuids and uuid not in self.uuids:
            return Declined("LUKS volume, left closed: rd.luks.uuid= names another")
        if not self.uuids and self.crypttab and tab is None:
            return Declined(f"LUKS volume, left closed: not in {CRYPTTAB}")
        name = self.names.get(uuid) or (tab.name if tab else None) or f"luks-{uuid}"
        key = self.keys.get(uuid) or self.keys.get(None)
        if key is None and tab is not None and tab.keyfile:
            key = Key(tab.keyfile)
        options = (*(tab.options if tab else ()), *self.options.get(None, ()),
                   *self.options.get(uuid, ()))
        flags, tries, unknown = open_flags(options)
        for option in unknown:
            self.ctx.warn(f"{device.path}: LUKS option {option!r} not understood, ignored")
        volume = Volume(device.path, uuid, name, tuple(flags), tries)
        if key is not None and key.device is not None:
            return self._open_with_keydev(loop, volume, key)
        self._open(volume, key.path if key else None)
        return f"LUKS volume, opened as /dev/mapper/{name}"

    def _open_with_keydev(self, loop: Assembly, volume: Volume, key: Key) -> str | None:
        assert key.device is not None
        try:
            spec = parse_root_spec(key.device)
        except RootSpecError as err:
            raise StageError(f"rd.luks.key: key device {err}", "fix rd.luks.key=") from None
        holder = loop.find(spec)
        if holder is None or holder.fs is None:
            return None  # not there yet: offered again next turn, and missing() says why
        self.needs.append(f"{volume.path} (LUKS UUID={printable(volume.uuid)}): key file "
                          f"{key.path} on the key device {holder.path}")
        mount = ops.Mount(holder.path, KEYDEV_MOUNT, holder.fs.fstype, linux.MS_RDONLY |
                          linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC, "",
                          ("ro", "nosuid", "nodev", "noexec"))
        if not self.ctx.sys.exists(KEYDEV_MOUNT):
            self.ctx.sys.apply(ops.MakeDir(KEYDEV_MOUNT, 0o700))
        try:
            self.ctx.sys.apply(mount)
        except OSError as err:
            raise StageError(f"{mount.describe()}: {err.strerror}",
                             "check the key device of rd.luks.key=") from None
        try:
            self._open(volume, KEYDEV_MOUNT + key.path)
        finally:
            self.ctx.sys.apply(ops.Unmount(KEYDEV_MOUNT))
        return f"LUKS volume, opened as /dev/mapper/{volume.name} (key from {holder.name})"

    def _open(self, volume: Volume, keyfile: str | None) -> None:
        path, name = volume.path, volume.name
        argv = [self.tool, "open", "--type", "luks", *volume.flags]
        what = f"{path} (LUKS UUID={printable(volume.uuid)})"
        if keyfile is not None:
            if not self.ctx.sys.exists(keyfile):
                raise StageError(f"no key file {keyfile} for {what}",
                                 "add it to the image: initium build --include SRC "
                                 f"{keyfile}", security=True)
            argv += ["--key-file", keyfile, path, name]
            spawn = ops.Spawn(tuple(argv), 60.0)
            if not keyfile.startswith(KEYDEV_MOUNT + "/"):
                self.needs.append(f"{what}: key file {keyfile} in the image")
        else:
            count = volume.tries or DEFAULT_TRIES
            argv += ["--tries", str(count), path, name]
            self.ctx.log(f"asking for the passphrase of {what} on the console ({count} tries)")
            self.needs.append(f"{what}: no key file, so a passphrase would be asked on the "
                              f"console ({count} tries)")
            spawn = ops.Spawn(tuple(argv), PASSPHRASE_TIMEOUT, console=True)
        try:
            status = self.ctx.sys.spawn(spawn)
        except ProcessError as err:
            raise StageError(f"cannot open {what}: {err}",
                             "rebuild the image with initium build --storage luks") from None
        if status != 0:
            reason = _STATUS.get(status, f"cryptsetup exit status {status}")
            via = f"key file {keyfile}" if keyfile else "the passphrase typed"
            raise StageError(f"cannot open {what} with {via}: {reason}",
                             "check the key (cryptsetup open --test-passphrase on another "
                             "machine)" if status == 2 else "the kernel log (dmesg) may say more",
                             security=True)
        self.opened[volume.uuid] = name

    def missing(self, loop: Assembly) -> list[str]:
        if not self.enabled:
            return []
        wanted = [f"LUKS volume UUID={u} (rd.luks.uuid=)" for u in self.uuids
                  if u not in self.opened]
        for uuid, key in self.keys.items():
            if key.device is not None and (uuid is None or uuid in self.uuids) \
                    and not self.opened:
                wanted.append(f"key device {key.device} (rd.luks.key=)")
        return wanted

