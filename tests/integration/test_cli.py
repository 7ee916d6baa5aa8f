"""The command line as a user meets it: real processes, real exit codes and output."""

from __future__ import annotations

import sqlite3

import numpy as np

from .conftest import run_cli


def test_default_entry_point_trains_and_ends_with_the_result(tmp_path):
    # No PREFECT_API_URL and no MLFLOW_TRACKING_URI: the embedded defaults.
    result = run_cli(
        "train",
        "--data",
        "sample",
        "--epochs",
        "1",
        "--train-limit",
        "300",
        "--test-limit",
        "100",
        cwd=tmp_path,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Traceback" not in output
    assert "| ERROR" not in output and " ERROR " not in output
    # One temporary server, started while the flow's modules imported, serves
    # the whole run: the flow's own API calls found it up.
    assert output.count("Starting temporary server") == 1
    assert "View at" not in output, "no links into a server that stops with the run"
    # A temporary server is nobody else's: promotions lock the store's file.
    assert "Holding lock file" in output
    assert "global concurrency limit" not in output
    assert "retracing" not in output
    verdict, *last = result.stdout.strip().splitlines()[-3:]
    assert verdict.startswith("Promotion gate: kept as @challenger: test accuracy")
    assert last[0].startswith("MLflow run id: ")
    assert last[1] == "Registered model: mnist-cnn version 1"
    assert (tmp_path / "mlflow.db").is_file()
    assert any((tmp_path / "mlruns").rglob("model.keras"))
    run_id = last[0].removeprefix("MLflow run id: ")
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        (status,) = db.execute(
            "select status from runs where run_uuid = ?", (run_id,)
        ).fetchone()
    assert status == "FINISHED"


def test_a_temporary_prefect_server_that_cannot_start_is_one_paragraph(tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    unusable = f"sqlite+aiosqlite:///{tmp_path / 'a-file' / 'prefect.db'}"
    result = run_cli(
        "train",
        "--data",
        "sample",
        "--epochs",
        "1",
        cwd=tmp_path,
        env={"PREFECT_SERVER_DATABASE_CONNECTION_URL": unusable},
    )
    assert result.returncode == 1
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("Error: Prefect's temporary server on port "), error
    assert "did not start: could not start it: " in error, error
    assert "a-file" in error and "PREFECT_API_URL" in error
    assert not (tmp_path / "mlruns").exists(), "nothing ran"


def test_missing_data_path_is_one_paragraph(tmp_path):
    result = run_cli("train", "--data", "no/such/file.npz", cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    error = result.stderr.strip()
    assert error.startswith("Error: Data source 'no/such/file.npz' does not exist.")
    assert "\n" not in error


def test_invalid_options_are_one_paragraph(tmp_path):
    result = run_cli(
        "train", "--epochs", "0", "--validation-split", "1.5", cwd=tmp_path
    )
    assert result.returncode == 1
    assert "--epochs" in result.stderr and "--validation-split" in result.stderr
    assert "Traceback" not in result.stderr


def test_unreadable_file_fails_without_traceback(tmp_path, prefect_api_url):
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"PK\x03\x04 this is not a zip archive")
    env = {"PREFECT_API_URL": prefect_api_url}
    result = run_cli("train", "--data", str(broken), cwd=tmp_path, env=env)
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    assert result.stderr.strip().splitlines()[-1].startswith(f"Error: {broken}")


def test_wrong_layout_names_every_failed_check(tmp_path, prefect_api_url):
    rng = np.random.default_rng(0)
    wrong = tmp_path / "wrong.npz"
    np.savez(
        wrong,
        x_train=rng.integers(0, 255, (100, 32, 32), dtype=np.uint8),
        y_train=np.arange(100) % 10,
        x_test=rng.integers(0, 255, (20, 28, 28), dtype=np.uint8),
        y_test=np.arange(21) % 10,
    )
    env = {"PREFECT_API_URL": prefect_api_url}
    result = run_cli("train", "--data", str(wrong), cwd=tmp_path, env=env)
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert "train: images 28x28 with one channel: image shape (32x32)" in error
    assert "test: as many labels as images: 20 images, 21 labels" in error
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        statuses = [row[0] for row in db.execute("select status from runs")]
        versions = db.execute("select count(*) from model_versions").fetchone()[0]
    assert statuses == ["FAILED"]
    assert versions == 0
