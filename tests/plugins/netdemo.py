"""A third-party stage that uses every extension point of the core, from outside the package.

It adds its own operation (performed, described and simulated by itself), its
own command-line option, its own typed state, and a teardown before
switch-root, without a line of initium changed for it.
"""

from __future__ import annotations

from initium.ops import Op
from initium.options import Option
from initium.record import record
from initium.stage import BootContext, Stage
from initium.system import System


@record
class BringLink(Op):
    """A stand-in for a netlink request: the reply is the link's index."""

    link: str
    up: bool = True

    def describe(self) -> str:
        return f"ip link set {self.link} {'up' if self.up else 'down'}"

    def perform(self, sys: System) -> int:
        raise OSError(95, "not on this machine")  # the tests never run it live

    def simulate(self, sys: System) -> int:
        return 7


@record(frozen=False)
class Lease:
    link: str
    index: int


LINK = Option("netdemo.link", "netdemo_link", "The link to bring up.", "dracut: ip=IFACE:…",
              str, metavar="IFACE", default="eth0", owner="netdemo")


class NetDemo(Stage):
    name = "netdemo"
    after = ("console",)
    before = ("root",)
    options = (LINK,)

    def run(self, ctx: BootContext) -> None:
        link = ctx.value(LINK)
        index = ctx.sys.apply(BringLink(link))
        ctx.state.put(Lease(link, index))
        ctx.at_switch_root("link down", lambda c: c.sys.apply(BringLink(link, up=False)))
