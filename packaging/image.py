"""Assemble an image from components and describe it in a manifest.

Each component is its own cpio archive (compressed or not) so that it can be
rebuilt, measured and signed alone; the kernel unpacks them in order into the
same root.  Nothing host-specific leaks in: entries are sorted, owned by 0:0,
dated SOURCE_DATE_EPOCH (or 0), and compression stores no timestamps.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass, field
from typing import Any

from initium import components
from initium.components import DIGESTS_COMPONENT, DIGESTS_PATH, ComponentDigest
from initium.plan import PLAN_PATH, Plan, StageEntry
from initium.runner import order
from initium.stage import JSON, Stage

from .compress import compress
from .config import BuildConfig
from .cpio import Entry, read_records, write_archive
from .ima import attach_ima
from .interpreter import PythonPayload, add_elf, canonical, merged_usr_links, payload_for
from .kmodules import ModuleFile, modprobe_options, modules_dep_subset, resolve_modules
from .selinux import attach_selinux
from .verify import MANIFEST_FORMAT
from .xattrs import attach_xattrs

COMPONENTS = ("early", "core", "modules", "policy")
"""The components a build makes, in image order; ``digests`` follows them."""
BASE_DIRS = ("dev", "proc", "sys", "run", "sysroot", "tmp", "etc", "usr/bin", "usr/lib")
INITRD_RELEASE = b'NAME="initium"\nID=initium\nPRETTY_NAME="initium initramfs"\n'
BUSYBOX = "/bin/busybox"


class BuildError(ValueError):
    pass


@dataclass
class Component:
    name: str
    compressed: bool
    entries: dict[str, Entry] = field(default_factory=dict)
    xattrs: dict[str, dict[str, bytes]] = field(default_factory=dict)  # path -> name -> value
    # Entries in a second archive after the first one's trailer (the kernel's .xattr-list).
    tail: dict[str, Entry] = field(default_factory=dict)


class ImageBuilder:
    """Collects files per component; implements the ``Image`` protocol stages install into."""

    def __init__(self, config: BuildConfig, kver: str) -> None:
        self.config = config
        self.kver = kver
        self.components = {name: Component(name, name != "early") for name in COMPONENTS}
        self.current = "core"
        self.sources: dict[str, str] = {}  # image path -> the host file it was copied from
        self.module_files: list[ModuleFile] = []  # every module added so far
        # Merged /usr: /lib, /bin … are symlinks into usr/ on the host and in the
        # image, so every path is stored under its usr/ name; a component that
        # mentioned "lib/modules" would otherwise carry a "lib" directory that
        # collides with the core's "lib" link.
        self.links = {path.lstrip("/"): target for path, target in merged_usr_links().items()}
        for path, target in self.links.items():
            self.add_symlink(path, target)

    # -- the Image protocol ------------------------------------------------

    def add_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self._put(Entry(path.lstrip("/"), stat.S_IFREG | mode, data))

    def add_binary(self, host_path: str, image_path: str | None = None) -> None:
        payload = PythonPayload()
        add_elf(payload, [host_path])
        for path, source in payload.files.items():
            target = image_path if image_path and path == canonical(host_path) else path
            self._put_host(target, source, payload.modes.get(path, 0o755))

    def add_modules(self, names: list[str], optional: list[str] | None = None,
                    by_modalias: bool = False) -> list[JSON]:
        files = resolve_modules(self.kver, names, optional, options=modprobe_options(),
                                by_modalias=by_modalias)
        loaded = []
        for module in files:
            path = self.canonical(module.image_path)
            self._put(Entry(path.lstrip("/"), stat.S_IFREG | 0o644, module.data), "modules")
            for fw in module.firmware:
                for base in ("/lib/firmware/updates", "/lib/firmware"):
                    host = os.path.join(base, fw)
                    if os.path.isfile(host):
                        self._put_host(f"/lib/firmware/{fw}", host, 0o644, "modules")
                        break
            entry: JSON = {"name": module.name, "path": path, "required": module.required}
            if module.params:
                entry["params"] = module.params
            if module.on_demand:
                entry["on_demand"] = True
                if module.aliases:
                    entry["aliases"] = list(module.aliases)
                if module.needs:
                    entry["needs"] = list(module.needs)
            loaded.append(entry)
        if files:
            # Two stages may add modules (modules, storage): the list covers them all.
            known = {m.image_path for m in self.module_files}
            self.module_files += [m for m in files if m.image_path not in known]
            dep = Entry(f"lib/modules/{self.kver}/modules.dep", stat.S_IFREG | 0o644,
                        modules_dep_subset(self.kver, self.module_files).encode())
            self.components["modules"].entries.pop(self.canonical(dep.path).lstrip("/"), None)
            self._put(dep, "modules")
        return loaded

    def option(self, name: str) -> Any:
        return getattr(self.config, name)

    # -- building blocks ---------------------------------------------------

    def canonical(self, path: str) -> str:
        """``path`` (absolute or not) with a leading merged-/usr link resolved, absolute."""
        rel = path.lstrip("/")
        head, _, rest = rel.partition("/")
        if rest and head in self.links:
            rel = f"{self.links[head]}/{rest}"
        return "/" + rel

    def _put(self, entry: Entry, component: str | None = None) -> None:
        path = self.canonical(entry.path).lstrip("/")
        if path != entry.path:
            entry = Entry(path, entry.mode, entry.data, entry.rdev)
        comp = self.components[component or self.current]
        old = comp.entries.get(entry.path)
        if old is not None and old != entry:
            raise BuildError(f"/{entry.path} is added twice with different contents")
        comp.entries[entry.path] = entry

    def _put_host(self, path: str, source: str | bytes, mode: int,
                  component: str | None = None) -> None:
        if isinstance(source, str):
            self.sources[self.canonical(path).lstrip("/")] = source
            with open(source, "rb") as f:
                source = f.read()
        self._put(Entry(path.lstrip("/"), stat.S_IFREG | mode, source), component)

    def add_host_file(self, path: str, source: str, mode: int) -> None:
        """A host file as it is (--include): a key file, a crypttab."""
        self._put_host(path, source, mode)

    def add_symlink(self, path: str, target: str) -> None:
        self._put(Entry(path.lstrip("/"), stat.S_IFLNK | 0o777, target.encode()))

    def add_dir(self, path: str, mode: int = 0o755) -> None:
        self._put(Entry(path.lstrip("/"), stat.S_IFDIR | mode))

    def add_device(self, path: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._put(Entry(path.lstrip("/"), stat.S_IFCHR | mode, b"", (major, minor)))

    def add_payload(self, payload: PythonPayload) -> None:
        first_path: dict[str, str] = {}
        for path, source in sorted(payload.files.items()):
            if isinstance(source, str):
                real = os.path.realpath(source)
                added = self.sources.get(self.canonical(path).lstrip("/"))
                if added is not None and os.path.realpath(added) == real:
                    first_path.setdefault(real, path)
                    continue  # a stage's binary brought the same library already
                if real in first_path:  # one host file wanted under two names: link it
                    self.add_symlink(path, os.path.relpath(first_path[real],
                                                           os.path.dirname(path)))
                    continue
                first_path[real] = path
            self._put_host(path, source, payload.modes.get(path, 0o644))

    def add_busybox(self) -> None:
        from initium import process

        if not os.path.isfile(BUSYBOX):
            raise BuildError(f"--shell needs busybox ({BUSYBOX}): apt-get install busybox-static")
        self.add_binary(BUSYBOX, "/usr/bin/busybox")
        applets = process.capture([BUSYBOX, "--list"]).decode().split()
        taken = {e.path for c in self.components.values() for e in c.entries.values()}
        for applet in applets:
            if applet.isidentifier() or applet.replace("-", "").isalnum():
                path = f"usr/bin/{applet}"
                if path not in taken:
                    self.add_symlink(path, "busybox")

    def add_microcode(self) -> None:
        """CPU microcode for the kernel's early loader, in the uncompressed first component."""
        for vendor, directory in (("GenuineIntel", "/lib/firmware/intel-ucode"),
                                  ("AuthenticAMD", "/lib/firmware/amd-ucode")):
            try:
                names = sorted(os.listdir(directory))
            except OSError:
                continue
            blobs = []
            for name in names:
                path = os.path.join(directory, name)
                if os.path.isfile(path) and (vendor == "GenuineIntel" or name.endswith(".bin")):
                    with open(path, "rb") as f:
                        blobs.append(f.read())
            if blobs:
                self._put(Entry(f"kernel/x86/microcode/{vendor}.bin", stat.S_IFREG | 0o644,
                                b"".join(blobs)), "early")

    # -- output ------------------------------------------------------------

    def parts(self, mtime: int) -> list[Part]:
        """Each non-empty component as archived and compressed, with its manifest entry."""
        parts = []
        for comp in self.components.values():
            if not comp.entries:
                continue
            archive = write_archive(comp.entries.values(), mtime=mtime)
            if comp.tail:
                archive += write_archive(comp.tail.values(), mtime=mtime)
            method = self.config.compress if comp.compressed else "none"
            data = compress(archive, method, self.config.compress_level) \
                if method != "none" else archive
            parts.append(describe_part(comp.name, method, data, archive, comp.xattrs))
        return parts


