"""initium.verity=: any text gives a spec or one clear VerityError, and specs round-trip."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st
from initium.storage.verity import MAX_SPEC, POLICIES, VerityError, parse_verity, valid_hash

FUZZ = settings(max_examples=2000, deadline=None)
# Commas, equals signs, slashes, hex digits and the spec prefixes come up often.
pieces = st.sampled_from(["UUID=", "PARTUUID=", "LABEL=", "/dev/", "vda", ",", "=", "ab",
                          "0f", "-", "\x00", "é", " ", "ignore-corruption", "ZFS=", ""])
texts = st.lists(pieces, max_size=12).map("".join) | st.text(max_size=300)


@FUZZ
@given(texts)
@example("/dev/vda,/dev/vdb," + "ab" * 32)
@example("/dev/vda,/dev/vdb," + "ab" * 32 + ",restart-on-corruption,,")
@example(",,")
@example("UUID=,/dev/vdb," + "ab" * 32)
@example("a" * (MAX_SPEC + 1))
def test_any_text_gives_a_spec_or_one_clear_error(text: str) -> None:
    try:
        spec = parse_verity(text)
    except VerityError as err:
        message = str(err)
        assert message.startswith("initium.verity=: ") and "\n" not in message
        assert len(message) < 300
        return
    assert valid_hash(spec.roothash) and spec.roothash == spec.roothash.lower()
    assert spec.data and spec.hash and all(spec.options)
    assert "," not in spec.data + spec.hash


hexes = st.text("0123456789abcdefABCDEF", min_size=16, max_size=64).map(
    lambda t: t[:len(t) // 2 * 2])
devices = st.sampled_from(["/dev/vda", "/dev/nvme0n1p2", "UUID=5d6e7f80-91a2-43b4-c5d6",
                           "PARTUUID=0c7d2a9e-51f4", "LABEL=root", "PARTLABEL=verity"])
options = st.lists(st.sampled_from([*POLICIES, "ignore-zero-blocks", "check-at-most-once"]),
                   max_size=4)


@FUZZ
@given(devices, devices, hexes, options)
def test_specs_round_trip(data: str, tree: str, roothash: str, opts: list[str]) -> None:
    if len(roothash) < 32:
        roothash = roothash * 2
    spec = parse_verity(",".join([data, tree, roothash, *opts]))
    assert (spec.data, spec.hash, spec.roothash, spec.options) == \
        (data, tree, roothash.lower(), tuple(opts))
