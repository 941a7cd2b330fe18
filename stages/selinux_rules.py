"""File contexts for what exists only at boot (/dev, /run), matched without ``re``.

The policy's file_contexts are regular expressions, and ``re`` is not
allowed on the boot path (its import alone costs more than the whole
relabel).  The builder therefore compiles, once, the entries that can match
below /dev and /run into small automata (Thompson NFAs, plain tuples that
marshal stores), and PID 1 runs them with the loop in ``matches``: linear
in the path's length, no backtracking, no regex engine.

The dialect is the part of PCRE that refpolicy's file_contexts use:
literals, ``\\`` escapes of punctuation, ``.``, bracket classes with ranges
and ``^``, groups, ``|``, and the quantifiers ``? * +`` and ``{m,n}``.
``compile_regex`` refuses anything else with ``RuleError`` (the builder
then leaves that entry out and says so).

Lookup follows libselinux (label_file.c): the entries that contain regex
metacharacters keep their file order, the plain paths follow them, and the
last entry that matches the path (and the file's type, when the entry names
one) gives the context; ``<<none>>`` means "leave the file alone".
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    NFA = tuple[int, tuple[tuple[int, Any, int], ...]]

# NFA states: (CHAR, charset, next) | (ANY, 0, next) | (SPLIT, a, b) | (MATCH, 0, 0)
CHAR, ANY, SPLIT, MATCH = 0, 1, 2, 3
META = frozenset(".[]()|*+?{}\\^$")
MAX_REPEAT = 16
MAX_STATES = 4096
# The type letters of file_contexts, by the st_mode type bits they stand for.
TYPE_OF_MODE = {0o100000: "--", 0o040000: "-d", 0o020000: "-c", 0o060000: "-b",
                0o120000: "-l", 0o140000: "-s", 0o010000: "-p"}


class RuleError(ValueError):
    """A file_contexts regex outside the dialect this matcher knows."""


def has_meta(text: str) -> bool:
    return any(c in META for c in text)


def literal_prefix(regex: str) -> str:
    """The characters every match starts with (up to the first metacharacter).

    A quantifier applies to the character before it, so that one is not
    part of the prefix.
    """
    for i, c in enumerate(regex):
        if c in META:
            return regex[: i - 1] if c in "*+?{" and i else regex[:i]
    return regex


class _Parser:
    """Recursive descent over the dialect, producing an AST of tuples."""

    def __init__(self, text: str) -> None:
        self.text, self.pos = text, 0

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def take(self) -> str:
        c = self.peek()
        self.pos += 1
        return c

    def parse(self) -> Any:
        node = self.alternation()
        if self.pos != len(self.text):
            raise RuleError(f"unexpected {self.peek()!r} at {self.pos}")
        return node

    def alternation(self) -> Any:
        branches = [self.sequence()]
        while self.peek() == "|":
            self.take()
            branches.append(self.sequence())
        return branches[0] if len(branches) == 1 else ("alt", branches)

    def sequence(self) -> Any:
        items = []
        while self.peek() not in ("", "|", ")"):
            items.append(self.repeat())
        return ("seq", items)

    def repeat(self) -> Any:
        node = self.atom()
        while self.peek() in ("*", "+", "?", "{"):
            c = self.take()
            if c == "*":
                node = ("rep", node, 0, None)
            elif c == "+":
                node = ("rep", node, 1, None)
            elif c == "?":
                node = ("rep", node, 0, 1)
            else:
                node = ("rep", node, *self.bounds())
        return node

    def bounds(self) -> tuple[int, int | None]:
        end = self.text.find("}", self.pos)
        if end < 0:
            raise RuleError("unterminated {")
        body, self.pos = self.text[self.pos:end], end + 1
        low, comma, high = body.partition(",")
        if not low.isdigit() or (high and not high.isdigit()):
            raise RuleError(f"bad repetition {{{body}}}")
        lo = int(low)
        hi = (int(high) if high else None) if comma else lo
        if lo > MAX_REPEAT or (hi is not None and (hi > MAX_REPEAT or hi < lo)):
            raise RuleError(f"repetition {{{body}}} out of range")
        return lo, hi

    def atom(self) -> Any:
        c = self.take()
        if c == "(":
            if self.peek() == "?":
                raise RuleError("(? groups are not supported")
            node = self.alternation()
            if self.take() != ")":
                raise RuleError("unbalanced (")
            return node
        if c == "[":
            return ("set", self.bracket())
        if c == ".":
            return ("any",)
        if c == "\\":
            e = self.take()
            if not e or e.isalnum():
                raise RuleError(f"escape \\{e} is not supported")
            return ("set", (False, e, ""))
        if c in META or not c:
            raise RuleError(f"unexpected {c!r} at {self.pos - 1}")
        return ("set", (False, c, ""))

    def bracket(self) -> tuple[bool, str, str]:
        negate = self.peek() == "^"
        if negate:
            self.take()
        chars, ranges = [], []
        first = True
        while True:
            c = self.take()
            if not c:
                raise RuleError("unterminated [")
            if c == "]" and not first:
                break
            first = False
            if c == "[" and self.peek() in ":.=":
                raise RuleError("POSIX classes are not supported")
            if c == "\\":
                c = self.take()
                if not c or c.isalnum():
                    raise RuleError("escape in a bracket is not supported")
            if self.peek() == "-" and self.text[self.pos + 1 : self.pos + 2] not in ("]", ""):
                self.take()
                high = self.take()
                if high < c:
                    raise RuleError(f"bad range {c}-{high}")
                ranges.append(c + high)
            else:
                chars.append(c)
        return negate, "".join(chars), "".join(ranges)


def compile_regex(regex: str) -> NFA:
    """The NFA for ``^regex$``: (start state, states)."""
    ast = _Parser(regex).parse()
    states: list[list[Any]] = []

    def new(kind: int, a: Any = 0, b: int = -1) -> int:
        if len(states) >= MAX_STATES:
            raise RuleError("expression too large")
        states.append([kind, a, b])
        return len(states) - 1

    # Each build returns (start, holes): holes are (state, slot) whose next is open.
    def build(node: Any) -> tuple[int, list[tuple[int, int]]]:
        kind = node[0]
        if kind == "set":
            s = new(CHAR, node[1])
            return s, [(s, 2)]
        if kind == "any":
            s = new(ANY)
            return s, [(s, 2)]
        if kind == "seq":
            if not node[1]:
                s = new(SPLIT, -1, -1)  # an empty branch: one epsilon state
                states[s][2] = -2  # unused slot
                return s, [(s, 1)]
            start, holes = build(node[1][0])
            for item in node[1][1:]:
                nxt, nholes = build(item)
                patch(holes, nxt)
                holes = nholes
            return start, holes
        if kind == "alt":
            starts, holes = [], []
            for branch in node[1]:
                s, h = build(branch)
                starts.append(s)
                holes += h
            start = starts[-1]
            for s in reversed(starts[:-1]):
                start = new(SPLIT, s, start)
            return start, holes
        # ("rep", child, low, high)
        _, child, low, high = node
        pieces: list[tuple[int, list[tuple[int, int]]]] = [build(child) for _ in range(low)]
        if high is None:
            loop_start, loop_holes = build(child)
            split = new(SPLIT, loop_start, -1)
            patch(loop_holes, split)
            pieces.append((split, [(split, 2)]))
        else:
            for _ in range(high - low):
                s, h = build(child)
                split = new(SPLIT, s, -1)
                pieces.append((split, [*h, (split, 2)]))
        if not pieces:
            s = new(SPLIT, -1, -1)
            states[s][2] = -2
            return s, [(s, 1)]
        start, holes = pieces[0]
        for s, h in pieces[1:]:
            patch(holes, s)
            holes = h
        return start, holes

    def patch(holes: list[tuple[int, int]], target: int) -> None:
        for state, slot in holes:
            states[state][slot] = target

    start, holes = build(ast)
    patch(holes, new(MATCH))
    return start, tuple((k, a, b) for k, a, b in states)


def _in_set(charset: tuple[bool, str, str], c: str) -> bool:
    negate, chars, ranges = charset
    found = c in chars
    if not found:
        for i in range(0, len(ranges), 2):
            if ranges[i] <= c <= ranges[i + 1]:
                found = True
                break
    return found != negate


def _closure(nfa: tuple[tuple[int, Any, int], ...], start: list[int]) -> set[int]:
    seen: set[int] = set()
    stack = list(start)
    while stack:
        s = stack.pop()
        if s < 0 or s in seen:
            continue
        seen.add(s)
        kind, a, b = nfa[s]
        if kind == SPLIT:
            stack.append(a)
            stack.append(b)
    return seen


def _step(nfa: tuple[tuple[int, Any, int], ...], current: set[int], text: str) -> set[int]:
    """The states after reading ``text`` from ``current`` (empty: no match possible)."""
    for c in text:
        nxt = []
        for s in current:
            kind, a, b = nfa[s]
            if (kind == CHAR and _in_set(a, c)) or (kind == ANY and c != "\n"):
                nxt.append(b)
        if not nxt:
            return set()
        current = _closure(nfa, nxt)
    return current


def matches(compiled: NFA, text: str) -> bool:
    """Whether ``text`` matches the whole expression (``^…$``)."""
    start, nfa = compiled
    current = _step(nfa, _closure(nfa, [start]), text)
    return any(nfa[s][0] == MATCH for s in current)


class Rules:
    """The compiled entries for one set of directories, as the builder stored them.

    ``exact``: path -> ((type, context), …) in file order; ``specs``: (literal
    prefix, type, context, nfa) in libselinux's order; ``subs``: (alias,
    original) from file_contexts.subs*, applied to the path first.  A
    context of None stands for ``<<none>>``.
    """

    def __init__(self, exact: dict[str, Any], specs: list[Any],
                 subs: list[tuple[str, str]] | None = None) -> None:
        self.exact = exact
        self.specs = specs
        self.subs = subs or []
        # Entries by literal prefix, so a lookup tries only the entries whose
        # prefix the path starts with (a dozen of Debian's 640, found with one
        # dict probe per character of the path), newest first.
        self._by_prefix: dict[str, list[int]] = {}
        for i in range(len(specs) - 1, -1, -1):
            self._by_prefix.setdefault(specs[i][0], []).append(i)
        # Per entry, the NFA states once its literal prefix is read: every
        # path it is tried on starts with that prefix.
        self._after_prefix: dict[int, set[int]] = {}

    @classmethod
    def from_data(cls, data: Any) -> Rules:
        if not (isinstance(data, dict) and isinstance(data.get("exact"), dict)
                and isinstance(data.get("specs"), list)):
            raise ValueError("not a rules table")
        subs = data.get("subs", [])
        if not (isinstance(subs, list) and all(
                isinstance(p, tuple) and len(p) == 2 and all(isinstance(x, str) for x in p)
                for p in subs)):
            raise ValueError("not a rules table (subs)")
        return cls(data["exact"], data["specs"], subs)

    def lookup(self, path: str, mode: int) -> tuple[bool, str | None]:
        """(found, context) for ``path`` of type ``mode``; context None: <<none>>."""
        kind = TYPE_OF_MODE.get(mode & 0o170000, "")
        for alias, original in self.subs:  # libselinux: the first alias that applies
            if path == alias or path.startswith(alias + "/"):
                path = original + path[len(alias):]
                break
        for ftype, context in reversed(self.exact.get(path, ())):
            if not ftype or ftype == kind:
                return True, context
        candidates: list[int] = []
        for end in range(len(path) + 1):
            found = self._by_prefix.get(path[:end])
            if found:
                candidates += found
        candidates.sort(reverse=True)
        for i in candidates:
            prefix, ftype, context, (start, nfa) = self.specs[i]
            if ftype and ftype != kind:
                continue
            current = self._after_prefix.get(i)
            if current is None:
                current = self._after_prefix[i] = _step(nfa, _closure(nfa, [start]), prefix)
            final = _step(nfa, current, path[len(prefix):]) if current else current
            if any(nfa[s][0] == MATCH for s in final):
                return True, context
        return False, None
