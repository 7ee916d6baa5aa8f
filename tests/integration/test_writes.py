"""A run writes only into its configured folders and never modifies its input."""

from __future__ import annotations

import numpy as np

from flows.training import mnist_training
from mnist_pipeline.config import TrainConfig
from mnist_pipeline.data import load_sample, stratified_subset


def test_run_writes_only_to_configured_folders(tmp_path, monkeypatch, prefect_api_url):
    cwd, store, work, inputs = (tmp_path / n for n in ("cwd", "store", "work", "in"))
    for folder in (cwd, store, inputs):
        folder.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store / 'mlflow.db'}")
    subset = stratified_subset(load_sample(), 300, 100, seed=0)
    data = inputs / "digits.npz"
    np.savez(data, **subset.arrays())
    before = (data.stat().st_mtime_ns, data.read_bytes())

    mnist_training(TrainConfig(data=str(data), epochs=1, workdir=str(work)))

    assert (data.stat().st_mtime_ns, data.read_bytes()) == before
    assert sorted(p.name for p in inputs.iterdir()) == ["digits.npz"]
    # Beside the store: its creation lock and the model's promotion lock.
    assert sorted(p.name for p in store.iterdir()) == [
        "mlflow.db",
        "mlflow.db.lock",
        "mlflow.db.mnist-promotion-mnist-cnn.lock",
    ]
    assert sorted(p.name for p in cwd.iterdir()) == ["mlruns"]  # MLflow's artifact root
    assert sorted(p.name for p in work.iterdir()) == [
        "cache",
        "checkpoints",
        "datasets",
        "models",
        "plots",
        "prepared",
    ]
