"""The builder's configuration: a TOML file read as data, typed and validated.

Every key is declared once in ``SETTINGS`` (type, default, help); the same
table validates the file, documents it (docs/initium.conf.5) and names the
command-line flag that overrides it.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from initium.options import EMERGENCY_ACTIONS
from initium.stages.ima_ops import (
    EVM_ALLOW_METADATA_WRITES,
    EVM_INIT_HMAC,
    EVM_INIT_X509,
    EVM_SETUP_COMPLETE,
)
from initium.storage.verity import POLICIES as VERITY_POLICIES
from initium.xattrlist import NAMESPACES

IMA_HASHES = ("sha256", "sha384", "sha512", "sha224", "sha1")  # packaging.xattrs.HASH_ALGOS

DEFAULT_MODULES = ("virtio_pci", "virtio_blk", "virtio_scsi", "sd_mod", "ahci", "nvme", "ext4")
COMPRESSIONS = ("zstd", "gzip", "none")
INTERPRETER_KINDS = ("host", "static")
INTERPRETER_EXTRAS = ("selinux",)  # packaging/static_python.py OPTIONAL_MODULES
MAX_CONFIG_BYTES = 1 << 20


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class BuildConfig:
    kver: str | None = None
    modules: tuple[str, ...] | None = None  # None: DEFAULT_MODULES, each only if present
    add_modules: tuple[str, ...] = ()
    compress: str = "zstd"
    compress_level: int | None = None
    shell: bool = False
    interpreter: str | None = None
    interpreter_kind: str = "static"
    interpreter_extras: tuple[str, ...] = ()  # optional builtin module groups (static only)
    emergency: str | None = None
    microcode: bool = True
    source_date_epoch: int | None = None
    stages: tuple[str, ...] = field(default=())
    keep_xattrs: bool = False
    xattr_namespaces: tuple[str, ...] = ("security.",)
    ima_digest: bool = False
    ima_sign_key: str | None = None
    evm_sign_key: str | None = None
    ima_hash: str = "sha256"
    ima_policy: str | None = None
    ima_certs: tuple[str, ...] = ()
    evm_certs: tuple[str, ...] = ()
    evm_mode: int | None = None  # None: EVM left as the kernel has it
    ima_required: bool = False
    kernel_xattr_list: bool = False
    xattr_tmpfs_move: bool = True
    selinux_policy: str | None = None  # None: the host's configured policy; "none": no policy
    selinux_mode: str = "kernel"
    storage: tuple[str, ...] = ()  # handler kinds; "auto" is expanded by the builder
    include: tuple[tuple[str, str, int], ...] = ()  # (host source, image target, mode)
    fsck: bool = False
    verity_corruption: str = "io-error"

    @property
    def required_modules(self) -> list[str]:
        return list(dict.fromkeys((*(self.modules or ()), *self.add_modules)))

    @property
    def all_stages(self) -> tuple[str, ...]:
        """The extra stages, with the storage stage when handlers are selected."""
        wanted = [k for k in self.storage if k != "none"]
        return (*self.stages, "initium.stages.storage:Storage") if wanted else self.stages

    @property
    def optional_modules(self) -> list[str]:
        """The default set: drivers a kernel may lack or have builtin, skipped when absent."""
        return list(DEFAULT_MODULES) if self.modules is None else []


def _str_list(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError("must be a list of non-empty strings")
    return tuple(value)


def _names_among(choices: tuple[str, ...], what: str = "") -> Callable[[Any], tuple[str, ...]]:
    """A list of names from ``choices``, each kept once in the order given."""
    def check(value: Any) -> tuple[str, ...]:
        names = _str_list(value)
        for name in names:
            if name not in choices:
                raise ValueError(f"must name {what}among {', '.join(choices)}")
        return tuple(dict.fromkeys(names))

    return check


def _choice(choices: tuple[str, ...]) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return str(value)

    return check


def _int_range(low: int, high: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"must be an integer from {low} to {high}")
        return value

    return check


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def _path(value: Any) -> str:
    if not isinstance(value, str) or not value.startswith("/"):
        raise ValueError("must be an absolute path")
    return value


def _paths(value: Any) -> tuple[str, ...]:
    return tuple(dict.fromkeys(_path(v) for v in _str_list(value)))


EVM_BITS = EVM_INIT_X509 | EVM_ALLOW_METADATA_WRITES | EVM_SETUP_COMPLETE


def _evm_mode(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("must be an integer bit mask such as 0x80000002")
    if value & EVM_INIT_HMAC:
        raise ValueError("sets EVM_INIT_HMAC (1), which needs an encrypted evm-key in the "
                         "user keyring that initium does not load; use EVM_INIT_X509 (2) "
                         "with evm_certs")
    if value <= 0 or value & ~EVM_BITS:
        raise ValueError("must be a nonzero mask of EVM_INIT_X509 (0x2), "
                         "EVM_ALLOW_METADATA_WRITES (0x4) and EVM_SETUP_COMPLETE (0x80000000)")
    return value


def _policy_dir(value: Any) -> str:
    if value == "none":
        return "none"
    return _path(value)


STORAGE_CHOICES = ("luks", "lvm", "md", "verity", "udev", "auto", "none")
INCLUDE_MODE = 0o400


def _mode(value: Any) -> int:
    if isinstance(value, str):
        try:
            value = int(value, 8)
        except ValueError:
            raise ValueError(f"mode {value!r} is not octal") from None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0o7777:
        raise ValueError("mode must be an octal string such as \"0400\" or 0 to 4095")
    return value


def include_entry(source: str, target: str, mode: int = INCLUDE_MODE) -> tuple[str, str, int]:
    if not source.startswith("/") or not target.startswith("/"):
        raise ValueError("source and target must be absolute paths")
    parts = target.split("/")[1:]
    if any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"target {target!r} is not a plain path")
    return source, target, mode


def _includes(value: Any) -> tuple[tuple[str, str, int], ...]:
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ValueError("must be an array of tables ([[include]])")
    found = []
    for table in value:
        unknown = set(table) - {"source", "target", "mode"}
        if unknown or not isinstance(table.get("source"), str) \
                or not isinstance(table.get("target"), str):
            raise ValueError("each [[include]] needs source and target (and may give mode)")
        found.append(include_entry(table["source"], table["target"],
                                   _mode(table.get("mode", INCLUDE_MODE))))
    return tuple(found)


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("must be a non-empty string")
    return value


@dataclass(frozen=True)
class Setting:
    key: str
    check: Callable[[Any], Any]
    help: str
    flag: str = ""


SETTINGS: tuple[Setting, ...] = (
    Setting("kver", _text, "Kernel version to build for. Default: the running kernel when "
            "/lib/modules/$(uname -r) exists, else the newest installed.", "--kver"),
    Setting("modules", _str_list, "Kernel modules to include and load at boot, with their "
            "dependencies; replaces the default set "
            f"({', '.join(DEFAULT_MODULES)}), whose members are skipped when the kernel "
            "lacks them and, at boot, loaded only when a device's modalias asks for them "
            "(ext4, which no device asks for, always). Named modules always load. Builtin "
            "modules are skipped.", ""),
    Setting("add_modules", _str_list, "Modules to add to the set above (--module adds here "
            "too).", "--module"),
    Setting("compress", _choice(COMPRESSIONS), "Compression of the core, modules and policy "
            "components.", "--compress"),
    Setting("compress_level", _int_range(1, 19), "Compression level (zstd 1-19, gzip 1-9).",
            ""),
    Setting("shell", _bool, "Add busybox for the emergency shell.", "--shell"),
    Setting("interpreter", _path, "The Python interpreter to put in the image (3.11 or "
            "newer). Default: /usr/bin/python3 when it is 3.11+, else the one running the "
            "builder.", ""),
    Setting("interpreter_kind", _choice(INTERPRETER_KINDS), "host: the interpreter above, "
            "dynamically linked, with its libraries and a zip of bytecode (quick to build). "
            "static (the default): one statically linked CPython built from source and cached "
            "(the first build takes minutes), with the init's bytecode appended: /init is that "
            "one ELF.",
            "--interpreter"),
    Setting("interpreter_extras", _names_among(INTERPRETER_EXTRAS), "Optional module groups "
            "compiled into the static "
            "interpreter (each combination is its own cached build): selinux (libselinux's "
            "label lookups, file and process labels and enforce calls, as _selinux_min; 0.25 "
            "MB of core; the built-in selinux stage does not need it).", ""),
    Setting("emergency", _choice(EMERGENCY_ACTIONS), "Default for rd.emergency= in this "
            "image.", ""),
    Setting("microcode", _bool, "Prepend the early microcode component when the host has "
            "microcode files.", ""),
    Setting("source_date_epoch", _int_range(0, 2**40), "Timestamp of every file in the image; "
            "SOURCE_DATE_EPOCH in the environment overrides it; default 0.", ""),
    Setting("stages", _str_list, "Extra stages (entry point names or module:Class) to add to "
            "the default ones.", ""),
    Setting("keep_xattrs", _bool, "Copy the extended attributes of the host files the image "
            "is made of (in the namespaces of xattr_namespaces) into the xattr lists.",
            "--keep-xattrs"),
    Setting("xattr_namespaces", _names_among(NAMESPACES, "namespaces "), "Namespaces the "
            "xattr lists may set at boot, "
            "among security., trusted. and user.; default [\"security.\"].", ""),
    Setting("ima_digest", _bool, "Give every regular file a security.ima digest (the format "
            "evmctl ima_hash writes).", "--ima-digest"),
    Setting("ima_sign_key", _path, "PEM private key (no passphrase): give every regular file a "
            "security.ima signature v2 made with it (the format evmctl ima_sign writes).",
            "--ima-sign-key"),
    Setting("evm_sign_key", _path, "PEM private key (no passphrase): give every regular file a "
            "security.evm portable signature made with it (the format evmctl sign --portable "
            "writes), over its security.ima, its SELinux label when the image has a policy, "
            "owner root:root and mode. Implies ima_digest when ima_sign_key is not set. The "
            "kernel checks it once EVM is enabled (evm_mode with 0x2 and the key's "
            "certificate in evm_certs). See ima.md.", "--evm-sign-key"),
    Setting("ima_hash", _choice(IMA_HASHES), "Hash algorithm of the IMA digests and "
            "signatures, and of the EVM signatures.", ""),
    Setting("ima_policy", _path, "IMA policy file (the kernel's rule syntax, one rule a "
            "line) that the ima stage writes to /sys/kernel/security/ima/policy; it travels "
            "as /etc/initium/ima/policy. See ima.md.", "--ima-policy"),
    Setting("ima_certs", _paths, "X.509 certificates (DER) for the kernel's .ima keyring "
            "(_ima when the kernel has no trusted .ima keyring); on the command line "
            "repeatable.", "--ima-cert"),
    Setting("evm_certs", _paths, "X.509 certificates (DER) for the .evm keyring (_evm); on "
            "the command line repeatable.", "--evm-cert"),
    Setting("evm_mode", _evm_mode, "Bit mask the ima stage writes to /sys/kernel/security/evm "
            "after the keys and the policy: 0x2 EVM_INIT_X509 (verify security.evm "
            "signatures with the .evm keys), 0x4 EVM_ALLOW_METADATA_WRITES, 0x80000000 "
            "EVM_SETUP_COMPLETE (no further change until reboot). 0x1 (HMAC) is refused: it "
            "needs a key initium does not load. Default: EVM left off.", ""),
    Setting("ima_required", _bool, "Make every failure of the ima stage fatal (fail closed, "
            "no shell): a key the kernel refuses, a missing or refused policy, EVM not "
            "enabled. rd.ima.require_policy=1 on the kernel command line does the same.", ""),
    Setting("storage", _names_among(STORAGE_CHOICES), "Storage handlers to put in the image, "
            "each with its tool, "
            "libraries and kernel modules: luks (cryptsetup), lvm (lvm), md (mdadm), verity "
            "(veritysetup), udev (systemd-udevd and udevadm with the host's storage rules, "
            "for /dev/disk/by-id roots and udev's view of the devices; never chosen by "
            "auto); auto: what this host's own root needs; none (the default): no "
            "storage stage at all. On the command line a comma-separated list.", "--storage"),
    Setting("include", _includes, "Files to add to the image, as [[include]] tables with "
            "source (host path), target (image path) and mode (octal string, default "
            "\"0400\": fit for key files, which the manifest lists by digest only, never "
            "by content).", "--include SRC DST"),
    Setting("fsck", _bool, "Add e2fsck (with its libraries), so the root stage checks an "
            "ext2/3/4 root before mounting it read-write (fsck.mode=, fsck.repair=, "
            "rd.skipfsck on the kernel command line). Default: no fsck in the image.",
            "--fsck"),
    Setting("verity_corruption", _choice(tuple(VERITY_POLICIES)), "What a dm-verity root does "
            "with a block that fails its hash after the boot: io-error (the default, as the "
            "kernel's and systemd's: the read fails, nothing corrupted reaches the reader, the "
            "machine goes on), ignore-corruption (logged, read as it is), "
            "restart-on-corruption, panic-on-corruption (veritytab's names). A policy word "
            "in systemd.verity_root_options= or initium.verity= overrides it.", ""),
    Setting("kernel_xattr_list", _bool, "Also write each component's list as .xattr-list at "
            "the end of its archive, for kernels with the in-kernel xattr patch.",
            "--kernel-xattr-list"),
    Setting("xattr_tmpfs_move", _bool, "When the kernel unpacked the image into a ramfs "
            "(kernel 6.1 does whenever root= is given) and the xattr lists hold more than "
            "security.selinux, copy the initramfs into a tmpfs and continue there (true, the "
            "default); false stops the boot with that message instead.", ""),
    Setting("selinux_policy", _policy_dir, "SELinux policy store to put in the image (its "
            "policy/policy.NN, its contexts, and labels computed from its file_contexts), e.g. "
            "/etc/selinux/default; \"none\" for no policy. Default: the build host's configured "
            "policy (/etc/selinux/config) when SELinux is not disabled there.",
            "--selinux-policy"),
    Setting("selinux_mode", _choice(("enforcing", "permissive", "kernel")), "SELinux mode the "
            "selinux stage sets after loading the policy when enforcing= is not on the kernel "
            "command line; \"kernel\" (the default) leaves the kernel's.", ""),
)
_BY_KEY = {s.key: s for s in SETTINGS}


def parse_config(text: str, source: str = "config") -> BuildConfig:
    """Validate TOML text into a BuildConfig; the error names the file, key and rule."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{source}: not valid TOML: {err}") from None
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply") from None
    values: dict[str, Any] = {}
    for key, value in doc.items():
        setting = _BY_KEY.get(key)
        if setting is None:
            raise ConfigError(f"{source}: unknown key {key!r} (known: "
                              f"{', '.join(_BY_KEY)})")
        try:
            values[key] = setting.check(value)
        except ValueError as err:
            raise ConfigError(f"{source}: {key} {err}") from None
    return replace(BuildConfig(), **values)


def load_config(path: str | None) -> BuildConfig:
    if path is None:
        return BuildConfig()
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes; not a configuration")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 (byte {err.start})") from None
    return parse_config(text, path)
