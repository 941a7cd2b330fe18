"""The boot plan: resolved by the builder, stored in the image, obeyed at boot.

The init does no plugin discovery and no ordering at boot: it reads this
file, checks it matches the running kernel, and imports exactly the stages it
names, in the order given.
"""

from __future__ import annotations

import sys

from initium import jsonlite
from initium.record import field, record
from initium.stage import JSON, Stage

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

PLAN_PATH = "/etc/initium/plan.json"
PLAN_VERSION = 1


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

    def to_json(self) -> bytes:
        import json  # build time only: the init reads plans with jsonlite

        doc = {
            "version": PLAN_VERSION,
            "kver": self.kver,
            "has_shell": self.has_shell,
            "default_emergency": self.default_emergency,
            "stages": [{"name": s.name, "ref": s.ref, "data": s.data} for s in self.stages],
        }
        return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes) -> Plan:
        try:
            doc: Any = jsonlite.loads(data.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as err:
            raise PlanError(f"plan is not JSON: {err}") from None
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
                raise PlanError(f"bad stage entry in plan: {str(item)[:80]}")
            entries.append(StageEntry(item["name"], item["ref"], item.get("data", {})))
        emergency = doc.get("default_emergency")
        return cls(kver, tuple(entries), bool(doc.get("has_shell", False)),
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
