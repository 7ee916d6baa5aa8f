"""Batch inference over each input format with the registered champion."""

from __future__ import annotations

import csv
import struct

import numpy as np
import pytest
from PIL import Image

from flows.predict import mnist_predict
from mnist_pipeline import tracking
from mnist_pipeline.config import PredictConfig

from .conftest import run_cli

N = 30


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


@pytest.mark.parametrize("kind", ["npz", "idx", "folder"])
def test_predicts_every_format(
    kind, inputs, trained_registry, prefect_api_url, tmp_path
):
    output = tmp_path / f"{kind}.csv"
    result = mnist_predict(PredictConfig(input=inputs[kind], output=str(output)))
    assert result.images == N and result.model_version == "1"

    rows = list(csv.DictReader(output.open()))
    assert len(rows) == N
    id_column = "file" if kind == "folder" else "index"
    assert rows[0][id_column] in ("digit_00.png", "0")
    probabilities = np.array([[float(r[f"prob_{c}"]) for c in range(10)] for r in rows])
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)
    predicted = np.array([int(r["predicted_class"]) for r in rows])
    assert (predicted == probabilities.argmax(axis=1)).all()
    accuracy = (predicted == trained_registry.sample.y_test[:N]).mean()
    assert accuracy >= 0.8, accuracy

    client = tracking.connect()
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["model_version"] == "mnist-cnn/1"
    assert run.data.tags["model_uri_loaded"] == "models:/mnist-cnn/1"
    assert run.data.params["model_version"] == "1"
    assert run.data.metrics["images"] == N
    artifacts = [a.path for a in client.list_artifacts(result.run_id, "predictions")]
    assert artifacts == [f"predictions/{kind}.csv"]


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
