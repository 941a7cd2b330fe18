"""Kernel module metadata: names, modules.dep and the load order, as pure functions.

The builder resolves the closure once and stores the ordered list in the
image; the init only walks that list with finit_module, so it needs neither
kmod nor modprobe.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing's import cost is not paid at boot
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")


class ModuleError(ValueError):
    """A module or one of its dependencies cannot be resolved."""


def module_name(path_or_name: str) -> str:
    """The kernel's name for a module: no directory, no suffix, dashes as underscores."""
    name = path_or_name.rsplit("/", 1)[-1]
    for suffix in MODULE_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name.replace("-", "_")


def parse_modules_dep(text: str) -> dict[str, tuple[str, list[str]]]:
    """modules.dep → {name: (path, [dependency names])}; malformed lines are skipped."""
    result: dict[str, tuple[str, list[str]]] = {}
    for line in text.splitlines():
        path, sep, deps = line.partition(":")
        path = path.strip()
        if not sep or not path:
            continue
        result[module_name(path)] = (path, [module_name(d) for d in deps.split()])
    return result


def parse_softdeps(text: str) -> dict[str, list[str]]:
    """modules.softdep → {name: [modules to load before it]} (only the ``pre:`` part)."""
    result: dict[str, list[str]] = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) < 3 or words[0] != "softdep":
            continue
        pre: list[str] = []
        section = ""
        for word in words[2:]:
            if word.endswith(":"):
                section = word[:-1]
            elif section == "pre":
                pre.append(module_name(word))
        if pre:
            result.setdefault(module_name(words[1]), []).extend(pre)
    return result


def parse_builtin(text: str) -> set[str]:
    return {module_name(line.strip()) for line in text.splitlines() if line.strip()}


def load_order(wanted: Iterable[str], deps: Mapping[str, tuple[str, list[str]]],
               builtin: set[str], softdeps: Mapping[str, list[str]] | None = None,
               ) -> list[str]:
    """Every module needed for ``wanted``, each after what it depends on.

    Builtin modules are dropped silently (there is nothing to load); a name
    that is neither a module nor builtin is an error naming who needed it.
    """
    softdeps = softdeps or {}
    order: list[str] = []
    state: dict[str, int] = {}

    def visit(name: str, needed_by: str | None, optional: bool) -> None:
        name = module_name(name)
        if state.get(name) == 2 or name in builtin:
            return
        if name not in deps:
            if optional:
                return
            who = f" (needed by {needed_by})" if needed_by else ""
            raise ModuleError(f"module {name}{who} is neither in modules.dep nor builtin")
        if state.get(name) == 1:
            return  # a dependency cycle: depmod would have refused it; do not loop
        state[name] = 1
        for soft in softdeps.get(name, []):
            visit(soft, name, True)
        for dep in deps[name][1]:
            visit(dep, name, False)
        state[name] = 2
        order.append(name)

    for name in wanted:
        visit(name, None, False)
    return order


def parse_modprobe_options(text: str) -> dict[str, list[str]]:
    """``options MODULE PARAM…`` lines of a modprobe.d file → {module: [PARAM, …]}.

    As libkmod reads them: ``#`` starts a comment line, a trailing backslash
    joins the next line, module names compare with - and _ equal. Other
    commands (alias, blacklist, install, softdep) are not ours to act on.
    """
    result: dict[str, list[str]] = {}
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        if raw.endswith("\\"):
            pending += raw[:-1] + " "
            continue
        logical.append(pending + raw)
        pending = ""
    if pending:
        logical.append(pending)
    for line in logical:
        words = line.split()
        if len(words) < 3 or words[0] != "options":
            continue
        result.setdefault(module_name(words[1]), []).extend(words[2:])
    return result


def cmdline_module_params(params: Iterable[tuple[str, str | None]]) -> dict[str, list[str]]:
    """``MODULE.PARAM[=VALUE]`` words of the kernel command line → {module: ["PARAM=VALUE"]}.

    The kernel applies these itself only to built-in code; for a loadable
    module the loader must pass them (libkmod reads /proc/cmdline the same
    way). A value with a space is quoted again for the kernel's own parser.
    """
    result: dict[str, list[str]] = {}
    for key, value in params:
        module, dot, param = key.partition(".")
        if not dot or not module or not param or "=" in module or "/" in module:
            continue
        if value is None:
            word = param
        elif " " in value or "\t" in value:
            word = f'{param}="{value}"'
        else:
            word = f"{param}={value}"
        result.setdefault(module_name(module), []).append(word)
    return result


# -- modules.alias and modalias matching ------------------------------------
#
# The builder keeps, for each module of the optional default set, the aliases
# by which the kernel's devices ask for it; the init matches the modalias of
# every device it finds against them. Matching follows Python's
# fnmatch.fnmatchcase (what the builder's tests compare with), which is libc's
# fnmatch without backslash escapes and without ``[^…]`` as a negation; the
# kernel's aliases use neither. The matcher is ours because fnmatch imports re.

