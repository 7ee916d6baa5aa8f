"""The training flow: the reference notebook as a Prefect + MLflow recipe.

Run it with ``mnist-pipeline train`` or ``python -m flows.training``; deploy it
from its entrypoint ``flows/training.py:mnist_training``.
"""

# No ``from __future__ import annotations`` here: ``flow.serve`` pickles the flow
# function by value for its subprocess, without the module's globals, so its
# parameter annotations must be classes, not names to resolve later.
from prefect import flow
from prefect.runtime import flow_run
from pydantic import BaseModel

from mnist_pipeline import gate, tracking
from mnist_pipeline.checkpoint import training_key
from mnist_pipeline.config import TrainConfig
from mnist_pipeline.runtime import configure_flow_logs
from tasks.caching import cache_storage
from tasks.evaluate import evaluate
from tasks.gate import apply_decision, gate_candidate
from tasks.load import load_data
from tasks.plot import plot_data
from tasks.preprocess import preprocess_data
from tasks.report import publish_summary
from tasks.track import log_dataset, log_params, log_results, register_model
from tasks.train import train
from tasks.validate import validate_data


class TrainingResult(BaseModel):
    """What a successful run produced."""

    run_id: str
    experiment_id: str
    model_name: str
    version: str
    test_accuracy: float
    promoted: bool
    gate_reasons: list[str] = []
    run_url: str | None = None


@flow(name="mnist-training", log_prints=True)
def mnist_training(config: TrainConfig = TrainConfig()) -> TrainingResult:
    """Train the LeNet-style CNN on MNIST, track it in MLflow, register the model."""
    configure_flow_logs()
    client = tracking.connect()
    experiment_id = tracking.ensure_experiment(client, config.experiment)
    tags = {
        "prefect.flow_run_id": str(flow_run.get_id()),
        "prefect.flow_run_name": str(flow_run.get_name()),
    }
    with tracking.tracked_run(
        client, experiment_id, flow_run.get_name(), tags
    ) as run_id:
        log_params(run_id, config.model_dump())

        # Data stages persist their results here; a re-run on the same data skips them.
        cache = cache_storage(config.workdir)
        data = load_data.with_options(result_storage=cache)(
            config.data,
            config.workdir,
            origin=config.mnist_origin,
            sha256=config.mnist_sha256,
            timeout=config.download_timeout,
            train_limit=config.train_limit,
            test_limit=config.test_limit,
            seed=config.seed,
        )
        log_dataset(run_id, data)
        validate_data.with_options(result_storage=cache)(data, config.min_class_share)
        data_plots = plot_data.with_options(result_storage=cache)(
            data, config.workdir, config.seed
        )
        prepared = preprocess_data.with_options(result_storage=cache)(
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
            checkpoint_key=training_key(config.training_params(), data.digest),
        )
        evaluation = evaluate(trained, prepared)

        log_results(run_id, evaluation, data_plots)
        accuracy = evaluation.metrics["test_accuracy"]
        version = register_model(run_id, trained, data, config.model_name, accuracy)

        decision, champion = gate_candidate(
            config.model_name,
            version,
            trained,
            data,
            gate.thresholds_for(config, data.name),
            config.seed,
        )
        promoted = apply_decision(
            run_id, config.model_name, version, decision, champion
        )

        url = tracking.run_url(client, experiment_id, run_id)
        publish_summary(
            metrics=evaluation.metrics,
            per_class=evaluation.per_class,
            dataset=data.name,
            digest=data.digest,
            model_name=config.model_name,
            version=version,
            run_id=run_id,
            run_url=url,
            gate="promoted to @champion"
            if promoted
            else "rejected: " + "; ".join(decision.reasons),
        )
    return TrainingResult(
        run_id=run_id,
        experiment_id=experiment_id,
        model_name=config.model_name,
        version=version,
        test_accuracy=accuracy,
        promoted=promoted,
        gate_reasons=decision.reasons,
        run_url=url,
    )


if __name__ == "__main__":
    from mnist_pipeline.cli import main

    main(["train", *__import__("sys").argv[1:]])
