"""Load the kernel modules the builder chose, in dependency order, by finit_module."""

from __future__ import annotations

import errno

from initium import ops
from initium.stage import JSON, BootContext, Image, Stage, StageError


class Modules(Stage):
    name = "modules"
    after = ("early-mounts", "console")

    def install(self, image: Image) -> JSON:
        return {"modules": image.add_modules(image.option("required_modules"),
                                             image.option("optional_modules"))}

    def run(self, ctx: BootContext) -> None:
        release = ctx.sys.kernel_release()
        if release != ctx.plan.kver:
            raise StageError(f"this image was built for kernel {ctx.plan.kver}, "
                             f"but {release} is running",
                             f"rebuild the image with: initium build --kver {release}")
        for item in ctx.data().get("modules", []):
            name, path = str(item["name"]), str(item["path"])
            if ctx.sys.exists(f"/sys/module/{name}"):
                ctx.debug(f"{name} is already loaded")
                continue
            if not ctx.sys.exists(path):
                raise StageError(f"module {name} is missing: no {path} in the image",
                                 "rebuild the image; was it modified after the build?")
            try:
                ctx.sys.apply(ops.LoadModule(name, path))
            except OSError as err:
                if err.errno == errno.EEXIST:
                    continue
                # A driver for absent hardware says ENODEV: that is not a failed boot.
                ctx.warn(f"cannot load {name}: {err.strerror}, ignoring")
                continue
            ctx.state.loaded_modules.append(name)
        if ctx.state.loaded_modules:
            ctx.log(f"loaded {', '.join(ctx.state.loaded_modules)}")
