"""systemd-udevd in the initramfs: started, coldplugged, followed, stopped and handed over.

Only in images built with ``--storage udev``. The storage stage starts it
before the loop's first turn and the loop follows it like any handler:

* start: ``systemd-udevd`` runs as our own child through the one spawner
  (no ``--daemon``: a daemon would fork away from us and nobody could reap
  it), logging to the kernel log. It is ready when it answers ``udevadm control
  --ping`` on its control socket: by then its netlink socket is bound, so
  no event the coldplug sends is lost. Group names in the rules (GROUP="disk")
  resolve through the image's /etc/group, which the builder writes.
* coldplug: ``udevadm trigger --type=subsystems --action=add`` then
  ``--type=devices``, as systemd-udev-trigger.service does.
* following it: udev's view of a block device is its database file,
  /run/udev/data/bMAJOR:MINOR, which udevd writes for every block device
  once its rules have run (``S:`` lines are the /dev/disk/by-* links). The
  loop already rescans /sys/block every turn; each turn this handler reads
  the database files of the devices it has not seen processed yet, and the
  loop does not end before every device seen has one and udevd's queue
  (/run/udev/queue) is empty: the same test ``udevadm settle`` makes, made
  without blocking PID 1 and bounded by ``SETTLE_TIMEOUT``, after which
  the boot goes on with what our own probes found.
* stop, at switch-root (systemd's initrd-udevadm-cleanup-db.service):
  ``udevadm control --exit``, the child reaped (killed after
  ``STOP_TIMEOUT``), its control socket removed (the socket unit's
  RemoveOnStop=), then ``udevadm info --cleanup-db``, which keeps only
  the database entries of devices whose rules set ``OPTIONS+="db_persist"``
  (device-mapper and md: they cannot be probed again safely) for the real
  root's udevd, which coldplugs again.

The registry stays the one source of truth: our probes classify every
device; udev adds the names only it makes (``root=/dev/disk/by-id/…``).
"""

from __future__ import annotations

from initium import ops, process
from initium.record import record
from initium.stage import StageError
from initium.storage.loop import Handler

TYPE_CHECKING = False
if TYPE_CHECKING:
    from initium.blockdev import BlockDevice
    from initium.stage import BootContext
    from initium.storage.loop import Assembly
    from initium.system import System

DATA = "/run/udev/data"
CONTROL = "/run/udev/control"
QUEUE = "/run/udev/queue"
# How long udevd may take to create its control socket and answer a ping.
START_TIMEOUT = 10.0
START_POLL = 0.01
# A coldplug of a small machine takes well under a second natively and a
# few seconds under QEMU's TCG; past this the boot goes on without udev's view.
SETTLE_TIMEOUT = 20.0
# Each udevadm call (trigger, control, info) is bounded by this.
TOOL_TIMEOUT = 30.0
# After ``control --exit``, how long udevd may take to finish its events and exit.
STOP_TIMEOUT = 5.0
# A database file is a few hundred bytes; more than this is not udev's.
MAX_DB = 64 << 10
MAX_LINKS = 256
# udevd's messages go to the kernel log with its name and pid, like ours,
# rather than bare lines on the console.
UDEVD_ENV = (("SYSTEMD_LOG_TARGET", "kmsg"),)


class UdevDbError(ValueError):
    """A udev database file that is not one."""


@record
class UdevRecord:
    """What udev knows of one device: its /dev links and its properties."""

    links: tuple[str, ...]
    properties: tuple[tuple[str, str], ...]

    def property(self, key: str) -> str | None:
        for name, value in self.properties:
            if name == key:
                return value
        return None


def _link(text: str) -> str | None:
    """``disk/by-id/x`` as /dev/disk/by-id/x; None for what cannot be a name under /dev."""
    parts = text.split("/")
    if not text or text.startswith("/") or any(p in ("", ".", "..") for p in parts):
        return None
    if any(c in text for c in "\0\n"):
        return None
    return "/dev/" + text


def parse_db(data: bytes) -> UdevRecord:
    """A /run/udev/data file (``S:link``, ``E:KEY=VALUE``, other tags ignored).

    Unknown tags are skipped as libudev skips them; a file over ``MAX_DB``
    bytes or with more than ``MAX_LINKS`` links is refused.
    """
    if len(data) > MAX_DB:
        raise UdevDbError(f"{len(data)} bytes, more than a udev database entry holds")
    text = data.decode("utf-8", errors="surrogateescape")
    links: list[str] = []
    properties: list[tuple[str, str]] = []
    for line in text.split("\n"):
        tag, colon, value = line.partition(":")
        if not colon or len(tag) != 1:
            continue
        if tag == "S":
            link = _link(value)
            if link is not None and link not in links:
                if len(links) >= MAX_LINKS:
                    raise UdevDbError(f"more than {MAX_LINKS} links")
                links.append(link)
        elif tag == "E":
            key, equals, prop = value.partition("=")
            if equals and key:
                properties.append((key, prop))
    return UdevRecord(tuple(links), tuple(properties))


