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

from prefect import Task
from prefect.cache_policies import TASK_SOURCE, CachePolicy
from prefect.context import TaskRunContext
from prefect.filesystems import LocalFileSystem
from prefect.serializers import Serializer
from pydantic import Field, TypeAdapter, ValidationError

from mnist_pipeline.data import DatasetRef
from mnist_pipeline.validate import ValidationReport

#: The folder under the workdir where cached stage results persist.
CACHE_FOLDER = "cache"
#: Every type a cached stage returns, by the name its records store.
STAGE_RESULTS: dict[str, Any] = {
    "dataset": DatasetRef,
    "validation": ValidationReport,
    "paths": list[str],
    "path": str,
}

KeyParts = Callable[[Mapping[str, Any]], Mapping[str, Any] | None]
Outputs = Callable[[Any], Sequence[str]]


class StageSerializer(Serializer):
    """Stage results as plain JSON of a few known types; loading runs no code.

    Prefect's own serializers are chosen by the stored record itself: a record
    naming ``pickle`` (or JSON with a ``jsonlib`` or a class to import) would
    run code when read. This one decodes only :data:`STAGE_RESULTS`, validated
    by pydantic, and :class:`StageCacheStorage` reads no record of another kind.
    """

    type: str = Field(default="mnist-stage-json", frozen=True)

    def dumps(self, obj: Any) -> bytes:
        kind = next((k for k, t in STAGE_RESULTS.items() if _is_instance(obj, t)), None)
        if kind is None:
            raise TypeError(f"not a stage result: {type(obj).__name__}")
        data = TypeAdapter(STAGE_RESULTS[kind]).dump_python(obj, mode="json")
        return json.dumps({"kind": kind, "data": data}).encode()

    def loads(self, blob: bytes) -> Any:
        payload = json.loads(blob)
        if not isinstance(payload, dict) or payload.get("kind") not in STAGE_RESULTS:
            raise ValueError("not a stage result")
        return TypeAdapter(STAGE_RESULTS[payload["kind"]]).validate_python(
            payload["data"]
        )


class StageCacheStorage(LocalFileSystem):
    """The stage cache's folder; a record not written by :class:`StageSerializer`
    cannot be read from it (a tampered or foreign record is a cache miss)."""

    _block_type_name = "MNIST Stage Cache"
    _block_type_slug = "mnist-stage-cache"

    async def aread_path(self, path: str) -> bytes:
        return _checked(await super().aread_path(path), path)

    def read_path(self, path: str, _sync: bool = True) -> bytes:
        # Prefect reads results through this (with _sync=True) or aread_path.
        return _checked(super().read_path(path, _sync=True), path)


def _checked(content: bytes, path: str) -> bytes:
    try:
        record = json.loads(content)
        serializer = record["metadata"]["serializer"]
    except (ValueError, TypeError, KeyError) as exc:
        raise UnsafeCacheRecordError(f"{path} is not a stage-cache record") from exc
    if serializer != {"type": StageSerializer().type}:
        raise UnsafeCacheRecordError(
            f"{path} names serializer {serializer!r}; only stage JSON is read"
        )
    return content


class UnsafeCacheRecordError(ValueError):
    """A cache file that the stage cache refuses to read."""


def cache_storage(workdir: str) -> StageCacheStorage:
    """Where the data stages of a run with this workdir persist their results.

    Saved as a block (Prefect takes only saved storage for task results), named
    after the folder; saving again is harmless.
    """
    folder = str(Path(workdir).resolve() / CACHE_FOLDER)
    storage = StageCacheStorage(basepath=folder)
    name = "workdir-" + hashlib.sha256(folder.encode()).hexdigest()[:12]
    storage.save(name, overwrite=True)
    return storage


def cached(stage: Task, storage: StageCacheStorage) -> Task:
    """``stage`` persisting its result in the stage cache ``storage``."""
    return stage.with_options(result_storage=storage)


def _is_instance(obj: Any, kind: Any) -> bool:
    try:
        TypeAdapter(kind).validate_python(obj, strict=True)
    except ValidationError:
        return False
    return True


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