MAX_PATTERN = 512  # a modules.alias pattern; the kernel's longest are about 150
MAX_MODALIAS = 4096  # a sysfs attribute is at most one page


class GlobError(ValueError):
    """A pattern the matcher does not take (too long)."""


def parse_modules_alias(text: str) -> list[tuple[str, str]]:
    """``alias PATTERN MODULE`` lines of modules.alias → [(pattern, module name)].

    Comments, blank and malformed lines are skipped, as libkmod skips them.
    """
    result: list[tuple[str, str]] = []
    for line in text.splitlines():
        words = line.split()
        if len(words) == 3 and words[0] == "alias":
            result.append((words[1], module_name(words[2])))
    return result


def is_device_alias(pattern: str) -> bool:
    """Whether a device's modalias can match ``pattern``.

    Device aliases have a bus prefix (``pci:``, ``virtio:``, ``scsi:``,
    ``acpi*:`` …). The others (``fs-ext4``, ``block-major-8-*``,
    ``crypto-aes``, ``devname:fuse``) are names modprobe is asked for, never
    a device: a module having only those is not driven by hardware.
    """
    return ":" in pattern and not pattern.startswith("devname:")


# A compiled pattern is a tuple of tokens: STAR, ANY, a one-character str,
# or a class (negated, members, ranges).
STAR = 0
ANY = 1
if TYPE_CHECKING:
    Token = int | str | tuple[bool, str, tuple[tuple[str, str], ...]]


def compile_glob(pattern: str) -> tuple[Token, ...]:
    """``pattern`` as tokens; work linear in its length (bounded by MAX_PATTERN)."""
    if len(pattern) > MAX_PATTERN:
        raise GlobError(f"pattern longer than {MAX_PATTERN} characters")
    tokens: list[Token] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        i += 1
        if c == "*":
            if not tokens or tokens[-1] != STAR:
                tokens.append(STAR)
        elif c == "?":
            tokens.append(ANY)
        elif c == "[":
            end = _class_end(pattern, i)
            if end < 0:
                tokens.append("[")  # no closing bracket: a literal, as fnmatch has it
            else:
                tokens.append(_class(pattern[i:end]))
                i = end + 1
        else:
            tokens.append(c)
    return tuple(tokens)


def _class_end(pattern: str, start: int) -> int:
    """The index of the ``]`` closing the class opened before ``start``, or -1."""
    j = start
    if j < len(pattern) and pattern[j] == "!":
        j += 1
    if j < len(pattern) and pattern[j] == "]":
        j += 1  # a leading ] is a member
    end = pattern.find("]", j)
    return end


def _class(body: str) -> tuple[bool, str, tuple[tuple[str, str], ...]]:
    """``[body]``: ``!`` negates; ``a-z`` is a range (empty when reversed), a
    ``-`` that cannot form one is a member, and a range ends its ``-``."""
    negated = body.startswith("!")
    if negated:
        body = body[1:]
    members: list[str] = []
    ranges: list[tuple[str, str]] = []
    k = 0
    while k < len(body):
        if k + 2 < len(body) and body[k + 1] == "-":
            ranges.append((body[k], body[k + 2]))
            k += 3
        else:
            members.append(body[k])
            k += 1
    return negated, "".join(members), tuple(ranges)


def _one(token: Token, ch: str) -> bool:
    if token == ANY:
        return True
    if isinstance(token, str):
        return token == ch
    if isinstance(token, tuple):
        negated, members, ranges = token
        hit = ch in members or any(lo <= ch <= hi for lo, hi in ranges)
        return hit != negated
    return False


def glob_match(tokens: tuple[Token, ...], text: str) -> bool:
    """Whether ``text`` matches the compiled pattern, as fnmatch.fnmatchcase decides.

    Iterative with one backtracking point (the last ``*``): every token but
    ``*`` takes one character, so retrying only from the last star is enough,
    and the work is at most len(tokens) * len(text) steps, with no recursion.
    """
    t = p = 0
    star_p = star_t = -1
    n_tokens, n_text = len(tokens), len(text)
    while t < n_text:
        if p < n_tokens and tokens[p] == STAR:
            star_p, star_t = p, t
            p += 1
        elif p < n_tokens and _one(tokens[p], text[t]):
            p += 1
            t += 1
        elif star_p >= 0:
            star_t += 1  # let the last star take one more character
            t = star_t
            p = star_p + 1
        else:
            return False
    while p < n_tokens and tokens[p] == STAR:
        p += 1
    return p == n_tokens


def literal_prefix(pattern: str) -> str:
    """What every match starts with: the pattern up to its first special character."""
    for i, c in enumerate(pattern):
        if c in "*?[":
            return pattern[:i]
    return pattern
