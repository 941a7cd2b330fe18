"""Property tests for the command-line parser and the option table.

The command line is the one input of PID 1 that anyone at the boot loader
prompt controls: whatever it holds, parsing ends in a Cmdline or a
CmdlineError, and turning a Cmdline into options never raises.
"""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st
from initium.cmdline import Cmdline, CmdlineError, parse
from initium.options import EMERGENCY_ACTIONS, OPTIONS, BootOptions, ParsedOptions, parse_options

FUZZ = settings(max_examples=500, deadline=None)


def parse_or_none(data: str | bytes) -> Cmdline | None:
    try:
        result = parse(data)
    except CmdlineError as err:
        assert str(err)  # a message a user can read
        return None
    assert isinstance(result, Cmdline)
    return result


def check_options(cmdline: Cmdline) -> None:
    parsed = parse_options(cmdline)
    assert isinstance(parsed, ParsedOptions)
    assert isinstance(parsed.options, BootOptions)
    assert all(isinstance(w, str) and w for w in parsed.warnings)
    opts = parsed.options
    assert opts.emergency is None or opts.emergency in EMERGENCY_ACTIONS
    assert all(isinstance(b, str) and b.strip() == b and b for b in opts.breaks)
    for seconds in (opts.rootwait, opts.rootdelay, opts.rd_timeout):
        assert seconds is None or seconds >= 0
    assert opts.rootdelay is None or math.isfinite(opts.rootdelay)
    assert opts.init is None or opts.init.startswith("/")
    assert opts.root_rw in (None, True, False)


# --------------------------------------------------------------------------
# never anything but a Cmdline or a CmdlineError


@FUZZ
@given(st.binary(max_size=600))
def test_any_bytes(data: bytes) -> None:
    result = parse_or_none(data)
    if b"\0" not in data:
        assert result is not None
    if result is not None:
        check_options(result)
        # surrogateescape keeps every byte: keys and values re-encode to pieces of the input.
        for param in result:
            assert param.raw_key.encode("utf-8", "surrogateescape") in data
            if param.value is not None:
                assert param.value.encode("utf-8", "surrogateescape") in data


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return False
    return True


def _no_a0_byte(text: str) -> bool:
    """The kernel splits on byte 0xA0, which hides inside many UTF-8 characters (à is C3 A0)."""
    return b"\xa0" not in text.encode("utf-8", "surrogateescape")


@FUZZ
@given(st.text(max_size=600))
def test_any_text(text: str) -> None:
    result = parse_or_none(text)
    if "\0" not in text and _encodable(text):
        assert result is not None
    if result is not None:
        check_options(result)


_KEYS = [o.key for o in OPTIONS] + ["rd.unknown", "initium.nope", "console", "rd_break",
                                     "rd-break", "--"]
_VALUES = st.one_of(st.none(), st.sampled_from(["", "0", "1", "-1", "inf", "nan", "1e999",
                                                 "/sbin/init", "sbin/init", "root,,udev",
                                                 ",", "shell", "halt", "yes", "5.5"]),
                    st.text(alphabet=st.characters(exclude_characters='"\0 \t\n\v\f\r',
                                                  exclude_categories=["Cs"]),
                            max_size=12))


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(_KEYS), _VALUES), max_size=12))
def test_option_shaped_lines_never_break_parse_options(
        words: list[tuple[str, str | None]]) -> None:
    text = " ".join(k if v is None else f"{k}={v}" for k, v in words)
    result = parse(text)
    check_options(result)


# --------------------------------------------------------------------------
# round trips

_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_SAFE_KEY = st.builds(str.__add__, st.sampled_from(_LETTERS),
                      st.text(alphabet=_LETTERS + "0123456789._-", max_size=15))
_SAFE_VALUE = st.text(alphabet=_LETTERS + "0123456789/.,:+_-", max_size=20)


@FUZZ
@given(st.lists(st.tuples(_SAFE_KEY, st.one_of(st.none(), _SAFE_VALUE)), max_size=20),
       st.sampled_from([" ", "  ", "\t", "\n", " \n "]))
