"""systemd-udevd in the storage loop, on the in-memory machine: start, coldplug, settle, handover.

The machine plays udev's part through ``on_apply``: starting udevd opens its
control socket, the device trigger writes each disk's database file (after
a delay, as a busy udevd would), ``udevadm info --cleanup-db`` removes the
entries not marked db_persist. The code under test is the real stage's.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from initium import ops
from initium.cmdline import parse
from initium.memsystem import MemorySystem
from initium.plan import Plan, StageEntry
from initium.process import ProcessError
from initium.rootspec import RootSpecError, parse_root_spec
from initium.runner import failure_message
from initium.stage import StageError
from initium.stages.root import Root
from initium.stages.storage import Storage
from initium.storage import udev
from initium.storage.udev import (
    CONTROL,
    QUEUE,
    RemoveStale,
    StartDaemon,
    StopDaemon,
    UdevDbError,
    parse_db,
)

from tests.unit.test_stages import (
    OTHER_UUID,
    ROOT_UUID,
    Machine,
    images,  # noqa: F401  (the module-scoped fixture)
    root_machine,
)

UDEVD = "/usr/lib/systemd/systemd-udevd"
UDEVADM = "/usr/bin/udevadm"
PLAN_DATA = {"kinds": ["udev"], "tools": {}, "modules": [],
             "udev": {"udevd": UDEVD, "udevadm": UDEVADM, "rules": []}}
SERIAL = "virtio-SER1"


class World:
    """udev's side of the machine: what each udev operation does to the files."""

    def __init__(self, *, process_after: float = 0.3, persist: tuple[str, ...] = (),
                 refuse_start: bool = False, no_socket: bool = False, ping: int = 0) -> None:
        self.process_after, self.persist = process_after, persist
        self.refuse_start, self.no_socket, self.ping = refuse_start, no_socket, ping
        self.calls: list[str] = []

    def __call__(self, sys: MemorySystem, op: ops.Op) -> None:
        if isinstance(op, StartDaemon):
            self.calls.append("start")
            if self.refuse_start:
                raise ProcessError(f"{op.argv[0]}: not found")
            if not self.no_socket:
                sys.files[CONTROL] = b""
                sys.appear_at[CONTROL] = sys.now + 0.05
        elif isinstance(op, StopDaemon):
            self.calls.append("reap")
        elif isinstance(op, RemoveStale):
            self.calls.append(f"rm {op.path}")
            sys.files.pop(op.path, None)
        elif isinstance(op, ops.Spawn) and op.argv[0] == UDEVADM:
            words = " ".join(op.argv[1:])
            self.calls.append(words)
            if words.startswith("control --ping"):
                sys.spawn_status = self.ping
                return
            sys.spawn_status = 0
            if words == "trigger --type=devices --action=add":
                for name, devno, links in (("vda", "254:0", (f"disk/by-id/{SERIAL}",
                                                             f"disk/by-uuid/{ROOT_UUID}")),
                                           ("vdb", "254:16", ())):
                    path = f"{udev.DATA}/b{devno}"
                    sys.files[path] = ("".join(f"S:{link}\n" for link in links)
                                       + f"I:1\nE:DEVNAME=/dev/{name}\nV:1\n").encode()
                    sys.appear_at[path] = sys.now + self.process_after
            elif words == "info --cleanup-db":
                for path in [p for p in sys.files if p.startswith(udev.DATA + "/")]:
                    if path.rsplit("/", 1)[1] not in self.persist:
                        del sys.files[path]


def udev_machine(cmdline: str, disks: dict[str, bytes], world: World) -> Machine:
    m = root_machine(cmdline, disks)
    m.plan = m.ctx.plan = Plan("6.1.0-test", (StageEntry("storage", "x:y", PLAN_DATA),))
    m.ctx.stage_options = Storage.options
    m.ctx.set_cmdline(parse(cmdline))
    m.sys.on_apply = world
    m.ctx.stage = "storage"
    return m


def both(images: dict[str, bytes]) -> dict[str, bytes]:  # noqa: F811
    return {"vda": images["root"], "vdb": images["other"]}


