"""Name -> class resolution for models and tasks; unknown names fail with the list of known ones."""
from __future__ import annotations

import importlib
from typing import Any

from omnibench.protocol import ModelAdapter, OmnibenchError, Task


def _resolve(kind: str, name: str, table: dict[str, str]) -> Any:
    if name not in table:
        raise OmnibenchError(f"unknown {kind} '{name}' (known: {', '.join(sorted(table))})")
    module, _, attr = table[name].partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except ImportError as exc:
        raise OmnibenchError(f"{kind} '{name}' is registered but cannot be imported: {exc} "
                             f"(install its extra, see README)") from exc


def model_names() -> list[str]:
    from omnibench.models import MODELS
    return sorted(MODELS)


def task_names() -> list[str]:
    from omnibench.tasks import TASKS
    return sorted(TASKS)


def get_model_class(name: str, speed_references: bool = False) -> type[ModelAdapter]:
    """A model adapter's class; with `speed_references`, also the speed sweep's reference models."""
    from omnibench.models import MODELS, SPEED_REFERENCES
    return _resolve("model", name, {**MODELS, **SPEED_REFERENCES} if speed_references else MODELS)


def get_task_class(name: str) -> type[Task]:
    from omnibench.tasks import TASKS
    return _resolve("task", name, TASKS)