def test_safe_params_round_trip(params: list[tuple[str, str | None]], sep: str) -> None:
    text = sep.join(k if v is None else f"{k}={v}" for k, v in params)
    result = parse(text)
    assert [(p.raw_key, p.value) for p in result] == params
    assert [p.key for p in result] == [k.replace("_", "-") for k, _ in params]
    assert [str(p) for p in result] == [k if v is None else f"{k}={v}" for k, v in params]
    assert result.init_args == ()


@FUZZ
@given(_SAFE_KEY, st.text(alphabet=st.characters(exclude_characters='"\0',
                                                 exclude_categories=["Cs"]),
                          max_size=30).filter(_no_a0_byte))
def test_quoted_values_round_trip(key: str, value: str) -> None:
    result = parse(f'{key}="{value}" last')
    assert [(p.raw_key, p.value) for p in result] == [(key, value), ("last", None)]


@FUZZ
@given(st.lists(_SAFE_KEY, max_size=5), st.lists(_SAFE_KEY, max_size=5))
def test_init_args_round_trip(ours: list[str], theirs: list[str]) -> None:
    result = parse(" ".join([*ours, "--", *theirs]))
    assert [p.raw_key for p in result] == ours
    assert list(result.init_args) == theirs


# --------------------------------------------------------------------------
# differential: a line-by-line transliteration of the kernel's C

_KSPACE = b" \t\n\v\f\r"
_QUOTE = ord('"')


def _cstr(buf: bytearray, start: int) -> str:
    return buf[start:buf.index(0, start)].decode("ascii")


def _kernel_next_arg(buf: bytearray, args: int) -> tuple[int, int | None, int]:
    """lib/cmdline.c next_arg(), on a NUL-terminated buffer: (param, val, next) offsets."""
    in_quote = quoted = False
    if buf[args] == _QUOTE:
        args += 1
        in_quote = quoted = True
    equals = 0
    i = 0
    while buf[args + i]:
        c = buf[args + i]
        if c in _KSPACE and not in_quote:
            break
        if equals == 0 and c == ord("="):
            equals = i  # at i == 0 this leaves it "unset", as in C
        if c == _QUOTE:
            in_quote = not in_quote
        i += 1
    param = args
    val: int | None
    if not equals:
        val = None
    else:
        buf[args + equals] = 0
        val = args + equals + 1
        if buf[val] == _QUOTE:
            val += 1
            if buf[args + i - 1] == _QUOTE:
                buf[args + i - 1] = 0
    if quoted and i > 0 and buf[args + i - 1] == _QUOTE:
        buf[args + i - 1] = 0
    if buf[args + i]:
        buf[args + i] = 0
        nxt = args + i + 1
    else:
        nxt = args + i
    while buf[nxt] and buf[nxt] in _KSPACE:
        nxt += 1
    return param, val, nxt


def _kernel_split(text: str) -> tuple[list[tuple[str, str | None]], list[str]]:
    """parse_args() twice, as start_kernel() calls it: (our params, init's arguments)."""
    buf = bytearray(text.encode("ascii")) + b"\0"
    pos = 0
    while buf[pos] and buf[pos] in _KSPACE:
        pos += 1
    params: list[tuple[str, str | None]] = []
    init_args: list[str] = []
    target: list[str] | None = None
    while buf[pos]:
        p, v, pos = _kernel_next_arg(buf, pos)
        param, val = _cstr(buf, p), None if v is None else _cstr(buf, v)
        if val is None and param == "--":
            if target is not None:
                break  # the second parse_args() stops here: the rest reaches nobody
            target = init_args
            continue
        if target is None:
            params.append((param, val))
        else:
            target.append(param if val is None else f"{param}={val}")  # repair_env_string()
    return params, init_args


_TOKENS = st.sampled_from([" ", "  ", "\t", "\n", '"', "=", "a", "b", "-", "_", ".", "--",
                           "x=", '="', '" ', "c d"])


@FUZZ
@given(st.lists(_TOKENS, max_size=30).map("".join))
def test_same_split_as_the_kernel(text: str) -> None:
    kparams, kinit = _kernel_split(text)
    result = parse(text)
    # parse() drops words that are empty after quote removal (the kernel
    # hands them to parse_one, which ignores an empty name).
    assert [(p.raw_key, p.value) for p in result] == [
        (k, v) for k, v in kparams if k or v is not None]
    assert list(result.init_args) == kinit
