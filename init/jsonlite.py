"""JSON for the boot path without the ``json`` package.

``json`` imports ``re`` (and with it ``enum``, ``sre_*`` and friends) at
module level; under QEMU TCG that costs about a third of a second of every
boot.  The C scanner and string encoder in ``_json`` need none of it, so the
init reads its plan and writes its timeline with them.  The output is plain
JSON (``json.loads`` reads it; a test checks both ways).
"""

from __future__ import annotations

import _json
import math

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class _Context:
    """The attributes ``_json.make_scanner`` reads from a decoder object."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    memo: dict[str, str] = {}  # noqa: RUF012 - the C scanner keeps its own

    @staticmethod
    def parse_constant(name: str) -> float:
        raise ValueError(f"{name} is not valid JSON")


_scan = _json.make_scanner(_Context())  # type: ignore[arg-type]  # duck-typed in C
_WHITESPACE = " \t\n\r"


def loads(text: str) -> Any:
    """Parse one JSON document; ValueError (with the offset) for anything else."""
    start = 0
    while start < len(text) and text[start] in _WHITESPACE:
        start += 1
    try:
        value, end = _scan(text, start)
    except StopIteration as err:
        raise ValueError(f"invalid JSON at offset {err.value}") from None
    except ValueError as err:  # JSONDecodeError, when json.decoder happens to be imported
        raise ValueError(f"invalid JSON: {err}") from None
    except SystemError:
        # The C scanner reports most syntax errors through json.decoder's
        # JSONDecodeError, looked up in sys.modules only; at boot json is not
        # imported, and the scanner then fails without an exception set.
        raise ValueError("invalid JSON") from None
    while end < len(text) and text[end] in _WHITESPACE:
        end += 1
    if end != len(text):
        raise ValueError(f"extra data after JSON at offset {end}")
    return value


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
