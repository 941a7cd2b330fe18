"""Kernel modules for the image: the dependency closure, decompressed, with firmware.

Modules are stored uncompressed because the image itself is compressed and
because the init then needs no decompressor (Debian's 6.1 has no in-kernel
module decompression); .ko.xz/.ko.gz use the stdlib, .ko.zst the zstd tool.
"""

from __future__ import annotations

import gzip
import lzma
import os
import re
from dataclasses import dataclass

from initium.kmod import (
    MAX_PATTERN,
    ModuleError,
    is_device_alias,
    load_order,
    module_name,
    parse_builtin,
    parse_modprobe_options,
    parse_modules_alias,
    parse_modules_dep,
    parse_softdeps,
)

from .compress import decompress

_FIRMWARE = re.compile(rb"(?<=\x00)firmware=([^\x00]{1,255})\x00")


@dataclass(frozen=True)
class ModuleFile:
    name: str
    image_path: str  # where the init finds it, e.g. /lib/modules/KVER/kernel/…/virtio_blk.ko
    data: bytes
    firmware: tuple[str, ...]
    # Named (or needed by a module named) on purpose: the boot stops at once
    # when the kernel rejects it. The rest is the optional default set.
    required: bool = True
    params: str = ""  # from the build host's modprobe.d "options" lines
    # Loaded only when a device's modalias matches one of ``aliases``, or as
    # a dependency (``needs``, hard and soft, within the image) of one that is.
    on_demand: bool = False
    aliases: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()


# Modaliases the init does not read: class devices (input, DMI) are on no
# bus. A module that such a device may ask for loads on every boot instead.
UNREAD_ALIASES = ("input:", "dmi")

MODPROBE_DIRS = ("/etc/modprobe.d", "/run/modprobe.d", "/usr/local/lib/modprobe.d",
                 "/usr/lib/modprobe.d", "/lib/modprobe.d")


def modprobe_options(dirs: tuple[str, ...] = MODPROBE_DIRS) -> dict[str, list[str]]:
    """Module options from the host's modprobe.d, as libkmod merges them.

    Files are taken by name across the directories, the first directory
    that has a name winning (so /etc overrides /lib), in name order.
    """
    chosen: dict[str, str] = {}
    for directory in dirs:
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            continue
        for name in names:
            if name.endswith(".conf"):
                chosen.setdefault(name, os.path.join(directory, name))
    merged: dict[str, list[str]] = {}
    for name in sorted(chosen):
        for module, words in parse_modprobe_options(_read(chosen[name])).items():
            merged.setdefault(module, []).extend(words)
    return merged


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def _plain(path: str) -> bytes:
    with open(path, "rb") as f:
        data = f.read()
    if path.endswith(".ko.xz"):
        return lzma.decompress(data)
    if path.endswith(".ko.gz"):
        return gzip.decompress(data)
    if path.endswith(".ko.zst"):
        return decompress(data)
    return data


def resolve_modules(kver: str, names: list[str], optional: list[str] | None = None,
                    modules_root: str = "/lib/modules",
                    options: dict[str, list[str]] | None = None, *,
                    by_modalias: bool = False) -> list[ModuleFile]:
    """The modules to load, in load order, each marked required or optional.

    An unknown name in ``names`` is a ModuleError; names in ``optional`` that
    this kernel does not have are skipped. ``names`` and their hard
    dependencies are required; optional names and soft dependencies are not.
    ``options`` (modprobe.d's, by module) become each module's parameters.

    With ``by_modalias``, an optional module that devices ask for by alias
    (modules.alias) is marked on demand, with those aliases, and so is what
    only such modules need: the init loads them when the hardware is there.
    Optional modules no device asks for (ext4: ``fs-ext4``) and what they
    need still load on every boot, like the required ones.
    """
    base = os.path.join(modules_root, kver)
    deps = parse_modules_dep(_read(os.path.join(base, "modules.dep")))
    if not deps:
        raise ModuleError(f"no modules.dep for kernel {kver} under {modules_root} "
                          "(is that kernel installed? try --kver)")
    builtin = parse_builtin(_read(os.path.join(base, "modules.builtin")))
    softdeps = parse_softdeps(_read(os.path.join(base, "modules.softdep")))
    present = [module_name(n) for n in optional or () if module_name(n) in deps]
    result = []
    required = set(load_order([module_name(n) for n in names], deps, builtin))
    wanted = [module_name(n) for n in names] + present
    aliases: dict[str, list[str]] = {}
    always = set(required)
    if by_modalias:
        for pattern, module in parse_modules_alias(_read(os.path.join(base, "modules.alias"))):
            if module in present and is_device_alias(pattern):
                aliases.setdefault(module, []).append(pattern)
        for module, patterns in list(aliases.items()):
            if any(p.startswith(UNREAD_ALIASES) or len(p) > MAX_PATTERN for p in patterns):
                del aliases[module]  # a device the init cannot match may ask for it
        always |= set(load_order([n for n in present if n not in aliases], deps, builtin,
                                 softdeps))
    else:
        always |= set(load_order(present, deps, builtin, softdeps))
    for name in load_order(wanted, deps, builtin, softdeps):
        rel = deps[name][0]
        data = _plain(os.path.join(base, rel))
        for suffix in (".xz", ".gz", ".zst"):
            rel = rel.removesuffix(suffix)
        firmware = tuple(sorted({m.decode(errors="replace") for m in _FIRMWARE.findall(data)}))
        params = " ".join((options or {}).get(name, []))
        on_demand = name not in always
        needs = tuple(dict.fromkeys(n for n in (*softdeps.get(name, []), *deps[name][1])
                                    if n in deps and n not in builtin)) if on_demand else ()
        result.append(ModuleFile(name, f"/lib/modules/{kver}/{rel}", data, firmware,
                                 name in required, params, on_demand,
                                 tuple(aliases.get(name, ())) if on_demand else (), needs))
    return result


def modules_dep_subset(kver: str, modules: list[ModuleFile],
                       modules_root: str = "/lib/modules") -> str:
    """modules.dep for just the included modules (paths as stored: uncompressed)."""
    deps = parse_modules_dep(_read(os.path.join(modules_root, kver, "modules.dep")))
    included = {m.name: m.image_path.split(f"/lib/modules/{kver}/", 1)[1] for m in modules}
    lines = []
    for name, rel in sorted(included.items(), key=lambda kv: kv[1]):
        dep_paths = [included[d] for d in deps[name][1] if d in included]
        lines.append(f"{rel}: {' '.join(dep_paths)}".rstrip())
    return "\n".join(lines) + "\n"
