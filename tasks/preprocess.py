"""Task: scale, one-hot and split off a stratified validation set."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from mnist_pipeline.data import DatasetRef, open_dataset
from mnist_pipeline.preprocess import preprocess


@task(name="preprocess", cache_policy=NO_CACHE)
def preprocess_data(
    ref: DatasetRef, validation_split: float, seed: int, workdir: str
) -> str:
    """Write model-ready arrays and return their path."""
    prepared = preprocess(open_dataset(ref), validation_split, seed)
    name = f"{ref.digest}-val{validation_split:g}-seed{seed}.npz"
    return str(prepared.save(Path(workdir) / "prepared" / name))