def test_udevd_starts_then_coldplug_then_a_by_id_root_is_found(
        images: dict[str, bytes]) -> None:  # noqa: F811
    world = World()
    m = udev_machine(f"root=/dev/disk/by-id/{SERIAL}", both(images), world)
    Storage().run(m.ctx)
    assert world.calls == ["start", "control --ping --timeout=10",
                           "trigger --type=subsystems --action=add",
                           "trigger --type=devices --action=add"]
    started = m.ops_of(StartDaemon)[0]
    assert started.argv == (UDEVD,)  # type: ignore[attr-defined]
    assert started.describe() == f"+ SYSTEMD_LOG_TARGET=kmsg {UDEVD} &"
    # the daemon is started only once its directories exist
    made = [op.path for op in m.ops_of(ops.MakeDir)]  # type: ignore[attr-defined]
    assert made.index("/run/udev/data") < m.sys.applied.index(started)
    assert "udev settled after 0.3" in m.text
    m.ctx.stage = "root"
    Root().run(m.ctx)
    assert m.ctx.state.root_device == "/dev/vda"
    assert f"found /dev/disk/by-id/{SERIAL}: vda (ext4 UUID={ROOT_UUID}" in m.text


def test_the_loop_waits_for_udev_even_when_the_root_is_already_there(
        images: dict[str, bytes]) -> None:  # noqa: F811
    world = World(process_after=2.0)
    m = udev_machine(f"root=UUID={ROOT_UUID}", both(images), world)
    Storage().run(m.ctx)
    assert m.sys.now >= 2.0  # our probe found the root at once; udev had not finished
    assert "waiting for udev's processing of vda, vdb" in m.text
    assert "udev settled after 2.0" in m.text


def test_a_queue_that_never_empties_stops_the_wait_at_the_settle_deadline(
        images: dict[str, bytes]) -> None:  # noqa: F811
    world = World()
    m = udev_machine(f"root=UUID={ROOT_UUID} rd.timeout=60", both(images), world)
    m.sys.files[QUEUE] = b""
    Storage().run(m.ctx)  # no StageError: the root is there, udev only late
    assert udev.SETTLE_TIMEOUT <= m.sys.now < udev.SETTLE_TIMEOUT + 1
    assert (f"udev has not settled after {udev.SETTLE_TIMEOUT:g} s (its queue is not "
            "empty); going on with our own probes") in m.text


def test_a_device_udev_never_processes_is_named_and_the_boot_goes_on(
        images: dict[str, bytes]) -> None:  # noqa: F811
    world = World(process_after=1000.0)
    m = udev_machine(f"root=UUID={ROOT_UUID} rd.timeout=60", both(images), world)
    Storage().run(m.ctx)
    assert "udev has not settled after 20 s (vda, vdb)" in m.text
    assert m.sys.now < 21


def test_a_by_id_root_udev_never_names_times_out_with_the_devices_seen(
        images: dict[str, bytes]) -> None:  # noqa: F811
    world = World()
    m = udev_machine("root=/dev/disk/by-id/nvme-absent rd.timeout=3", both(images), world)
    with pytest.raises(StageError) as info:
        Storage().run(m.ctx)
    assert info.value.cause.startswith("no block device with /dev/disk/by-id/nvme-absent "
                                       "after 3.0 s; seen: vda (ext4")


def test_switch_root_stops_udevd_reaps_it_and_keeps_only_db_persist_entries(
        images: dict[str, bytes]) -> None:  # noqa: F811
    world = World(persist=("b254:16",))
    m = udev_machine(f"root=UUID={ROOT_UUID}", both(images), world)
    Storage().run(m.ctx)
    world.calls.clear()
    m.ctx.run_teardowns()
    assert world.calls == ["control --exit --timeout=5", "reap", f"rm {CONTROL}",
                           "info --cleanup-db"]
    assert not m.sys.exists(CONTROL)
    assert m.sys.exists(f"{udev.DATA}/b254:16")  # db_persist (dm, md) survives
    assert not m.sys.exists(f"{udev.DATA}/b254:0")
    assert m.sys.exists(udev.DATA)  # the directory the real root's udevd expects
    m.ctx.run_teardowns()  # stopping twice does nothing
    assert world.calls.count("reap") == 1


