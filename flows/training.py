"""The training flow: the reference notebook as a Prefect + MLflow recipe.

Run it with ``mnist-pipeline train``; deploy it from its entrypoint
``flows/training.py:mnist_training``.
"""

# No ``from __future__ import annotations`` here: ``flow.serve`` pickles the flow
# function by value for its subprocess, without the module's globals, so its
# parameter annotations must be classes, not names to resolve later.
from prefect import flow
from prefect.runtime import flow_run
from prefect.states import Completed
from pydantic import BaseModel

from mnist_pipeline import gate, runs, tracking_store
from mnist_pipeline.checkpoint import training_claim
from mnist_pipeline.config import TrainConfig
from mnist_pipeline.data import DatasetRef
from mnist_pipeline.lineage import TRAINING_KEY_TAG, training_key
from mnist_pipeline.runtime import configure_flow_logs
from tasks.approval import require_reachable_server
from tasks.caching import cache_storage, cached
from tasks.candidate import publish_candidate, register_and_gate
from tasks.evaluate import evaluate
from tasks.gate import settle_existing
from tasks.lineage import flow_run_tags, run_name, version_tags
from tasks.load import load_data
from tasks.plot import plot_data
from tasks.preprocess import preprocess_data
from tasks.track import ExistingVersion, find_training, log_dataset, log_params
from tasks.train import train
from tasks.validate import validate_data

ENTRYPOINT = "flows/training.py:mnist_training"


class TrainingResult(BaseModel):
    """What a run produced, or found already registered (``skipped``)."""

    run_id: str
    experiment_id: str
    model_name: str
    version: str
    test_accuracy: float
    promoted: bool
    verdict: str
    gate_reasons: list[str] = []
    run_url: str | None = None
    training_key: str
    skipped: bool = False


def _run_name() -> str:
    config = TrainConfig.model_validate(flow_run.get_parameters().get("config", {}))
    details = f"{config.epochs}ep-seed{config.seed}"
    return run_name("train", config.data, details)


@flow(name="mnist-training", flow_run_name=_run_name, log_prints=True)
def mnist_training(config: TrainConfig = TrainConfig()) -> TrainingResult:
    """Train the LeNet-style CNN on MNIST, track it in MLflow, register the model.

    A run whose training (data, settings, code version) a registered version
    already holds trains and registers nothing, unless ``config.retrain``.
    """
    configure_flow_logs()
    if config.approval == "required":
        require_reachable_server()  # before training: someone must be able to answer
    client = tracking_store.connect()
    experiment_id = tracking_store.ensure_experiment(client, config.experiment)
    lineage = flow_run_tags(ENTRYPOINT)
    # The data stages persist their results in the workdir's stage cache: a
    # re-run on the same data skips them.
    cache = cache_storage(config.workdir)
    with runs.recorded_run(client, experiment_id, flow_run.get_name(), lineage) as run:
        data = cached(load_data, cache)(
            config.data,
            config.workdir,
            origin=config.mnist_origin,
            sha256=config.mnist_sha256,
            timeout=config.download_timeout,
            train_limit=config.train_limit,
            test_limit=config.test_limit,
            seed=config.seed,
        )
        key = training_key(config.training_params(), data.digest)
        # An identical run started meanwhile waits here, then finds the version.
        with training_claim(config.workdir, key):
            existing = None if config.retrain else find_training(config.model_name, key)
            if existing is not None:
                skipped = _already_trained(config, data, existing, key, experiment_id)
                # The flow run's state says it in the runs list, not only "Completed".
                return Completed(message=skipped.verdict, data=skipped)

            run_id = run.open()
            applied = gate.threshold_params(config, data.name)
            log_params(run_id, config.model_dump() | applied | {TRAINING_KEY_TAG: key})
            log_dataset(run_id, data)
            cached(validate_data, cache)(data, config.min_class_share)
            data_plots = cached(plot_data, cache)(data, config.workdir, config.seed)
            prepared = cached(preprocess_data, cache)(
                data, config.validation_split, config.seed, config.workdir
            )

            trained = train(
                prepared,
                epochs=config.epochs,
                batch_size=config.batch_size,
                learning_rate=config.learning_rate,
                seed=config.seed,
                run_id=run_id,
                workdir=config.workdir,
                checkpoint_key=key,
                augmentation=config.augmentation(),
            )
            evaluation = evaluate(trained, prepared)
            candidate = register_and_gate(
                trained,
                evaluation,
                data,
                run_id=run_id,
                config=config,
                data_plots=data_plots,
                tags={TRAINING_KEY_TAG: key} | version_tags(lineage),
            )
        url = publish_candidate(
            candidate, data, experiment_id=experiment_id, training_key=key
        )
    return TrainingResult(
        run_id=run_id,
        experiment_id=experiment_id,
        model_name=config.model_name,
        version=candidate.version,
        test_accuracy=candidate.scores.accuracy,
        promoted=candidate.outcome.decision.promote,
        verdict=candidate.outcome.verdict,
        gate_reasons=candidate.outcome.decision.reasons,
        run_url=url,
        training_key=key,
    )


def _already_trained(
    config: TrainConfig,
    data: DatasetRef,
    existing: ExistingVersion,
    key: str,
    experiment_id: str,
) -> TrainingResult:
    """Report the version holding this training; finish its gate if it never did."""
    verdict, promoted, url = settle_existing(
        existing,
        config=config,
        ref=data,
        key=key,
        experiment_id=experiment_id,
    )
    return TrainingResult(
        run_id=existing.run_id or "",
        experiment_id=experiment_id,
        model_name=config.model_name,
        version=existing.version,
        test_accuracy=float(existing.tags.get("test_accuracy", "nan")),
        promoted=promoted,
        verdict=verdict,
        run_url=url,
        training_key=key,
        skipped=True,
    )
