"""Run by the image's own interpreter: import the init, then zip what it imported.

Usage: python -I -S _freeze_helper.py PATHS ZIP MODULE...   (PATHS: os.pathsep-separated)

It must run in the target interpreter so the bytecode matches its magic
number and the module set is the one that interpreter really loads.  Only
``sys`` is imported before the snapshot, so the set is the init's own (plus
what any Python start-up loads), never the helper's.
"""

import sys


def main() -> None:
    paths, out, *wanted = sys.argv[1:]
    sys.path[:0] = paths.split(":")
    for name in wanted:
        __import__(name)
    snapshot = []
    for name, mod in sorted(sys.modules.items()):
        origin = getattr(getattr(mod, "__spec__", None), "origin", None)
        if origin in (None, "frozen", "built-in"):
            continue  # part of the interpreter binary: nothing to ship
        snapshot.append((name, origin, hasattr(mod, "__path__")))

    import importlib.util
    import json
    import marshal
    import zipfile

    sources = []
    extensions = []
    for name, origin, is_package in snapshot:
        if not origin or name == "__main__":
            continue  # builtin or frozen: part of the interpreter binary
        if origin.endswith(".py"):
            arcname = name.replace(".", "/") + ("/__init__.pyc" if is_package else ".pyc")
            sources.append((arcname, name))
        elif origin.endswith(".so"):
            extensions.append(origin)
    header = importlib.util.MAGIC_NUMBER + bytes(12)  # flags 0, mtime 0, size 0: reproducible
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        for arcname, name in sources:
            # The loader reads the source wherever it lives: a directory, or
            # the zip appended to the static trace interpreter.
            loader = sys.modules[name].__spec__.loader  # type: ignore[union-attr]
            source = loader.get_source(name)  # type: ignore[union-attr]
            code = compile(source, arcname[:-1], "exec", dont_inherit=True)
            info = zipfile.ZipInfo(arcname, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            archive.writestr(info, header + marshal.dumps(code))
    json.dump({"modules": [a for a, _ in sources], "extensions": extensions}, sys.stdout)


main()
