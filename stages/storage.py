"""The storage stage: open LUKS, LVM, md and dm-verity devices with the real tools.

It is in an image only when ``initium build --storage`` (config ``storage``)
selects handlers; each selected handler brings its tool with its libraries
and its kernel modules, and nothing else does. At boot it loads those
modules, builds the handlers from the command line, and runs the storage
loop (initium.storage.loop) until the root and every device the command
line requires are there; ``root`` then takes the root from the same registry.
"""

from __future__ import annotations

from initium import ops
from initium.options import Option, boolean, seconds
from initium.rootspec import RootSpecError, parse_root_spec
from initium.stage import JSON, BootContext, Image, Stage, StageError
from initium.stages.modules import load_modules
from initium.stages.root import wait_budget
from initium.storage.crypt import CRYPTTAB, Crypt, CryptError, parse_crypttab
from initium.storage.loop import Assembly, Handler
from initium.storage.lvm import Lvm
from initium.storage.md import CONFIG, CONFIG_PATH, Md
from initium.storage.udev import Udev
from initium.storage.verity import DEFAULT_POLICY, Verity, VerityError, parse_verity

KINDS = ("luks", "lvm", "md", "verity", "udev")
# Per kind: the tool (host path, then the name used at boot), required modules, optional ones.
TOOLS = {"luks": "cryptsetup", "lvm": "lvm", "md": "mdadm", "verity": "veritysetup"}
MODULES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # LUKS2's default cipher is aes-xts-plain64; cryptsetup reads keyslots
    # through the kernel's crypto API (AF_ALG) when it can.
    "luks": (("dm_crypt",), ("aesni_intel", "aes_generic", "xts", "ecb", "cbc",
                             "sha256_generic", "algif_skcipher", "algif_hash")),
    "lvm": (("dm_mod",), ("dm_snapshot", "dm_mirror", "dm_raid", "dm_thin_pool")),
    "md": (("md_mod", "raid1"), ("raid0", "raid10", "raid456")),
    "verity": (("dm_verity",), ("sha256_generic",)),
}
SBIN = ("/usr/sbin", "/sbin", "/usr/bin", "/bin")


def _words(value: str) -> tuple[str, ...]:
    """One or more values (comma separated), for options that accumulate."""
    words = tuple(w for w in value.split(",") if w)
    if not words:
        raise ValueError("empty value")
    return words


def _one(value: str) -> tuple[str, ...]:
    if not value:
        raise ValueError("empty value")
    return (value,)


def _text(value: str) -> str:
    if not value:
        raise ValueError("empty value")
    return value


def _raw(value: str) -> str:
    """Kept as given, even empty: the stage checks it and fails closed (a security option)."""
    return value


def _opt(key: str, dest: str, help: str, equivalent: str, parse: object, *,
         flag: object = None, accumulate: bool = False, metavar: str = "",
         default: object = None) -> Option:
    return Option(key, dest, help, equivalent, parse, flag=flag,  # type: ignore[arg-type]
                  accumulate=accumulate, metavar=metavar, default=default, owner="storage")


LUKS = _opt("rd.luks", "luks", "Open LUKS volumes at all (0: leave every one closed).",
            "dracut: rd.luks=0, systemd: rd.luks=", boolean, flag=True, metavar="[0|1]",
            default=True)
LUKS_UUID = _opt("rd.luks.uuid", "luks_uuids", "Open only the LUKS volumes with these UUIDs "
                 "(repeatable; a luks- prefix is accepted) and wait for each of them.",
                 "dracut, systemd: rd.luks.uuid=", _one, accumulate=True, metavar="UUID",
                 default=())
LUKS_NAME = _opt("rd.luks.name", "luks_names", "Open the LUKS volume UUID as "
                 "/dev/mapper/NAME (default luks-UUID); repeatable.",
                 "systemd: rd.luks.name=", _one, accumulate=True, metavar="UUID=NAME",
                 default=())
LUKS_KEY = _opt("rd.luks.key", "luks_keys", "Key file for the LUKS volumes (or for volume "
                "UUID only): a path in the image, or on KEYDEV (a path, UUID=, LABEL= …), "
                "which is mounted read-only for the open. Without a key the passphrase is "
                "asked on the console.",
                "systemd: rd.luks.key=, dracut: rd.luks.key=", _one, accumulate=True,
                metavar="[UUID=]PATH[:KEYDEV]", default=())
LUKS_OPTIONS = _opt("rd.luks.options", "luks_options", "crypttab options for the LUKS "
                    "volumes (or for volume UUID only): discard, readonly, tries=N, "
                    "keyfile-offset=, keyfile-size=, header=, no-read-workqueue …",
                    "systemd: rd.luks.options=", _one, accumulate=True,
                    metavar="[UUID=]OPTIONS", default=())
