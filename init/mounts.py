"""Mount options and the mount table, as pure functions over text."""

from __future__ import annotations

from initium import linux as f
from initium.record import record

# fstab words that are mount(2) flags rather than file-system data.
_SET_FLAGS: dict[str, int] = {
    "ro": f.MS_RDONLY, "nosuid": f.MS_NOSUID, "nodev": f.MS_NODEV, "noexec": f.MS_NOEXEC,
    "sync": f.MS_SYNCHRONOUS, "dirsync": f.MS_DIRSYNC, "noatime": f.MS_NOATIME,
    "nodiratime": f.MS_NODIRATIME, "relatime": f.MS_RELATIME,
    "strictatime": f.MS_STRICTATIME, "lazytime": f.MS_LAZYTIME, "nosymfollow": f.MS_NOSYMFOLLOW,
}
_CLEAR_FLAGS: dict[str, int] = {
    "rw": f.MS_RDONLY, "suid": f.MS_NOSUID, "dev": f.MS_NODEV, "exec": f.MS_NOEXEC,
    "async": f.MS_SYNCHRONOUS, "atime": f.MS_NOATIME, "diratime": f.MS_NODIRATIME,
    "norelatime": f.MS_RELATIME, "nostrictatime": f.MS_STRICTATIME,
    "nolazytime": f.MS_LAZYTIME,
}
_IGNORED = {"defaults", "auto", "noauto", "nofail", "user", "nouser", "_netdev"}


@record
class MountOptions:
    flags: int
    names: tuple[str, ...]
    data: str


def parse_mount_options(text: str, flags: int = 0) -> MountOptions:
    """Split fstab-style options into mount(2) flags and the file system's data string."""
    data: list[str] = []
    for word in (w.strip() for w in text.split(",")):
        if not word or word in _IGNORED or word.startswith("x-"):
            continue
        if word in _SET_FLAGS:
            flags |= _SET_FLAGS[word]
        elif word in _CLEAR_FLAGS:
            flags &= ~_CLEAR_FLAGS[word]
        else:
            data.append(word)
    return MountOptions(flags, flag_names(flags), ",".join(data))


def flag_names(flags: int) -> tuple[str, ...]:
    """The fstab words for ``flags``, for plans and logs."""
    names = ["ro" if flags & f.MS_RDONLY else "rw"]
    names += [name for name, bit in _SET_FLAGS.items() if name != "ro" and flags & bit]
    return tuple(names)


@record
class MountEntry:
    major: int
    minor: int
    root: str
    mount_point: str
    fstype: str
    source: str


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo.
    out: list[str] = []
    i = 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit() and i + 4 <= len(field):
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[MountEntry]:
    """Parse /proc/self/mountinfo; lines that do not parse are skipped, not fatal."""
    entries: list[MountEntry] = []
    for line in text.splitlines():
        fields = line.split()
        try:
            sep = fields.index("-", 6)
            major, minor = (int(n) for n in fields[2].split(":"))
            entries.append(MountEntry(major, minor, _unescape(fields[3]), _unescape(fields[4]),
                                      fields[sep + 1], _unescape(fields[sep + 2])))
        except (ValueError, IndexError):
            continue
    return entries
