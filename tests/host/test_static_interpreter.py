"""The static /init on the build host: one ELF, no environment, PID-1 behaviour, _initium errors.

The session fixture builds the interpreter from CPython's source the first
time (minutes) and reuses the cache afterwards; without a compiler or the
source tarball these tests are skipped, never faked.
"""

from __future__ import annotations

import ast
import io
import os
import shutil
import signal
import subprocess
import zipfile
from pathlib import Path

import pytest
from initium.packaging import static_python as sp
from initium.packaging.interpreter import elf_length, static_payload
from initium.packaging.stages import load_stages

pytestmark = pytest.mark.host

SAFE_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
HOSTILE_ENV = {"PATH": SAFE_PATH, "PYTHONPATH": "/evil", "PYTHONHOME": "/evil",
               "PYTHONHASHSEED": "0", "PYTHONVERBOSE": "1", "PYTHONINSPECT": "1",
               "PYTHONSTARTUP": "/evil/startup.py", "PYTHONDEVMODE": "1",
               "PYTHONWARNINGS": "error", "PYTHONSAFEPATH": "0", "PYTHONUTF8": "0"}


@pytest.fixture(scope="session")
def interpreter() -> sp.StaticPython:
    if shutil.which("gcc") is None or shutil.which("make") is None:
        pytest.skip("no C compiler (apt-get install build-essential)")
    try:
        return sp.ensure()
    except sp.StaticPythonError as err:
        pytest.skip(str(err))


@pytest.fixture(scope="session")
def init_bytes(interpreter: sp.StaticPython) -> bytes:
    """The real /init of a default image: the ELF and the traced init's bytecode."""
    from initium.packaging.image import stage_ref

    modules = sorted({stage_ref(s).split(":")[0] for s in load_stages(())})
    data = static_payload(modules).files["/init"]
    assert isinstance(data, bytes)
    return data


def _install(directory: Path, data: bytes) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "init"
    path.write_bytes(data)
    path.chmod(0o755)
    return path


def _run(argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=False, capture_output=True, text=True, timeout=60,
                          env=env if env is not None else {"PATH": SAFE_PATH})


def _with_boot_module(init: bytes, boot_source: str) -> bytes:
    """The real /init with its initium.boot replaced by ``boot_source`` (a test payload)."""
    elf_end = elf_length(init)
    buf = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(init)) as real, zipfile.ZipFile(buf, "w") as archive:
        for name in real.namelist():
            if name != "initium/boot.pyc":
                archive.writestr(name, real.read(name))
        archive.writestr("initium/boot.py", boot_source)
    return init[:elf_end] + buf.getvalue()


def test_file_says_statically_linked(tmp_path: Path, init_bytes: bytes) -> None:
    if shutil.which("file") is None:
        pytest.skip("file(1) missing")
    init = _install(tmp_path, init_bytes)
    out = _run(["file", str(init)]).stdout
    assert "statically linked" in out and "ELF 64-bit" in out, out


def test_runs_in_an_empty_chroot_with_only_itself(tmp_path: Path, init_bytes: bytes) -> None:
    _install(tmp_path / "root", init_bytes)
    code = ("import os, sys, _initium, initium.boot, initium.syscalls as s; "
            "print(os.listdir('/'), sys.path, s.BUILTIN, 'ctypes' in sys.modules)")
    done = _run(["chroot", str(tmp_path / "root"), "/init", "-c", code])
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["['init']", "['/init']", "True", "False"]


def test_the_environment_is_ignored(tmp_path: Path, init_bytes: bytes) -> None:
    init = _install(tmp_path, init_bytes)
    code = ("import sys; print(repr([sys.path, sys.flags.ignore_environment, "
            "sys.flags.hash_randomization, sys.flags.dev_mode, sys.flags.utf8_mode, "
            "sys.flags.verbose, sys.flags.inspect, sys.warnoptions, sys.prefix]))")
    done = _run([str(init), "-c", code], HOSTILE_ENV)
    assert done.returncode == 0, done.stderr
    assert ast.literal_eval(done.stdout) == [[str(init)], 1, 1, False, 1, 0, 0, [], "/"]
    assert "import" not in done.stderr, "PYTHONVERBOSE was obeyed"


