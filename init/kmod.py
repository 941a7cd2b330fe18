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
