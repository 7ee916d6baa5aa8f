"""Faults: a killed run resumes, a missing server fails fast, runs can overlap."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import pytest

from mnist_pipeline import registry, tracking_store

from .conftest import run_cli
from .servers import clean_environment, free_port

RESUMABLE = [
    "train",
    "--data",
    "sample",
    "--train-limit",
    "2500",
    "--test-limit",
    "200",
    "--epochs",
    "5",
    "--batch-size",
    "50",
    "--min-accuracy",
    "0",
    "--min-robust-accuracy",
    "0",
]


def _epochs_backed_up(workdir: Path) -> int:
    """The epoch Keras's BackupAndRestore last saved (0 when none yet)."""
    epochs = [0]
    for metadata in workdir.glob("checkpoints/*/backup/training_metadata.json"):
        try:
            epochs.append(int(json.loads(metadata.read_text())["epoch"]))
        except (OSError, ValueError, KeyError):
            pass
    return max(epochs)


def _start_training(
    cwd: Path, env: dict[str, str], log: IO[str], *, new_session: bool = False
) -> subprocess.Popen:
    """``mnist-pipeline`` with the RESUMABLE arguments, its output in ``log``."""
    return subprocess.Popen(
        [sys.executable, "-m", "mnist_pipeline.cli", *RESUMABLE],
        cwd=cwd,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=new_session,
    )


def _wait_for_epoch(
    victim: subprocess.Popen, cwd: Path, epoch: int, log_path: Path
) -> None:
    """Return once training in ``cwd`` has backed up ``epoch`` epochs."""
    deadline = time.monotonic() + 400
    while _epochs_backed_up(cwd / "outputs") < epoch:
        assert victim.poll() is None, log_path.read_text()
        assert time.monotonic() < deadline, f"training never reached epoch {epoch}"
        time.sleep(0.2)


def test_killed_training_resumes_from_the_last_epoch(
    mlflow_store, tmp_path, prefect_api_url
):
    env = os.environ | {
        "MLFLOW_TRACKING_URI": mlflow_store,
        "PREFECT_API_URL": prefect_api_url,
    }
    log_path = tmp_path / "killed.log"
    with log_path.open("w") as log:
        victim = _start_training(tmp_path, env, log, new_session=True)
        try:
            _wait_for_epoch(victim, tmp_path, 2, log_path)
        finally:
            os.killpg(victim.pid, signal.SIGKILL)
            victim.wait(timeout=60)
    done = _epochs_backed_up(tmp_path / "outputs")
    assert 2 <= done < 5

    rerun = run_cli(*RESUMABLE, cwd=tmp_path, env=dict(env))
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"Resumed at epoch {done}/5" in rerun.stderr, rerun.stderr[-3000:]

    client = tracking_store.connect(mlflow_store)
    experiment = client.get_experiment_by_name("mnist")
    runs = {r.info.status: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {"KILLED", "FINISHED"}
    finished, killed = runs["FINISHED"], runs["KILLED"]
    assert finished.data.tags["training.resumed_from_epoch"] == str(done)
    assert finished.data.tags["training.resumed_from_run"] == killed.info.run_id
    assert "resumed by run" in killed.data.tags["failure_reason"]
    history = client.get_metric_history(finished.info.run_id, "val_accuracy")
    assert sorted(m.step for m in history) == [1, 2, 3, 4, 5]
    assert not list((tmp_path / "outputs").glob("checkpoints/*/backup"))


def test_sigterm_stops_the_run_and_its_temporary_prefect_server(mlflow_store, tmp_path):
    # No PREFECT_API_URL: the command runs its own temporary Prefect server.
    env = clean_environment(MLFLOW_TRACKING_URI=mlflow_store)
    log_path = tmp_path / "terminated.log"
    with log_path.open("w") as log:
        victim = _start_training(tmp_path, env, log)
        try:
            _wait_for_epoch(victim, tmp_path, 1, log_path)
            victim.send_signal(signal.SIGTERM)  # as `kill` or a container stop
            returncode = victim.wait(timeout=120)
        finally:
            if victim.poll() is None:
                victim.kill()
    output = log_path.read_text()
    assert returncode == 128 + signal.SIGTERM, output[-3000:]
    assert "aborted by a termination signal" in output
    # The exit hooks ran: the temporary server was stopped, not orphaned.
    (start,) = [line for line in output.splitlines() if "Starting temporary" in line]
    port = int(start.rsplit(":", 1)[1])
    assert "Stopping temporary server" in output
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0, "server still answers"
    client = tracking_store.connect(mlflow_store)
    experiment = client.get_experiment_by_name("mnist")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "KILLED"


def test_unreachable_tracking_server_fails_fast_and_writes_nothing(
    tmp_path, prefect_api_url
):
    uri = f"http://127.0.0.1:{free_port()}"
    env = {"MLFLOW_TRACKING_URI": uri, "PREFECT_API_URL": prefect_api_url}
    started = time.monotonic()
    result = run_cli("train", "--data", "sample", cwd=tmp_path, env=env)
    elapsed = time.monotonic() - started
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith(
        f"Error: The MLflow tracking server at {uri} is unreachable"
    )
    assert "after 4 attempts" in error
    assert elapsed < 120  # 7 s of backoff plus process start, not MLflow's minutes
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.slow  # an overlap scenario of whole runs: CI runs it (-m slow)
def test_two_identical_runs_at_once_train_once(tmp_path):
    # The CLI's embedded defaults for both: one SQLite MLflow store, one Prefect
    # home (each process starts a temporary server on the same database), one
    # work folder. A manual run beside the nightly, say.
    env = {
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
    }
    args = ["train", "--data", "sample", "--train-limit", "1000", "--test-limit"]
    args += [
        "200",
        "--epochs",
        "2",
        "--min-accuracy",
        "0",
        "--min-robust-accuracy",
        "0",
    ]
    environment = clean_environment(**env)
    command = [sys.executable, "-m", "mnist_pipeline.cli", *args]
    processes = [
        subprocess.Popen(
            command,
            cwd=tmp_path,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=900) for p in processes]
    for process, (out, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, out + err
        assert "database is locked" not in out + err
        assert "Traceback" not in out + err

    # One trained and registered; the other waited for it, then found its
    # version: nothing trained, nothing registered, no MLflow run of its own.
    skipped = [
        out for out, _ in outputs if "Already trained: mnist-cnn version 1" in out
    ]
    trained = [
        out for out, _ in outputs if "Registered model: mnist-cnn version 1" in out
    ]
    assert len(skipped) == 1 and len(trained) == 1, outputs
    client = tracking_store.connect(env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("mnist")
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.status for r in runs] == ["FINISHED"]
    versions = client.search_model_versions("name='mnist-cnn'")
    assert [str(v.version) for v in versions] == ["1"]
    assert versions[0].run_id == runs[0].info.run_id
    assert registry.alias_version(client, "mnist-cnn", registry.CHAMPION) == "1"
    tags = client.get_model_version("mnist-cnn", "1").tags
    assert tags["gate.decision"] == "promoted"
