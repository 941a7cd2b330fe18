"""Send our messages to the kernel log as soon as /dev/kmsg exists."""

from __future__ import annotations

from initium.stage import BootContext, Stage


class KernelLog(Stage):
    name = "console"
    after = ("early-mounts",)

    def run(self, ctx: BootContext) -> None:
        opened = ctx.sys.open_log()
        if opened is None:
            ctx.debug("no /dev/kmsg; logging to the console only")
            return
        ctx.console.attach_kmsg(*opened)
