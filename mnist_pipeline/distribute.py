"""Choose how training spreads over the devices present (``tf.distribute``).

One device: TensorFlow's default strategy (no distribution). Several GPUs on this
machine: ``MirroredStrategy``, one replica per GPU with gradients all-reduced at
every step. A ``TF_CONFIG`` that describes a cluster of workers:
``MultiWorkerMirroredStrategy``. Keras's ``fit(batch_size=...)`` is the *global*
batch, split across the replicas, so a configured batch size means the same
whatever the strategy.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

from mnist_pipeline.errors import DistributeConfigError

if TYPE_CHECKING:
    import tensorflow as tf

log = logging.getLogger(__name__)

StrategyKind = Literal["default", "mirrored", "multi_worker"]
#: Roles of a TF_CONFIG cluster that train (parameter servers and evaluators don't).
TRAINING_ROLES = ("chief", "worker")


def cluster_size(tf_config: str | None) -> int:
    """How many training tasks (chief and workers) ``tf_config`` describes; 0: none.

    Raises:
        DistributeConfigError: ``tf_config`` is set but is not such a description.
    """
    if not tf_config or not tf_config.strip():
        return 0
    try:
        cluster = json.loads(tf_config).get("cluster") or {}
        return sum(len(cluster.get(role) or []) for role in TRAINING_ROLES)
    except (ValueError, AttributeError, TypeError) as exc:
        raise DistributeConfigError(
            f"TF_CONFIG is not a cluster description ({exc}). Expected JSON like "
            '{"cluster": {"worker": ["host1:2222", "host2:2222"]}, '
            '"task": {"type": "worker", "index": 0}}, or unset it to train on '
            "this machine only."
        ) from exc


def strategy_kind(gpus: int, tf_config: str | None) -> StrategyKind:
    """The strategy for ``gpus`` local GPUs and the ``TF_CONFIG`` value (if any)."""
    if cluster_size(tf_config):
        return "multi_worker"
    if gpus > 1:
        return "mirrored"
    return "default"


def check_supported(tf_config: str | None) -> None:
    """Refuse a cluster of several workers, which Keras 3's ``fit`` cannot train.

    With Keras 3.15 and TensorFlow 2.21, ``Model.fit`` under a
    ``MultiWorkerMirroredStrategy`` of two or more workers fails on its first
    step (keras-team/keras#20585); a one-task cluster trains.
    ``tests/integration/test_distribute.py`` keeps checking that this is so.

    Raises:
        DistributeConfigError: ``tf_config`` describes more than one task.
    """
    tasks = cluster_size(tf_config)
    if tasks > 1:
        import keras

        raise DistributeConfigError(
            f"TF_CONFIG describes a cluster of {tasks} training tasks, which needs "
            f"MultiWorkerMirroredStrategy, but Keras {keras.__version__}'s fit "
            "fails under it with more than one worker (keras-team/keras#20585). "
            "Unset TF_CONFIG to train on this machine's devices (several GPUs "
            "train with MirroredStrategy), or spread trials over machines with "
            "`mnist-pipeline sweep --dask-address`."
        )


def choose_strategy() -> tf.distribute.Strategy:
    """The strategy for this process: its GPUs and ``TF_CONFIG``, read now.

    Raises:
        DistributeConfigError: see :func:`check_supported`.
    """
    import tensorflow as tf

    tf_config = os.environ.get("TF_CONFIG")
    check_supported(tf_config)
    gpus = len(tf.config.list_physical_devices("GPU"))
    strategy = make_strategy(strategy_kind(gpus, tf_config))
    log.info(
        "Training with %s on %d replica(s)",
        type(strategy).__name__,
        strategy.num_replicas_in_sync,
    )
    return strategy


def make_strategy(
    kind: StrategyKind, devices: Sequence[str] | None = None
) -> tf.distribute.Strategy:
    """Build a strategy of ``kind``; ``devices`` names a mirrored one's replicas."""
    import tensorflow as tf

    if kind == "multi_worker":
        return _multi_worker_strategy()
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy(list(devices) if devices else None)
    return tf.distribute.get_strategy()


@functools.cache
def _multi_worker_strategy() -> tf.distribute.Strategy:
    # TensorFlow configures collective ops once per process: one instance only.
    import tensorflow as tf

    return tf.distribute.MultiWorkerMirroredStrategy()
