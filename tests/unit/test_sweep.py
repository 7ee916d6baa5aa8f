"""Sweep logic: the grid file, a trial's own check, the best trial, the table."""

from __future__ import annotations

import socket

import pytest
from pydantic import ValidationError

from mnist_pipeline import model
from mnist_pipeline.config import (
    MAX_TRIALS,
    SweepConfig,
    SweepGrid,
    TrainConfig,
    TrialParams,
)
from mnist_pipeline.errors import SweepError
from mnist_pipeline.sweep import (
    TrialResult,
    best_trial,
    check_scheduler,
    check_trial,
    format_table,
    load_grid,
    local_cluster_kwargs,
    max_concurrency,
    sweep_identity,
    trial_rows,
)

PARAMS = TrialParams(
    learning_rate=0.01, batch_size=100, dropout=0.5, conv_filters=(30, 15), epochs=1
)


def result(index, status="FINISHED", val_accuracy=0.9, val_loss=0.3, span=(0, 1)):
    return TrialResult(
        index=index,
        params=PARAMS,
        status=status,
        run_id=f"run{index}",
        val_accuracy=val_accuracy if status == "FINISHED" else None,
        val_loss=val_loss if status == "FINISHED" else None,
        started=span[0],
        finished=span[1],
        error=None if status == "FINISHED" else "SweepError: boom",
    )


def test_grid_file_expands_to_every_combination(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text(
        "learning_rate: [0.01, 0.001]\n"
        "batch_size: [100, 400]\n"
        "conv_filters: [[30, 15], [16, 8]]\n"
        "epochs: 2\n"
    )
    trials = load_grid(path).trials()
    assert len(trials) == 8
    assert trials[0] == TrialParams(
        learning_rate=0.01, batch_size=100, dropout=0.5, conv_filters=(30, 15), epochs=2
    )
    assert trials[-1].learning_rate == 0.001 and trials[-1].conv_filters == (16, 8)
    assert {t.dropout for t in trials} == {model.DROPOUT}


def test_grid_defaults_are_the_notebooks_model():
    (only,) = SweepGrid().trials()
    assert only.conv_filters == model.CONV_FILTERS
    assert only.dropout == model.DROPOUT
    assert (only.learning_rate, only.batch_size, only.epochs) == (0.01, 400, 10)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("learning_rate: [0.01, -1]\n", "learning_rate.1: Input should be greater"),
        ("dropout: [1.0]\n", "dropout.0: Input should be less than 1"),
        ("conv_filters: [[30, 0]]\n", "conv_filters.0.1: Input should be greater"),
        ("batch_size: [100, 100]\n", "batch_size lists a value more than once"),
        ("momentum: [0.9]\n", "momentum: Extra inputs are not permitted"),
        ("- 0.01\n", "must map settings to lists of values"),
        ("learning_rate: [0.01\n", "Cannot read the grid file"),
    ],
)
def test_bad_grid_files_are_refused_with_the_reason(tmp_path, text, message):
    path = tmp_path / "grid.yaml"
    path.write_text(text)
    with pytest.raises(SweepError, match="grid") as info:
        load_grid(path)
    assert message in str(info.value)


def test_missing_grid_file_is_named(tmp_path):
    with pytest.raises(SweepError, match="nowhere.yaml"):
        load_grid(tmp_path / "nowhere.yaml")


def test_grid_size_is_bounded():
    with pytest.raises(ValidationError, match=f"at most {MAX_TRIALS} trials"):
        SweepGrid(
            learning_rate=[i / 1000 + 0.001 for i in range(100)], epochs=[1, 2, 3]
        )


def test_workers_only_size_a_local_cluster():
    with pytest.raises(ValidationError, match="sizes the local cluster"):
        SweepConfig(dask_address="tcp://127.0.0.1:8786", workers=2)


def test_trial_refuses_a_batch_larger_than_its_training_split():
    check_trial(PARAMS, train_images=100)
    with pytest.raises(SweepError, match="Batch size 100 is larger than the 99"):
        check_trial(PARAMS, train_images=99)


