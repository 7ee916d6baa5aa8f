"""Batch inference over each input format with the registered champion.

Every run reads its input in chunks smaller than the input (CHUNK), so each
test also checks that chunks are stitched into one CSV: every image once, in
input order.
"""

from __future__ import annotations

import csv
import json
import logging
import re
import shutil
import struct
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from PIL import Image

from flows.predict import mnist_predict
from mnist_pipeline import packaging, runs, tracking_store
from mnist_pipeline.config import PredictConfig
from mnist_pipeline.serving import as_model_input

from .conftest import run_cli
from .servers import mlflow_server

N = 30
CHUNK = 7


def write_inputs(folder, images: np.ndarray) -> dict[str, str]:
    npz = folder / "batch.npz"
    np.savez(npz, images=images)
    idx = folder / "t10k-images-idx3-ubyte"
    idx.write_bytes(
        struct.pack(">IIII", 0x0803, len(images), 28, 28) + images.tobytes()
    )
    photos = folder / "photos"
    photos.mkdir()
    for i, image in enumerate(images):
        if i % 2:  # a dark digit on light paper, in colour, at another size
            picture = Image.fromarray(255 - image).convert("RGB").resize((112, 112))
            picture.save(photos / f"digit_{i:02d}.jpg", quality=95)
        else:
            Image.fromarray(image).save(photos / f"digit_{i:02d}.png")
    return {"npz": str(npz), "idx": str(idx), "folder": str(photos)}


@pytest.fixture
def inputs(trained_registry, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained_registry.uri)
    return write_inputs(tmp_path, trained_registry.sample.x_test[:N])


def read_rows(path) -> list[dict]:
    return list(csv.DictReader(path.open()))


def probabilities_of(rows: list[dict]) -> np.ndarray:
    return np.array([[float(r[f"prob_{c}"]) for c in range(10)] for r in rows])


@pytest.mark.parametrize("kind", ["npz", "idx", "folder"])
def test_predicts_every_format_in_chunks(
    kind, inputs, trained_registry, prefect_api_url, tmp_path
):
    output = tmp_path / f"{kind}.csv"
    config = PredictConfig(input=inputs[kind], output=str(output), chunk_size=CHUNK)
    result = mnist_predict(config)
    assert result.images == N and result.model_version == "1"
    assert result.failed == 0 and result.errors is None

    rows = read_rows(output)
    id_column = "file" if kind == "folder" else "index"
    expected_ids = (
        sorted(p.name for p in Path(inputs["folder"]).iterdir())
        if kind == "folder"
        else [str(i) for i in range(N)]
    )
    assert [r[id_column] for r in rows] == expected_ids  # each once, in order
    probabilities = probabilities_of(rows)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)
    predicted = np.array([int(r["predicted_class"]) for r in rows])
    assert (predicted == probabilities.argmax(axis=1)).all()
    accuracy = (predicted == trained_registry.sample.y_test[:N]).mean()
    assert accuracy >= 0.8, accuracy
    if kind != "folder":  # the same images the in-process model sees
        model = packaging.load_pyfunc("models:/mnist-cnn/1")
        expected = model.predict(as_model_input(trained_registry.sample.x_test[:N]))
        np.testing.assert_allclose(probabilities, expected, atol=1e-6)

    client = tracking_store.connect()
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["model_version"] == "mnist-cnn/1"
    assert run.data.tags["model_uri_loaded"] == "models:/mnist-cnn/1"
    assert run.data.params["model_version"] == "1"
    assert run.data.params["chunk_size"] == str(CHUNK)
    assert run.data.metrics["images"] == N
    assert run.data.metrics["failed_images"] == 0
    assert run.data.metrics["images_per_second"] > 0
    artifacts = [a.path for a in client.list_artifacts(result.run_id, "predictions")]
    assert artifacts == [f"predictions/{kind}.csv"]
    # Compared with the version's reference profile: MNIST's own images do not
    # drift; each image is flagged in the CSV.
    if kind != "folder":
        assert result.drift_detected is False
        assert run.data.metrics["drift_detected"] == 0
    assert {r["out_of_distribution"] for r in rows} <= {"0", "1"}
    assert "drift_mean_intensity_psi" in run.data.metrics
    drift_files = [a.path for a in client.list_artifacts(result.run_id, "drift")]
    assert drift_files == [f"drift/{kind}.drift.png"]
    _check_the_runs_page(run, Path(inputs[kind]), drifted=result.drift_detected)


