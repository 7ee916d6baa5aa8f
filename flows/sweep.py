"""The sweep flow: one training trial per grid combination, in parallel on Dask.

Run it with ``mnist-pipeline sweep --grid GRID.yaml``. The data is loaded,
validated and preprocessed once; trials run as Prefect task runs on a Dask
cluster (a local one by default) in the subflow ``mnist-sweep-trials``; the best
trial by validation accuracy is scored on the test split, registered and put
through the same promotion gate as ``mnist-training``.
"""

# No ``from __future__ import annotations``: Prefect resolves the flows'
# parameter annotations at run time (see flows/training.py).
import logging
import os

from prefect import flow
from prefect.client.orchestration import get_client
from prefect.futures import wait
from prefect.runtime import flow_run
from prefect_dask import DaskTaskRunner
from pydantic import BaseModel

from mnist_pipeline import gate, tracking
from mnist_pipeline.config import SweepConfig, TrialParams
from mnist_pipeline.runtime import configure_flow_logs
from mnist_pipeline.sweep import TrialResult, best_trial, max_concurrency
from tasks.evaluate import evaluate
from tasks.gate import apply_decision, gate_candidate
from tasks.load import load_data
from tasks.preprocess import preprocess_data
from tasks.report import publish_summary
from tasks.sweep import (
    record_failed_trial,
    record_outcome,
    record_trials,
    train_trial,
)
from tasks.track import log_dataset, log_params, log_results, register_model
from tasks.train import TrainedModel
from tasks.validate import validate_data


class SweepResult(BaseModel):
    """What a sweep produced: every trial, and the best one's fate."""

    run_id: str
    experiment_id: str
    trials: list[TrialResult]
    max_concurrent_trials: int
    best_trial: int
    best_run_id: str
    model_name: str
    version: str
    test_accuracy: float
    promoted: bool
    gate_reasons: list[str] = []


@flow(name="mnist-sweep", log_prints=True)
def mnist_sweep(config: SweepConfig = SweepConfig()) -> SweepResult:
    """Train every grid combination in parallel; gate and register the best one."""
    configure_flow_logs()
    training = config.training
    workdir = os.path.abspath(training.workdir)  # trials run in other processes
    client = tracking.connect()
    experiment_id = tracking.ensure_experiment(client, training.experiment)
    tags = {
        "prefect.flow_run_id": str(flow_run.get_id()),
        "prefect.flow_run_name": str(flow_run.get_name()),
        "sweep.parent": "true",
    }
    with tracking.tracked_run(
        client, experiment_id, flow_run.get_name(), tags
    ) as run_id:
        log_params(run_id, _sweep_params(config))
        data = load_data(
            training.data,
            workdir,
            origin=training.mnist_origin,
            sha256=training.mnist_sha256,
            timeout=training.download_timeout,
            train_limit=training.train_limit,
            test_limit=training.test_limit,
            seed=training.seed,
        )
        log_dataset(run_id, data)
        validate_data(data, training.min_class_share)
        prepared = preprocess_data(
            data, training.validation_split, training.seed, workdir
        )

        trials = run_trials.with_options(task_runner=_task_runner(config))(
            config.trials(),
            prepared_path=prepared,
            seed=training.seed,
            tracking_uri=tracking.portable_uri(client.tracking_uri),
            experiment_id=experiment_id,
            parent_run_id=run_id,
            workdir=workdir,
        )
        finished = any(t.status == "FINISHED" for t in trials)
        record_trials(run_id, trials, best_trial(trials).index if finished else None)
        best = best_trial(trials)  # fails the sweep, naming every failure, if none

        trained = TrainedModel(path=best.model_path, history=best.history)
        evaluation = evaluate(trained, prepared)
        log_results(best.run_id, evaluation, [])
        accuracy = evaluation.metrics["test_accuracy"]
        version = register_model(
            best.run_id, trained, data, training.model_name, accuracy
        )
        decision, champion = gate_candidate(
            training.model_name,
            version,
            trained,
            data,
            gate.thresholds_for(training, data.name),
            training.seed,
        )
        promoted = apply_decision(
            best.run_id, training.model_name, version, decision, champion
        )
        verdict = (
            "promoted to @champion"
            if promoted
            else "rejected: " + "; ".join(decision.reasons)
        )
        record_outcome(run_id, accuracy, version, verdict)
        publish_summary(
            metrics=evaluation.metrics,
            per_class=evaluation.per_class,
            dataset=data.name,
            digest=data.digest,
            model_name=training.model_name,
            version=version,
            run_id=best.run_id,
            run_url=tracking.run_url(client, experiment_id, best.run_id),
            gate=verdict,
        )
    return SweepResult(
        run_id=run_id,
        experiment_id=experiment_id,
        trials=trials,
        max_concurrent_trials=max_concurrency(trials),
        best_trial=best.index,
        best_run_id=best.run_id,
        model_name=training.model_name,
        version=version,
        test_accuracy=accuracy,
        promoted=promoted,
        gate_reasons=decision.reasons,
    )


