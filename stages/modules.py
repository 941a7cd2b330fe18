"""Load the kernel modules the builder chose, in dependency order, by finit_module.

Parameters reach each module as libkmod and booster pass them: the build
host's modprobe.d ``options`` (resolved at build, stored in the plan), then
``MODULE.PARAM=VALUE`` words of the kernel command line, which win because
the kernel keeps the last value of a parameter. Once a module is loaded the
real root can no longer apply them.

The optional default set is loaded by modalias (stages/modalias.py): a
driver whose device is not there is not loaded at all.

A module the image needs (named with --module or ``modules =``, or needed by
one) that the kernel rejects stops the boot at once, naming the module and
the errno: waiting 30 s for a disk whose driver did not load only hides the
cause. The optional default set is best effort.
"""

from __future__ import annotations

import errno

from initium import ops
from initium.kmod import cmdline_module_params
from initium.stage import JSON, BootContext, Image, Stage, StageError
from initium.stages.modalias import (
    MAX_ROUNDS,
    SYSFS_BUS,
    AliasTable,
    Walk,
    walk_modaliases,
    with_needs,
)

# The module has no hardware to drive here: not a rejected module.
_NO_HARDWARE = (errno.ENODEV, errno.ENXIO)
_HINTS = {
    errno.ENOEXEC: "the module is not for this kernel or is corrupt: rebuild the image for "
                   "the running kernel",
    errno.EKEYREJECTED: "its signature is not trusted by this kernel (module.sig_enforce or "
                        "lockdown): use the distribution's signed modules",
    errno.EKEYEXPIRED: "the key that signed it has expired",
    errno.ENOKEY: "it is unsigned and this kernel requires signed modules",
    errno.ENOENT: "a symbol it needs is missing (dmesg names it): a dependency is missing "
                  "or from another kernel build",
    errno.EINVAL: "a parameter or the module itself is invalid (dmesg says which)",
    errno.EPERM: "module loading is disabled (kernel.modules_disabled or lockdown)",
}


def _errno_name(code: int | None) -> str:
    return errno.errorcode.get(code or 0, str(code))


class Modules(Stage):
    name = "modules"
    after = ("early-mounts", "console")

    def install(self, image: Image) -> JSON:
        return {"modules": image.add_modules(image.option("required_modules"),
                                             image.option("optional_modules"),
                                             by_modalias=True)}

    def run(self, ctx: BootContext) -> None:
        release = ctx.sys.kernel_release()
        if release != ctx.plan.kver:
            raise StageError(f"this image was built for kernel {ctx.plan.kver}, "
                             f"but {release} is running",
                             f"rebuild the image with: initium build --kver {release}")
        items: list[JSON] = ctx.data().get("modules", [])
        load_modules(ctx, [item for item in items if not item.get("on_demand")])
        if any(item.get("on_demand") for item in items):
            load_by_modalias(ctx, items)
        if ctx.state.loaded_modules:
            ctx.log(f"loaded {', '.join(ctx.state.loaded_modules)}")


def load_modules(ctx: BootContext, items: list[JSON]) -> None:
    """Load the planned modules in order; another stage (storage) loads its own this way."""
    from_cmdline = cmdline_module_params((p.raw_key, p.value) for p in ctx.cmdline)
    for item in items:
        name, path = str(item["name"]), str(item["path"])
        required = item.get("required", True) is not False
        if ctx.sys.exists(f"/sys/module/{name}"):
            ctx.debug(f"{name} is already loaded")
            continue
        if not ctx.sys.exists(path):
            raise StageError(f"module {name} is missing: no {path} in the image",
                             "rebuild the image; was it modified after the build?")
        params = " ".join(filter(None, [str(item.get("params", "")),
                                        *from_cmdline.get(name, [])]))
        try:
            ctx.sys.apply(ops.LoadModule(name, path, params))
        except OSError as err:
            if err.errno == errno.EEXIST:
                continue
            if required and err.errno not in _NO_HARDWARE:
                raise StageError(
                    f"the kernel rejected module {name}: {_errno_name(err.errno)} "
                    f"({err.strerror})" + (f" with parameters {params!r}" if params else ""),
                    _HINTS.get(err.errno or 0, "dmesg says why")) from None
            ctx.warn(f"cannot load {name}: {_errno_name(err.errno)} ({err.strerror}), "
                     "ignoring" + ("" if required else " (optional)"))
            continue
        ctx.state.loaded_modules.append(name)


def load_by_modalias(ctx: BootContext, items: list[JSON]) -> None:
    """Load the on-demand modules that the devices present ask for, round by round.

    A round reads the devices' modaliases and loads what matched (with what it needs,
    in plan order); the next round sees the devices those drivers created.
    Each module is tried once.
    """
    table = AliasTable([item for item in items if item.get("on_demand")])
    by_name = {str(item["name"]): item for item in items}
    tried: set[str] = set()
    started = ctx.sys.monotonic()
    walk = Walk()
    matching = 0.0  # the walks and the matching, without the loads
    for round_ in range(1, MAX_ROUNDS + 2):
        begun = ctx.sys.monotonic()
        walk_modaliases(ctx.sys, walk)
        if walk.truncated:
            ctx.warn(f"the walk of {SYSFS_BUS} stopped early ({walk.truncated}): drivers for "
                     "devices beyond it are not loaded")
        wanted = table.modules_for(walk.modaliases, tried)
        matching += ctx.sys.monotonic() - begun
        for module, alias in sorted(wanted.items()):
            ctx.debug(f"{module} for device {alias}")
        if not wanted or round_ > MAX_ROUNDS:
            break
        batch = with_needs(set(wanted), by_name) - tried
        tried |= batch
        load_modules(ctx, [item for item in items if str(item["name"]) in batch])
    if wanted:
        ctx.warn(f"drivers still wanted after {MAX_ROUNDS} rounds, not loaded: "
                 f"{', '.join(sorted(wanted))}")
    ctx.log(f"modalias: {round_} rounds, {len(walk.modaliases)} modaliases in {walk.reads} reads, "
            f"{matching:.3f} s to walk and match, {ctx.sys.monotonic() - started:.3f} s "
            "with the loads")