def _check_the_runs_page(run, source: Path, drifted: bool) -> None:
    """A readable name, the input as a dataset, the drift verdict where it opens."""
    stem = source.stem if source.is_file() else source.name
    assert re.fullmatch(rf"predict-{stem}-champion-\d{{8}}-\d{{6}}", run.info.run_name)
    assert run.data.tags["prefect.flow_run_name"] == run.info.run_name
    (used,) = run.inputs.dataset_inputs
    assert used.dataset.name == source.name
    assert used.dataset.digest == runs.input_digest(source)
    assert json.loads(used.dataset.profile) == {"num_rows": N}
    assert {t.value for t in used.tags} == {"prediction"}
    verdict = "drift" if drifted else "none"
    assert run.data.tags["drift.verdict"] == verdict
    note = run.data.tags["mlflow.note.content"]
    assert note.startswith(
        f"Predicted {N} image(s) of `{source.name}` with mnist-cnn v1."
    )
    words = "**drift detected** in" if drifted else "**no drift**"
    assert f"Input drift: {words}" in note


def test_broken_file_is_reported_and_the_rest_scored(
    inputs, trained_registry, prefect_api_url, tmp_path
):
    folder = Path(inputs["folder"])
    good = sorted(p.name for p in folder.iterdir())
    # In the second chunk, between readable images; sorted between digit_09/10.
    (folder / "digit_09b.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a PNG")
    output = tmp_path / "photos.csv"
    config = PredictConfig(
        model_uri="models:/mnist-cnn/latest",
        input=str(folder),
        output=str(output),
        chunk_size=CHUNK,
    )
    result = mnist_predict(config)

    assert result.model_version == "1"  # latest resolves to the newest version
    assert result.images == N and result.failed == 1
    assert [r["file"] for r in read_rows(output)] == good
    errors = read_rows(tmp_path / "photos.errors.csv")
    assert [e["file"] for e in errors] == ["digit_09b.png"]
    assert "cannot identify image file" in errors[0]["error"]
    client = tracking_store.connect()
    run = client.get_run(result.run_id)
    assert run.data.metrics["failed_images"] == 1
    assert run.data.tags["model_uri_loaded"] == "models:/mnist-cnn/1"
    logged = {a.path for a in client.list_artifacts(result.run_id, "predictions")}
    assert logged == {"predictions/photos.csv", "predictions/photos.errors.csv"}


def test_cli_predict_and_its_errors(
    inputs, trained_registry, prefect_api_url, tmp_path
):
    env = {
        "MLFLOW_TRACKING_URI": trained_registry.uri,
        "PREFECT_API_URL": prefect_api_url,
    }
    output = tmp_path / "cli.csv"
    ok = run_cli(
        "predict",
        "--input",
        inputs["npz"],
        "--output",
        str(output),
        cwd=tmp_path,
        env=env,
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip().splitlines()[-1] == f"Predictions: {output}"
    assert len(output.read_text().splitlines()) == N + 1

    missing = run_cli(
        "predict", "--input", "nowhere", "--output", "x.csv", cwd=tmp_path, env=env
    )
    assert missing.returncode == 1
    assert missing.stderr.strip() == "Error: Prediction input 'nowhere' does not exist."

    no_alias = run_cli(
        "predict",
        "--input",
        inputs["npz"],
        "--output",
        str(output),
        "--model",
        "models:/mnist-cnn@staging",
        cwd=tmp_path,
        env=env,
    )
    assert no_alias.returncode == 1
    assert "Traceback" not in no_alias.stdout + no_alias.stderr
    assert "has no alias @staging" in no_alias.stderr


def test_a_drifted_batch_is_flagged_logged_and_announced(
    trained_registry, prefect_api_url, tmp_path, monkeypatch
):
    import tasks.drift

    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained_registry.uri)
    events = []
    real_emit = tasks.drift.emit_event
    monkeypatch.setattr(
        tasks.drift,
        "emit_event",
        lambda **event: events.append(event) or real_emit(**event),
    )
    inverted = tmp_path / "inverted.npz"
    np.savez(inverted, images=255 - trained_registry.sample.x_test[:N])
    output = tmp_path / "inverted.csv"
    config = PredictConfig(input=str(inverted), output=str(output), chunk_size=CHUNK)
    result = mnist_predict(config)

    assert result.drift_detected is True
    rows = read_rows(output)
    assert [r["out_of_distribution"] for r in rows] == ["1"] * N
    run = tracking_store.connect().get_run(result.run_id)
    assert run.data.metrics["drift_detected"] == 1
    assert run.data.metrics["ood_share"] == 1.0
    assert run.data.metrics["drift_mean_intensity_psi"] > 1
    (event,) = events
    assert event["event"] == "mnist.drift.detected"
    assert event["resource"]["mnist.model.version"] == "1"
    assert "mean_intensity" in event["payload"]["drifting_features"]


