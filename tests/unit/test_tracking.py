"""MLflow logging: run status, metric histories, datasets, a model that loads back."""

from __future__ import annotations

import http.server
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.exceptions import MlflowException

from mnist_pipeline import packaging, runs, sweep_runs, tracking_store
from mnist_pipeline.callbacks import EpochMetrics
from mnist_pipeline.data import save_dataset
from mnist_pipeline.errors import ExperimentDeletedError
from mnist_pipeline.model import build_model
from mnist_pipeline.preprocess import scale_images
from mnist_pipeline.serving import as_model_input
from mnist_pipeline.sweep import TRIAL_TAG

from ..conftest import loopback_server


@pytest.fixture
def run_id(mlflow_store):
    client = tracking_store.connect()
    experiment = tracking_store.ensure_experiment(client, "unit")
    assert tracking_store.ensure_experiment(client, "unit") == experiment
    with runs.tracked_run(client, experiment, "unit-run", {"origin": "test"}) as rid:
        yield rid


def test_failed_block_marks_the_run_failed_with_reason(mlflow_store):
    client = tracking_store.connect()
    experiment = tracking_store.ensure_experiment(client, "unit")
    with pytest.raises(RuntimeError):
        with runs.tracked_run(client, experiment, "boom", {}) as rid:
            raise RuntimeError("disk full")
    run = client.get_run(rid)
    assert run.info.status == "FAILED"
    assert run.data.tags["failure_reason"] == "RuntimeError: disk full"


def test_a_deleted_experiment_of_the_name_is_one_paragraph_on_how_to_restore(
    mlflow_store,
):
    client = tracking_store.connect()
    deleted = client.create_experiment("mnist")
    client.delete_experiment(deleted)
    with pytest.raises(ExperimentDeletedError) as info:
        tracking_store.ensure_experiment(client, "mnist")
    message = str(info.value)
    assert f"mlflow experiments restore --experiment-id {deleted}" in message
    assert "--experiment" in message and "\n" not in message
    client.restore_experiment(deleted)
    assert tracking_store.ensure_experiment(client, "mnist") == deleted


def test_epoch_metrics_become_histories(run_id):
    callback = EpochMetrics(tracking_store.client(), run_id)
    for epoch in range(3):
        callback.on_epoch_end(epoch, {"loss": 1.0 / (epoch + 1), "val_accuracy": 0.5})
    history = tracking_store.client().get_metric_history(run_id, "train_loss")
    assert [(m.step, round(m.value, 3)) for m in history] == [
        (1, 1.0),
        (2, 0.5),
        (3, 0.333),
    ]


def test_datasets_are_logged_with_digest_and_context(run_id, tiny_dataset, tmp_path):
    ref = save_dataset(tiny_dataset, tmp_path / "datasets")
    runs.log_datasets(tracking_store.client(), run_id, ref)
    inputs = tracking_store.client().get_run(run_id).inputs.dataset_inputs
    logged = {i.dataset.name: (i.dataset.digest, i.tags[0].value) for i in inputs}
    assert logged == {
        "tiny-train": (ref.split_digests["train"], "training"),
        "tiny-test": (ref.split_digests["test"], "testing"),
    }


def test_two_runs_logging_a_new_dataset_at_once_both_get_it(
    run_id, tiny_dataset, tmp_path
):
    """A real race in MLflow's SQL store: the rival's rows land between this
    run's look-up and its insert (as overlapping nights met it in CI)."""
    from mlflow.store.tracking.dbmodels.models import SqlDataset
    from sqlalchemy import event
    from sqlalchemy.orm import Session

    ref = save_dataset(tiny_dataset, tmp_path / "datasets")
    client = tracking_store.client()
    experiment = client.get_run(run_id).info.experiment_id
    rival = client.create_run(experiment).info.run_id
    raced = []

    def rival_inserts_first(session, flush_context, instances):
        inserting = any(isinstance(o, SqlDataset) for o in session.new)
        if inserting and not raced:
            raced.append(True)  # before the rival's own flush comes through here
            runs.log_datasets(client, rival, ref)

    counting = _CountingInputs(client)
    event.listen(Session, "before_flush", rival_inserts_first)
    try:
        runs.log_datasets(counting, run_id, ref)
    finally:
        event.remove(Session, "before_flush", rival_inserts_first)

    assert raced  # the race happened: this run's first insert met the rival's rows
    assert counting.calls == 2, "refused once (the rival's rows), then logged"
    for rid in (run_id, rival):
        inputs = client.get_run(rid).inputs.dataset_inputs
        assert sorted((i.dataset.name, i.tags[0].value) for i in inputs) == [
            ("tiny-test", "testing"),
            ("tiny-train", "training"),
        ]


def test_other_dataset_logging_errors_are_not_retried(run_id, tiny_dataset, tmp_path):
    ref = save_dataset(tiny_dataset, tmp_path / "datasets")
    client = tracking_store.client()
    counting = _CountingInputs(client)
    client.delete_run(run_id)  # MLflow refuses inputs for a deleted run
    with pytest.raises(MlflowException, match="must be in the 'active' state"):
        runs.log_datasets(counting, run_id, ref)
    assert counting.calls == 1
    client.restore_run(run_id)  # the fixture ends the run


class _CountingInputs:
    """A real client that counts its ``log_inputs`` calls."""

    def __init__(self, client) -> None:
        self._client, self.calls = client, 0

    def log_inputs(self, *args, **kwargs):
        self.calls += 1
        return self._client.log_inputs(*args, **kwargs)


