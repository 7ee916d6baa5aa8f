"""A re-run on the same data and settings skips the data stages; a change never does."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import numpy as np
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from flows.training import mnist_training
from mnist_pipeline.config import TrainConfig
from mnist_pipeline.data import load_sample

DATA_STAGES = ("load", "validate", "plot", "preprocess")


async def _task_states(flow_run_id) -> dict[str, str]:
    async with get_client() as client:
        task_runs = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return {t.name.rsplit("-", 1)[0]: t.state.name for t in task_runs}


def run_flow(config: TrainConfig) -> dict[str, str]:
    """Run the flow; return each data stage's final state name."""
    state = mnist_training(config, return_state=True)
    assert state.is_completed(), state
    states = asyncio.run(_task_states(state.state_details.flow_run_id))
    assert states["train"] == "Completed"  # training always runs
    return {stage: states[stage] for stage in DATA_STAGES}


def write_source(path: Path, shift: int = 0) -> Path:
    sample = load_sample()
    x_train = sample.x_train.copy()
    x_train[:, 0, 0] += shift  # a changed file: same shape, different pixels
    np.savez(path, **(sample.arrays() | {"x_train": x_train}))
    return path


def test_rerun_skips_data_stages_until_the_source_changes(
    prefect_api_url, mlflow_store, tmp_path
):
    source = write_source(tmp_path / "digits.npz")
    workdir = tmp_path / "outputs"
    config = TrainConfig(
        data=str(source),
        epochs=1,
        train_limit=300,
        test_limit=100,
        workdir=str(workdir),
        experiment="caching",
    )
    cached = dict.fromkeys(DATA_STAGES, "Cached")
    completed = dict.fromkeys(DATA_STAGES, "Completed")

    assert run_flow(config) == completed
    assert run_flow(config) == cached
    assert (workdir / "cache").is_dir()

    # A cached result whose files were deleted is not reused.
    shutil.rmtree(workdir / "prepared")
    assert run_flow(config) == cached | {"preprocess": "Completed"}

    # Other settings of a stage: only that stage and what follows it re-run.
    rerun = run_flow(config.model_copy(update={"validation_split": 0.2}))
    assert rerun == cached | {"preprocess": "Completed"}

    # The same path with new content: nothing stale is reused.
    write_source(source, shift=1)
    assert run_flow(config) == completed
