"""The nightly deployment against real servers, as deployments/README.md runs it.

The module starts ``prefect server start`` and ``mlflow server`` on free loopback
ports, with their databases and artifacts in a temporary folder; registers the
deployment from the project's own ``prefect.yaml`` with ``prefect deploy --all``;
runs it with ``prefect worker start`` and with ``mnist-pipeline serve``; and checks
what the Prefect and MLflow REST APIs report. Servers, workers and their files are
gone at the end, whatever happened.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import pytest

from deployments import nightly
from mnist_pipeline import alias_history, registry

from .conftest import REPO, run_cli
from .servers import (
    BIN,
    background,
    clean_environment,
    free_port,
    mlflow_server,
    responds,
    run,
    wait_for,
)

POOL = "mnist-process"
DEPLOYMENT = f"mnist-training/{nightly.NAME}"
STAGES = {"load", "validate", "plot", "preprocess", "train", "evaluate", "register"}
DATA_PLOTS = {"samples_per_class.png", "class_distribution.png", "pixel_histogram.png"}
EVALUATION_PLOTS = {
    "confusion_matrix.png",
    "misclassified.png",
    "training_curves.png",
    "feature_maps_conv1.png",
    "feature_maps_conv2.png",
}
FINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
# Generous but finite: the machine may be busy with other TensorFlow work.
SERVER_START_S = 300
RUN_FINISH_S = 600
# The servers' files are deleted afterwards: no need to wait ~30 s for MLflow's
# graceful shutdown before SIGKILL.
SERVER_STOP_S = 5


@dataclass(frozen=True)
class Servers:
    root: Path
    prefect_api: str
    mlflow_uri: str

    def client_env(self, **extra: str) -> dict[str, str]:
        """What a user's terminal exports to talk to both servers."""
        return clean_environment(
            PREFECT_HOME=str(self.root / "prefect-home"),
            PREFECT_API_URL=self.prefect_api,
            MLFLOW_TRACKING_URI=self.mlflow_uri,
            **extra,
        )

    def tiny_config(self) -> dict[str, object]:
        """A run's own ``config``: the bundled sample, a small subset, one epoch."""
        return {
            "data": "sample",
            "epochs": 1,
            "train_limit": 300,
            "test_limit": 100,
            "workdir": str(self.root / "outputs"),
        }


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    """``prefect server start`` and ``mlflow server``, owned by this module."""
    root = Path(tempfile.mkdtemp(prefix="mnist-deployment-"))
    try:
        with ExitStack() as stack:
            prefect_port = free_port()
            api = f"http://127.0.0.1:{prefect_port}/api"
            env = clean_environment(
                PREFECT_HOME=str(root / "prefect-home"),
                PREFECT_SERVER_ANALYTICS_ENABLED="false",
                PREFECT_UI_API_URL=api,
            )
            prefect_log = root / "prefect.log"
            prefect = stack.enter_context(
                background(
                    [BIN / "prefect", "server", "start", "--host", "127.0.0.1"]
                    + ["--port", str(prefect_port)],
                    cwd=root,
                    env=env,
                    log=prefect_log,
                    grace=SERVER_STOP_S,
                )
            )
            mlflow_uri = stack.enter_context(
                mlflow_server(root, artifacts=root / "mlruns", timeout=SERVER_START_S)
            )
            wait_for(
                lambda: responds(f"{api}/health"),
                timeout=SERVER_START_S,
                what="prefect server start",
                process=prefect,
                log=prefect_log,
            )
            yield Servers(root, api, mlflow_uri)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def deployed(servers: Servers) -> dict:
    """The work pool, and the deployment registered from prefect.yaml."""
    env = servers.client_env()
    prefect = str(BIN / "prefect")
    run([prefect, "work-pool", "create", POOL, "--type", "process"], cwd=REPO, env=env)
    # A shell keeps PWD current; prefect.yaml's pull step reads it.
    run([prefect, "deploy", "--all"], cwd=REPO, env=env | {"PWD": str(REPO)})
    return _prefect(servers, "GET", f"deployments/name/{DEPLOYMENT}")