def db_path(devno: tuple[int, int]) -> str:
    return f"{DATA}/b{devno[0]}:{devno[1]}"


class Daemon:
    """A started helper that runs until we stop it; pid 0 when it only ran in a plan."""

    def __init__(self, name: str, pid: int) -> None:
        self.name = name
        self.pid = pid


@record
class StartDaemon(ops.Op):
    """Start a long-running helper as our child (through the one spawner); the reply a Daemon."""

    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()  # added to the spawner's minimal environment

    def describe(self) -> str:
        env = "".join(f"{k}={process.quote([v])} " for k, v in self.env)
        return "+ " + env + process.quote(self.argv) + " &"

    def perform(self, sys: System) -> Daemon:
        return Daemon(self.argv[0], process.start(self.argv,
                                                  env={**process.MINIMAL_ENV, **dict(self.env)}))

    def simulate(self, sys: System) -> Daemon:
        return Daemon(self.argv[0], 0)


@record
class StopDaemon(ops.Op):
    """Reap a helper told to exit, killing it after ``timeout``; the reply says how it ended."""

    daemon: Daemon
    timeout: float = STOP_TIMEOUT

    def describe(self) -> str:
        return f"wait for {self.daemon.name} to exit (killed after {self.timeout:g} s)"

    def perform(self, sys: System) -> str:
        if not self.daemon.pid:
            return "not started"
        return process.stop(self.daemon.pid, self.timeout)

    def simulate(self, sys: System) -> str:
        return "exited"


@record
class RemoveStale(ops.Op):
    """Remove a file a stopped daemon left (its socket), as systemd's RemoveOnStop= does."""

    path: str

    def describe(self) -> str:
        return f"rm -f {self.path}"

    def perform(self, sys: System) -> None:
        import os

        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def simulate(self, sys: System) -> None:
        return None  # a test machine scripts the removal with on_apply


