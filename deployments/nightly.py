"""The ``nightly`` deployment of the training flow, served by this process.

``prefect.yaml`` declares the same deployment for a process work pool
(``prefect deploy --all``); ``tests/unit/test_deployments.py`` keeps the two in
step. Both register ``mnist-training/nightly``: use one or the other.
"""

from __future__ import annotations

NAME = "nightly"
DEFAULT_CRON = "0 2 * * *"
TIMEZONE = "UTC"
TAGS = ["mnist", "nightly"]
DESCRIPTION = (
    "Train the LeNet-style CNN on MNIST, track the run in MLflow and register a "
    "new model version."
)
#: The flow's ``config`` for scheduled runs; fields left out take TrainConfig's
#: defaults. A run started with its own ``config`` replaces this one. Full MNIST,
#: never ``auto``: a scheduled run whose download fails must fail, not train on
#: the bundled sample with its lower accuracy floor.
PARAMETERS = {
    "config": {
        "data": "mnist",
        "epochs": 10,
        "batch_size": 400,
        "learning_rate": 0.01,
        "validation_split": 0.1,
        "seed": 0,
        "experiment": "mnist",
        "model_name": "mnist-cnn",
        "workdir": "outputs",
    }
}


#: One run of the deployment at a time; a run due while one is going waits for
#: it (and then usually finds its training registered: nothing to train).
CONCURRENCY_LIMIT = 1
COLLISION_STRATEGY = "ENQUEUE"


def serve(cron: str = DEFAULT_CRON) -> None:
    """Register ``mnist-training/nightly`` on ``cron`` (UTC) and run its flow runs.

    Blocks until interrupted; the schedule is paused when the process stops.
    """
    from prefect.client.schemas.objects import (
        ConcurrencyLimitConfig,
        ConcurrencyLimitStrategy,
    )
    from prefect.schedules import Cron

    from flows.training import mnist_training

    mnist_training.serve(
        name=NAME,
        schedules=[Cron(cron, timezone=TIMEZONE)],
        parameters=PARAMETERS,
        description=DESCRIPTION,
        tags=TAGS,
        global_limit=ConcurrencyLimitConfig(
            limit=CONCURRENCY_LIMIT,
            collision_strategy=ConcurrencyLimitStrategy(COLLISION_STRATEGY),
        ),
    )
