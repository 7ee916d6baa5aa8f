"""A re-run on the same data and settings skips the data stages; a change never does."""

from __future__ import annotations

import asyncio
import base64
import json
import pickle
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
        retrain=True,  # train every time: this test is about the data stages
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


class _Payload:
    """Touches a file when unpickled: proof that a cache file ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _tamper(record: Path, marker: Path, how: str) -> None:
    """Rewrite a cache record so that reading it the Prefect way would run code."""
    blob = pickle.dumps(_Payload(marker))
    if how == "raw pickle":  # not JSON: Prefect would unpickle it as is
        record.write_bytes(blob)
        return
    envelope = json.loads(record.read_bytes())
    serializer = {
        "pickle": {"type": "pickle", "picklelib": "pickle"},
        "json via pickle": {"type": "json", "jsonlib": "pickle"},
    }[how]
    envelope["metadata"]["serializer"] = serializer
    envelope["result"] = (base64.encodebytes(blob) if how == "pickle" else blob).decode(
        "latin-1"
    )
    record.write_text(json.dumps(envelope))


def test_a_tampered_cache_file_never_runs_code(prefect_api_url, mlflow_store, tmp_path):
    workdir = tmp_path / "outputs"
    config = TrainConfig(
        data="sample",
        epochs=1,
        train_limit=300,
        test_limit=100,
        workdir=str(workdir),
        experiment="tamper",
        retrain=True,
    )
    assert run_flow(config) == dict.fromkeys(DATA_STAGES, "Completed")
    records = sorted((workdir / "cache").iterdir())
    assert len(records) == len(DATA_STAGES)
    for record in records:  # what is stored is data: JSON of known types
        envelope = json.loads(record.read_bytes())
        assert envelope["metadata"]["serializer"] == {"type": "mnist-stage-json"}
    marker = tmp_path / "code-ran"
    for record, how in zip(
        records, ["pickle", "json via pickle", "raw pickle", "pickle"], strict=True
    ):
        _tamper(record, marker, how)

    # Every stage refuses its record and runs again; nothing was unpickled.
    assert run_flow(config) == dict.fromkeys(DATA_STAGES, "Completed")
    assert not marker.exists()
    for record in sorted((workdir / "cache").iterdir()):
        envelope = json.loads(record.read_bytes())
        assert envelope["metadata"]["serializer"] == {"type": "mnist-stage-json"}
    assert run_flow(config) == dict.fromkeys(DATA_STAGES, "Cached")
