"""The model as MLflow keeps it: a pyfunc version, its signature and code.

Logging a model registers it (:func:`log_model`); loading goes through MLflow's
generic pyfunc API or the Keras file of a version.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path

import mlflow
import numpy as np
from mlflow import MlflowClient
from mlflow.models import ModelSignature
from mlflow.types.schema import Schema, TensorSpec
from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

from mnist_pipeline import registry
from mnist_pipeline.serving import as_model_input

MODEL_ARTIFACT = "model"
SIGNATURE = ModelSignature(
    inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 28, 28))]),
    outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 10))]),
)


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

    Returns:
        The logged model's URI and the registered version.
    """
    from mnist_pipeline import serving_model

    client = MlflowClient()
    earlier = registry.registered_version(client, model_name, run_id)
    if earlier is not None:
        registry.set_version_tags(client, model_name, earlier.version, tags)
        return earlier.source, str(earlier.version)
    with tempfile.TemporaryDirectory() as scratch:
        info = mlflow.models.Model.log(
            artifact_path=None,
            name=MODEL_ARTIFACT,
            flavor=mlflow.pyfunc,
            run_id=run_id,
            python_model=serving_model.__file__,
            artifacts={"keras_model": str(keras_path)},
            code_paths=[str(serving_code(Path(scratch)))],
            signature=SIGNATURE,
            input_example=as_model_input(input_example),
            pip_requirements=pip_requirements(),
            registered_model_name=model_name,
            tags=dict(tags),
        )
    version = str(info.registered_model_version)
    registry.set_version_tags(client, model_name, version, tags)
    _list_each_version_once(client, info.model_id)
    return info.model_uri, version


def _list_each_version_once(client: MlflowClient, model_id: str) -> None:
    """Drop repeats from the logged model's ``mlflow.modelVersions`` tag.

    Registering through a tracking server, MLflow 3.17 lists the new version
    twice: the server's create-model-version handler adds it, then the client's
    ``_register_model`` appends it again without looking.
    """
    listed = client.get_logged_model(model_id).tags.get(MLFLOW_MODEL_VERSIONS)
    if not listed:
        return
    entries = json.loads(listed)
    # The server writes the version as a number, the client as a string.
    seen, unique = set(), []
    for entry in entries:
        key = (entry.get("name"), str(entry.get("version")))
        if key not in seen:
            seen.add(key)
            unique.append(entry)
    if unique != entries:
        client.set_logged_model_tags(
            model_id, {MLFLOW_MODEL_VERSIONS: json.dumps(unique)}
        )


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
    """Load a logged or registered model through MLflow's generic pyfunc API."""
    return mlflow.pyfunc.load_model(uri)
