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

from mnist_pipeline import gate, runs, tracking_store
from mnist_pipeline.checkpoint import training_claim
from mnist_pipeline.config import SweepConfig, TrainConfig, TrialParams
from mnist_pipeline.data import DatasetRef
from mnist_pipeline.lineage import SWEEP_KEY_TAG, TRAINING_KEY_TAG, training_key
from mnist_pipeline.runtime import configure_flow_logs
from mnist_pipeline.sweep import (
    TrialResult,
    best_trial,
    local_cluster_kwargs,
    max_concurrency,
    sweep_identity,
)
from tasks.approval import require_reachable_server
from tasks.caching import cache_storage, cached
from tasks.candidate import publish_candidate, register_and_gate
from tasks.evaluate import evaluate
from tasks.gate import settle_existing
from tasks.lineage import flow_run_tags, run_name, version_tags
from tasks.load import load_data
from tasks.preprocess import preprocess_data
from tasks.sweep import (
    record_failed_trial,
    record_outcome,
    record_trials,
    train_trial,
)
from tasks.track import ExistingVersion, find_training, log_dataset, log_params
from tasks.train import TrainedModel
from tasks.validate import validate_data

ENTRYPOINT = "flows/sweep.py:mnist_sweep"


class SweepResult(BaseModel):
    """What a sweep produced: every trial, and the best one's fate.

    ``skipped``: the same sweep registered its best trial before; no trial ran,
    and ``version`` is the one it registered then.
    """

    run_id: str
    experiment_id: str
    trials: list[TrialResult]
    max_concurrent_trials: int
    best_trial: int | None
    best_run_id: str | None
    model_name: str
    version: str
    test_accuracy: float
    promoted: bool
    verdict: str
    gate_reasons: list[str] = []
    skipped: bool = False


def _run_name() -> str:
    config = SweepConfig.model_validate(flow_run.get_parameters().get("config", {}))
    details = f"{len(config.trials())}trials-seed{config.training.seed}"
    return run_name("sweep", config.training.data, details)


@flow(name="mnist-sweep", flow_run_name=_run_name, log_prints=True)
def mnist_sweep(config: SweepConfig = SweepConfig()) -> SweepResult:
    """Train every grid combination in parallel; gate and register the best one.

    A sweep whose grid, shared settings, data and code version match one that
    registered its best trial already trains nothing (unless ``retrain``).
    """
    configure_flow_logs()
    training = config.training
    if training.approval == "required":
        require_reachable_server()  # before any trial: someone must be able to answer
    workdir = os.path.abspath(training.workdir)  # trials run in other processes
    client = tracking_store.connect()
    experiment_id = tracking_store.ensure_experiment(client, training.experiment)
    lineage = flow_run_tags(ENTRYPOINT) | {"sweep.parent": "true"}
    cache = cache_storage(workdir)
    with runs.recorded_run(client, experiment_id, flow_run.get_name(), lineage) as run:
        data = cached(load_data, cache)(
            training.data,
            workdir,
            origin=training.mnist_origin,
            sha256=training.mnist_sha256,
            timeout=training.download_timeout,
            train_limit=training.train_limit,
            test_limit=training.test_limit,
            seed=training.seed,
        )
        sweep_key = training_key(sweep_identity(config), data.digest)
        with training_claim(workdir, sweep_key):
            if not training.retrain:
                existing = find_training(training.model_name, sweep_key, SWEEP_KEY_TAG)
                if existing is not None:
                    return _already_swept(
                        training, data, existing, sweep_key, experiment_id
                    )

            run_id = run.open()
            applied = gate.threshold_params(training, data.name)
            params = _sweep_params(config) | applied | {SWEEP_KEY_TAG: sweep_key}
            log_params(run_id, params)
            log_dataset(run_id, data)
            cached(validate_data, cache)(data, training.min_class_share)
            prepared = cached(preprocess_data, cache)(
                data, training.validation_split, training.seed, workdir
            )

            trials = run_trials.with_options(task_runner=_task_runner(config))(
                config.trials(),
                prepared_path=prepared,
                seed=training.seed,
                tracking_uri=tracking_store.portable_uri(client.tracking_uri),
                experiment_id=experiment_id,
                parent_run_id=run_id,
                workdir=workdir,
            )
            finished = any(t.status == "FINISHED" for t in trials)
            record_trials(
                run_id, trials, best_trial(trials).index if finished else None
            )
            best = best_trial(trials)  # fails the sweep, naming every failure, if none

            trained = TrainedModel(path=best.model_path, history=best.history)
            evaluation = evaluate(trained, prepared)
            key = training_key(
                best.params.training_params(training.validation_split, training.seed),
                data.digest,
            )
            candidate = register_and_gate(
                trained,
                evaluation,
                data,
                run_id=best.run_id,
                config=training,
                data_plots=[],
                tags={SWEEP_KEY_TAG: sweep_key, TRAINING_KEY_TAG: key}
                | version_tags(lineage),
            )
        record_outcome(
            run_id,
            candidate.scores.accuracy,
            candidate.version,
            candidate.outcome.verdict,
        )
        publish_candidate(
            candidate, data, experiment_id=experiment_id, training_key=key
        )
    return SweepResult(
        run_id=run_id,
        experiment_id=experiment_id,
        trials=trials,
        max_concurrent_trials=max_concurrency(trials),
        best_trial=best.index,
        best_run_id=best.run_id,
        model_name=training.model_name,
        version=candidate.version,
        test_accuracy=candidate.scores.accuracy,
        promoted=candidate.outcome.decision.promote,
        verdict=candidate.outcome.verdict,
        gate_reasons=candidate.outcome.decision.reasons,
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
    return DaskTaskRunner(
        cluster_kwargs=local_cluster_kwargs(
            config.workers,
            len(os.sched_getaffinity(0)),
            str(get_client(sync_client=True).api_url),
        )
    )


def _already_swept(
    training: TrainConfig,
    data: DatasetRef,
    existing: ExistingVersion,
    sweep_key: str,
    experiment_id: str,
) -> SweepResult:
    """Report the version this same sweep registered; finish its gate if needed."""
    verdict, promoted, _ = settle_existing(
        existing,
        config=training,
        ref=data,
        key=sweep_key,
        experiment_id=experiment_id,
    )
    return SweepResult(
        run_id=existing.run_id or "",
        experiment_id=experiment_id,
        trials=[],
        max_concurrent_trials=0,
        best_trial=None,
        best_run_id=existing.run_id,
        model_name=training.model_name,
        version=existing.version,
        test_accuracy=float(existing.tags.get("test_accuracy", "nan")),
        promoted=promoted,
        verdict=verdict,
        skipped=True,
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
