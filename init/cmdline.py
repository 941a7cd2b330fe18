"""The kernel command line, split the way the kernel splits it.

The parser is pure (text in, value out) so it can be fuzzed and unit-tested
without a machine; reading /proc/cmdline happens at the edge, in the facade.
Order and duplicates are kept because options such as ``rd.luks.uuid=`` may
repeat, and a map would silently drop all but the last.
"""

from __future__ import annotations

from initium.record import record

TYPE_CHECKING = False  # typing's import cost is not paid at boot
if TYPE_CHECKING:
    from collections.abc import Iterator

# The kernel copies at most COMMAND_LINE_SIZE (2048 on x86, 4096 elsewhere)
# bytes; anything far beyond that is not a command line but an attack or a bug,
# and parsing it must stay bounded.
MAX_CMDLINE_BYTES = 65536

# lib/ctype.c's isspace(): the ASCII spaces and, in its Latin-1 table, 0xA0.
# The line is split as bytes (mapped 1:1 through Latin-1), so a 0xA0 byte
# separates words even inside what would be a UTF-8 character, exactly as the
# kernel splits it.
_SPACE = " \t\n\v\f\r\xa0"


class CmdlineError(ValueError):
    """The command line cannot be parsed at all (not: an option has a bad value)."""


@record
class Param:
    """One ``key`` or ``key=value`` word, with its key in canonical form."""

    key: str
    value: str | None
    raw_key: str

    def __str__(self) -> str:
        if self.value is None:
            return self.raw_key
        return f"{self.raw_key}={self.value}"


def canonical_key(key: str) -> str:
    """Make ``rd.luks_uuid`` and ``rd.luks-uuid`` the same key, as the kernel and systemd do."""
    return key.replace("_", "-")


@record
class Cmdline:
    """An immutable view of the command line: parameters for us, arguments for init."""

    params: tuple[Param, ...] = ()
    init_args: tuple[str, ...] = ()

    def values(self, key: str) -> list[str | None]:
        """Every value given for ``key``, in order (``None`` for a bare flag)."""
        want = canonical_key(key)
        return [p.value for p in self.params if p.key == want]

    def last(self, key: str) -> str | None:
        found = self.values(key)
        return found[-1] if found else None

    def has(self, key: str) -> bool:
        return bool(self.values(key))

    def __iter__(self) -> Iterator[Param]:
        return iter(self.params)


def _next_arg(text: str, pos: int) -> tuple[str, str | None, int]:
    """Split one word at ``pos`` following lib/cmdline.c:next_arg().

    Quotes toggle a quoted state anywhere in the word; a quote that opens the
    word or the value, and a quote that ends it, are removed; quotes in the
    middle stay. A value is whatever follows the first ``=``.
    """
    quoted = False
    if text[pos] == '"':
        pos += 1
        quoted = True
    in_quote = quoted
    equals = -1
    i = pos
    while i < len(text):
        ch = text[i]
        if ch in _SPACE and not in_quote:
            break
        if equals < 0 and ch == "=" and i > pos:  # next_arg: index 0 means "none yet"
            equals = i
        if ch == '"':
            in_quote = not in_quote
        i += 1
    end = i
    word_end = end
    if quoted and end > pos and text[end - 1] == '"':
        word_end = end - 1
    if equals < 0:
        return text[pos:word_end], None, end
    key = text[pos:equals]
    value_start = equals + 1
    value_end = word_end
    if value_start < len(text) and text[value_start] == '"':
        value_start += 1
        if end - 1 >= value_start and text[end - 1] == '"':
            value_end = end - 1
    value_end = max(value_end, value_start)
    return key, text[value_start:value_end], end


def _utf8(latin1: str) -> str:
    return latin1.encode("latin-1").decode("utf-8", errors="surrogateescape")


def parse(data: str | bytes) -> Cmdline:
    """Parse a kernel command line (text is taken as its UTF-8 bytes).

    Words are split as the kernel splits bytes; each word is then decoded as
    UTF-8 with ``surrogateescape``, so a hostile byte can be reported
    (escaped) instead of crashing the decoder.
    """
    if isinstance(data, bytes):
        raw = data
    else:
        try:
            raw = data.encode("utf-8", errors="surrogateescape")
        except UnicodeEncodeError as err:
            # Only text that did not come from bytes can hold a lone surrogate.
            raise CmdlineError(f"command line text is not encodable at offset {err.start}") \
                from None
    if len(raw) > MAX_CMDLINE_BYTES:
        raise CmdlineError(
            f"command line is {len(raw)} bytes, more than the {MAX_CMDLINE_BYTES} accepted")
    text = raw.decode("latin-1")
    nul = text.find("\0")
    if nul >= 0:
        raise CmdlineError(f"command line contains a NUL byte at offset {nul}")
    params: list[Param] = []
    init_args: list[str] = []
    pos = 0
    after_dashes = False
    while True:
        while pos < len(text) and text[pos] in _SPACE:
            pos += 1
        if pos >= len(text):
            break
        key, value, pos = _next_arg(text, pos)
        key = _utf8(key)
        value = None if value is None else _utf8(value)
        if after_dashes:
            if key == "--" and value is None:
                break  # the kernel's second parse_args() stops here too: the rest is dropped
            init_args.append(key if value is None else f"{key}={value}")
            continue
        if key == "--" and value is None:
            after_dashes = True
            continue
        if key or value is not None:
            params.append(Param(canonical_key(key), value, key))
    return Cmdline(tuple(params), tuple(init_args))
