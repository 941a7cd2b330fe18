"""Our boot-time glob matcher against fnmatch.fnmatchcase, the semantics it copies.

The alphabet is small and full of the characters that mean something in a
pattern (``* ? [ ] ! - ^ \\``), so brackets, ranges, reversed ranges, a
leading ``]`` or ``!`` and unterminated classes all come up often.
"""

from __future__ import annotations

import fnmatch

from hypothesis import example, given, settings
from hypothesis import strategies as st
from initium.kmod import MAX_PATTERN, GlobError, compile_glob, glob_match, literal_prefix

FUZZ = settings(max_examples=3000, deadline=None)
SPECIAL = "*?[]!-^\\"
patterns = st.text(st.sampled_from("ab0:" + SPECIAL), max_size=14)
texts = st.text(st.sampled_from("ab0:-]![^\\z"), max_size=12)


@FUZZ
@given(patterns, texts)
@example("[z-ab]", "b")
@example("[!z-a]", "q")
@example("[a-c-e]", "-")
@example("[c-a-b]", "-")
@example("[]-a]", "]")
@example("[!]a]", "b")
@example("[", "[")
@example("a*b*c", "aXbYbc")
def test_matches_as_fnmatchcase_does(pattern: str, text: str) -> None:
    assert glob_match(compile_glob(pattern), text) == fnmatch.fnmatchcase(text, pattern)


@FUZZ
@given(patterns, texts)
def test_a_match_starts_with_the_literal_prefix(pattern: str, text: str) -> None:
    if glob_match(compile_glob(pattern), text):
        assert text.startswith(literal_prefix(pattern))


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=MAX_PATTERN + 50), st.text(max_size=300))
def test_any_pattern_gives_a_value_or_one_clear_error(pattern: str, text: str) -> None:
    try:
        tokens = compile_glob(pattern)
    except GlobError as err:
        assert len(pattern) > MAX_PATTERN and "\n" not in str(err)
        return
    assert isinstance(glob_match(tokens, text), bool)