def test_hash_seed_is_random_unless_pid1(tmp_path: Path, init_bytes: bytes) -> None:
    init = _install(tmp_path, init_bytes)
    seen = {_run([str(init), "-c", "print(hash('initium'))"], HOSTILE_ENV).stdout
            for _ in range(3)}
    assert len(seen) > 1, "PYTHONHASHSEED=0 from the environment fixed the seed"


def _as_pid1(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("unshare") is None:
        pytest.skip("unshare(1) missing")
    return _run(["unshare", "--pid", "--fork", "--mount-proc", "chroot", str(root), "/init",
                 *args])


def test_pid1_fixes_the_seed_and_never_parses_its_arguments(
        tmp_path: Path, interpreter: sp.StaticPython, init_bytes: bytes) -> None:
    boot = ("import os, sys\n"
            "def boot(t, args):\n"
            "    print(repr([os.getpid(), sys.flags.hash_randomization, hash('initium'),"
            " sys.argv, args, isinstance(t, float)]), flush=True)\n"
            "    os._exit(0)\n")
    _install(tmp_path / "root", _with_boot_module(init_bytes, boot))
    done = _as_pid1(tmp_path / "root", "-c", "raise SystemExit(3)", "quiet")
    assert done.returncode == 0, done.stderr
    pid, randomized, value, argv, args, has_clock = ast.literal_eval(done.stdout)
    with sp.trace_interpreter(interpreter) as trace:
        seeded = int(_run([trace, "--hash-seed=0", "-c", "print(hash('initium'))"]).stdout)
    assert (pid, randomized, value, has_clock) == (1, 0, seeded, True)
    assert argv == ["/init", "-c", "raise SystemExit(3)", "quiet"]
    assert args == ["-c", "raise SystemExit(3)", "quiet"]


def test_pid1_failure_before_the_handler_halts_with_a_message(
        tmp_path: Path, init_bytes: bytes) -> None:
    root = tmp_path / "root"
    _install(root, _with_boot_module(init_bytes, "raise RuntimeError('frozen module broken')\n"))
    (root / "dev").mkdir()
    (root / "dev" / "console").write_text("")  # a plain file stands in for the console
    done = _as_pid1(root)
    # reboot(HALT) by a PID namespace's init ends the namespace with SIGINT.
    assert done.returncode == -signal.SIGINT, (done.returncode, done.stderr)
    console = (root / "dev" / "console").read_text()
    assert console == ("initium: cannot import the init: RuntimeError: frozen module broken; "
                       "halting\n")
    assert "Traceback" in done.stderr


def test_the_emergency_action_is_patched_in(tmp_path: Path, init_bytes: bytes) -> None:
    root = tmp_path / "root"
    elf = _with_boot_module(init_bytes, "def boot(t, args):\n    return None\n")
    _install(root, sp.set_emergency(elf, "reboot"))
    (root / "dev").mkdir()
    (root / "dev" / "console").write_text("")
    done = _as_pid1(root)
    assert done.returncode == -signal.SIGHUP, "reboot(RESTART) in a PID namespace is SIGHUP"
    assert (root / "dev" / "console").read_text().endswith("boot() must never return; "
                                                          "rebooting\n")


ERRORS_CODE = r"""
import os, _initium
def err(f, *a):
    try:
        f(*a)
    except OSError as e:
        return [type(e).__name__, e.errno, e.filename, e.filename2]
    except ValueError as e:
        return ["ValueError", str(e)]
    return None
r, w = os.pipe()
os.write(w, b"hello")
fionread = _initium.ioctl(r, 0x541B, bytes(4))
print(repr({
    "statfs": err(_initium.statfs_type, "/missing"),
    "proc": _initium.statfs_type("/proc"),
    "mount": err(_initium.mount, "none", "/missing", "tmpfs", 0, None),
    "umount": err(_initium.umount2, "/", 0x10000),
    "pivot": err(_initium.pivot_root, "/missing", "/old"),
    "finit": err(_initium.finit_module, 9999, "", 0),
    "keyctl": err(_initium.keyctl, 99999),
    "add_key": err(_initium.add_key, "no-such-type", "d", b"x", -3),
    "ioctl": err(_initium.ioctl, 9999, 0x541B, bytes(4)),
    "ioctl_big": err(_initium.ioctl, r, 0x541B, bytes(70000)),
    "fionread": int.from_bytes(fionread, "little"),
}))
"""


def test_initium_module_raises_oserror_like_os(tmp_path: Path, init_bytes: bytes) -> None:
    init = _install(tmp_path, init_bytes)
    done = _run([str(init), "-c", ERRORS_CODE])
    assert done.returncode == 0, done.stderr
    result = ast.literal_eval(done.stdout)
    assert result["statfs"] == ["FileNotFoundError", 2, "/missing", None]
    assert result["proc"] == 0x9FA0  # PROC_SUPER_MAGIC
    assert result["mount"] == ["FileNotFoundError", 2, "/missing", None]
    assert result["umount"][1] == 22  # EINVAL: unknown flag
    assert result["pivot"] == ["FileNotFoundError", 2, "/missing", "/old"]
    # EBADF; ENOSYS where the host kernel (a sandbox) has no module loading
    assert result["finit"][0] == "OSError" and result["finit"][1] in (9, 38)
    assert result["keyctl"][:2] == ["OSError", 95]  # EOPNOTSUPP
    assert result["add_key"][1] in (19, 22)  # ENODEV: unknown key type
    assert result["ioctl"][:2] == ["OSError", 9]
    assert result["ioctl_big"][0] == "ValueError"
    assert result["fionread"] == 5


def test_two_traces_give_the_same_init(init_bytes: bytes) -> None:
    from initium.packaging.image import stage_ref

    modules = sorted({stage_ref(s).split(":")[0] for s in load_stages(())})
    assert static_payload(modules).files["/init"] == init_bytes


def test_the_cache_is_reused(interpreter: sp.StaticPython) -> None:
    before = os.stat(interpreter.python).st_mtime_ns
    assert sp.ensure() == interpreter
    assert os.stat(interpreter.python).st_mtime_ns == before


# --- _initium.spawn: the spawner's prctl calls, in the child ----------------

_STATUS_FIELDS = "^(CapBnd|CapAmb|NoNewPrivs):"


def test_a_confined_helper_keeps_only_its_capabilities(tmp_path: Path, init_bytes: bytes) -> None:
    init = _install(tmp_path, init_bytes)
    code = ("from initium import process\n"
            "mask = process.capability_mask([21, 1])\n"  # CAP_SYS_ADMIN, CAP_DAC_OVERRIDE
            f"argv = ['/bin/grep', '-E', {_STATUS_FIELDS!r}, '/proc/self/status']\n"
            "raise SystemExit(process.run(argv, no_new_privs=True, keep_caps=mask))\n")
    done = _run([str(init), "-c", code])
    assert done.returncode == 0, done.stderr
    fields = dict(line.split(":\t") for line in done.stdout.splitlines())
    assert fields == {"CapBnd": "0000000000200002", "CapAmb": "0000000000000000",
                      "NoNewPrivs": "1"}
    # Unconfined, the same helper keeps the bounding set it inherited.
    plain = _run([str(init), "-c", code.replace(", no_new_privs=True, keep_caps=mask", "")])
    fields = dict(line.split(":\t") for line in plain.stdout.splitlines())
    assert fields["NoNewPrivs"] == "0" and fields["CapBnd"] != "0000000000200002"


@pytest.mark.parametrize("pdeathsig", [signal.SIGKILL, 0])
def test_a_child_dies_with_its_parent(tmp_path: Path, init_bytes: bytes, pdeathsig: int) -> None:
    if shutil.which("unshare") is None:
        pytest.skip("unshare(1) missing")
    init = _install(tmp_path, init_bytes)
    code = ("import _initium\n"
            f"print(_initium.spawn('/bin/sleep', ['sleep', '30'], {{}}, pdeathsig={pdeathsig}))\n")
    # A shell as the PID namespace's init adopts the orphan and leaves it be
    # (the host's init may reap or kill orphans itself); the namespace ends with it.
    # The pid goes through a file: a child holding a command substitution's
    # pipe open was seen killed on its parent's exit either way.
    script = ('"$0" -c "$1" >"$2" || exit 9; sleep 0.5; p=$(cat "$2"); '
              'cut -d" " -f3 "/proc/$p/stat" 2>/dev/null || echo gone')
    done = _run(["unshare", "--pid", "--fork", "--mount-proc", "sh", "-c", script, str(init),
                 code, str(tmp_path / "pid")])
    assert done.returncode == 0, done.stderr
    # Killed: a zombie, or already reaped by the shell; alive: sleeping.
    assert (done.stdout.strip() in ("Z", "gone")) == bool(pdeathsig), done.stdout


def test_spawn_failures_say_where_the_child_stopped(tmp_path: Path, init_bytes: bytes) -> None:
    init = _install(tmp_path, init_bytes)
    code = ("import _initium, os\n"
            "for path, actions in (('/nonexistent', ()),\n"
            "                      ('/bin/true', [(0, 0, '/nonexistent/x', os.O_RDONLY, 0)])):\n"
            "    try:\n"
            "        _initium.spawn(path, [path], {}, actions)\n"
            "    except OSError as err:\n"
            "        print(type(err).__name__, err.filename, err.strerror)\n")
    done = _run([str(init), "-c", code])
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "FileNotFoundError /nonexistent No such file or directory",
        "FileNotFoundError None No such file or directory (file action)"]


