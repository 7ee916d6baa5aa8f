"""Task: scale, one-hot and split off a stratified validation set."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from mnist_pipeline.data import DatasetRef, open_dataset
from mnist_pipeline.preprocess import preprocess
from tasks.caching import StageCache, StageSerializer


@task(
    name="preprocess",
    result_serializer=StageSerializer(),
    cache_policy=StageCache(
        parts=lambda inputs: {
            "digest": inputs["ref"].digest,
            "validation_split": inputs["validation_split"],
            "seed": inputs["seed"],
            "workdir": inputs["workdir"],
        },
        code=("mnist_pipeline.preprocess",),
        outputs=lambda path: [path],
    ),
)
def preprocess_data(
    ref: DatasetRef, validation_split: float, seed: int, workdir: str
) -> str:
    """Write model-ready arrays and return their path."""
    prepared = preprocess(open_dataset(ref), validation_split, seed)
    name = f"{ref.digest}-val{validation_split:g}-seed{seed}.npz"
    return str(prepared.save(Path(workdir) / "prepared" / name))
