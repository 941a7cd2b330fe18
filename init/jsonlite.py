"""Writing JSON on the boot path without the ``json`` package.

``json`` imports ``re`` (and with it ``enum``, ``sre_*`` and friends) at
module level; under QEMU TCG that costs about a third of a second of every
boot.  The init only writes JSON (its timeline, for the real root to read),
with the public string encoder of ``_json``.  It reads nothing in JSON: the
plan is in marshal format (initium.plan).
"""

from __future__ import annotations

import _json
import math

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def dumps(value: Any) -> str:
    """Serialise dicts with string keys, lists, tuples, strings, numbers, booleans and None."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return str(_json.encode_basestring_ascii(value))
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value} cannot be written as JSON")
        return repr(value)
    if isinstance(value, dict):
        items = []
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"JSON object keys must be strings, not {type(key).__name__}")
            items.append(f"{_json.encode_basestring_ascii(key)}: {dumps(item)}")
        return "{" + ", ".join(items) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(dumps(item) for item in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as JSON")