LVM = _opt("rd.lvm", "lvm", "Activate LVM volumes at all (0: none).", "dracut: rd.lvm=0",
           boolean, flag=True, metavar="[0|1]", default=True)
LVM_VG = _opt("rd.lvm.vg", "lvm_vgs", "Activate only these volume groups and wait for them; "
              "repeatable.", "dracut: rd.lvm.vg=", _words, accumulate=True, metavar="VG",
              default=())
LVM_LV = _opt("rd.lvm.lv", "lvm_lvs", "Activate only these logical volumes and wait for "
              "them; repeatable.", "dracut: rd.lvm.lv=", _one, accumulate=True,
              metavar="VG/LV", default=())
MD = _opt("rd.md", "md", "Assemble md RAID arrays at all (0: none).", "dracut: rd.md=0",
          boolean, flag=True, metavar="[0|1]", default=True)
MD_UUID = _opt("rd.md.uuid", "md_uuids", "Assemble only the arrays with these UUIDs and wait "
               "for a member of each; repeatable.", "dracut: rd.md.uuid=", _one,
               accumulate=True, metavar="UUID", default=())
MD_TIMEOUT = _opt("rd.md.timeout", "md_timeout", "Seconds after the first member of an array "
                  "appeared before arrays still incomplete are started degraded "
                  "(default 10).",
                  "systemd: mdadm-last-resort timer (30 s); dracut: rd.retry=", seconds,
                  metavar="N", default=10.0)
ROOTHASH = _opt("roothash", "roothash", "dm-verity root hash (hex) of the root: the root "
                "becomes /dev/mapper/root, checked against it; a mismatch stops the boot.",
                "systemd: roothash=", _raw, flag="", metavar="HEX")
VERITY_DATA = _opt("systemd.verity_root_data", "verity_data", "The data device of the "
                   "verity root (a path, UUID=, LABEL=, PARTUUID=, PARTLABEL=).",
                   "systemd: systemd.verity_root_data=", _text, metavar="DEVICE")
VERITY_HASH = _opt("systemd.verity_root_hash", "verity_hash", "The hash-tree device of the "
                   "verity root.", "systemd: systemd.verity_root_hash=", _text,
                   metavar="DEVICE")
VERITY_OPTIONS = _opt("systemd.verity_root_options", "verity_options", "veritytab options: "
                      "ignore-corruption, restart-on-corruption, panic-on-corruption, "
                      "ignore-zero-blocks, check-at-most-once (and initium's io-error). The "
                      "corruption policy defaults to the image's verity_corruption "
                      "(io-error: a corrupted block reads as an I/O error).",
                      "systemd: systemd.verity_root_options=",
                      _words, metavar="OPTS", default=())




INITIUM_VERITY = _opt("initium.verity", "verity", "The verity root in one option: data "
                      "device, hash-tree device, root hash (hex) and veritytab options, comma "
                      "separated. Same meaning as roothash= with systemd.verity_root_data=, "
                      "_hash= and _options=; give one form, not both. A corruption policy "
                      "word (io-error, ignore-corruption, restart-on-corruption, "
                      "panic-on-corruption) overrides the image's verity_corruption.",
                      "systemd: roothash= + systemd.verity_root_*=, veritytab(5)", _raw,
                      flag="", metavar="DATA,HASH,ROOTHASH[,OPTION…]")


