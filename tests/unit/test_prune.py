"""The prune plan: what a year of nights left, what stays, and what applying does."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from mlflow import MlflowClient

from mnist_pipeline.files import exclusive_lock
from mnist_pipeline.prune import apply_prune, plan_prune
from mnist_pipeline.registry import runs_to_keep

DAY = 86400
NOW = time.time()


def _file(path: Path, age_days: float, content: bytes = b"x" * 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    stamp = NOW - age_days * DAY
    os.utime(path, (stamp, stamp))
    return path


def _record(workdir: Path, key: str, age_days: float, payload: object) -> Path:
    """A stage-cache record as StageSerializer writes it (JSON inside JSON)."""
    envelope = {
        "metadata": {"serializer": {"type": "mnist-stage-json"}},
        "result": json.dumps(payload),
    }
    return _file(workdir / "cache" / key, age_days, json.dumps(envelope).encode())


def _workdir(tmp_path: Path) -> Path:
    work = tmp_path / "outputs"
    for run in ("champion", "challenger", "recent", "rejected", "failed", "new"):
        age = 1 if run == "new" else 90
        _file(work / "models" / run / "model.keras", age)
    _file(work / "checkpoints" / "killed" / "backup" / "latest.weights.h5", 90)
    _file(work / "checkpoints" / "running" / "lock", 90, b"")
    kept = _file(work / "datasets" / "kept-1.npz", 90)
    _file(work / "datasets" / "old-2.npz", 90)
    _file(work / "prepared" / "old-2.npz", 90)
    _file(work / "plots" / "old2" / "samples.png", 90)
    _record(work, "load-new", 2, {"kind": "dataset", "data": {"path": str(kept)}})
    _record(work, "load-old", 90, {"kind": "path", "data": "anything"})
    return work


def _removals(work: Path):
    return plan_prune(
        work,
        keep_runs={"champion", "challenger", "recent"},
        registered_runs={"champion", "challenger", "recent", "rejected"},
        older_than_days=30,
        now=NOW,
    )


def _plan(work: Path) -> dict[str, str]:
    return {str(r.path.relative_to(work)): r.reason for r in _removals(work)}


def test_the_plan_lists_only_what_a_year_leaves_behind(tmp_path):
    work = _workdir(tmp_path)
    with exclusive_lock(work / "checkpoints" / "running" / "lock", timeout=1):
        plan = _plan(work)
    assert plan == {
        "models/rejected": "model of a version that is not @champion, @challenger "
        "or recent",
        "models/failed": "model of a run that registered no version",
        "checkpoints/killed": "checkpoint of a training that is not running",
        "cache/load-old": "old stage-cache record",
        "datasets/old-2.npz": "datasets no cache record uses",
        "prepared/old-2.npz": "prepared no cache record uses",
        "plots/old2": "plots no cache record uses",
    }
    # Kept: @champion, @challenger, the last versions, anything newer than the
    # limit, a checkpoint a live run holds, what a live cache record uses.
    assert (work / "models" / "champion").exists()


def test_applying_removes_exactly_the_plan(tmp_path):
    work = _workdir(tmp_path)
    before = {p for p in work.rglob("*") if p.is_file()}
    removals = _removals(work)
    freed = apply_prune(removals)
    assert freed == sum(r.size for r in removals) > 0
    after = {p for p in work.rglob("*") if p.is_file()}
    gone = before - after
    assert all(any(p.is_relative_to(r.path) for r in removals) for p in gone)
    assert not any(r.path.exists() for r in removals)
    assert (work / "models" / "champion" / "model.keras").exists()
    assert (work / "datasets" / "kept-1.npz").exists()
    assert _plan(work) == {}  # a second prune finds nothing


def test_a_young_work_folder_is_left_alone(tmp_path):
    work = tmp_path / "outputs"
    _file(work / "models" / "rejected" / "model.keras", 1)
    _file(work / "checkpoints" / "killed" / "backup" / "w.h5", 1)
    assert _plan(work) == {}


def test_fewer_versions_than_kept_keep_every_run(mlflow_store):
    client = MlflowClient(mlflow_store)
    experiment = client.create_experiment("prune")
    client.create_registered_model("mnist-cnn")
    run_ids = []
    for _ in range(3):
        run = client.create_run(experiment)
        client.create_model_version("mnist-cnn", "unused-source", run.info.run_id)
        run_ids.append(run.info.run_id)
    keep, registered = runs_to_keep(client, "mnist-cnn", keep_last=5)
    assert keep == registered == set(run_ids)
    keep, _ = runs_to_keep(client, "mnist-cnn", keep_last=2)
    assert keep == set(run_ids[1:])
    assert runs_to_keep(client, "mnist-cnn", keep_last=0)[0] == set()
