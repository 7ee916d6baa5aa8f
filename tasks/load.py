"""Task: load the data source and save it by content digest."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from mnist_pipeline.data import (
    DatasetRef,
    load_dataset,
    save_dataset,
    source_fingerprint,
    stratified_subset,
)
from mnist_pipeline.errors import DataLoadError
from tasks.caching import StageCache, StageSerializer


def _key(inputs: Mapping[str, Any]) -> dict[str, Any] | None:
    try:
        source = source_fingerprint(inputs["source"], sha256=inputs["sha256"])
    except (OSError, DataLoadError):  # unreadable: the stage itself reports it
        return None
    if source is None:  # "auto" without a cached MNIST: depends on the network
        return None
    limits = ("train_limit", "test_limit", "seed", "workdir")
    return {"source": source} | {name: inputs.get(name) for name in limits}


@task(
    name="load",
    result_serializer=StageSerializer(),
    cache_policy=StageCache(
        parts=_key, code=("mnist_pipeline.data",), outputs=lambda ref: [ref.path]
    ),
)
def load_data(
    source: str,
    workdir: str,
    *,
    origin: str,
    sha256: str,
    timeout: float,
    train_limit: int | None = None,
    test_limit: int | None = None,
    seed: int = 0,
) -> DatasetRef:
    """Load ``source``, optionally subset it, and record what was loaded."""
    dataset = load_dataset(source, origin=origin, sha256=sha256, timeout=timeout)
    dataset = stratified_subset(dataset, train_limit, test_limit, seed)
    ref = save_dataset(dataset, Path(workdir) / "datasets")
    get_run_logger().info(
        "Loaded %s from %s: train %s, test %s, digest %s",
        ref.name,
        ref.source,
        ref.shapes["x_train"],
        ref.shapes["x_test"],
        ref.digest,
    )
    return ref
