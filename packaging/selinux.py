"""The SELinux policy in the image, and the labels computed from it at build time.

``--selinux-policy DIR`` (a policy store such as /etc/selinux/default from
Debian's selinux-policy-default) puts into the ``policy`` component:

* DIR/policy/policy.NN (the newest NN) as /etc/initium/selinux/policy.NN,
  which the ``selinux`` stage writes to /sys/fs/selinux/load;
* DIR/contexts/* (the small files, for tools that look there);
* /etc/initium/selinux/labels: the context of every file in the image, in
  the xattr-list format (security.selinux only), computed here with
  Python's ``re`` over the policy's file_contexts exactly as libselinux
  orders and matches them;
* /etc/initium/selinux/rules.marshal: the file_contexts entries that can
  match below /dev and /run, compiled into automata the init runs without
  ``re`` (initium.stages.selinux_rules), for the nodes that only exist at
  boot.

Default: the build host's configured policy (/etc/selinux/config,
SELINUX= enforcing or permissive, SELINUXTYPE=NAME) when it has a binary
policy, none otherwise; ``none`` turns it off.
"""

from __future__ import annotations

import marshal
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from initium.stages.selinux_rules import RuleError, compile_regex, has_meta, literal_prefix
from initium.xattrlist import XattrRecord, serialize

from .cpio import Entry

if TYPE_CHECKING:
    from .image import ImageBuilder

IMAGE_DIR = "/etc/initium/selinux"
LABELS_PATH = f"{IMAGE_DIR}/labels"
RULES_PATH = f"{IMAGE_DIR}/rules.marshal"
BOOT_TOPS = ("/dev", "/run")
DOMAIN_TYPE = "initium_t"  # declared by policy/initium.te
SELINUX_CONFIG = "/etc/selinux/config"
XATTR = "security.selinux"
TYPE_FLAGS = ("--", "-d", "-c", "-b", "-l", "-s", "-p")
MODE_TYPE = {stat.S_IFREG: "--", stat.S_IFDIR: "-d", stat.S_IFCHR: "-c", stat.S_IFBLK: "-b",
             stat.S_IFLNK: "-l", stat.S_IFSOCK: "-s", stat.S_IFIFO: "-p"}


class SelinuxPolicyError(ValueError):
    """The policy directory cannot be used; one line for the user."""


@dataclass(frozen=True)
class Spec:
    regex: str
    ftype: str  # "" or one of TYPE_FLAGS
    context: str | None  # None: <<none>>


def host_policy_dir(config_path: str = SELINUX_CONFIG) -> str | None:
    """The policy store the host is configured with, when SELinux is not disabled there."""
    try:
        with open(config_path) as f:
            text = f.read(65536)
    except OSError:
        return None
    values = {}
    for line in text.splitlines():
        key, eq, value = line.strip().partition("=")
        if eq and not key.startswith("#"):
            values[key.strip()] = value.strip().strip('"')
    name = values.get("SELINUXTYPE")
    if values.get("SELINUX") not in ("enforcing", "permissive") or not name or "/" in name:
        return None
    directory = os.path.join(os.path.dirname(config_path), name)
    try:
        policy_file(directory)
    except SelinuxPolicyError:
        return None
    return directory


def resolve_policy_dir(setting: str | None) -> str | None:
    """The directory to take the policy from: the setting, or the host's, or None."""
    if setting == "none":
        return None
    if setting is None:
        return host_policy_dir()
    return setting


def policy_file(directory: str) -> tuple[str, int]:
    """(path, version) of the newest DIR/policy/policy.NN."""
    folder = os.path.join(directory, "policy")
    try:
        names = os.listdir(folder)
    except OSError as err:
        raise SelinuxPolicyError(f"--selinux-policy {directory}: cannot list {folder}: "
                                 f"{err.strerror}") from None
    found = [(int(n[7:]), n) for n in names if n.startswith("policy.") and n[7:].isdigit()]
    if not found:
        raise SelinuxPolicyError(f"--selinux-policy {directory}: no policy.NN in {folder} "
                                 "(is a policy package such as selinux-policy-default "
                                 "installed?)")
    version, name = max(found)
    return os.path.join(folder, name), version


