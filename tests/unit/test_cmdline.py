"""initium.cmdline.parse: the kernel's splitting rules (lib/cmdline.c next_arg())."""

from __future__ import annotations

import pytest
from initium.cmdline import MAX_CMDLINE_BYTES, Cmdline, CmdlineError, Param, canonical_key, parse


def pairs(cmdline: Cmdline) -> list[tuple[str, str | None]]:
    return [(p.key, p.value) for p in cmdline.params]


# --------------------------------------------------------------------------
# splitting and quoting


def test_empty_and_blank_lines_have_no_params() -> None:
    for text in ("", " ", "\n", " \t\n\v\f\r "):
        result = parse(text)
        assert result.params == ()
        assert result.init_args == ()


def test_bare_words_and_values() -> None:
    result = parse("root=/dev/vda1 ro quiet rootflags=data=ordered")
    assert pairs(result) == [("root", "/dev/vda1"), ("ro", None), ("quiet", None),
                             ("rootflags", "data=ordered")]


def test_value_is_everything_after_the_first_equals() -> None:
    assert pairs(parse("a=b=c==d")) == [("a", "b=c==d")]


def test_empty_value_is_empty_string_not_none() -> None:
    result = parse("rd.break= quiet")
    assert pairs(result) == [("rd.break", ""), ("quiet", None)]


@pytest.mark.parametrize("space", [" ", "\t", "\n", "\v", "\f", "\r", "  \t "])
def test_every_ascii_space_separates(space: str) -> None:
    assert pairs(parse(f"a=1{space}b{space}c=3")) == [("a", "1"), ("b", None), ("c", "3")]


def test_quoted_value_keeps_spaces_and_loses_quotes() -> None:
    assert pairs(parse('foo="bar baz" next')) == [("foo", "bar baz"), ("next", None)]


def test_quoted_key() -> None:
    assert pairs(parse('"foo bar" x')) == [("foo bar", None), ("x", None)]


def test_whole_word_quoted_with_value() -> None:
    # next_arg(): the word's opening quote is skipped, its closing quote dropped.
    assert pairs(parse('"foo=bar baz"')) == [("foo", "bar baz")]


def test_quotes_in_the_middle_are_kept() -> None:
    assert pairs(parse('foo=a"b c"d e')) == [("foo", 'a"b c"d'), ("e", None)]
    assert pairs(parse('ab"c d"e')) == [('ab"c d"e', None)]


def test_quoted_key_followed_by_text_keeps_inner_quote() -> None:
    assert pairs(parse('"a b"c')) == [('a b"c', None)]


def test_unterminated_quote_runs_to_the_end() -> None:
    assert pairs(parse('foo="bar baz   qux')) == [("foo", "bar baz   qux")]
    assert pairs(parse('"foo bar')) == [("foo bar", None)]


def test_value_that_is_only_a_quote() -> None:
    assert pairs(parse('foo=" bar')) == [("foo", " bar")]
    assert pairs(parse('foo="')) == [("foo", "")]
    assert pairs(parse('foo="" x')) == [("foo", ""), ("x", None)]


def test_empty_words_are_dropped() -> None:
    assert pairs(parse('"" a ""')) == [("a", None)]


def test_trailing_newline_of_proc_cmdline() -> None:
    result = parse(b"BOOT_IMAGE=/vmlinuz root=UUID=1234 rw\n")
    assert pairs(result) == [("BOOT-IMAGE", "/vmlinuz"), ("root", "UUID=1234"), ("rw", None)]
    assert result.params[0].raw_key == "BOOT_IMAGE"
    assert result.last("rw") is None
    assert result.has("rw")


# --------------------------------------------------------------------------
# "--" and the arguments for init


def test_double_dash_ends_our_params() -> None:
    result = parse("root=/dev/vda -- single rd.break x=1")
    assert pairs(result) == [("root", "/dev/vda")]
    assert result.init_args == ("single", "rd.break", "x=1")
    assert not result.has("rd.break")


def test_init_args_lose_value_quotes_like_the_kernel() -> None:
    # init/main.c repair_env_string(): param="a b" reaches init as "param=a b".
    result = parse('quiet -- foo="a b" "c d" plain')
    assert result.init_args == ("foo=a b", "c d", "plain")


def test_double_dash_with_a_value_is_a_param() -> None:
    result = parse("--=x a")
    assert pairs(result) == [("--", "x"), ("a", None)]
    assert result.init_args == ()


def test_quoted_double_dash_also_ends_params() -> None:
    # The kernel compares the word after quote removal.
    result = parse('a "--" b')
    assert pairs(result) == [("a", None)]
    assert result.init_args == ("b",)


def test_double_dash_at_the_end() -> None:
    result = parse("a --")
    assert pairs(result) == [("a", None)]
    assert result.init_args == ()


# --------------------------------------------------------------------------
# keys: canonical form, duplicates, order


def test_dash_and_underscore_are_equal_in_keys() -> None:
    result = parse("rd.luks_uuid=1 rd.luks-uuid=2")
    assert result.values("rd.luks-uuid") == ["1", "2"]
    assert result.values("rd.luks_uuid") == ["1", "2"]
    assert canonical_key("rd.luks_uuid") == canonical_key("rd.luks-uuid") == "rd.luks-uuid"