def test_best_is_chosen_on_validation_accuracy_then_loss():
    results = [
        result(0, val_accuracy=0.90, val_loss=0.30),
        result(1, val_accuracy=0.95, val_loss=0.40),
        result(2, val_accuracy=0.95, val_loss=0.20),
        result(3, status="FAILED"),
    ]
    assert best_trial(results).index == 2


def test_no_finished_trial_is_an_error_naming_every_failure():
    with pytest.raises(SweepError, match="All 2 trials failed: trial 0: SweepError"):
        best_trial([result(0, status="FAILED"), result(1, status="FAILED")])


def test_concurrency_counts_overlapping_run_times_only():
    assert max_concurrency([result(0, span=(0, 10)), result(1, span=(10, 20))]) == 1
    overlapping = [result(0, span=(0, 10)), result(1, span=(5, 20))]
    assert max_concurrency(overlapping + [result(2, span=(6, 7))]) == 3
    assert max_concurrency([result(0, span=(None, None))]) == 0


def test_table_rows_mark_the_best_and_the_failure():
    rows = trial_rows(
        [result(1, status="FAILED", span=(0, 0.5)), result(0, span=(0, 12.34))],
        best_index=0,
    )
    assert [r["trial"] for r in rows] == [0, 1]
    assert rows[0]["best"] and rows[0]["seconds"] == 12.3
    assert rows[0]["started"] == "1970-01-01T00:00:00.000Z"
    assert rows[1]["status"] == "FAILED" and rows[1]["error"] == "SweepError: boom"
    text = format_table(rows, ["trial", "best", "status", "val_accuracy", "error"])
    assert text.splitlines()[1].split() == ["0", "*", "FINISHED", "0.9", "-"]


def test_unreachable_scheduler_is_reported_with_advice():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: refuses connections
        with pytest.raises(SweepError, match="No Dask scheduler answers"):
            check_scheduler(f"tcp://127.0.0.1:{port}", timeout=2)
    with pytest.raises(SweepError, match="not a scheduler address"):
        check_scheduler("tcp://nowhere")


def test_a_sweep_is_the_same_only_when_every_trial_trains_the_same():
    grid = SweepGrid(augment=[False, True])
    config = SweepConfig(grid=grid)
    stronger = SweepConfig(
        grid=grid, training=TrainConfig(augment_rotation=20, augment_zoom=0.2)
    )
    assert sweep_identity(config) == sweep_identity(SweepConfig(grid=grid))
    assert sweep_identity(stronger) != sweep_identity(config)
    assert sweep_identity(
        SweepConfig(grid=grid, training=TrainConfig(seed=1))
    ) != sweep_identity(config)
    # Settings the grid overrides, or strengths no trial uses, change no trial.
    plain = SweepConfig(grid=SweepGrid(augment=[False]))
    unused = SweepConfig(
        grid=plain.grid,
        training=TrainConfig(epochs=3, learning_rate=0.1, augment_rotation=20),
    )
    assert sweep_identity(unused) == sweep_identity(plain)
    # A trial's own training key: a sweep trial and a training run of one
    # setup are one training.
    (trial,) = plain.trials()
    assert trial.training_params(0.1, 0) in sweep_identity(plain)["trials"]


def test_the_local_clusters_dashboard_listens_on_loopback_only():
    from distributed import LocalCluster
    from distributed.utils import get_ip

    kwargs = local_cluster_kwargs(2, cores=4, prefect_api_url="http://127.0.0.1:1/api")
    assert kwargs["n_workers"] == 2 and kwargs["env"]["TF_NUM_INTRAOP_THREADS"] == "2"
    # The same settings in one process (threads, not worker processes): cheap.
    threads = {k: v for k, v in kwargs.items() if k != "env"} | {
        "n_workers": 1,
        "processes": False,
    }
    with LocalCluster(**threads) as cluster:
        server = cluster.scheduler.http_server
        hosts = {s.getsockname()[0] for s in server._sockets.values()}
        port = server.port
    assert hosts == {"127.0.0.1"}
    assert port != 8787
    # Nothing answers on the machine's other addresses.
    other = get_ip()
    if other != "127.0.0.1":
        with pytest.raises(OSError):
            socket.create_connection((other, port), timeout=2).close()