def parse_file_contexts(text: str, source: str = "file_contexts") -> list[Spec]:
    """The entries of a file_contexts file, in file order."""
    specs = []
    for number, raw in enumerate(text.splitlines(), 1):
        fields = raw.split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) == 2:
            regex, ftype, context = fields[0], "", fields[1]
        elif len(fields) == 3 and fields[1] in TYPE_FLAGS:
            regex, ftype, context = fields
        else:
            raise SelinuxPolicyError(f"{source}:{number}: not 'REGEX [TYPE] CONTEXT'")
        specs.append(Spec(regex, ftype, None if context == "<<none>>" else context))
    return specs


def parse_subs(text: str) -> list[tuple[str, str]]:
    """file_contexts.subs_dist: (alias, original) path pairs."""
    pairs = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 2 and not fields[0].startswith("#"):
            pairs.append((fields[0].rstrip("/"), fields[1].rstrip("/")))
    return pairs


def ordered(specs: Iterable[Spec]) -> list[Spec]:
    """libselinux's order: entries with regex metacharacters first, plain paths last."""
    specs = list(specs)
    return [s for s in specs if has_meta(s.regex)] + [s for s in specs if not has_meta(s.regex)]


class Labeller:
    """``matchpathcon`` in Python: the context file_contexts give a path of a type."""

    def __init__(self, specs: list[Spec], subs: list[tuple[str, str]] | None = None) -> None:
        self.specs = ordered(specs)
        self.subs = subs or []
        self._compiled: dict[int, re.Pattern[str]] = {}
        self._prefix = [literal_prefix(s.regex) for s in self.specs]

    @classmethod
    def from_dir(cls, directory: str) -> Labeller:
        files = os.path.join(directory, "contexts", "files")
        specs: list[Spec] = []
        for name in ("file_contexts", "file_contexts.local"):
            path = os.path.join(files, name)
            if os.path.exists(path):
                with open(path) as f:
                    specs += parse_file_contexts(f.read(), path)
        if not specs:
            raise SelinuxPolicyError(f"--selinux-policy {directory}: no {files}/file_contexts")
        subs: list[tuple[str, str]] = []
        for name in ("file_contexts.subs_dist", "file_contexts.subs"):
            path = os.path.join(files, name)
            if os.path.exists(path):
                with open(path) as f:
                    subs += parse_subs(f.read())
        return cls(specs, subs)

    def substitute(self, path: str) -> str:
        for alias, original in self.subs:
            if path == alias or path.startswith(alias + "/"):
                return original + path[len(alias):]
        return path

    def lookup(self, path: str, mode: int) -> Spec | None:
        path = self.substitute(path)
        kind = MODE_TYPE.get(stat.S_IFMT(mode), "")
        for i in range(len(self.specs) - 1, -1, -1):
            spec = self.specs[i]
            if (spec.ftype and spec.ftype != kind) or not path.startswith(self._prefix[i]):
                continue
            pattern = self._compiled.get(i)
            if pattern is None:
                pattern = self._compiled[i] = re.compile(f"^(?:{spec.regex})$")
            if pattern.match(path):
                return spec
        return None

    def boot_rules(self, tops: tuple[str, ...] = BOOT_TOPS) -> tuple[dict[str, Any], list[str]]:
        """The entries that can match below ``tops``, compiled for the init; and the refused."""
        exact: dict[str, list[tuple[str, str | None]]] = {}
        specs: list[tuple[str, str, str | None, Any]] = []
        refused = []
        # An alias below the tops (Debian: /run/lock is /var/lock) is looked
        # up under its original, so the original's entries come along.
        subs = [(a, o) for a, o in self.subs
                if any(a == t or a.startswith(t + "/") for t in tops)]
        tops = tops + tuple(o for _, o in subs)
        for spec in self.specs:
            prefix = literal_prefix(spec.regex)
            if not any(prefix.startswith(t) or (t + "/").startswith(prefix) for t in tops):
                continue
            if not has_meta(spec.regex):
                exact.setdefault(spec.regex, []).append((spec.ftype, spec.context))
                continue
            try:
                specs.append((prefix, spec.ftype, spec.context, compile_regex(spec.regex)))
            except RuleError as err:
                refused.append(f"{spec.regex}: {err}")
        return {"exact": {k: tuple(v) for k, v in exact.items()}, "specs": specs,
                "subs": subs}, refused