def find_tool(name: str) -> str:
    import os

    for directory in SBIN:
        path = os.path.join(directory, name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise ValueError(f"--storage needs {name}, which this host lacks")


class Storage(Stage):
    name = "storage"
    after = ("modules", "console")
    before = ("root",)
    options = (LUKS, LUKS_UUID, LUKS_NAME, LUKS_KEY, LUKS_OPTIONS, LVM, LVM_VG, LVM_LV, MD,
               MD_UUID, MD_TIMEOUT, ROOTHASH, VERITY_DATA, VERITY_HASH, VERITY_OPTIONS,
               INITIUM_VERITY)

    def install(self, image: Image) -> JSON:
        kinds = [k for k in KINDS if k in image.option("storage")]
        tools: dict[str, str] = {}
        required: list[str] = []
        optional: list[str] = []
        udev: JSON = {}
        if "udev" in kinds:
            from initium.packaging.udev import install_udev

            udev = install_udev(image, kinds)
        for kind in kinds:
            if kind == "udev":
                continue
            host = find_tool(TOOLS[kind])
            image.add_binary(host)
            tools[kind] = host
            required += MODULES[kind][0]
            optional += MODULES[kind][1]
            if kind == "md":
                image.add_file(CONFIG_PATH, CONFIG)
        modules = image.add_modules(list(dict.fromkeys(required)),
                                    [m for m in dict.fromkeys(optional) if m not in required])
        data: JSON = {"kinds": kinds, "tools": tools, "modules": modules}
        if "verity" in kinds:
            data["verity_corruption"] = image.option("verity_corruption")
        if udev:
            data["udev"] = udev
        return data

    def handlers(self, ctx: BootContext) -> tuple[Handler, ...]:
        data = ctx.data()
        tools: dict[str, str] = data.get("tools", {})
        found: list[Handler] = []
        udev = data.get("udev")
        if udev:
            # A retry after the emergency shell keeps the udevd the first try started.
            previous = ctx.state.get(Assembly)
            running = [h for h in previous.handlers if isinstance(h, Udev) and h.daemon] \
                if previous is not None else []
            found.append(running[0] if running else Udev(ctx, udev["udevd"], udev["udevadm"]))
        if "md" in tools:
            found.append(Md(ctx, tools["md"], enabled=ctx.value(MD),
                            uuids=ctx.value(MD_UUID), timeout=ctx.value(MD_TIMEOUT)))
        if "luks" in tools:
            try:
                crypttab = parse_crypttab(ctx.sys.read_text(CRYPTTAB, 1 << 16)) \
                    if ctx.sys.exists(CRYPTTAB) else []
            except (OSError, CryptError) as err:
                raise StageError(f"{CRYPTTAB}: {err}", "fix the crypttab given to "
                                 "initium build --include") from None
            found.append(Crypt(ctx, tools["luks"], enabled=ctx.value(LUKS),
                               uuids=ctx.value(LUKS_UUID), names=ctx.value(LUKS_NAME),
                               keys=ctx.value(LUKS_KEY), options=ctx.value(LUKS_OPTIONS),
                               crypttab=crypttab))
        if "lvm" in tools:
            found.append(Lvm(ctx, tools["lvm"], enabled=ctx.value(LVM),
                             vgs=ctx.value(LVM_VG), lvs=ctx.value(LVM_LV)))
        verity = self.verity(ctx, tools.get("verity"), data.get("verity_corruption"))
        return (*found, verity) if verity is not None else tuple(found)

    @staticmethod
    def verity(ctx: BootContext, tool: str | None, policy: str | None) -> Verity | None:
        """The verity handler from roothash= (systemd's options) or initium.verity= (ours)."""
        roothash, ours = ctx.value(ROOTHASH), ctx.value(INITIUM_VERITY)
        if roothash is None and ours is None:
            return None
        key = "roothash=" if ours is None else "initium.verity="
        if tool is None:
            raise StageError(f"{key} is given but this image has no dm-verity support",
                             "rebuild the image with initium build --storage verity",
                             security=True)
        policy = policy or DEFAULT_POLICY
        if ours is None:
            return Verity(ctx, tool, roothash=roothash, data=ctx.value(VERITY_DATA),
                          hash_device=ctx.value(VERITY_HASH), options=ctx.value(VERITY_OPTIONS),
                          policy=policy)
        if roothash is not None or ctx.value(VERITY_DATA) or ctx.value(VERITY_HASH):
            raise StageError("both initium.verity= and roothash=/systemd.verity_root_* name "
                             "the verity root", "give one of the two forms", security=True)
        try:
            spec = parse_verity(ours)
        except VerityError as err:
            raise StageError(str(err), "fix initium.verity=", security=True) from None
        return Verity(ctx, tool, roothash=spec.roothash, data=spec.data,
                      hash_device=spec.hash, options=spec.options, policy=policy,
                      source="initium.verity=")

    def run(self, ctx: BootContext) -> None:
        load_modules(ctx, ctx.data().get("modules", []))
        for directory in ("/run/cryptsetup", "/run/lvm", "/run/mdadm"):
            if not ctx.sys.exists(directory):
                ctx.sys.apply(ops.MakeDir(directory, 0o700))
        loop = Assembly(ctx, self.handlers(ctx))
        for handler in loop.handlers:
            if isinstance(handler, Udev) and handler.daemon is None:
                handler.start()  # before the first turn: coldplug, then udev's view each turn
        if ctx.value(ROOTHASH) is not None or ctx.value(INITIUM_VERITY) is not None:
            loop.default_root = "/dev/mapper/root"
        ctx.state.put(loop)
        text = ctx.options.root or loop.default_root
        spec = None
        if text is not None:
            try:
                spec = parse_root_spec(text, device_mapper=True, udev=loop.has("udev"))
            except RootSpecError:
                spec = None  # root says so, with its own message
        loop.wait(spec, wait_budget(ctx.options))