@flow(name="mnist-sweep-trials")
def run_trials(
    trials: list[TrialParams],
    *,
    prepared_path: str,
    seed: int,
    tracking_uri: str,
    experiment_id: str,
    parent_run_id: str,
    workdir: str,
) -> list[TrialResult]:
    """Submit every trial to the task runner; report failed ones, stop none."""
    futures = [
        train_trial.submit(
            index,
            params,
            prepared_path=prepared_path,
            seed=seed,
            tracking_uri=tracking_uri,
            experiment_id=experiment_id,
            parent_run_id=parent_run_id,
            workdir=workdir,
        )
        for index, params in enumerate(trials)
    ]
    wait(futures)
    results = []
    for index, (params, future) in enumerate(zip(trials, futures, strict=True)):
        try:
            outcome = future.result(raise_on_failure=False)
        except Exception as exc:  # the worker itself died (KilledWorker, ...)
            outcome = exc
        if not isinstance(outcome, TrialResult):
            outcome = record_failed_trial(
                index,
                params,
                f"{type(outcome).__name__}: {outcome}",
                experiment_id=experiment_id,
                parent_run_id=parent_run_id,
            )
        results.append(outcome)
    return results


def _task_runner(config: SweepConfig) -> DaskTaskRunner:
    """The cluster the trials run on: the given scheduler, else a local one."""
    # Dask logs every connection and worker start and stop at INFO, and a
    # closed connection with a traceback when a local cluster shuts down.
    logging.getLogger("distributed").setLevel(logging.WARNING)
    if config.dask_address:
        # Its workers report to the Prefect API in their own environment.
        return DaskTaskRunner(address=config.dask_address)
    cores = len(os.sched_getaffinity(0))
    workers = config.workers or cores
    threads = str(max(1, cores // workers))
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": workers,
            "threads_per_worker": 1,  # one trial at a time per worker process
            "processes": True,
            "dashboard_address": ":0",  # any free port, never a clash at :8787
            "env": {
                # The flow's own Prefect server, even a temporary one: without
                # it every worker would start a temporary server of its own.
                "PREFECT_API_URL": str(get_client(sync_client=True).api_url),
                "DASK_LOGGING__DISTRIBUTED": "warning",
                # The workers share the cores instead of each using them all.
                "TF_NUM_INTRAOP_THREADS": threads,
            },
        }
    )


def _sweep_params(config: SweepConfig) -> dict[str, object]:
    """The parent run's params: what the trials share, the grid, the cluster."""
    shared = config.training.model_dump(
        exclude={"epochs", "batch_size", "learning_rate", "augment"}
    )
    grid = {
        f"grid.{name}": ", ".join(map(str, values))
        for name, values in config.grid.model_dump().items()
    }
    cluster = {
        "dask_address": config.dask_address or "local",
        "workers": config.workers or "one per core",
        "trials": len(config.trials()),
    }
    return shared | grid | cluster


if __name__ == "__main__":
    from mnist_pipeline.cli import main

    main(["sweep", *__import__("sys").argv[1:]])