# --- _initium.reader_start: the device reader's clone(CLONE_VM) child -------

def test_the_device_reader_child_is_the_c_clone_and_keeps_its_deadline(
        tmp_path: Path, init_bytes: bytes) -> None:
    """tests/unit/test_reader.py's checks, on the static /init's C child.

    A FIFO with no writer is a disk that never answers: the child's open
    blocks until the parent's deadline.
    """
    init = _install(tmp_path, init_bytes)
    disk = tmp_path / "disk.img"
    data = bytes(range(256)) * 4096 + b"tail"
    disk.write_bytes(data)
    os.mkfifo(tmp_path / "stuck")
    code = (
        "import _initium, errno, os, time\n"
        "from initium import syscalls\n"
        "from initium.storage.reader import ChildReader, ReadStalled\n"
        "assert syscalls.BUILTIN and hasattr(_initium, 'reader_start')\n"
        f"disk, stuck = {str(disk)!r}, {str(tmp_path / 'stuck')!r}\n"
        "data = open(disk, 'rb').read()\n"
        "r = ChildReader(deadline=0.3)\n"
        "for off, n in ((0, 512), (1000, 300000), (len(data) - 2, 10), (len(data), 5)):\n"
        "    assert r.read(disk, off, n) == data[off:off + n], (off, n)\n"
        "first = r.pid\n"
        "with open(f'/proc/{first}/status') as f:\n"
        "    status = dict(line.split(':', 1) for line in f)\n"
        "print('blocked', status['SigBlk'].strip())\n"
        "for bad in ('/nonexistent', os.path.dirname(disk)):\n"
        "    try:\n"
        "        r.read(bad, 0, 512)\n"
        "    except OSError as err:\n"
        "        print(type(err).__name__, err.filename == bad)\n"
        "assert r.pid == first\n"
        "t = time.monotonic()\n"
        "try:\n"
        "    r.read(stuck, 0, 512)\n"
        "except ReadStalled as err:\n"
        "    print('stalled', 0.3 <= time.monotonic() - t < 3, err.errno == errno.ETIMEDOUT)\n"
        "assert r.read(disk, 7, 3) == data[7:10] and r.pid not in (0, first)\n"
        "r.close()\n"
        "print('closed', r.pid)\n")
    done = _run([str(init), "-c", code])
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("blocked ") and int(lines[0].split()[1], 16) & (1 << 16), \
        "signals are blocked in the child (SIGCHLD among them)"
    assert lines[1:] == ["FileNotFoundError True", "IsADirectoryError True",
                         "stalled True True", "closed 0"]


