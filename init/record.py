"""Value classes for the boot path, without the import cost of dataclasses.

``dataclasses`` pulls in inspect, ast, dis, tokenize and enum and then
``exec``s generated code for every class: about 25 ms of a 77 ms native
import of the init, which is most of a second under QEMU TCG.  ``record``
gives the part the init uses (keyword/positional construction, defaults,
factories, equality, hashing, repr, frozenness, ``match`` support) from one
generic ``__init__``.  Type checkers see it as a dataclass (PEP 681).
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar, dataclass_transform

    T = TypeVar("T")
    R = TypeVar("R")
else:
    def dataclass_transform(**_kwargs: object) -> object:
        return lambda f: f


class _Factory:
    __slots__ = ("make",)

    def __init__(self, make: Callable[[], object]) -> None:
        self.make = make


def field(*, default_factory: Callable[[], T]) -> T:
    """A default made fresh for every instance (lists, dicts)."""
    return _Factory(default_factory)  # type: ignore[return-value]


_MISSING = object()


class FrozenInstanceError(AttributeError):
    pass


def _init(self: Any, *args: Any, **kwargs: Any) -> None:
    cls = type(self)
    names: tuple[str, ...] = cls.__record_fields__
    defaults: dict[str, Any] = cls.__record_defaults__
    if len(args) > len(names):
        raise TypeError(f"{cls.__name__}() takes {len(names)} arguments, got {len(args)}")
    values = dict(zip(names, args, strict=False))
    for key, value in kwargs.items():
        if key not in names or key in values:
            raise TypeError(f"{cls.__name__}() got an unexpected or repeated argument {key!r}")
        values[key] = value
    setter = object.__setattr__
    for name in names:
        if name in values:
            setter(self, name, values[name])
            continue
        default = defaults.get(name, _MISSING)
        if default is _MISSING:
            raise TypeError(f"{cls.__name__}() missing argument {name!r}")
        setter(self, name, default.make() if isinstance(default, _Factory) else default)


def _values(self: Any) -> tuple[Any, ...]:
    return tuple(getattr(self, n) for n in type(self).__record_fields__)


def _repr(self: Any) -> str:
    inner = ", ".join(f"{n}={getattr(self, n)!r}" for n in type(self).__record_fields__)
    return f"{type(self).__name__}({inner})"


def _eq(self: object, other: object) -> bool:
    if type(other) is not type(self):
        return NotImplemented  # type: ignore[no-any-return]
    return _values(self) == _values(other)


def _hash(self: Any) -> int:
    return hash(_values(self))


def _frozen_setattr(self: Any, name: str, value: Any) -> None:
    raise FrozenInstanceError(f"cannot assign to field {name!r} of a frozen record")


def _frozen_delattr(self: Any, name: str) -> None:
    raise FrozenInstanceError(f"cannot delete field {name!r} of a frozen record")


def _build(cls: type[Any], frozen: bool) -> type[Any]:
    fields: list[str] = []
    defaults: dict[str, Any] = {}
    if not frozen and any(getattr(b, "__setattr__", None) is _frozen_setattr
                          for b in cls.__mro__[1:]):
        raise TypeError(f"{cls.__name__}: a mutable record cannot inherit from a frozen one")
    for base in reversed(cls.__mro__[1:]):
        fields += [f for f in getattr(base, "__record_fields__", ()) if f not in fields]
        defaults.update(getattr(base, "__record_defaults__", {}))
    own = cls.__dict__.get("__annotations__", {})  # noqa: RUF063 - inspect costs too much here
    for name, annotation in own.items():
        if "ClassVar" in str(annotation):
            continue
        if name not in fields:
            fields.append(name)
        if name in cls.__dict__:
            defaults[name] = cls.__dict__[name]
    methods: dict[str, object] = {
        "__record_fields__": tuple(fields), "__record_defaults__": defaults,
        "__match_args__": tuple(fields), "__init__": _init, "__repr__": _repr, "__eq__": _eq,
        "__hash__": _hash if frozen else None,
    }
    if frozen:
        methods["__setattr__"] = _frozen_setattr
        methods["__delattr__"] = _frozen_delattr
    for name, value in methods.items():
        setattr(cls, name, value)
    return cls


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def record(cls: type[R] | None = None, /, *, frozen: bool = True) -> Any:
    if cls is None:
        return lambda c: _build(c, frozen)
    return _build(cls, frozen)


def replace(obj: R, **changes: Any) -> R:
    """A copy of a record with some fields changed."""
    values = {n: getattr(obj, n) for n in type(obj).__record_fields__}  # type: ignore[attr-defined]
    values.update(changes)
    return type(obj)(**values)


def asdict(obj: object) -> dict[str, Any]:
    """The fields of a record, shallow."""
    return {n: getattr(obj, n) for n in type(obj).__record_fields__}  # type: ignore[attr-defined]