def test_a_version_without_reference_profile_still_predicts(
    trained_registry, prefect_api_url, tmp_path, monkeypatch
):
    from mnist_pipeline import registry

    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained_registry.uri)
    client = tracking_store.connect()
    experiment = tracking_store.ensure_experiment(client, "legacy")
    with runs.tracked_run(client, experiment, "legacy", {}) as run_id:
        packaging.log_model(  # as every version was registered before profiles
            run_id,
            trained_registry.root / "model.keras",
            "mnist-legacy",
            trained_registry.sample.x_test[:1],
            {},
        )
    registry.move_champion(client, "mnist-legacy", "1", by="test", reason="old")
    batch = tmp_path / "batch.npz"
    np.savez(batch, images=trained_registry.sample.x_test[:N])
    output = tmp_path / "legacy.csv"
    config = PredictConfig(
        model_uri="models:/mnist-legacy@champion", input=str(batch), output=str(output)
    )
    result = mnist_predict(config)

    assert result.images == N and result.drift_detected is None
    rows = read_rows(output)
    assert len(rows) == N and "out_of_distribution" not in rows[0]
    run = client.get_run(result.run_id)
    assert "drift_detected" not in run.data.metrics
    assert client.list_artifacts(result.run_id, "drift") == []


def test_credentials_in_the_model_uri_reach_no_tag_param_or_log_line(
    trained_registry, prefect_api_url, tmp_path, monkeypatch, caplog
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained_registry.uri)
    client = tracking_store.connect()
    stored = urlsplit(client.get_model_version_download_uri("mnist-cnn", "1")).path
    shutil.copytree(stored, tmp_path / "artifacts" / "cnn")
    batch = tmp_path / "batch.npz"
    np.savez(batch, images=trained_registry.sample.x_test[:N])
    with mlflow_server(tmp_path, artifacts=tmp_path / "artifacts") as server:
        # The model from an artifact server, by a URL with a password in it.
        address = urlsplit(server).netloc
        path = "api/2.0/mlflow-artifacts/artifacts/cnn"
        config = PredictConfig(
            model_uri=f"http://reader:s3cret@{address}/{path}",
            input=str(batch),
            output=str(tmp_path / "out.csv"),
        )
        with caplog.at_level(logging.INFO):
            result = mnist_predict(config)

    assert result.images == N
    masked = f"http://reader:REDACTED@{address}/{path}"
    run = client.get_run(result.run_id)
    assert run.data.tags["model_uri"] == run.data.tags["model_uri_loaded"] == masked
    assert run.data.params["model_uri"] == result.model_uri == masked
    assert any(masked in r.getMessage() for r in caplog.records)  # says which model
    shown = [
        *run.data.tags.values(),
        *run.data.params.values(),
        run.info.run_name,
        *(r.getMessage() for r in caplog.records),
    ]
    assert [text for text in shown if "s3cret" in text] == []