def test_udevd_that_cannot_start_fails_the_stage_with_the_cause_and_what_to_try(
        images: dict[str, bytes]) -> None:  # noqa: F811
    m = udev_machine(f"root=UUID={ROOT_UUID}", both(images), World(refuse_start=True))
    with pytest.raises(StageError) as info:
        Storage().run(m.ctx)
    err = info.value
    assert err.cause == f"cannot start systemd-udevd: {UDEVD}: not found"
    message = failure_message("storage", err.cause, err.hint)
    assert message.startswith("storage failed: cannot start systemd-udevd")
    assert "try: rebuild the image with initium build --storage udev" in message
    assert not m.ctx.teardowns  # nothing started, nothing to stop


def test_udevd_that_never_opens_its_socket_fails_after_the_start_timeout(
        images: dict[str, bytes]) -> None:  # noqa: F811
    m = udev_machine(f"root=UUID={ROOT_UUID}", both(images), World(no_socket=True))
    with pytest.raises(StageError) as info:
        Storage().run(m.ctx)
    assert info.value.cause == (f"systemd-udevd did not open {CONTROL} within "
                                f"{udev.START_TIMEOUT:g} s (see its messages above)")
    assert "udev.log_level=debug" in info.value.hint
    assert udev.START_TIMEOUT <= m.sys.now < udev.START_TIMEOUT + 0.1
    # the child is still stopped at switch-root (or by the emergency path's reaping)
    assert [t.name for t in m.ctx.teardowns] == ["systemd-udevd"]


def test_udevd_that_does_not_answer_a_ping_fails_the_stage(
        images: dict[str, bytes]) -> None:  # noqa: F811
    m = udev_machine(f"root=UUID={ROOT_UUID}", both(images), World(ping=1))
    with pytest.raises(StageError) as info:
        Storage().run(m.ctx)
    assert info.value.cause == (f"systemd-udevd does not answer on {CONTROL} "
                                "(udevadm control --ping: status 1)")


def test_a_change_event_rewrites_a_record_already_read(images: dict[str, bytes]) -> None:  # noqa: F811
    world = World(process_after=0.0)
    m = udev_machine(f"root=UUID={ROOT_UUID}", both(images), world)
    Storage().run(m.ctx)
    from initium.storage.loop import Assembly

    loop = m.ctx.state.get(Assembly)
    assert loop is not None
    m.sys.files[f"{udev.DATA}/b254:16"] = b"S:disk/by-label/late\n"
    loop.step()
    assert loop.find(parse_root_spec("/dev/disk/by-label/late", udev=True)) is None  # probes
    assert loop.find(parse_root_spec("/dev/disk/by-id/x", udev=True)) is None
    m.sys.files[f"{udev.DATA}/b254:16"] = b"S:disk/by-id/x\n"
    loop.step()
    found = loop.find(parse_root_spec("/dev/disk/by-id/x", udev=True))
    assert found is not None and found.name == "vdb"


def test_an_image_without_udev_never_starts_it(images: dict[str, bytes]) -> None:  # noqa: F811
    world = World()
    m = udev_machine(f"root=UUID={OTHER_UUID}", both(images), world)
    m.plan = m.ctx.plan = Plan("6.1.0-test", (StageEntry("storage", "x:y", {"tools": {}}),))
    Storage().run(m.ctx)
    assert world.calls == []
    assert not m.ops_of(StartDaemon)


def test_by_id_and_by_path_need_udev() -> None:
    with pytest.raises(RootSpecError, match="this initramfs has no udev"):
        parse_root_spec("/dev/disk/by-id/virtio-x")
    spec = parse_root_spec("/dev/disk/by-path/pci-0000:00:04.0", udev=True)
    assert (spec.kind, spec.value) == ("path", "/dev/disk/by-path/pci-0000:00:04.0")
    # by-uuid stays a probe match, with or without udev: our probes classify
    assert parse_root_spec(f"/dev/disk/by-uuid/{ROOT_UUID}", udev=True).kind == "uuid"