def test_logged_model_is_registered_and_predicts_like_keras(run_id, tmp_path):
    model = build_model()
    keras_path = tmp_path / "model.keras"
    model.save(keras_path)
    images = np.random.default_rng(0).integers(0, 256, (4, 28, 28), dtype=np.uint8)
    uri, version = packaging.log_model(
        run_id, keras_path, "unit-model", images[:1], {"dataset_digest": "abc"}
    )
    assert version == "1"
    registry = tracking_store.client()
    assert registry.get_model_version("unit-model", "1").tags["dataset_digest"] == "abc"
    served = mlflow.pyfunc.load_model("models:/unit-model/1")
    (spec,) = served.metadata.get_input_schema().inputs
    assert (spec.shape, spec.type) == ((-1, 28, 28), np.dtype("float32"))
    expected = model.predict(scale_images(images), verbose=0)
    probabilities = served.predict(as_model_input(images))
    np.testing.assert_allclose(probabilities, expected, rtol=1e-5, atol=1e-6)
    assert uri.startswith("models:/")


def test_registering_again_from_one_run_returns_its_version(run_id, tmp_path):
    # A retry after the server committed the version but its answer was lost.
    keras_path = tmp_path / "model.keras"
    build_model().save(keras_path)
    example = np.zeros((1, 28, 28), dtype=np.uint8)
    first = packaging.log_model(run_id, keras_path, "retried", example, {"try": "1"})
    again = packaging.log_model(run_id, keras_path, "retried", example, {"try": "2"})
    assert again == first
    registry = tracking_store.client()
    (only,) = registry.search_model_versions("name = 'retried'")
    assert (str(only.version), only.tags["try"]) == ("1", "2")
    assert mlflow.pyfunc.load_model(again[0]).metadata.signature is not None
    # Another run registers a version of its own.
    other = registry.create_run(registry.get_run(run_id).info.experiment_id)
    _, version = packaging.log_model(
        other.info.run_id, keras_path, "retried", example, {}
    )
    assert version == "2"


def test_trial_runs_nest_under_their_parent(run_id):
    client = tracking_store.client()
    experiment = client.get_run(run_id).info.experiment_id
    tags = {TRIAL_TAG: "0"}
    with runs.nested_run(client, experiment, run_id, "trial-0", tags) as child:
        pass
    run = client.get_run(child)
    assert run.data.tags["mlflow.parentRunId"] == run_id
    assert run.info.status == "FINISHED"
    assert set(sweep_runs.child_runs(client, experiment, run_id)) == {0}


def test_a_failed_trial_gets_a_failed_run_even_when_its_worker_died(run_id):
    client = tracking_store.client()
    experiment = client.get_run(run_id).info.experiment_id
    # Trial 1 opened its run and died; trial 2 died before opening one.
    opened = client.create_run(
        experiment,
        run_name="trial-1",
        tags={"mlflow.parentRunId": run_id, TRIAL_TAG: "1"},
    ).info.run_id
    for index in (1, 2):
        run = sweep_runs.fail_child_run(
            client,
            experiment,
            run_id,
            f"trial-{index}",
            {TRIAL_TAG: str(index)},
            "KilledWorker: worker died",
        )
        assert run.info.status == "FAILED"
        assert run.data.tags["failure_reason"] == "KilledWorker: worker died"
        assert run.data.tags["mlflow.parentRunId"] == run_id
    children = sweep_runs.child_runs(client, experiment, run_id)
    assert children[1].info.run_id == opened
    assert set(children) == {1, 2}


def test_relative_sqlite_uri_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert tracking_store.portable_uri("sqlite:///mlflow.db") == (
        f"sqlite:///{tmp_path / 'mlflow.db'}"
    )
    for uri in ("sqlite:////abs/m.db", "http://127.0.0.1:5000", "postgresql://h/db"):
        assert tracking_store.portable_uri(uri) == uri


def test_credentials_in_the_tracking_uri_do_not_hide_the_server():
    seen = []

    class LoginRequired(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append((self.path, self.headers.get("Host")))
            self.send_response(401)
            self.end_headers()

        def log_message(self, *args):
            pass

    with loopback_server(LoginRequired) as url:
        port = url.rsplit(":", 1)[1]
        tracking_store.check_reachable(
            f"http://admin:s3cret@127.0.0.1:{port}/", attempts=1
        )
    assert seen == [("/health", f"127.0.0.1:{port}")]


def test_a_run_never_opened_leaves_nothing_and_a_failure_always_a_run(mlflow_store):
    client = tracking_store.connect()
    experiment = tracking_store.ensure_experiment(client, "lazy")
    with runs.recorded_run(client, experiment, "skipped", {}) as run:
        pass  # found its work done: never opened
    assert run.run_id is None
    assert client.search_runs([experiment]) == []
    with pytest.raises(ValueError):
        with runs.recorded_run(client, experiment, "bad input", {"k": "v"}):
            raise ValueError("no such file")  # before anything opened the run
    (failed,) = client.search_runs([experiment])
    assert failed.info.status == "FAILED"
    assert failed.data.tags["failure_reason"] == "ValueError: no such file"
    assert failed.data.tags["k"] == "v"


def test_the_served_model_carries_every_module_it_imports(tmp_path):
    import ast

    package = packaging.serving_code(tmp_path)
    shipped = {p.stem for p in package.glob("*.py")}
    assert shipped == set(packaging.SERVED_MODULES)
    for name in ("serving_model", *packaging.SERVED_MODULES):
        source = Path(packaging.__file__).with_name(f"{name}.py").read_text()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ImportFrom) and node.module:
                parts = node.module.split(".")
                if parts[0] == "mnist_pipeline" and len(parts) > 1:
                    assert parts[1] in shipped, f"{name}.py imports {node.module}"
