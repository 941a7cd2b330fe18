"""The built-in stages, in the order the runner resolves them by default.

Third-party stages register under the entry-point group ``initium.stages``;
the builder collects both and stores the resolved order in the image.
"""

from __future__ import annotations

DEFAULT_STAGES = (
    "initium.stages.early_mounts:EarlyMounts",
    "initium.stages.console:KernelLog",
    "initium.stages.rootfs:Rootfs",
    "initium.stages.xattrs:Xattrs",
    "initium.stages.selinux:Selinux",
    "initium.stages.ima:Ima",
    "initium.stages.modules:Modules",
    "initium.stages.root:Root",
    "initium.stages.switch_root:SwitchRoot",
)

# In an image only when the build asks for them (initium build --storage).
OPTIONAL_STAGES = ("initium.stages.storage:Storage",)