@dataclass(frozen=True)
class Part:
    """One component as it goes into an image: its stored bytes and its manifest entry.

    ``description`` is the entry without ``name`` and ``offset``, which depend
    on where the component lands; a component kept from an older image is a
    Part made from that image's bytes and manifest.
    """

    name: str
    data: bytes
    description: dict[str, Any]


def describe_part(name: str, method: str, data: bytes, archive: bytes,
                  xattrs: dict[str, dict[str, bytes]]) -> Part:
    """The Part for a component; its file list is read back from the archive itself.

    Reading back lists what the kernel will unpack, including the parent
    directories the cpio writer adds, so a verifier can tell any extra entry
    from an expected one.
    """
    entries = sorted((entry for _, entry in read_records(archive)), key=lambda e: e.path)
    return Part(name, data, {
        "length": len(data),
        "compression": method,
        "sha256": hashlib.sha256(data).hexdigest(),
        "uncompressed_sha256": hashlib.sha256(archive).hexdigest(),
        "uncompressed_size": len(archive),
        "files": [_describe(e, xattrs.get(e.path, {})) for e in entries],
    })


def digests_part(digests: list[ComponentDigest], mtime: int) -> Part:
    """The last component: the digests of every earlier one, for the init's timeline."""
    data = components.to_bytes(digests)
    entry = Entry(DIGESTS_PATH.lstrip("/"), stat.S_IFREG | 0o444, data)
    archive = write_archive([entry], mtime=mtime)
    return describe_part(DIGESTS_COMPONENT, "none", archive, archive, {})