@contextmanager
def worker(servers: Servers) -> Iterator[tuple[subprocess.Popen, Path]]:
    """``prefect worker start --pool mnist-process``, started outside the project."""
    log = servers.root / "worker.log"
    command = [BIN / "prefect", "worker", "start", "--pool", POOL]
    with background(command, cwd=servers.root, env=servers.client_env(), log=log) as p:
        yield p, log


def test_deployment_carries_its_cron_schedule_and_upcoming_runs(servers, deployed):
    (schedule,) = deployed["schedules"]
    assert schedule["schedule"]["cron"] == "0 2 * * *"
    assert schedule["schedule"]["timezone"] == "UTC"
    assert schedule["active"] and not deployed["paused"]
    assert deployed["work_pool_name"] == POOL
    assert deployed["entrypoint"] == "flows/training.py:mnist_training"
    assert deployed["pull_steps"] == [
        {"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}
    ]
    assert deployed["parameters"] == nightly.PARAMETERS
    # The parameter is the typed config: the UI renders a form from this schema.
    schema = deployed["parameter_openapi_schema"]
    fields = schema["definitions"]["TrainConfig"]["properties"]
    assert fields["epochs"]["type"] == "integer"
    assert fields["learning_rate"]["type"] == "number"

    upcoming = wait_for(
        lambda: _flow_runs(servers, deployed["id"], state="SCHEDULED"),
        timeout=120,
        what="scheduled runs of the nightly deployment",
    )
    now = datetime.now(UTC)
    for flow_run in upcoming:
        start = datetime.fromisoformat(flow_run["expected_start_time"])
        assert flow_run["auto_scheduled"]
        assert start > now
        assert start.utcoffset().total_seconds() == 0
        assert (start.hour, start.minute) == (2, 0)


@pytest.mark.slow  # an overlap scenario of whole runs: CI runs it (-m slow)
def test_overlapping_runs_wait_their_turn_and_train_once(servers, deployed):
    # Two runs with the same parameters, as two overlapping nightly runs would
    # have, both waiting before the worker starts.
    assert deployed["global_concurrency_limit"]["limit"] == 1
    assert deployed["concurrency_options"]["collision_strategy"] == "ENQUEUE"
    ids = [_trigger(servers, servers.tiny_config()) for _ in range(2)]
    with worker(servers) as (process, log):
        finished = [_wait_finished(servers, i, process, log) for i in ids]
    for flow_run in finished:
        assert flow_run["state_type"] == "COMPLETED", flow_run["state"]
    first, second = sorted(finished, key=lambda run: _time(run, "start"))
    # The deployment's concurrency limit: one run at a time.
    assert _time(second, "start") >= _time(first, "end")
    assert "Traceback" not in log.read_text(errors="replace")

    # The first trained and registered; the second found that training
    # registered: no MLflow run, no version, and its summary says so.
    mlflow_run = _check_prefect_and_mlflow_run(servers, first["id"])
    assert _mlflow_runs_of(servers, second["id"]) == []
    versions = _model_versions(servers)
    assert list(versions) == ["1"]
    assert versions["1"]["run_id"] == mlflow_run["info"]["run_id"]
    summary = _artifacts_by_key(servers, second["id"])["mnist-training-summary"]
    assert "nothing to train" in summary["data"]
    assert "[mnist-cnn version 1](" in summary["data"]


def test_serve_registers_its_schedule_and_runs_the_flow(servers):
    command = [sys.executable, "-m", "mnist_pipeline.cli", "serve"]
    command += ["--cron", "30 3 * * 1"]
    log = servers.root / "serve.log"
    env = servers.client_env()
    with background(command, cwd=servers.root, env=env, log=log) as serve:
        deployment = wait_for(
            lambda: _served(servers, "30 3 * * 1"),
            timeout=SERVER_START_S,
            what="mnist-pipeline serve registering its deployment",
            process=serve,
            log=log,
        )
        upcoming = wait_for(
            lambda: _flow_runs(servers, deployment["id"], state="SCHEDULED"),
            timeout=120,
            what="scheduled runs of the served deployment",
        )
        start = datetime.fromisoformat(upcoming[0]["expected_start_time"])
        assert (start.weekday(), start.hour, start.minute) == (0, 3, 30)
        assert deployment["global_concurrency_limit"]["limit"] == 1
        versions_before = len(_model_versions(servers))

        # Another seed: a training no run has registered yet.
        flow_run_id = _trigger(servers, servers.tiny_config() | {"seed": 5})
        flow_run = _wait_finished(servers, flow_run_id, serve, log)
        assert flow_run["state_type"] == "COMPLETED", flow_run["state"]
        _check_prefect_and_mlflow_run(servers, flow_run_id)
        assert len(_model_versions(servers)) == versions_before + 1

        serve.send_signal(signal.SIGINT)  # Ctrl+C
        serve.wait(60)
    after = _prefect(servers, "GET", f"deployments/{deployment['id']}")
    assert after["paused"], "serve pauses its schedule when it stops"


def test_serve_without_a_server_or_with_a_bad_cron_is_one_paragraph(tmp_path):
    env = {"PREFECT_HOME": str(tmp_path / "prefect-home")}
    result = run_cli("serve", "--cron", "every night", cwd=tmp_path, env=env)
    assert result.returncode == 1
    assert result.stderr.startswith("Error: Invalid option(s): --cron:")
    assert "Traceback" not in result.stderr

    result = run_cli("serve", cwd=tmp_path, env=env)
    assert result.returncode == 1
    assert result.stderr.startswith("Error: serve needs a Prefect server")
    assert "PREFECT_API_URL" in result.stderr


def _check_prefect_and_mlflow_run(servers: Servers, flow_run_id: str) -> dict:
    """What a user finds for one flow run in both UIs, read from their REST APIs."""
    task_runs = _prefect(
        servers,
        "POST",
        "task_runs/filter",
        json={"flow_runs": {"id": {"any_": [flow_run_id]}}},
    )
    assert STAGES <= {t["name"].rsplit("-", 1)[0] for t in task_runs}
    assert all(t["state_type"] == "COMPLETED" for t in task_runs)

    mlflow_run = _mlflow_run_of(servers, flow_run_id)
    info, data = mlflow_run["info"], mlflow_run["data"]
    assert info["status"] == "FINISHED"
    metrics = {m["key"] for m in data["metrics"]}
    assert {"test_accuracy", "test_loss", "train_loss", "val_accuracy"} <= metrics
    assert {"key": "epochs", "value": "1"} in data["params"]
    assert _artifacts(servers, info["run_id"], "plots/data") == DATA_PLOTS
    assert _artifacts(servers, info["run_id"], "plots/evaluation") == EVALUATION_PLOTS
    png = httpx.get(
        f"{servers.mlflow_uri}/get-artifact",
        params={
            "path": "plots/evaluation/confusion_matrix.png",
            "run_uuid": info["run_id"],
        },
        timeout=30,
    )
    assert png.content.startswith(b"\x89PNG")

    by_key = _artifacts_by_key(servers, flow_run_id)
    run_url = (
        f"{servers.mlflow_uri}/#/experiments/{info['experiment_id']}"
        f"/runs/{info['run_id']}"
    )
    assert run_url in by_key["mnist-training-summary"]["data"]
    assert by_key["training-progress"]["data"] == 100
    assert len(json.loads(by_key["per-class-metrics"]["data"])) == 10
    return mlflow_run


def _trigger(servers: Servers, config: dict) -> str:
    """``prefect deployment run mnist-training/nightly --param config=...``."""
    result = run(
        [BIN / "prefect", "deployment", "run", DEPLOYMENT]
        + ["--param", f"config={json.dumps(config)}"],
        cwd=servers.root,
        env=servers.client_env(),
    )
    return re.search(r"UUID: ([0-9a-f-]{36})", result.stdout).group(1)


def _wait_finished(servers: Servers, flow_run_id: str, process, log: Path) -> dict:
    def finished() -> dict | None:
        flow_run = _prefect(servers, "GET", f"flow_runs/{flow_run_id}")
        return flow_run if flow_run["state_type"] in FINAL_STATES else None

    return wait_for(
        finished,
        timeout=RUN_FINISH_S,
        what=f"flow run {flow_run_id}",
        process=process,
        log=log,
        interval=2,
    )


def _served(servers: Servers, cron: str) -> dict | None:
    response = httpx.get(
        f"{servers.prefect_api}/deployments/name/{DEPLOYMENT}", timeout=30
    )
    if response.status_code != 200:
        return None
    deployment = response.json()
    crons = [s["schedule"].get("cron") for s in deployment["schedules"]]
    served = deployment["work_pool_name"] is None and crons == [cron]
    return deployment if served else None


def _flow_runs(servers: Servers, deployment_id: str, state: str) -> list[dict]:
    return _prefect(
        servers,
        "POST",
        "flow_runs/filter",
        json={
            "flow_runs": {
                "deployment_id": {"any_": [deployment_id]},
                "state": {"type": {"any_": [state]}},
            },
            "sort": "EXPECTED_START_TIME_ASC",
        },
    )


def _time(flow_run: dict, which: str) -> datetime:
    return datetime.fromisoformat(flow_run[f"{which}_time"])


def _mlflow_run_of(servers: Servers, flow_run_id: str) -> dict:
    found = _mlflow_runs_of(servers, flow_run_id)
    assert len(found) == 1, f"{len(found)} MLflow runs for flow run {flow_run_id}"
    return found[0]


def _mlflow_runs_of(servers: Servers, flow_run_id: str) -> list[dict]:
    experiment = _mlflow(
        servers, "GET", "experiments/get-by-name", params={"experiment_name": "mnist"}
    )["experiment"]
    return _mlflow(
        servers,
        "POST",
        "runs/search",
        json={
            "experiment_ids": [experiment["experiment_id"]],
            "filter": f"tags.`prefect.flow_run_id` = '{flow_run_id}'",
        },
    ).get("runs", [])


def _artifacts_by_key(servers: Servers, flow_run_id: str) -> dict[str, dict]:
    artifacts = _prefect(
        servers,
        "POST",
        "artifacts/filter",
        json={"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}},
    )
    return {a["key"]: a for a in artifacts}


def _artifacts(servers: Servers, run_id: str, path: str) -> set[str]:
    listing = _mlflow(
        servers, "GET", "artifacts/list", params={"run_id": run_id, "path": path}
    )
    return {Path(f["path"]).name for f in listing.get("files", [])}


def _model_versions(servers: Servers) -> dict[str, dict]:
    found = _mlflow(
        servers,
        "GET",
        "model-versions/search",
        params={"filter": "name='mnist-cnn'"},
    ).get("model_versions", [])
    return {v["version"]: v for v in found}


def _prefect(servers: Servers, method: str, path: str, **kwargs) -> dict | list:
    response = httpx.request(
        method, f"{servers.prefect_api}/{path}", timeout=30, **kwargs
    )
    response.raise_for_status()
    return response.json()


def _mlflow(servers: Servers, method: str, path: str, **kwargs) -> dict:
    response = httpx.request(
        method, f"{servers.mlflow_uri}/api/2.0/mlflow/{path}", timeout=30, **kwargs
    )
    response.raise_for_status()
    return response.json()


def test_rollback_run_from_the_deployment_moves_the_alias_and_serving_follows(
    servers, deployed
):
    name = "mnist-ops"
    client = _register_untrained(servers, name, versions=2)
    registry.move_champion(client, name, "1", by="gate", reason="first")
    registry.move_champion(client, name, "2", by="gate", reason="second")

    rollback = _prefect(servers, "GET", "deployments/name/mnist-rollback/rollback")
    # The UI's Run button shows this schema as a form.
    form = rollback["parameter_openapi_schema"]["definitions"]["RollbackConfig"]
    assert {"model_name", "to", "reason", "operator"} <= set(form["properties"])
    promote = _prefect(servers, "GET", "deployments/name/mnist-promote/promote")
    assert (
        "version"
        in promote["parameter_openapi_schema"]["definitions"]["PromoteConfig"][
            "required"
        ]
    )

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "mnist_pipeline.cli", "serve-model"]
    command += ["--model-uri", f"models:/{name}@champion", "--port", str(port)]
    command += ["--workers", "1", "--watch-interval", "1"]
    log = servers.root / "serve-follow.log"
    env = servers.client_env()
    with background(command, cwd=servers.root, env=env, log=log) as server:
        wait_for(
            lambda: _served_version(url) == "2",
            timeout=SERVER_START_S,
            what="serve-model serving v2",
            process=server,
            log=log,
        )
        # What the UI's "Run" does: a flow run of the deployment with the form's
        # values, picked up by the pool's worker.
        parameters = {"model_name": name, "reason": "bad release", "operator": "ops"}
        flow_run = _prefect(
            servers,
            "POST",
            f"deployments/{rollback['id']}/create_flow_run",
            json={"parameters": {"config": parameters}},
        )
        with worker(servers) as (process, worker_log):
            finished = _wait_finished(servers, flow_run["id"], process, worker_log)
        assert finished["state_type"] == "COMPLETED", finished["state"]
        assert finished["name"].startswith(f"rollback-{name}-one-step-")
        assert registry.alias_version(client, name, registry.CHAMPION) == "1"
        moved = _artifacts_by_key(servers, flow_run["id"])["champion-move"]
        assert f"{name} @champion: version 2 -> version 1" in moved["data"]

        # The running server follows the move; its answers name the version.
        wait_for(
            lambda: _served_version(url) == "1",
            timeout=60,
            what="serve-model following the rollback to v1",
            process=server,
            log=log,
        )
        answer = httpx.post(
            f"{url}/invocations",
            json={"inputs": np.zeros((1, 28, 28)).tolist()},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        assert answer.headers["X-Model-Version"] == "1"

    last = alias_history.read_moves(client, name)[-1]
    assert (last.by, last.from_version, last.to_version) == ("rollback", "2", "1")
    assert (last.who, last.reason) == ("ops", "bad release")
    assert flow_run["id"] in last.prefect_flow_run
    assert "deployment rollback" in last.prefect_flow_run


def _served_version(url: str) -> str | None:
    try:
        response = httpx.get(f"{url}/model-status", timeout=5)
    except httpx.HTTPError:
        return None
    return response.json().get("served_version") if response.is_success else None


def _register_untrained(servers: Servers, name: str, versions: int):
    """``versions`` versions of an untrained model in the MLflow server."""
    import mlflow
    from mlflow import MlflowClient

    from mnist_pipeline import packaging, runs, tracking_store
    from mnist_pipeline.model import build_model

    client = MlflowClient(servers.mlflow_uri)
    path = servers.root / "untrained.keras"
    build_model().save(path)
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(servers.mlflow_uri)  # log_model's client follows it
    try:
        experiment = tracking_store.ensure_experiment(client, "operations")
        for _ in range(versions):
            with runs.tracked_run(client, experiment, None, {}) as run_id:
                example = np.zeros((1, 28, 28), np.uint8)
                packaging.log_model(run_id, path, name, example, {})
    finally:
        mlflow.set_tracking_uri(before)
    return client