def test_parse_db() -> None:
    record = parse_db(b"S:disk/by-id/virtio-x\nS:disk/by-uuid/u\nL:0\nI:123\n"
                      b"E:ID_FS_TYPE=ext4\nE:ID_FS_LABEL=a=b\nG:systemd\nQ:systemd\nV:1\n")
    assert record.links == ("/dev/disk/by-id/virtio-x", "/dev/disk/by-uuid/u")
    assert record.property("ID_FS_TYPE") == "ext4"
    assert record.property("ID_FS_LABEL") == "a=b"
    assert record.property("MISSING") is None
    # what could leave /dev, or is no name at all, is dropped
    assert parse_db(b"S:../etc/passwd\nS:/abs\nS:a//b\nS:\nS:ok\n").links == ("/dev/ok",)
    with pytest.raises(UdevDbError, match="more than 256 links"):
        parse_db(b"".join(b"S:l%d\n" % i for i in range(300)))
    with pytest.raises(UdevDbError, match="bytes, more than"):
        parse_db(b"x" * (udev.MAX_DB + 1))


@given(st.binary(max_size=4096))
def test_parse_db_gives_a_record_or_one_clear_error(data: bytes) -> None:
    try:
        record = parse_db(data)
    except UdevDbError as err:
        assert str(err)
        return
    assert all(link.startswith("/dev/") and "/../" not in link + "/" for link in record.links)


def test_operations_describe_themselves_for_the_dry_run() -> None:
    daemon = udev.Daemon(UDEVD, 0)
    assert StopDaemon(daemon).describe() == (f"wait for {UDEVD} to exit (killed after 5 s)")
    assert RemoveStale(CONTROL).describe() == f"rm -f {CONTROL}"
    # a plan's daemon was never started: stopping it says so instead of waiting
    assert StopDaemon(daemon).perform(MemorySystem()) == "not started"


def test_process_start_and_stop_reap_a_real_child() -> None:
    from initium import process

    pid = process.start(["/bin/sleep", "30"])
    assert process.stop(pid, 0.1) == "still running after 0.1 s, killed"
    pid = process.start(["/bin/true"])
    assert process.stop(pid, 5.0) == "exited with status 0"
    assert process.stop(pid, 0.1) == "exited"  # already reaped


def test_a_dry_run_reads_the_hosts_udev_without_waiting_for_a_daemon_it_never_started(
        images: dict[str, bytes]) -> None:  # noqa: F811
    world = World(no_socket=True, process_after=0.0)
    m = udev_machine(f"root=/dev/disk/by-id/{SERIAL}", both(images), world)
    m.sys.dry_run = True  # as DryRunSystem: StartDaemon only recorded
    Storage().run(m.ctx)
    assert m.sys.now < 1.0
    assert "start" in world.calls and f"found /dev/disk/by-id/{SERIAL}: vda" in m.text


def test_a_retry_after_the_shell_keeps_the_running_udevd(images: dict[str, bytes]) -> None:  # noqa: F811
    world = World()
    m = udev_machine("root=/dev/disk/by-id/absent rd.timeout=2", both(images), world)
    with pytest.raises(StageError):
        Storage().run(m.ctx)
    with pytest.raises(StageError):
        Storage().run(m.ctx)  # the runner retries the stage once the shell exits
    assert world.calls.count("start") == 1
    assert [t.name for t in m.ctx.teardowns].count("systemd-udevd") == 1


def test_udev_is_a_storage_kind_in_the_config_and_on_the_command_line_never_auto(
        tmp_path: pytest.TempPathFactory) -> None:
    from initium.packaging.config import parse_config
    from initium.packaging.storage import resolve_storage

    config = parse_config('storage = ["udev", "luks"]\n')
    assert config.storage == ("udev", "luks")
    assert "initium.stages.storage:Storage" in config.all_stages
    assert resolve_storage(("udev", "luks")) == ("luks", "udev")
    empty = str(tmp_path)  # a sysfs with nothing under the root: auto selects nothing
    assert "udev" not in resolve_storage(("auto",), sysfs=empty)
    with pytest.raises(ValueError, match="unknown storage kind 'udevd'"):
        resolve_storage(("udevd",))