class Udev(Handler):
    """systemd-udevd in the loop: ``start`` runs it, ``tick`` follows it, switch-root stops it."""

    name = "udev"
    fstypes = ()

    def __init__(self, ctx: BootContext, udevd: str, udevadm: str, *,
                 settle_timeout: float = SETTLE_TIMEOUT) -> None:
        self.ctx, self.udevd, self.udevadm = ctx, udevd, udevadm
        self.settle_timeout = settle_timeout
        self.daemon: Daemon | None = None
        self.records: dict[tuple[int, int], UdevRecord] = {}
        self.triggered: float | None = None
        # Since when udev has had work (None: settled); the coldplug starts it.
        self.busy_since: float | None = None
        self.gave_up = False
        self.pending: list[str] = []
        self.refused: set[tuple[int, int]] = set()

    def _udevadm(self, *argv: str) -> int:
        try:
            return self.ctx.sys.spawn(ops.Spawn((self.udevadm, *argv), TOOL_TIMEOUT))
        except process.ProcessError as err:
            raise StageError(f"udev: {err}", "rebuild the image with initium build "
                             "--storage udev, or build it without udev") from None

    def start(self) -> None:
        """Start udevd, wait until it answers, then coldplug; stop it at switch-root."""
        sys = self.ctx.sys
        for directory in ("/run/udev", DATA):
            if not sys.exists(directory):
                sys.apply(ops.MakeDir(directory, 0o755))
        try:
            self.daemon = sys.apply(StartDaemon((self.udevd,), UDEVD_ENV))
        except process.ProcessError as err:
            raise StageError(f"cannot start systemd-udevd: {err}",
                             "rebuild the image with initium build --storage udev, or "
                             "without udev to probe devices directly") from None
        self.ctx.at_switch_root("systemd-udevd", lambda _ctx: self.stop())
        began = sys.monotonic()
        # A dry run starts nothing: it reads the udev database of the host's own udevd.
        while not sys.dry_run and not sys.exists(CONTROL):
            if sys.monotonic() - began >= START_TIMEOUT:
                raise StageError(f"systemd-udevd did not open {CONTROL} within "
                                 f"{START_TIMEOUT:g} s (see its messages above)",
                                 "boot with udev.log_level=debug to see why, or rebuild "
                                 "the image without udev")
            sys.sleep(START_POLL)
        status = self._udevadm("control", "--ping", f"--timeout={START_TIMEOUT:g}")
        if status != 0:
            raise StageError(f"systemd-udevd does not answer on {CONTROL} "
                             f"(udevadm control --ping: status {status})",
                             "boot with udev.log_level=debug to see why, or rebuild the "
                             "image without udev")
        answered = sys.monotonic()
        self.ctx.debug(f"systemd-udevd answered after {answered - began:.3f} s")
        for kind in ("subsystems", "devices"):
            status = self._udevadm("trigger", f"--type={kind}", "--action=add")
            if status != 0:
                self.ctx.warn(f"udevadm trigger --type={kind} exited with status {status}; "
                              "devices it missed are still found by our own probes")
        self.triggered = self.busy_since = sys.monotonic()
        self.ctx.debug(f"coldplug triggered in {self.triggered - answered:.3f} s")

    def stop(self) -> None:
        """Stop udevd and leave its database as systemd's initrd-udevadm-cleanup-db does."""
        if self.daemon is None:
            return
        daemon, self.daemon = self.daemon, None
        began = self.ctx.sys.monotonic()
        try:
            status = self.ctx.sys.spawn(ops.Spawn(
                (self.udevadm, "control", "--exit", f"--timeout={STOP_TIMEOUT:g}"),
                TOOL_TIMEOUT))
        except process.ProcessError as err:
            status = -1
            self.ctx.warn(f"udevadm control --exit: {err}")
        if status != 0:
            self.ctx.warn(f"udevadm control --exit: status {status}; systemd-udevd is "
                          "killed if it does not exit")
        told = self.ctx.sys.monotonic()
        ended: str = self.ctx.sys.apply(StopDaemon(daemon))
        took = (f"(control --exit {told - began:.3f} s, then "
                f"{self.ctx.sys.monotonic() - told:.3f} s)")
        if ended.startswith("still running"):
            self.ctx.warn(f"systemd-udevd {ended} {took}")
        else:
            self.ctx.debug(f"systemd-udevd {ended} {took}")
        # systemd-udevd-control.socket has RemoveOnStop=yes: libudev and
        # libdevmapper take the socket's presence for a running udevd.
        self.ctx.sys.apply(RemoveStale(CONTROL))
        if self._udevadm("info", "--cleanup-db") != 0:
            self.ctx.warn("udevadm info --cleanup-db failed; the real root's udevd starts "
                          "with the initramfs's database")
        self.ctx.debug(f"udev stopped and its database handed over in "
                       f"{self.ctx.sys.monotonic() - began:.3f} s")

    def record_of(self, device: BlockDevice) -> UdevRecord | None:
        return self.records.get(device.devno) if device.devno is not None else None

    def _refresh(self, loop: Assembly) -> list[str]:
        """Read every device's database file; the devices udev has not processed yet.

        All of them, every turn: a ``change`` event (a device-mapper device
        whose table was just loaded) rewrites a file already read, and a few
        small reads per turn cost less than telling which ones changed.
        """
        pending = []
        for entry in loop.entries.values():
            devno = entry.device.devno
            if devno is None:
                continue
            try:
                data = self.ctx.sys.read_bytes(db_path(devno), MAX_DB + 1)
            except OSError:
                self.records.pop(devno, None)
                pending.append(entry.device.name)
                continue
            try:
                self.records[devno] = parse_db(data)
            except UdevDbError as err:
                if devno not in self.refused:
                    self.refused.add(devno)
                    self.ctx.warn(f"{db_path(devno)}: {err}; ignoring udev's view of "
                                  f"{entry.device.name}")
                self.records[devno] = UdevRecord((), ())
        return pending

    def claim(self, loop: Assembly, entry: object) -> str | None:
        return None  # never offered a device: fstypes is empty

    def tick(self, loop: Assembly) -> None:
        if self.triggered is None:
            return
        self.pending = self._refresh(loop)
        now = self.ctx.sys.monotonic()
        if not self.pending and not self.ctx.sys.exists(QUEUE):
            if self.busy_since is not None and not self.gave_up:
                self.ctx.log(f"udev settled after {now - self.busy_since:.2f} s "
                             f"({len(self.records)} block devices)")
            self.busy_since, self.gave_up = None, False
            return
        if self.busy_since is None:
            self.busy_since = now  # new events after a settle: a device a handler made
        if not self.gave_up and now - self.busy_since >= self.settle_timeout:
            self.gave_up = True
            what = ", ".join(self.pending) if self.pending else "its queue is not empty"
            self.ctx.warn(f"udev has not settled after {self.settle_timeout:g} s "
                          f"({what}); going on with our own probes")

    def missing(self, loop: Assembly) -> list[str]:
        if self.busy_since is None or self.gave_up:
            return []
        if self.pending:
            return [f"udev's processing of {', '.join(self.pending)}"]
        return ["udev's event queue to empty"]

    def aliases(self, device: BlockDevice) -> tuple[str, ...]:
        found = self.record_of(device)
        return found.links if found is not None else ()
