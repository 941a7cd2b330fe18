"""The boot plan: resolved by the builder, stored in the image, obeyed at boot.

The init does no plugin discovery and no ordering at boot: it reads this
file, checks it matches the running kernel, and imports exactly the stages it
names, in the order given.

The file is in ``marshal`` format: the interpreter reads it with its own
built-in, documented loader, so there is no parser of ours on the boot path
and no dependence on a private corner of another module (the skeleton drove
``_json``'s C scanner and relied on 3.11's exceptions from it).  Whatever
``marshal`` makes of a corrupt file, the reader accepts only plain data
(dict, list, tuple, str, int, float, bool, None) of bounded depth and size,
and every failure is one ``PlanError`` line.
"""

from __future__ import annotations

import marshal
import sys

from initium.record import field, record
from initium.stage import JSON, Stage

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

PLAN_PATH = "/etc/initium/plan.marshal"
PLAN_VERSION = 2
# marshal's format 4 is what every CPython since 3.4 reads and writes.
MARSHAL_FORMAT = 4
MAX_PLAN_BYTES = 8 << 20
MAX_DEPTH = 32
_PLAIN = (str, int, float, bool, type(None))


class PlanError(ValueError):
    """The stored plan is missing or malformed: the image is broken, not the machine."""


@record
class StageEntry:
    name: str
    ref: str  # "module:Class", importable inside the image
    data: JSON = field(default_factory=dict)


@record
class Plan:
    kver: str
    stages: tuple[StageEntry, ...]
    has_shell: bool = False
    default_emergency: str | None = None

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.stages]

    def stage_data(self, name: str) -> JSON:
        for entry in self.stages:
            if entry.name == name:
                return entry.data
        return {}

    def to_bytes(self) -> bytes:
        doc = {
            "version": PLAN_VERSION,
            "kver": self.kver,
            "has_shell": self.has_shell,
            "default_emergency": self.default_emergency,
            "stages": [{"name": s.name, "ref": s.ref, "data": s.data} for s in self.stages],
        }
        check_plain(doc, 0)
        return marshal.dumps(doc, MARSHAL_FORMAT)

    @classmethod
    def from_bytes(cls, data: bytes) -> Plan:
        try:
            doc: Any = load_plain(data, MAX_PLAN_BYTES)
        except ValueError as err:
            raise PlanError(f"plan {err}") from None
        if not isinstance(doc, dict) or doc.get("version") != PLAN_VERSION:
            raise PlanError(f"plan version is not {PLAN_VERSION}")
        kver, stages = doc.get("kver"), doc.get("stages")
        if not isinstance(kver, str) or not isinstance(stages, list):
            raise PlanError("plan lacks kver or stages")
        entries = []
        for item in stages:
            if not (isinstance(item, dict) and isinstance(item.get("name"), str)
                    and isinstance(item.get("ref"), str) and ":" in item["ref"]
                    and isinstance(item.get("data", {}), dict)):
                raise PlanError(f"bad stage entry in plan: {_one_line(item)[:80]}")
            entries.append(StageEntry(item["name"], item["ref"], item.get("data", {})))
        emergency = doc.get("default_emergency")
        return cls(kver, tuple(entries), doc.get("has_shell", False) is True,
                   emergency if isinstance(emergency, str) else None)

    def load_stages(self) -> list[Stage]:
        """Import the stage objects the plan names."""
        loaded = []
        for entry in self.stages:
            module_name, _, attr = entry.ref.partition(":")
            try:
                __import__(module_name)  # importlib would import warnings and more at boot
                obj = getattr(sys.modules[module_name], attr)
            except (ImportError, AttributeError) as err:
                raise PlanError(f"stage {entry.name}: cannot load {entry.ref}: {err}") from None
            stage = obj() if isinstance(obj, type) else obj
            if not isinstance(stage, Stage) or stage.name != entry.name:
                raise PlanError(f"stage {entry.name}: {entry.ref} is not that stage")
            loaded.append(stage)
        return loaded


def load_plain(data: bytes, limit: int) -> Any:
    """Marshal data that may be damaged, as plain data; ValueError with the reason otherwise.

    The messages read after a noun: "is not readable: …", "holds a code …".
    """
    if len(data) > limit:
        raise ValueError(f"is {len(data)} bytes, over {limit}")
    try:
        doc = marshal.loads(data)
    except (ValueError, EOFError, TypeError, MemoryError, RecursionError) as err:
        raise ValueError(f"is not readable: {_one_line(err)}") from None
    try:
        check_plain(doc, 0)
    except ValueError as err:
        raise ValueError(f"holds {err}") from None
    return doc


def check_plain(value: object, depth: int = 0) -> None:
    """Plain data only: a corrupt file must not hand the init a code object or a set."""
    if depth > MAX_DEPTH:
        raise ValueError(f"data nested deeper than {MAX_DEPTH}")
    if isinstance(value, _PLAIN):
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"a key of type {type(key).__name__}")
            check_plain(item, depth + 1)
        return
    if isinstance(value, list | tuple):
        for item in value:
            check_plain(item, depth + 1)
        return
    raise ValueError(f"a {type(value).__name__}, which a plan never holds")


def _one_line(value: object) -> str:
    try:
        text = repr(value) if not isinstance(value, BaseException) else str(value)
    except Exception:
        return "(unprintable)"
    return text.replace("\n", " ")
