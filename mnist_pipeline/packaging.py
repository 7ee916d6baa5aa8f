"""The model as MLflow keeps it: a pyfunc version, its signature, code and bound.

Logging a model registers it (:func:`log_model`); loading goes through MLflow's
generic pyfunc API (:func:`load_pyfunc` in this process, unbounded, for batch
work; :func:`predict_in_fresh_process` as a server would load it) or the Keras
file of a version.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
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
from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

from mnist_pipeline import registry
from mnist_pipeline.config import ServeConfig
from mnist_pipeline.errors import ServedModelError
from mnist_pipeline.redact import redact_text
from mnist_pipeline.serving import MAX_IMAGES_KEY, MAX_IMAGES_VARIABLE, as_model_input

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
    """Load a logged or registered model in this process, with no request bound.

    For batch inference: a version's own bound (see :func:`served_model_config`)
    is lifted. Versions logged before they carried one load as they are.
    This process's ``mnist_pipeline`` is already imported, so the version's
    shipped ``code/`` is not what runs here (see :func:`predict_in_fresh_process`);
    it is not left on ``sys.path`` either.
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


#: Run by a fresh interpreter: it imports MLflow and numpy, nothing of this
#: project, before MLflow puts the version's code/ first on sys.path and runs
#: its wrapper, as ``mlflow models serve`` does.
_FRESH_PREDICT = """
import json, sys
import numpy as np
import mlflow.pyfunc
uri, inputs, outputs, config = sys.argv[1:]
model = mlflow.pyfunc.load_model(uri, model_config=json.loads(config))
np.save(outputs, np.asarray(model.predict(np.load(inputs))))
"""


def predict_in_fresh_process(
    model_uri: str, images: np.ndarray, timeout: float = 600
) -> np.ndarray:
    """``model_uri``'s predictions for ``images`` (N, 28, 28), made by a new process.

    The version is loaded by a new interpreter, from this process's tracking
    store, with the code shipped with it and no request bound: what a server
    runs, not this process's already imported wrapper.

    Raises:
        ServedModelError: it does not load or predict, or answers in another shape
            than its signature's.
    """
    with tempfile.TemporaryDirectory() as scratch:
        inputs, outputs = Path(scratch, "images.npy"), Path(scratch, "predictions.npy")
        np.save(inputs, images)
        env = {k: v for k, v in os.environ.items() if k != MAX_IMAGES_VARIABLE}
        env["MLFLOW_TRACKING_URI"] = mlflow.get_tracking_uri()
        # -P: the working folder (a checkout holds mnist_pipeline/) stays off
        # sys.path, as it does for the ``mlflow`` command.
        command = [sys.executable, "-P", "-c", _FRESH_PREDICT, model_uri]
        command += [str(inputs), str(outputs), json.dumps(UNBOUNDED)]
        done = subprocess.run(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise ServedModelError(
                f"{model_uri} fails as a fresh process loads it (as `mlflow models "
                f"serve` would): {_python_error(done.stderr)}"
            )
        predictions = np.load(outputs)
    expected = (len(images), *SIGNATURE.outputs.inputs[0].shape[1:])
    if predictions.shape != expected:
        raise ServedModelError(
            f"{model_uri} answers {len(images)} image(s) with shape "
            f"{predictions.shape} as a fresh process loads it; its signature says "
            f"{expected}."
        )
    return predictions


def _python_error(stderr: str) -> str:
    """The first error of a traceback (MLflow wraps it) and the last place it names."""
    first = re.split(r"\n(?:The above exception|During handling of the above)", stderr)
    lines = [line.strip() for line in first[0].splitlines() if line.strip()]
    if not lines:
        return "the process exited with no output"
    places = [line for line in lines if re.match(r'File ".*", line \d+', line)]
    error = f"{lines[-1]} ({places[-1]})" if places else lines[-1]
    return redact_text(error)  # an MLflow error may name the store's URI