def assemble(parts: list[Part], mtime: int) -> tuple[bytes, dict[str, Any]]:
    """Concatenate components (each padded to 4 bytes) and add the digests component.

    The kernel reads an uncompressed archive only at a 4-byte aligned offset and
    skips NULs between segments: padding keeps the image appendable (microcode or
    an overlay cpio added by another tool).
    """
    image = bytearray()
    described: list[dict[str, Any]] = []
    digests: list[ComponentDigest] = []

    def add(part: Part) -> None:
        offset = len(image)
        image.extend(part.data)
        image.extend(bytes(-len(image) % 4))
        described.append({"name": part.name, "offset": offset, **part.description})
        d = part.description
        digests.append(ComponentDigest(part.name, offset, d["length"], d["compression"],
                                       d["sha256"], d["uncompressed_sha256"]))

    for part in parts:
        if part.name == DIGESTS_COMPONENT:
            raise BuildError(f"{DIGESTS_COMPONENT!r} is made by assemble, not given to it")
        add(part)
    add(digests_part(digests, mtime))
    manifest = {"format": MANIFEST_FORMAT, "size": len(image),
                "sha256": hashlib.sha256(image).hexdigest(), "components": described}
    return bytes(image), manifest


def _describe(entry: Entry, xattrs: dict[str, bytes]) -> dict[str, Any]:
    item: dict[str, Any] = {"path": "/" + entry.path, "mode": f"{entry.mode:o}"}
    if stat.S_ISREG(entry.mode):
        item["size"] = len(entry.data)
        item["sha256"] = hashlib.sha256(entry.data).hexdigest()
    elif stat.S_ISLNK(entry.mode):
        item["target"] = entry.data.decode(errors="surrogateescape")
    elif stat.S_ISCHR(entry.mode) or stat.S_ISBLK(entry.mode):
        item["rdev"] = f"{entry.rdev[0]}:{entry.rdev[1]}"
    item["xattrs"] = {name: value.hex() for name, value in sorted(xattrs.items())}
    return item


