"""initium build on this host: reproducible bytes, an honest manifest, a lean image."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import zipfile
from io import BytesIO
from pathlib import Path

import pytest
from initium.cli import main
from initium.packaging.compress import split_image
from initium.packaging.cpio import Entry, read_archive
from initium.plan import PLAN_PATH, Plan

from tests.host.conftest import build


def _files(image: str) -> dict[str, Entry]:
    with open(image, "rb") as f:
        data = f.read()
    return {"/" + e.path: e for s in split_image(data)
            for e in read_archive(s.payload_uncompressed)}


def test_two_builds_are_byte_identical(kver: str, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    a = build(str(tmp_path / "a.img"), kver)
    b = build(str(tmp_path / "b.img"), kver)
    assert Path(a).read_bytes() == Path(b).read_bytes()
    assert Path(a + ".manifest.json").read_bytes() == Path(b + ".manifest.json").read_bytes()
    c = build(str(tmp_path / "c.img"), kver, "--compress", "gzip")
    assert Path(c).read_bytes() != Path(a).read_bytes()
    # mtime honoured in every header: parse the core archive's first entry.
    core = split_image(Path(a).read_bytes())[0].payload_uncompressed
    assert int(core[46:54], 16) == 1700000000


def test_manifest_describes_every_byte(built: str) -> None:
    image = Path(built).read_bytes()
    manifest = json.loads(Path(built + ".manifest.json").read_text())
    assert manifest["sha256"] == hashlib.sha256(image).hexdigest()
    assert manifest["size"] == len(image)
    names = [c["name"] for c in manifest["components"]]
    assert names[-4:] == ["core", "modules", "policy", "digests"]
    files = _files(built)
    listed = 0
    end = 0
    for comp in manifest["components"]:
        assert comp["offset"] - end < 4 and not image[end:comp["offset"]].strip(b"\0")
        chunk = image[comp["offset"]:comp["offset"] + comp["length"]]
        end = comp["offset"] + comp["length"]
        assert hashlib.sha256(chunk).hexdigest() == comp["sha256"]
        for item in comp["files"]:
            entry = files[item["path"]]
            assert int(item["mode"], 8) == entry.mode
            if stat.S_ISREG(entry.mode):
                assert item["size"] == len(entry.data)
                assert item["sha256"] == hashlib.sha256(entry.data).hexdigest()
            listed += 1
    assert len(image) - end < 4 and len(image) % 4 == 0
    # Every entry is listed, the parent directories the writer adds included (a
    # directory in several components is listed by each, unpacked once).
    assert listed >= len(files)
    assert main(["verify", built]) == 0
    assert manifest["stages"] == ["early-mounts", "console", "rootfs", "xattrs", "selinux",
                                  "ima", "modules", "root", "switch-root"]


def _frozen(files: dict[str, Entry]) -> set[str]:
    """The names in the image's bytecode zip: appended to the static /init, or the host's zip."""
    zips = [p for p in files if p.startswith("/usr/lib/python3") and p.endswith(".zip")]
    data = files[zips[0]].data if zips else files["/init"].data
    return set(zipfile.ZipFile(BytesIO(data)).namelist())


@pytest.fixture(scope="session")
def built_host(kver: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    return build(str(tmp_path_factory.mktemp("built-host") / "h.img"), kver,
                 "--interpreter", "host")


def test_static_init_is_one_elf(built: str) -> None:
    files = _files(built)
    assert files["/init"].data.startswith(b"\x7fELF")
    assert stat.S_IMODE(files["/init"].mode) == 0o755
    # One ELF and its appended bytecode: no interpreter, libraries or launcher beside it.
    assert not [p for p in files if p.startswith(("/usr/bin/python", "/usr/lib/initium"))
                or ".so" in p.rsplit("/", 1)[-1]]


def test_host_launcher(built_host: str) -> None:
    files = _files(built_host)
    init = files["/init"].data.decode()
    assert init.startswith("#!/usr/bin/env -S ") and len(init.splitlines()[0]) <= 255
    assert "PYTHONHASHSEED=0" in init, "the hash seed must not wait for the kernel RNG"
    launcher = files["/usr/lib/initium/launch.py"].data.decode()
    compile(launcher, "launch.py", "exec")
    assert "except BaseException" in launcher and "reboot(" in launcher
    assert "initium/boot.pyc" in _frozen(files)


def test_image_layout(built: str, kver: str) -> None:
    files = _files(built)
    console = files["/dev/console"]
    assert stat.S_ISCHR(console.mode) and console.rdev == (5, 1)
    assert "/etc/initrd-release" in files
    plan = Plan.from_bytes(files[PLAN_PATH].data)
    assert plan.kver == kver and not plan.has_shell
    modules = plan.stage_data("modules")["modules"]
    assert [m["name"] for m in modules].index("virtio_blk") > 0
    for m in modules:
        assert m["path"] in files, f"module {m['name']} listed but missing"
    # No shell without --shell.
    assert not any(p.endswith(("/sh", "/busybox")) for p in files)


@pytest.mark.parametrize("kind", ["static", "host"])
def test_frozen_stdlib_is_only_what_the_init_imports(
        kind: str, built: str, built_host: str) -> None:
    names = _frozen(_files(built if kind == "static" else built_host))
    assert "initium/boot.pyc" in names and "initium/stages/root.pyc" in names
    # Sub-packages of the core are frozen too (the probes: one module per format).
    assert {"initium/probe/__init__.pyc", "initium/probe/raid.pyc"} <= names
    assert all(n.endswith(".pyc") for n in names), "the zip must be sourceless"
    # The builder and heavy stdlib modules stay out of the init.
    for absent in ("initium/cli.pyc", "initium/packaging/image.pyc", "dataclasses.pyc",
                   "typing.pyc", "subprocess.pyc", "re/__init__.pyc", "json/__init__.pyc",
                   "argparse.pyc", "tomllib/__init__.pyc", "signal.pyc", "enum.pyc",
                   "functools.pyc", "importlib/__init__.pyc"):
        assert absent not in names, absent


def test_shell_image_has_busybox(kver: str, tmp_path: Path) -> None:
    files = _files(build(str(tmp_path / "s.img"), kver, "--shell"))
    assert stat.S_ISREG(files["/usr/bin/busybox"].mode)
    assert files["/usr/bin/sh"].data == b"busybox"
    assert Plan.from_bytes(files[PLAN_PATH].data).has_shell


def test_gnu_cpio_lists_the_core(built: str, tmp_path: Path) -> None:
    core = split_image(Path(built).read_bytes())
    listing = subprocess.run(["cpio", "-t", "--quiet"], input=core[0].payload_uncompressed,
                             capture_output=True, check=True).stdout.decode().split()
    assert listing[:2] == ["bin", "dev"]  # sorted: the merged-/usr link, then dev
    assert "init" in listing and "etc/initrd-release" in listing
    assert listing.index("etc") < listing.index("etc/initrd-release") < listing.index("init")


def test_inspect_lists_files_and_stages(built: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", built]) == 0
    out = capsys.readouterr().out
    assert "/init" in out
    assert "interpreter: static" in out
    assert ("stages: early-mounts → console → rootfs → xattrs → selinux → ima → modules → root → "
            "switch-root") in out


def test_config_file_and_flag_override(kver: str, tmp_path: Path) -> None:
    conf = tmp_path / "initium.toml"
    conf.write_text('modules = ["virtio_blk"]\ncompress = "gzip"\n')
    out = build(str(tmp_path / "c.img"), kver, "--config", str(conf), "--compress", "none")
    manifest = json.loads(Path(out + ".manifest.json").read_text())
    assert {c["compression"] for c in manifest["components"]} == {"none"}
    plan = Plan.from_bytes(_files(out)[PLAN_PATH].data)
    names = [m["name"] for m in plan.stage_data("modules")["modules"]]
    assert "virtio_blk" in names and "virtio_scsi" not in names


@pytest.mark.parametrize(("text", "message"), [
    ('modules = "virtio_blk"\n', "modules must be a list"),
    ("colour = 1\n", "unknown key 'colour'"),
    ("compress = [\n", "not valid TOML"),
])
def test_bad_config_is_one_line(kver: str, tmp_path: Path, text: str, message: str,
                                capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "bad.toml"
    conf.write_text(text)
    code = main(["build", "--output", str(tmp_path / "x.img"), "--kver", kver,
                 "--config", str(conf)])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_unknown_module_is_named(kver: str, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["build", "--output", str(tmp_path / "x.img"), "--kver", kver,
                 "--module", "no_such_driver"])
    assert code == 2
    assert "module no_such_driver is neither in modules.dep nor builtin" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "x.img")


PLUGIN = '''
from initium import ops
from initium.stage import BootContext, Stage


class Hello(Stage):
    name = "hello"
    after = ("early-mounts",)
    before = ("root",)

    def install(self, image):  # type: ignore[no-untyped-def]
        return {"greeting": "hello from a plugin"}

    def run(self, ctx: BootContext) -> None:
        ctx.sys.apply(ops.WriteFile("/run/hello", ctx.data()["greeting"].encode()))
'''


def test_a_third_party_stage_is_ordered_frozen_and_planned(
        kver: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "hello_initium.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    conf = tmp_path / "initium.toml"
    conf.write_text('stages = ["hello_initium:Hello"]\nmodules = ["virtio_blk"]\n')
    files = _files(build(str(tmp_path / "p.img"), kver, "--config", str(conf)))
    plan = Plan.from_bytes(files[PLAN_PATH].data)
    assert plan.names == ["early-mounts", "console", "hello", "rootfs", "xattrs", "selinux",
                          "ima", "modules", "root", "switch-root"]
    assert plan.stage_data("hello") == {"greeting": "hello from a plugin"}
    assert "hello_initium.pyc" in _frozen(files)
