"""The model as MLflow keeps it: a pyfunc version, its signature, code and bound.

Logging a model registers it (:func:`log_model`); loading goes through MLflow's
generic pyfunc API (:func:`load_pyfunc` in this process, unbounded, for batch
work; :func:`predict_in_fresh_process` as a server would load it) or the Keras
file of a version.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import mlflow
import numpy as np
from mlflow import MlflowClient
from mlflow.models import Model, ModelSignature
from mlflow.models.model import MLMODEL_FILE_NAME
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository
from mlflow.store.artifact.utils.models import get_model_name_and_version
from mlflow.types.schema import Schema, TensorSpec
from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

from mnist_pipeline import registry, tracking_store
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


#: Run by each checker process (``python -P -c``): it imports MLflow and numpy,
#: nothing of this project, and for each request lets MLflow put the version's
#: code/ first on sys.path and run its wrapper, as ``mlflow models serve`` does.
#: A request is one JSON line on stdin; it is acknowledged, then answered, by
#: JSON lines on the process's original stdout carrying the request's id (what
#: the loaded code prints goes to stderr). Idle for ``sys.argv[2]`` seconds, or
#: with stdin closed, it exits (code 0).
_CHECKER = r"""
import json, os, select, shutil, sys, tempfile, traceback
import numpy as np
import mlflow.models.model
import mlflow.pyfunc

answers, requests = os.fdopen(os.dup(1), "w"), os.dup(0)
os.dup2(2, 1)
os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
config, idle = json.loads(sys.argv[1]), float(sys.argv[2])
pending = b""


def next_request():
    global pending
    while b"\n" not in pending:
        if not select.select([requests], [], [], idle)[0]:
            return None  # idle too long: the parent starts another when needed
        chunk = os.read(requests, 1 << 16)
        if not chunk:
            return None  # the parent is gone
        pending += chunk
    line, _, pending = pending.partition(b"\n")
    return json.loads(line)


def answer(**fields):
    answers.write(json.dumps(fields) + "\n")
    answers.flush()


def under(file, folders):
    roots = tuple(os.path.join(os.path.abspath(f), "") for f in folders if f)
    return os.path.abspath(file).startswith(roots)


while (request := next_request()) is not None:
    ident, uri, tracking_uri, registry_uri, cwd, inputs, outputs = request
    answer(id=ident)  # taken
    paths, modules = list(sys.path), set(sys.modules)
    download = tempfile.mkdtemp(prefix="served-model-")
    try:
        if cwd is not None:
            os.chdir(cwd)
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(registry_uri)
        mlflow.models.model.__mlflow_model__ = None  # as a new process starts
        model = mlflow.pyfunc.load_model(uri, dst_path=download, model_config=config)
        np.save(outputs, np.asarray(model.predict(np.load(inputs))))
    except BaseException:
        answer(id=ident, error=traceback.format_exc())
        shutil.rmtree(download, ignore_errors=True)
        break  # a process that failed once is not asked again
    # Forget the version: its code/ leaves sys.path, and every module it loaded
    # from its download (code/, model file), from a folder it put on sys.path,
    # or from outside the folders already on it leaves sys.modules, so the next
    # version imports its own copy again (even when PYTHONPATH holds a folder
    # its download lies in).
    added = [p for p in sys.path if p not in paths]
    sys.path[:] = paths
    for name in set(sys.modules) - modules:
        file = getattr(sys.modules[name], "__file__", None)
        if file and (under(file, [*added, download]) or not under(file, paths)):
            del sys.modules[name]
    del model
    shutil.rmtree(download, ignore_errors=True)
    answer(id=ident, pid=os.getpid())