def stage_ref(stage: Stage) -> str:
    cls = type(stage)
    return f"{cls.__module__}:{cls.__qualname__}"


def _resolve(builder: ImageBuilder, stages: list[Stage]) -> tuple[list[Stage], Plan]:
    """Order the stages and let each install itself: the plan the init will obey."""
    ordered = order(stages)
    entries = []
    for stage in ordered:
        builder.current = "core"
        entries.append(StageEntry(stage.name, stage_ref(stage), stage.install(builder)))
    config = builder.config
    return ordered, Plan(builder.kver, tuple(entries), has_shell=config.shell,
                         default_emergency=config.emergency)


def plan_for_host(config: BuildConfig, kver: str) -> Plan:
    """The plan an image built here would carry, without building it (for dry runs)."""
    from .stages import load_stages

    return _resolve(ImageBuilder(config, kver), load_stages(config.all_stages))[1]


def _build_parts(config: BuildConfig, kver: str, stages: list[Stage],
                 mtime: int) -> tuple[list[Part], Plan, dict[str, Any]]:
    builder = ImageBuilder(config, kver)
    ordered, plan = _resolve(builder, stages)
    for d in BASE_DIRS:
        builder.add_dir(d)
    builder.add_device("dev/console", 5, 1)
    builder.add_file("etc/initrd-release", INITRD_RELEASE)
    modules = sorted({stage_ref(s).split(":")[0] for s in ordered})
    payload = payload_for(config.interpreter_kind, config.interpreter, modules, config.emergency,
                          config.interpreter_extras)
    builder.add_payload(payload)
    if config.shell:
        builder.add_busybox()
    for source, target, mode in config.include:
        try:
            builder.add_host_file(target, source, mode)
        except OSError as err:
            raise BuildError(f"--include {source}: {err.strerror}") from None
    builder.current = "policy"
    builder.add_file(PLAN_PATH, plan.to_bytes())
    if config.microcode:
        builder.add_microcode()
    attach_selinux(builder)
    attach_ima(builder)
    attach_xattrs(builder)
    interpreter = {"kind": payload.kind, "version": payload.version,
                   "size": payload.interpreter_size, "modules": list(payload.modules)}
    return builder.parts(mtime), plan, interpreter


def build_image(config: BuildConfig, kver: str, stages: list[Stage],
                mtime: int) -> tuple[bytes, dict[str, Any], Plan]:
    parts, plan, interpreter = _build_parts(config, kver, stages, mtime)
    image, manifest = assemble(parts, mtime)
    manifest["kver"] = kver
    manifest["stages"] = plan.names
    manifest["interpreter"] = interpreter
    return image, manifest, plan


def parts_of(image: bytes, manifest: dict[str, Any]) -> dict[str, Part]:
    """The components of an image (verified against ``manifest``), bytes exactly as stored."""
    found = {}
    for comp in manifest["components"]:
        if comp["name"] == DIGESTS_COMPONENT:
            continue
        description = {k: v for k, v in comp.items() if k not in ("name", "offset")}
        found[comp["name"]] = Part(comp["name"],
                                   image[comp["offset"] : comp["offset"] + comp["length"]],
                                   description)
    return found


def _frozen_name(module: str) -> tuple[str, str]:
    base = module.replace(".", "/")
    return f"{base}.pyc", f"{base}/__init__.pyc"


def _plan_of(part: Part) -> Plan:
    from .compress import decompress
    from .cpio import read_archive

    method = part.description["compression"]
    archive = part.data if method == "none" else \
        decompress(part.data, limit=part.description["uncompressed_size"])
    for entry in read_archive(archive):
        if "/" + entry.path == PLAN_PATH:
            return Plan.from_bytes(entry.data)
    raise BuildError(f"the kept {part.name} component holds no plan ({PLAN_PATH})")


