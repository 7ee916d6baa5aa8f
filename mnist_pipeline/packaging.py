"""The model as MLflow keeps it: a pyfunc version, its signature, code and bound.

Logging a model registers it (:func:`log_model`); loading goes through MLflow's
generic pyfunc API (:func:`load_pyfunc`, unbounded, for batch work) or the
Keras file of a version.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import mlflow
import numpy as np
from mlflow import MlflowClient
from mlflow.models import ModelSignature
from mlflow.types.schema import Schema, TensorSpec

from mnist_pipeline import registry
from mnist_pipeline.config import ServeConfig
from mnist_pipeline.serving import MAX_IMAGES_KEY, as_model_input

MODEL_ARTIFACT = "model"
SIGNATURE = ModelSignature(
    inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 28, 28))]),
    outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 10))]),
)


#: What batch inference and the gate ask of a version: no bound on one call.
UNBOUNDED = {MAX_IMAGES_KEY: 0}


def served_model_config() -> dict[str, int]:
    """The ``model_config`` each version is logged with: its default request bound.

    MLflow keeps only the keys a version declared when it was logged, so the
    bound must be declared here to be overridable where the version is served
    (``model_config`` at load, ``MLFLOW_PYFUNC_INFERENCE_CONFIG``).
    """
    default = ServeConfig.model_fields[MAX_IMAGES_KEY].default
    return {MAX_IMAGES_KEY: default}


def pip_requirements() -> list[str]:
    """Pinned requirements of the served model (skips MLflow's slow inference)."""
    tensorflow = next(
        (d for d in ("tensorflow-cpu", "tensorflow") if _installed(d)), "tensorflow"
    )
    names = [tensorflow, "keras", "numpy", "mlflow"]
    return [f"{n}=={metadata.version(n)}" if _installed(n) else n for n in names]


def _installed(distribution: str) -> bool:
    try:
        metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return False
    return True


def log_model(
    run_id: str,
    keras_path: Path,
    model_name: str,
    input_example: np.ndarray,
    tags: Mapping[str, str],
) -> tuple[str, str]:
    """Log the model as a pyfunc and register a new version of ``model_name``.

    Idempotent per run: when a version of ``model_name`` from ``run_id`` exists
    already (a retry after the server committed but its answer was lost), that
    version is tagged and returned instead of registering a duplicate.

    The logged model is filed under the run's experiment, named explicitly: left
    to MLflow, ``Model.log`` takes the thread's fluent experiment, "Default" here.

    Returns:
        The logged model's URI and the registered version.
    """
    from mnist_pipeline import serving_model

    client = MlflowClient()
    earlier = registry.registered_version(client, model_name, run_id)
    if earlier is not None:
        registry.set_version_tags(client, model_name, earlier.version, tags)
        return earlier.source, str(earlier.version)
    run = client.get_run(run_id)
    logged = mlflow.initialize_logged_model(
        name=MODEL_ARTIFACT,
        source_run_id=run_id,
        tags=dict(tags),
        params={key: str(value) for key, value in run.data.params.items()},
        experiment_id=run.info.experiment_id,
    )
    # Validating the input example loads the model here, which would leave
    # its code/ folder on sys.path.
    with tempfile.TemporaryDirectory() as scratch, _sys_path_restored():
        info = mlflow.models.Model.log(
            artifact_path=None,
            name=MODEL_ARTIFACT,
            flavor=mlflow.pyfunc,
            run_id=run_id,
            model_id=logged.model_id,
            python_model=serving_model.__file__,
            artifacts={"keras_model": str(keras_path)},
            code_paths=[str(serving_code(Path(scratch)))],
            model_config=served_model_config(),
            signature=SIGNATURE,
            input_example=as_model_input(input_example),
            pip_requirements=pip_requirements(),
            registered_model_name=model_name,
            tags=dict(tags),
        )
    version = str(info.registered_model_version)
    registry.set_version_tags(client, model_name, version, tags)
    return info.model_uri, version


#: The modules of this package the served model imports (``serving_model.py``
#: and what it needs); only these travel with each version.
SERVED_MODULES = ("__init__", "serving")


def serving_code(folder: Path) -> Path:
    """A copy of the package holding only :data:`SERVED_MODULES`, under ``folder``."""
    import mnist_pipeline

    source = Path(mnist_pipeline.__file__).parent
    package = folder / source.name
    package.mkdir(parents=True)
    for name in SERVED_MODULES:
        shutil.copy2(source / f"{name}.py", package / f"{name}.py")
    return package


def download_keras_model(model_name: str, version: str) -> Path:
    """Download a registered version and return its Keras file."""
    folder = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{model_name}/{version}"
        )
    )
    (path,) = folder.glob("artifacts/*.keras")
    return path


def load_pyfunc(uri: str):
    """Load a logged or registered model in this process, with no request bound.

    For batch inference: a version's own bound (see :func:`served_model_config`)
    is lifted. Versions logged before they carried one load as they are.
    This process's ``mnist_pipeline`` is already imported, so the version's
    shipped ``code/`` is not what runs here; it is not left on ``sys.path``
    either.
    """
    declared = mlflow.models.get_model_info(uri).flavors["python_function"]
    config = UNBOUNDED if MAX_IMAGES_KEY in declared.get("config", {}) else None
    with _sys_path_restored():
        return mlflow.pyfunc.load_model(uri, model_config=config)


@contextmanager
def _sys_path_restored() -> Iterator[None]:
    """Undo MLflow's prepending of a model's ``code/`` folder to ``sys.path``."""
    saved = list(sys.path)
    try:
        yield
    finally:
        sys.path[:] = saved