def test_raw_key_is_kept_for_messages() -> None:
    (param,) = parse("Rd.Some_Thing=v").params
    assert param == Param("Rd.Some-Thing", "v", "Rd.Some_Thing")
    assert str(param) == "Rd.Some_Thing=v"
    assert str(parse("bare_flag").params[0]) == "bare_flag"


def test_keys_are_case_sensitive() -> None:
    result = parse("ROOT=/dev/sda root=/dev/vda")
    assert result.values("root") == ["/dev/vda"]


def test_duplicates_and_order_are_kept() -> None:
    result = parse("rd.luks.uuid=a x rd.luks.uuid=b rd.luks.uuid rd.luks.uuid=c")
    assert result.values("rd.luks.uuid") == ["a", "b", None, "c"]
    assert result.last("rd.luks.uuid") == "c"
    assert result.values("missing") == []
    assert result.last("missing") is None
    assert not result.has("missing")
    assert [p.key for p in result] == ["rd.luks.uuid", "x", "rd.luks.uuid", "rd.luks.uuid",
                                       "rd.luks.uuid"]


def test_cmdline_is_an_immutable_value() -> None:
    assert parse("a b=c") == parse("  a   b=c\n")
    assert hash(parse("a b=c")) == hash(parse("a b=c"))
    assert parse("a") != parse("b")
    assert Cmdline() == parse("")


# --------------------------------------------------------------------------
# hostile and broken input


def test_nul_byte_is_an_error_with_its_offset() -> None:
    with pytest.raises(CmdlineError, match=r"NUL byte at offset 6"):
        parse(b"root=/\x00dev/vda")
    with pytest.raises(CmdlineError, match="NUL"):
        parse("a\0")


def test_cmdline_error_is_a_value_error() -> None:
    assert issubclass(CmdlineError, ValueError)


def test_over_long_bytes_are_refused_with_the_sizes() -> None:
    data = b"a" * (MAX_CMDLINE_BYTES + 1)
    with pytest.raises(CmdlineError) as info:
        parse(data)
    message = str(info.value)
    assert str(MAX_CMDLINE_BYTES + 1) in message
    assert str(MAX_CMDLINE_BYTES) in message


def test_over_long_text_is_refused() -> None:
    with pytest.raises(CmdlineError, match=str(MAX_CMDLINE_BYTES)):
        parse("x " * (MAX_CMDLINE_BYTES // 2 + 1))


def test_exactly_the_limit_is_accepted() -> None:
    data = b"a " * (MAX_CMDLINE_BYTES // 2)
    assert len(data) == MAX_CMDLINE_BYTES
    assert len(parse(data).params) == MAX_CMDLINE_BYTES // 2


def test_non_utf8_bytes_survive_via_surrogateescape() -> None:
    result = parse(b"root=LABEL=caf\xe9 \xff\xfe=\x80")
    root = result.last("root")
    assert root == "LABEL=caf\udce9"
    assert result.values("\udcff\udcfe") == ["\udc80"]
    # Nothing was lost: the original bytes come back.
    assert root.encode("utf-8", "surrogateescape") == b"LABEL=caf\xe9"


def test_utf8_is_decoded() -> None:
    assert parse("root=LABEL=données".encode()).last("root") == "LABEL=données"


def test_non_ascii_spaces_do_not_separate() -> None:
    # U+2003 is E2 80 83 in UTF-8: no byte of it is a space to lib/ctype.c either.
    assert pairs(parse("a=x\u2003y\u3000z b")) == [("a", "x\u2003y\u3000z"), ("b", None)]


# --------------------------------------------------------------------------
# the kernel's corner cases


def test_leading_equals_is_part_of_the_key_like_the_kernel() -> None:
    # next_arg() keeps "no '=' yet" as equals == 0, so an '=' at index 0 does not count
    assert pairs(parse("=foo")) == [("=foo", None)]
    assert pairs(parse("=")) == [("=", None)]
    assert pairs(parse('"=x y"')) == [("=x y", None)]
    # ... and a later '=' does: "=a=b" is param "=a", value "b".
    assert pairs(parse("=a=b")) == [("=a", "b")]


def test_second_double_dash_ends_the_init_args_like_the_kernel() -> None:
    # start_kernel() parses the init args with parse_args(), which stops at "--" again
    assert parse("a -- b -- c d").init_args == ("b",)
    assert parse("a -- -- c").init_args == ()
    assert parse("a -- b --=x c").init_args == ("b", "--=x", "c")


def test_byte_a0_separates_words_like_the_kernel() -> None:
    # lib/ctype.c counts 0xA0 as a space; the kernel splits bytes, not characters.
    got = parse(b"root=/dev/vda\xa0rw")
    assert [(p.key, p.value) for p in got] == [("root", "/dev/vda"), ("rw", None)]
    # Inside a UTF-8 character (a-grave is C3 A0) it splits too, leaving the lead byte.
    split = parse("init=/sbin/\u00e0x".encode())
    assert [(p.key, p.value) for p in split] == [("init", "/sbin/\udcc3"), ("x", None)]


def test_text_with_a_lone_surrogate_is_a_clear_error() -> None:
    with pytest.raises(CmdlineError, match="not encodable at offset 5"):
        parse("root=\ud800")
