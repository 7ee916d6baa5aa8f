"""Task: load the data source and save it by content digest."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from mnist_pipeline.data import (
    DatasetRef,
    load_dataset,
    save_dataset,
    stratified_subset,
)


@task(name="load", cache_policy=NO_CACHE)
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