def defines_type(policy: bytes, name: str) -> bool:
    """Whether a binary policy declares the type ``name``.

    A type is stored as four little-endian words (name length, value,
    properties, bounds; policy versions from 24 on) followed by the name,
    so the length word sits 16 bytes before it: that rules out a longer
    name that merely contains ``name`` (security/selinux/ss/policydb.c,
    type_read()).
    """
    key = name.encode()
    length = len(key).to_bytes(4, "little")
    at = policy.find(key)
    while at != -1:
        if at >= 16 and policy[at - 16:at - 12] == length:
            return True
        at = policy.find(key, at + 1)
    return False


def domain_context(directory: str, policy: bytes) -> str | None:
    """PID 1's context in the initramfs, when the policy has policy/initium.te linked in.

    The user and the level come from the policy's own initrc_context (``s0``
    for Debian's MCS policy, a range for MLS), the role is system_r.
    """
    if not defines_type(policy, DOMAIN_TYPE):
        return None
    user, level = "system_u", "s0"
    try:
        with open(os.path.join(directory, "contexts", "initrc_context")) as f:
            fields = f.read().strip().split(":", 3)
        if len(fields) == 4:
            user, level = fields[0], fields[3]
    except OSError:
        pass
    return f"{user}:system_r:{DOMAIN_TYPE}:{level}"


def plan_data(setting: str | None, mode: str) -> dict[str, Any]:
    """What the ``selinux`` stage needs to know (the files themselves come with attach)."""
    directory = resolve_policy_dir(setting)
    if directory is None:
        return {"mode": mode}
    path, version = policy_file(directory)
    with open(path, "rb") as f:
        domain = domain_context(directory, f.read())
    data = {"mode": mode, "policy": f"{IMAGE_DIR}/policy.{version}", "labels": LABELS_PATH,
            "rules": RULES_PATH}
    if domain is not None:
        data["domain"] = domain
    return data


def attach_selinux(builder: ImageBuilder) -> None:
    """Add the policy, its contexts, the image's labels and the boot rules to ``policy``."""
    directory = resolve_policy_dir(builder.config.selinux_policy)
    if directory is None:
        return
    path, version = policy_file(directory)
    labeller = Labeller.from_dir(directory)
    with open(path, "rb") as f:
        builder._put(Entry(f"{IMAGE_DIR}/policy.{version}".lstrip("/"), stat.S_IFREG | 0o644,
                           f.read()), "policy")
    contexts = os.path.join(directory, "contexts")
    for name in sorted(os.listdir(contexts)):
        host = os.path.join(contexts, name)
        if os.path.isfile(host) and os.path.getsize(host) <= 65536:
            with open(host, "rb") as f:
                builder._put(Entry(f"{IMAGE_DIR}/contexts/{name}".lstrip("/"),
                                   stat.S_IFREG | 0o644, f.read()), "policy")
    rules, refused = labeller.boot_rules()
    if refused:
        print(f"initium: {len(refused)} file_contexts entries for /dev and /run are not "
              f"supported at boot and left out: {'; '.join(refused[:3])}")
    builder._put(Entry(RULES_PATH.lstrip("/"), stat.S_IFREG | 0o644,
                       marshal.dumps(rules, 2)), "policy")  # 2: no refs, same bytes each run
    modes: dict[str, int] = {LABELS_PATH.lstrip("/"): stat.S_IFREG | 0o644}
    for comp in builder.components.values():
        for entry in comp.entries.values():
            modes[entry.path] = entry.mode
            parts = entry.path.split("/")
            for i in range(1, len(parts)):
                modes.setdefault("/".join(parts[:i]), stat.S_IFDIR | 0o755)
    records = []
    for image_path, mode in sorted(modes.items()):
        spec = labeller.lookup("/" + image_path, mode)
        if spec is not None and spec.context is not None:
            records.append(XattrRecord(image_path, ((XATTR, spec.context.encode() + b"\0"),)))
    builder._put(Entry(LABELS_PATH.lstrip("/"), stat.S_IFREG | 0o644,
                       serialize(records, ("security.",))), "policy")