# --- _selinux_min: libselinux's label lookup, linked in ----------------------

FILE_CONTEXTS = ("/srv(/.*)?\tsystem_u:object_r:var_t:s0\n"
                 "/srv/bin(/.*)?\t--\tsystem_u:object_r:bin_t:s0\n"
                 "/etc/shadow\t--\tsystem_u:object_r:shadow_t:s0\n")


@pytest.fixture(scope="session")
def selinux_init(interpreter: sp.StaticPython) -> bytes:
    """/init of an image whose configuration asks for the selinux module group."""
    from initium.packaging.image import stage_ref

    try:
        sp.ensure(extras=("selinux",))
    except sp.StaticPythonError as err:
        pytest.skip(str(err))
    modules = sorted({stage_ref(s).split(":")[0] for s in load_stages(())})
    data = static_payload(modules, extras=("selinux",)).files["/init"]
    assert isinstance(data, bytes)
    return data


def test_the_default_interpreter_has_no_libselinux(tmp_path: Path, init_bytes: bytes) -> None:
    init = _install(tmp_path, init_bytes)
    done = subprocess.run([str(init), "-c", "import _selinux_min"], capture_output=True,
                          text=True, check=False, timeout=60)
    assert done.returncode != 0 and "No module named '_selinux_min'" in done.stderr


