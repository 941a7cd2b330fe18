"""initium.record: the dataclass subset the boot path uses, without importing dataclasses."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
from initium import ops
from initium.record import FrozenInstanceError, asdict, field, record, replace


@record
class Point:
    x: int
    y: int = 0
    tags: list[str] = field(default_factory=list)
    KIND: ClassVar[str] = "point"


@record(frozen=False)
class Counter:
    name: str
    count: int = 0


@record
class Point3(Point):
    z: int = 0


def test_positional_and_keyword_construction() -> None:
    assert Point(1, 2).x == 1
    assert Point(1, 2).y == 2
    p = Point(y=5, x=4)
    assert (p.x, p.y) == (4, 5)
    assert Point(1, y=2) == Point(1, 2)


def test_defaults() -> None:
    p = Point(7)
    assert p.y == 0
    assert p.tags == []


def test_default_factory_gives_a_fresh_list_per_instance() -> None:
    a, b = Point(1), Point(2)
    a.tags.append("x")
    assert b.tags == []
    assert a.tags is not b.tags
    assert Point(3).tags == []


def test_classvar_is_not_a_field() -> None:
    assert "KIND" not in asdict(Point(1))
    assert Point.KIND == "point"
    with pytest.raises(TypeError):
        Point(1, 2, [], "kind")  # type: ignore[call-arg]


def test_missing_argument_raises_type_error_naming_it() -> None:
    with pytest.raises(TypeError, match="'x'"):
        Point()  # type: ignore[call-arg]


def test_too_many_positional_arguments() -> None:
    with pytest.raises(TypeError, match="takes 3 arguments, got 4"):
        Point(1, 2, [], 4)  # type: ignore[call-arg]


def test_unknown_keyword_argument() -> None:
    with pytest.raises(TypeError, match="'w'"):
        Point(1, w=2)  # type: ignore[call-arg]


def test_argument_given_twice() -> None:
    with pytest.raises(TypeError, match="'x'"):
        Point(1, x=2)  # type: ignore[misc]


@record
class Pair:
    a: str
    b: int = 0


def test_frozen_refuses_assignment() -> None:
    p = Point(1, 2)
    with pytest.raises(FrozenInstanceError, match="'x'"):
        p.x = 3  # type: ignore[misc]
    with pytest.raises(AttributeError):  # FrozenInstanceError is an AttributeError
        p.new = 1  # type: ignore[attr-defined]
    assert (p.x, p.y) == (1, 2)
    assert not hasattr(p, "new")


def test_frozen_refuses_deletion() -> None:
    p = Point(1, 2)
    with pytest.raises(FrozenInstanceError, match="'y'"):
        del p.y
    assert p.y == 2


def test_frozen_equal_records_hash_equal() -> None:
    assert Pair("a", 1) == Pair("a", 1)
    assert Pair("a", 1) is not Pair("a", 1)
    assert hash(Pair("a", 1)) == hash(Pair("a", 1))
    assert Pair("a", 1) != Pair("a", 2)
    assert len({Pair("a", 1), Pair("a", 1), Pair("b", 1)}) == 2
    assert {ops.Mount("a", "/b", "ext4"): 1}[ops.Mount("a", "/b", "ext4")] == 1


def test_equality_needs_the_same_type() -> None:
    point: object = Point(1)
    unmount: object = ops.Unmount("/x")
    assert Point(1, 0) != Point3(1, 0)
    assert point != (1, 0, [])
    assert unmount != ops.MakeDir("/x")
    assert point == Point(1, 0, [])


def test_mutable_records_allow_assignment_and_are_unhashable() -> None:
    c = Counter("boots")
    c.count += 1
    c.name = "b"
    assert c == Counter("b", 1)
    with pytest.raises(TypeError):
        hash(c)


def test_inheritance_adds_fields_after_the_base_fields() -> None:
    p = Point3(1, 2, ["t"], 3)
    assert asdict(p) == {"x": 1, "y": 2, "tags": ["t"], "z": 3}
    assert Point3(1, z=9).z == 9
    assert Point3(1).tags == []
    assert isinstance(p, Point)
    with pytest.raises(FrozenInstanceError):
        p.z = 1  # type: ignore[misc]


def test_repr_names_the_fields() -> None:
    assert repr(Point(1, 2)) == "Point(x=1, y=2, tags=[])"
    assert repr(Counter("a")) == "Counter(name='a', count=0)"


def test_match_class_patterns_positionally() -> None:
    def describe(op: ops.Op) -> str:
        match op:
            case ops.Mount(source, target, fstype):
                return f"mount {source} {target} {fstype}"
            case ops.MakeDir(path, mode):
                return f"mkdir {path} {mode:o}"
            case ops.WriteFile(path, data=data):
                return f"write {path} {len(data)}"
            case _:
                return "other"

    assert describe(ops.Mount("/dev/vda", "/sysroot", "ext4", 1)) == "mount /dev/vda /sysroot ext4"
    assert describe(ops.MakeDir("/run", 0o700)) == "mkdir /run 700"
    assert describe(ops.WriteFile("/x", b"abc")) == "write /x 3"
    assert describe(ops.Unmount("/x")) == "other"
    assert ops.Mount.__match_args__ == ("source", "target", "fstype", "flags", "data",
                                        "flag_names")


def test_match_on_own_record() -> None:
    match Point3(1, 2, [], 3):
        case Point3(x, y, _, z):
            assert (x, y, z) == (1, 2, 3)
        case _:
            pytest.fail("Point3 did not match")


def test_replace_copies_with_changes() -> None:
    p = Point(1, 2, ["a"])
    q = replace(p, y=5)
    assert q == Point(1, 5, ["a"])
    assert p == Point(1, 2, ["a"])
    assert type(replace(Point3(1), z=4)) is Point3
    c = Counter("a", 1)
    d = replace(c, count=2)
    assert d is not c
    assert (c.count, d.count) == (1, 2)


def test_replace_refuses_unknown_fields() -> None:
    with pytest.raises(TypeError, match="'nope'"):
        replace(Point(1), nope=1)


def test_asdict_is_shallow() -> None:
    tags = ["a"]
    d = asdict(Point(1, 2, tags))
    assert d == {"x": 1, "y": 2, "tags": ["a"]}
    assert d["tags"] is tags


def test_default_values_are_class_attributes_of_the_record() -> None:
    # defaults may be any object, including None and tuples
    @record
    class Opt:
        a: tuple[str, ...] = ()
        b: str | None = None

    assert Opt() == Opt((), None)
    assert Opt(b="x").b == "x"


def test_record_decorator_returns_the_same_class() -> None:
    class Plain:
        v: int

    plain: Any = Plain
    built = record(plain)
    assert built(3).v == 3
    assert built is Plain


def test_mutable_subclass_of_a_frozen_record_is_refused() -> None:
    # as dataclasses does: it would otherwise inherit the frozen __setattr__
    with pytest.raises(TypeError, match="Moving: a mutable record cannot inherit from a frozen"):
        @record(frozen=False)
        class Moving(Point):  # type: ignore[misc]
            speed: int = 0