def _check_mix(plan: Plan, parts: list[Part], frozen: set[str]) -> None:
    """Refuse a mix that cannot boot: a plan naming code or modules the image lacks."""
    for entry in plan.stages:
        module = entry.ref.partition(":")[0]
        if frozen and not frozen & set(_frozen_name(module)):
            raise BuildError(f"stage {entry.name} needs {module}, which the image's core "
                             "does not carry; rebuild core as well")
    present = {f["path"] for part in parts for f in part.description["files"]}
    for module in plan.stage_data("modules").get("modules", []):
        path = module.get("path") if isinstance(module, dict) else None
        if isinstance(path, str) and path not in present:
            raise BuildError(f"the plan loads {path}, which the image does not carry; "
                             "rebuild modules (or policy) as well")


def _drift(name: str, kept: Part, fresh: Part | None) -> str | None:
    """A note when this build would have made a kept component differently."""
    if fresh is None:
        return f"{name}: kept, although this build would leave it out"
    if fresh.description["uncompressed_sha256"] == kept.description["uncompressed_sha256"]:
        return None
    old = {f["path"]: f for f in kept.description["files"]}
    new = {f["path"]: f for f in fresh.description["files"]}
    changed = sorted(p for p in old.keys() | new.keys() if old.get(p) != new.get(p))
    shown = ", ".join(changed[:3]) + (", …" if len(changed) > 3 else "")
    return f"{name}: kept as it was; this build would change {len(changed)} entries ({shown})"


def stitch(component: str, new: Part, old_image: bytes, old_manifest: dict[str, Any],
           ) -> tuple[dict[str, Part], list[Part]]:
    """The parts kept from the old image, and every part in image order with ``new`` in."""
    kept = {name: part for name, part in parts_of(old_image, old_manifest).items()
            if name != component}
    chosen = [new if name == component else kept[name]
              for name in COMPONENTS if name == component or name in kept]
    return kept, chosen


def rebuild_image(config: BuildConfig, kver: str, stages: list[Stage], mtime: int, *,
                  component: str, old_image: bytes, old_manifest: dict[str, Any],
                  ) -> tuple[bytes, dict[str, Any], Plan, list[str]]:
    """Build ``component`` anew and keep every other component's bytes from the old image.

    The old image must match its manifest (it is verified first), and the
    new plan must find what it needs in the kept components.  Returns the
    image, its manifest, the plan and notes on kept components that this
    build would have made differently.
    """
    from .verify import verify

    if component not in COMPONENTS:
        raise BuildError(f"--component {component}: choose one of {', '.join(COMPONENTS)} "
                         f"({DIGESTS_COMPONENT} is always rewritten)")
    mismatch = verify(old_image, old_manifest)
    if mismatch is not None:
        raise BuildError(f"--reuse: the old image does not match its manifest: {mismatch}")
    if old_manifest.get("kver") != kver:
        raise BuildError(f"--reuse: the old image is for kernel {old_manifest.get('kver')}, "
                         f"this build for {kver}")
    fresh_parts, plan, interpreter = _build_parts(config, kver, stages, mtime)
    fresh = {p.name: p for p in fresh_parts}
    if component not in fresh:
        raise BuildError(f"--component {component}: this build leaves it empty")
    kept, chosen = stitch(component, fresh[component], old_image, old_manifest)
    notes = [n for name, part in kept.items() if (n := _drift(name, part, fresh.get(name)))]
    # The plan that will boot is the one in the policy component the image ends up with.
    if component != "policy":
        plan = _plan_of(kept["policy"]) if "policy" in kept else plan
    if component != "core":
        interpreter = old_manifest.get("interpreter", {})
    _check_mix(plan, chosen, set(interpreter.get("modules", [])))
    image, manifest = assemble(chosen, mtime)
    manifest["kver"] = kver
    manifest["stages"] = plan.names
    manifest["interpreter"] = interpreter
    manifest["reused"] = {"sha256": old_manifest["sha256"],
                          "components": [name for name in COMPONENTS if name in kept]}
    return image, manifest, plan, notes


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    return (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()