def test_selabel_lookup_reads_a_file_contexts(tmp_path: Path, selinux_init: bytes) -> None:
    """No policy loaded, validation off: selabel_open needs only the file."""
    init = _install(tmp_path, selinux_init)
    (tmp_path / "file_contexts").write_text(FILE_CONTEXTS)
    code = ("import _selinux_min as se, stat, sys\n"
            "labels = se.selabel_open(sys.argv[1])\n"
            "for path, mode in (('/srv/www', 0), ('/srv/bin/sh', stat.S_IFREG),\n"
            "                   ('/srv/bin', stat.S_IFDIR), ('/etc/shadow', stat.S_IFREG),\n"
            "                   ('/usr/bin/env', stat.S_IFREG)):\n"
            "    print(path, se.selabel_lookup(labels, path, mode))\n"
            "try:\n"
            "    se.selabel_open(sys.argv[1] + '.missing')\n"
            "except FileNotFoundError as err:\n"
            "    print('missing', err.filename == sys.argv[1] + '.missing')\n")
    done = _run([str(init), "-c", code, str(tmp_path / "file_contexts")])
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "/srv/www system_u:object_r:var_t:s0",
        "/srv/bin/sh system_u:object_r:bin_t:s0",
        "/srv/bin system_u:object_r:var_t:s0",  # the `--` rule is for regular files only
        "/etc/shadow system_u:object_r:shadow_t:s0",
        "/usr/bin/env None",
        "missing True"]


# --- pyroute2's rtnl messages in the static interpreter ----------------------

LINK_DUMP = '''
import socket, struct, sys
sys.path.insert(0, sys.argv[1])
before = set(sys.modules)
from pyroute2.netlink import NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE
from pyroute2.netlink.rtnl import RTM_GETLINK
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
loaded = set(sys.modules) - before
with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
    sock.bind((0, 0))
    request = ifinfmsg()
    request["header"]["type"] = RTM_GETLINK
    request["header"]["flags"] = NLM_F_REQUEST | NLM_F_DUMP
    request["header"]["sequence_number"] = 1
    request.encode()
    sock.send(request.data)
    names, done = [], False
    while not done:
        data = sock.recv(65536)
        offset = 0
        while offset < len(data) and not done:
            length, kind = struct.unpack_from("=IH", data, offset)
            done = kind == NLMSG_DONE
            if not done:
                message = ifinfmsg(data[offset:offset + length])
                message.decode()
                names.append(message.get_attr("IFLA_IFNAME"))
            offset += length
print(names)
print(sorted(m for m in loaded if m.split(".")[0] in ("ssl", "sqlite3", "unittest", "asyncio")))
'''


def _pyroute2_tree(dest: Path) -> Path:
    """pyroute2's subpackages under an empty package __init__ (its own imports everything)."""
    import importlib.util

    spec = importlib.util.find_spec("pyroute2")
    if spec is None or spec.origin is None:
        pytest.skip("pyroute2 not installed (pip install pyroute2)")
    source = Path(spec.origin).parent
    package = dest / "pyroute2"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    for entry in source.iterdir():
        if entry.name not in ("__init__.py", "__pycache__"):
            (package / entry.name).symlink_to(entry)
    return dest


def test_pyroute2_lists_links_in_a_network_namespace(
        tmp_path: Path, interpreter: sp.StaticPython) -> None:
    if shutil.which("unshare") is None:
        pytest.skip("unshare(1) missing")
    tree = _pyroute2_tree(tmp_path / "site")
    (tmp_path / "links.py").write_text(LINK_DUMP)
    with sp.trace_interpreter(interpreter) as trace:
        done = _run(["unshare", "--net", trace, str(tmp_path / "links.py"), str(tree)])
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["['lo']", "[]"]
