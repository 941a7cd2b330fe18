"""Which stages go into an image: the built-in ones, entry points, and the config's."""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from initium.options import Option
from initium.stage import Stage
from initium.stages import DEFAULT_STAGES, OPTIONAL_STAGES

ENTRY_POINT_GROUP = "initium.stages"


class StageLoadError(ValueError):
    pass


def _load(ref: str) -> Stage:
    module_name, _, attr = ref.partition(":")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as err:
        raise StageLoadError(f"cannot load stage {ref}: {err}") from None
    stage = obj() if isinstance(obj, type) else obj
    if not isinstance(stage, Stage) or not stage.name:
        raise StageLoadError(f"{ref} is not an initium stage")
    return stage


def load_stages(extra: tuple[str, ...] = ()) -> list[Stage]:
    """Built-in stages, then entry points of ``initium.stages``, then ``extra`` refs or names."""
    refs = list(DEFAULT_STAGES)
    plugins = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    refs += [plugins[name] for name in sorted(plugins)]
    for item in extra:
        refs.append(plugins.get(item, item) if ":" not in item else item)
    return [_load(ref) for ref in dict.fromkeys(refs)]


def builtin_stages() -> list[Stage]:
    """The stages initium ships, without plugins: what the man page documents."""
    return [_load(ref) for ref in (*DEFAULT_STAGES, *OPTIONAL_STAGES)]


def declared_options(stages: list[Stage]) -> list[Option]:
    """Every option the stages declare, in stage order."""
    return [option for stage in stages for option in stage.options]
