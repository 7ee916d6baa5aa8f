"""Cache policy of the data stages: keyed on identities and config, never on arrays.

A re-run on the same data with the same settings skips load, validate, plot and
preprocess. Their keys name what decides each result (the data source's content
digest or the dataset digest, the config fields the stage reads, the stage's
code), and their results persist as small files under ``<workdir>/cache``.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from prefect.cache_policies import TASK_SOURCE, CachePolicy
from prefect.context import TaskRunContext
from prefect.filesystems import LocalFileSystem

#: The folder under the workdir where cached stage results persist.
CACHE_FOLDER = "cache"

KeyParts = Callable[[Mapping[str, Any]], Mapping[str, Any] | None]
Outputs = Callable[[Any], Sequence[str]]


def cache_storage(workdir: str) -> Path:
    """Where the data stages of a run with this workdir persist their results."""
    return Path(workdir).resolve() / CACHE_FOLDER


@dataclass(kw_only=True)
class StageCache(CachePolicy):
    """Key a stage on the values that decide its result, and on its code.

    Args:
        parts: maps the task's inputs to the small JSON values that decide its
            result (a digest, config fields); ``None`` means "do not cache".
        code: modules holding the stage logic; editing one invalidates the cache.
        outputs: the files a result points to. A cached result whose files are
            gone is dropped and the stage runs again.
    """

    parts: KeyParts = field(default=lambda inputs: None)
    code: tuple[str, ...] = ()
    outputs: Outputs = field(default=lambda result: ())

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        parts = self.parts(inputs)
        if parts is None:
            return None
        identity = {
            "stage": task_ctx.task.name,
            "task": TASK_SOURCE.compute_key(task_ctx, inputs, flow_parameters),
            "code": [_module_digest(name) for name in self.code],
            "parts": dict(parts),
        }
        text = json.dumps(identity, sort_keys=True, default=str)
        key = f"{task_ctx.task.name}-{hashlib.sha256(text.encode()).hexdigest()}"
        _drop_if_stale(task_ctx, key, self.outputs)
        return key


def _drop_if_stale(task_ctx: TaskRunContext, key: str, outputs: Outputs) -> None:
    """Delete a cached result that points to deleted files (or cannot be read)."""
    store = task_ctx.result_store
    storage = store.result_storage
    if not isinstance(storage, LocalFileSystem) or not store.exists(key):
        return
    try:
        paths = outputs(store.read(key).result)
    except Exception:  # unreadable (e.g. written by older code): as stale as it gets
        paths = None
    if paths is None or not all(Path(p).exists() for p in paths):
        (Path(storage.basepath) / key).unlink(missing_ok=True)


@cache
def _module_digest(name: str) -> str:
    source = inspect.getsource(importlib.import_module(name))
    return hashlib.sha256(source.encode()).hexdigest()[:16]
