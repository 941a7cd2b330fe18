"""The environment the launcher gives the interpreter, shared by builder and init.

The builder writes these into /init's ``env -S`` line; switch-root removes
them again so the real init sees only what the kernel passed.
"""

from __future__ import annotations

# PYTHONHASHSEED=0: otherwise CPython asks the kernel RNG for a seed at start,
# which blocks for about a second before the CRNG is ready (always, early in a
# TCG guest). Nothing in the init depends on hash randomisation.
LAUNCHER_ENV: dict[str, str] = {
    "PYTHONHASHSEED": "0",
    "PYTHONHOME": "/usr",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONNOUSERSITE": "1",
    "PYTHONUTF8": "1",
}
# Set only when the interpreter's libraries are outside the loader's default
# directories; also removed before exec.
LIBRARY_PATH_KEY = "LD_LIBRARY_PATH"


def real_init_environment(current: dict[str, str]) -> dict[str, str]:
    """The kernel's environment for init, minus what the launcher added."""
    env = {k: v for k, v in current.items()
           if k not in LAUNCHER_ENV and k != LIBRARY_PATH_KEY}
    env.setdefault("HOME", "/")
    env.setdefault("TERM", "linux")
    return env