"""

#: Checker processes kept between requests (each holds TensorFlow: ~0.8 GB,
#: ~0.9 GB after 60 requests).
KEPT_CHECKERS = 2
#: Seconds a checker waits for its next request before it exits by itself.
CHECKER_IDLE_EXIT = 600
#: Seconds a request waits for its busy kept checker before it starts its own.
CHECKER_BUSY_WAIT = 10


def predict_in_fresh_process(
    model_uri: str, images: np.ndarray, timeout: float = 600
) -> np.ndarray:
    """``model_uri``'s predictions for ``images`` (N, 28, 28), run by its own code.

    The version is loaded, from this process's tracking store, by another
    interpreter (``python -P``, this environment without the serving bound's
    variable) that imported none of this project's code but the version's
    shipped ``code/``, with no request bound: what a server runs, not this
    process's already imported wrapper. That interpreter (a checker) is kept
    for later versions whose shipped code has the same bytes (see
    :func:`_checker_key`) and forgets each version's modules after it; one that
    fails, dies, times out or is interrupted is not asked again. A checker found
    dead (or gone idle) before a request is replaced; one that dies during it
    fails that request. A request whose kept checker is busy for
    :data:`CHECKER_BUSY_WAIT` seconds gets a checker of its own.

    Raises:
        ServedModelError: it does not load or predict, or answers in another
            shape than its signature's.
        TimeoutError: no answer within ``timeout`` seconds (worth another try:
            not a :class:`~mnist_pipeline.errors.PipelineError`).
    """
    cwd, stores = _caller_folder(mlflow.get_tracking_uri(), mlflow.get_registry_uri())
    with tempfile.TemporaryDirectory() as scratch:
        inputs, outputs = Path(scratch, "images.npy"), Path(scratch, "predictions.npy")
        np.save(inputs, images)
        request = [model_uri, *stores, cwd, str(inputs), str(outputs)]
        key = _checker_key(model_uri, *stores) if cwd is not None else None
        try:
            error = _ask_checker(key, request, timeout)
        except TimeoutError:
            raise TimeoutError(
                f"{model_uri} gave no answer within {timeout:g} s as a fresh process "
                "loads it"
            ) from None
        if error is not None:
            raise ServedModelError(
                f"{model_uri} fails as a fresh process loads it (as `mlflow models "
                f"serve` would): {error}"
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


def _caller_folder(*uris: str) -> tuple[str | None, list[str]]:
    """This process's working folder, and the store ``uris`` as read from there.

    A relative SQLite path is made absolute: MLflow caches a store by its URI,
    so a kept checker (or this process) would otherwise read the store of the
    first folder it met. The folder is None when it was removed: a checker then
    runs where it was started.
    """
    try:
        cwd = os.getcwd()
    except FileNotFoundError:
        return None, list(uris)
    return cwd, [tracking_store.portable_uri(uri) for uri in uris]


def _checker_key(
    model_uri: str, tracking_uri: str, registry_uri: str | None = None
) -> str | None:
    """Which checker may load ``model_uri``: a digest of the code shipped with it.

    The digest covers the interpreter, this environment (less the variables sent
    or dropped per request, and pytest's name of the running test) and the bytes
    of the version's ``code/`` folder and model file, the only code it brings.
    ``KERAS_HOME`` counts by the settings of its ``keras.json``, all Keras reads
    of it on import (tests give each test its own folder).
    None when they cannot be read, for whatever reason (a missing version, a
    store down, an odd MLmodel): a new checker then tries, and reports the error
    a fresh process meets.
    """
    digest = hashlib.sha256(sys.executable.encode())
    ignored = {MAX_IMAGES_VARIABLE, "PYTEST_CURRENT_TEST"}
    ignored |= {"MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"}  # sent per request
    environment = {k: v for k, v in os.environ.items() if k not in ignored}
    if "KERAS_HOME" in environment:
        environment["KERAS_HOME"] = _keras_settings(environment["KERAS_HOME"])
    digest.update(json.dumps(environment, sort_keys=True).encode())
    try:
        repository = _model_repository(model_uri, tracking_uri, registry_uri)
        with tempfile.TemporaryDirectory() as scratch:
            conf = Model.load(
                repository.download_artifacts(MLMODEL_FILE_NAME, scratch)
            ).flavors.get(mlflow.pyfunc.FLAVOR_NAME, {})
            shipped = [conf.get("code"), conf.get("model_code_path")]
            shipped += [conf.get("python_model")]
            for name in (Path(path).name for path in shipped if path):
                folder = Path(scratch, "shipped", name)
                folder.mkdir(parents=True)
                _digest_tree(digest, name, repository.download_artifacts(name, folder))
    except Exception:  # noqa: BLE001 - reported by the checker that meets it too
        return None
    return digest.hexdigest()


def _model_repository(model_uri: str, tracking_uri: str, registry_uri: str | None):
    """The artifact repository of ``model_uri`` read from these stores.

    MLflow's repository for ``models:/`` finds the version through the process's
    registry URI, whatever it is given.
    """
    if not ModelsArtifactRepository.is_models_uri(model_uri):
        return get_artifact_repository(model_uri, tracking_uri, registry_uri)
    client = MlflowClient(tracking_uri, registry_uri)
    found = get_model_name_and_version(client, model_uri)
    location = (
        client.get_logged_model(found[0]).artifact_location
        if len(found) == 1
        else client.get_model_version_download_uri(*found)
    )
    return get_artifact_repository(location, tracking_uri, registry_uri)


#: What Keras 3 assumes, and writes into ``keras.json``, when it finds none.
_KERAS_DEFAULTS = {
    "floatx": "float32",
    "epsilon": 1e-07,
    "backend": "tensorflow",
    "image_data_format": "channels_last",
}


def _keras_settings(home: str) -> str:
    """The settings Keras takes from ``home/keras.json`` (defaults where absent)."""
    try:
        written = json.loads(Path(home, "keras.json").read_text())
    except (FileNotFoundError, ValueError):  # Keras reads no file or bad JSON as {}
        written = {}
    settings = _KERAS_DEFAULTS | (written if isinstance(written, dict) else {})
    return json.dumps(settings, sort_keys=True)


def _digest_tree(digest, name: str, path: str) -> None:
    """Add the names and bytes of the files at ``path`` (a file or a folder)."""
    root = Path(path)
    files = sorted(root.rglob("*")) if root.is_dir() else [root]
    for file in (f for f in files if f.is_file()):
        relative = file.relative_to(root).as_posix() if root.is_dir() else ""
        digest.update(f"\0{name}/{relative}\0{file.stat().st_size}\0".encode())
        digest.update(file.read_bytes())


class _CheckerGone(Exception):
    """A checker that had answered is gone (died, or left idle) or out of step.

    It did not take this request, or answered with another request's id.
    """


class _Checker:
    """One checker process: one request at a time, answers read by a thread."""

    def __init__(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != MAX_IMAGES_VARIABLE}
        # Errors come in the answers; stderr only says why a process died.
        self.stderr = tempfile.TemporaryFile()
        # -P: the working folder (a checkout holds mnist_pipeline/) stays off
        # sys.path, as it does for the ``mlflow`` command.
        self.process = subprocess.Popen(
            [sys.executable, "-P", "-c", _CHECKER, json.dumps(UNBOUNDED)]
            + [str(CHECKER_IDLE_EXIT)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
        )
        self.owner = os.getpid()
        self.lock = threading.Lock()  # held for a whole request
        self.closed = False
        self.answered = 0
        self.answers: queue.SimpleQueue[str] = queue.SimpleQueue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        with self.process.stdout as answers:
            for line in answers:
                self.answers.put(line)
        self.answers.put("")  # end of file: the process is gone

    def ask(self, request: list[str | None], deadline: float) -> str | None:
        """Have the process answer ``request``: None, or why it failed.

        Raises:
            TimeoutError: no answer came by ``deadline`` (``time.monotonic``).
            _CheckerGone: it answered before (or left idle), then was gone before
                it took this one; or it answered another request.
        """
        said_before = os.fstat(self.stderr.fileno()).st_size
        ident = uuid.uuid4().hex
        try:
            self.process.stdin.write(json.dumps([ident, *request]) + "\n")
            self.process.stdin.flush()
            taken = self._next(ident, deadline)
            answer = self._next(ident, deadline) if taken is not None else None
        except BrokenPipeError:
            taken = answer = None
        if answer is not None:
            self.answered += 1
            return _python_error(answer["error"]) if "error" in answer else None
        code = self.process.wait()
        if taken is None and (self.answered or code == 0):
            raise _CheckerGone
        self.stderr.seek(said_before)
        said = _python_error(self.stderr.read().decode(errors="replace"))
        return f"the process exited with code {code} ({said})"

    def _next(self, ident: str, deadline: float) -> dict | None:
        """The process's next line about request ``ident``, None once it is gone.

        Raises:
            TimeoutError: none by ``deadline``.
            _CheckerGone: the line is about another request.
        """
        try:
            line = self.answers.get(timeout=max(deadline - time.monotonic(), 0))
        except queue.Empty:
            raise TimeoutError from None
        if not line:
            return None
        said = json.loads(line)
        if said.get("id") != ident:
            raise _CheckerGone
        return said

    def close(self) -> None:
        """Kill the process (unless a forked copy of this one holds it)."""
        if self.closed or self.owner != os.getpid():
            return
        self.closed = True
        self.process.kill()
        self.process.wait()
        with contextlib.suppress(BrokenPipeError):
            self.process.stdin.close()
        self.stderr.close()


_checkers: dict[str, _Checker] = {}
_checkers_lock = threading.Lock()
_exit_hook: list[bool] = []


def _ask_checker(
    key: str | None, request: list[str | None], timeout: float
) -> str | None:
    """Have a checker for ``key`` answer ``request``: None, or why it failed.

    A checker that failed, timed out, was interrupted (any exception, a
    cancellation included) or is no longer kept is closed after it; one gone
    before it took the request, or out of step, is replaced. When the kept one
    is busy for :data:`CHECKER_BUSY_WAIT` s, a checker of this request's own
    answers.

    Raises:
        TimeoutError: no answer within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        checker = _checker(key)
        wait = min(CHECKER_BUSY_WAIT, deadline - time.monotonic())
        if not checker.lock.acquire(timeout=max(wait, 0)):
            if time.monotonic() >= deadline:
                raise TimeoutError
            checker = _Checker()  # not kept: closed after this request
            checker.lock.acquire()
        try:
            if checker.closed:  # by another thread, since _checker returned it
                continue
            try:
                error = checker.ask(request, deadline)
            except _CheckerGone:
                _discard(key, checker)
                continue
            except BaseException:
                _discard(key, checker)  # its answer to this request is not read
                raise
            with _checkers_lock:
                kept = key is not None and _checkers.get(key) is checker
            if error is not None or not kept:
                _discard(key, checker)
            return error
        finally:
            checker.lock.release()


def _discard(key: str | None, checker: _Checker) -> None:
    """Stop keeping ``checker`` and kill its process (its lock held)."""
    with _checkers_lock:
        if key is not None and _checkers.get(key) is checker:
            del _checkers[key]
    checker.close()


def _checker(key: str | None) -> _Checker:
    """The kept checker for ``key``, else a new one (kept unless ``key`` is None)."""
    with _checkers_lock:
        if any(c.owner != os.getpid() for c in _checkers.values()):
            _checkers.clear()  # a forked process: those are its parent's
        checker = _checkers.pop(key, None) if key is not None else None
        retired = [checker] if checker and checker.process.poll() is not None else []
        if checker is None or retired:
            checker = _Checker()
            if not _exit_hook:
                atexit.register(stop_checkers)
                _exit_hook.append(True)
        if key is not None:
            _checkers[key] = checker  # the most recently used last
        retired += [_checkers.pop(k) for k in list(_checkers)[:-KEPT_CHECKERS]]
    for old in retired:
        # A busy one is closed by its request's thread: it is no longer kept.
        if old.lock.acquire(blocking=False):
            old.close()
            old.lock.release()
    return checker


def stop_checkers() -> None:
    """Stop the processes :func:`predict_in_fresh_process` keeps (done at exit).

    Each holds TensorFlow (~0.8 GB); a long-lived process may free them after
    its checks. A request in flight fails; the next check starts a new one.
    """
    with _checkers_lock:
        checkers = list(_checkers.values())
        _checkers.clear()
    for checker in checkers:
        if checker.lock.acquire(blocking=False):
            checker.close()
            checker.lock.release()
        elif checker.owner == os.getpid():
            checker.process.kill()  # its request's thread closes it


def _python_error(stderr: str) -> str:
    """The first error of a traceback (MLflow wraps it) and the last place it names."""
    first = re.split(r"\n(?:The above exception|During handling of the above)", stderr)
    lines = [line.strip() for line in first[0].splitlines() if line.strip()]
    if not lines:
        return "the process exited with no output"
    places = [line for line in lines if re.match(r'File ".*", line \d+', line)]
    error = f"{lines[-1]} ({places[-1]})" if places else lines[-1]
    return redact_text(error)  # an MLflow error may name the store's URI
