"""The registered model as MLflow keeps it: its experiment, its bound, its code.

Served the MLflow way (``mlflow models serve``, ``build-docker``, MLServer), a
version runs the code logged with it and the bound it carries; batch work and
the gate load it unbounded; the gate checks each version as a fresh process
loads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import numpy as np
import psutil
import pytest
from mlflow.exceptions import MlflowException

from mnist_pipeline import gate, packaging, runs, tracking_store
from mnist_pipeline.config import ServeConfig
from mnist_pipeline.data import Dataset, save_dataset
from mnist_pipeline.errors import ServedModelError
from mnist_pipeline.model import build_model
from mnist_pipeline.serving import MAX_IMAGES_VARIABLE, as_model_input
from tasks.gate import check_candidate

from .servers import BIN, background, clean_environment, free_port, responds, wait_for

#: The bound each version logs: ServeConfig's default, read from the one place.
LIMIT = ServeConfig.model_fields["max_images_per_request"].default


def post(url: str, images: np.ndarray) -> tuple[int, dict]:
    data = json.dumps({"inputs": images.tolist()}).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def test_the_logged_model_is_filed_under_its_runs_experiment(trained_registry):
    client = tracking_store.connect(trained_registry.uri)
    version = client.get_model_version("mnist-cnn", "1")
    experiment_id = client.get_run(version.run_id).info.experiment_id
    assert experiment_id != "0"  # "fixtures", not MLflow's "Default"
    model_id = version.source.removeprefix("models:/")  # the version's source model
    logged = client.get_logged_model(model_id)
    assert logged.experiment_id == experiment_id
    assert logged.source_run_id == version.run_id
    found = client.search_logged_models(experiment_ids=[experiment_id])
    assert model_id in [model.model_id for model in found]
    assert not client.search_logged_models(experiment_ids=["0"])


def test_mlflow_models_serve_refuses_more_images_than_the_version_allows(
    trained_registry, tmp_path
):
    """The documented MLflow way, with no help from ``serve-model``."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    command = [BIN / "mlflow", "models", "serve", "-m", "models:/mnist-cnn/1"]
    command += ["--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    env = clean_environment(MLFLOW_TRACKING_URI=trained_registry.uri)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # it runs `uvicorn`
    env.pop(MAX_IMAGES_VARIABLE, None)
    with background(command, cwd=tmp_path, env=env, log=log) as process:
        wait_for(
            lambda: responds(f"{url}/ping"),
            timeout=180,
            what="mlflow models serve",
            process=process,
            log=log,
        )
        started = time.monotonic()
        status, body = post(f"{url}/invocations", np.zeros((LIMIT + 1, 28, 28), int))
        refused_in = time.monotonic() - started
        assert status == 400, body
        assert (
            f"holds {LIMIT + 1:,} images; this server accepts at most {LIMIT:,} per "
            "request (max_images_per_request)" in body["message"]
        )
        print(f"mlflow models serve refused {LIMIT + 1} images in {refused_in:.2f} s")
        assert refused_in < 10, f"refused after {refused_in:.1f} s"
        images = trained_registry.sample.x_test[:2]
        status, body = post(f"{url}/invocations", images)
        assert status == 200, body
        assert np.array(body["predictions"]).shape == (2, 10)


def test_the_version_carries_its_bound_and_batch_work_loads_it_unbounded(
    trained_registry, monkeypatch
):
    tracking_store.connect(trained_registry.uri)
    monkeypatch.delenv(MAX_IMAGES_VARIABLE, raising=False)
    monkeypatch.delenv("MLFLOW_PYFUNC_INFERENCE_CONFIG", raising=False)
    uri = "models:/mnist-cnn/1"
    info = mlflow.models.get_model_info(uri)
    assert info.flavors["python_function"]["config"] == {
        "max_images_per_request": LIMIT
    }
    images = np.zeros((LIMIT + 1, 28, 28), np.float32)

    def bound(model) -> int | None:
        """The largest call ``model`` accepts (checked at the edges)."""
        try:
            model.predict(images)
        except MlflowException as refused:
            limit = int(
                refused.message.split("at most ")[1].split()[0].replace(",", "")
            )
            model.predict(images[:limit])  # accepted
            with pytest.raises(MlflowException, match="max_images_per_request"):
                model.predict(images[: limit + 1])
            return limit
        return None

    assert bound(mlflow.pyfunc.load_model(uri)) == LIMIT  # as MLflow serves it
    paths = len(sys.path)
    assert bound(packaging.load_pyfunc(uri)) is None  # batch predict
    assert len(sys.path) == paths  # MLflow's code/ folder is not left behind
    assert (
        bound(mlflow.pyfunc.load_model(uri, model_config={"max_images_per_request": 5}))
        == 5
    )
    # MLflow's own serving-time override, and serve-model's variable above it.
    monkeypatch.setenv(
        "MLFLOW_PYFUNC_INFERENCE_CONFIG", json.dumps({"max_images_per_request": 4})
    )
    assert bound(mlflow.pyfunc.load_model(uri)) == 4
    monkeypatch.setenv(MAX_IMAGES_VARIABLE, "3")
    assert bound(mlflow.pyfunc.load_model(uri)) == 3


BROKEN_SYNTAX = "\ndef broken(:\n"
#: A wrapper that loads and answers, with nine classes.
NINE_CLASSES = """
_predict = MnistClassifier.predict
MnistClassifier.predict = lambda self, context, model_input, params=None: (
    _predict(self, context, model_input, params)[:, :9]
)
"""
#: A wrapper answering, for every class, how many times this module was imported
#: in its process (kept on ``sys``, which no version brings).
COUNTED = """
import sys as _sys
_sys.mnist_imports = getattr(_sys, "mnist_imports", 0) + 1
_imports, _counted = _sys.mnist_imports, MnistClassifier.predict
MnistClassifier.predict = lambda self, context, model_input, params=None: (
    _counted(self, context, model_input, params) * 0 + _imports
)
"""


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """A store with v1 as logged, v2 to v4 logged with altered copies of its code.

    v2 does not import, v3 answers nine classes, v4 counts its imports.
    """
    root = tmp_path_factory.mktemp("shipped")
    client = tracking_store.connect(f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.create_experiment(
        "shipped", artifact_location=(root / "mlruns").as_uri()
    )
    keras_path = root / "model.keras"
    build_model().save(keras_path)
    example = np.zeros((1, 28, 28), np.uint8)
    copy = packaging.serving_code
    with pytest.MonkeyPatch.context() as patch:
        for tail in ("", BROKEN_SYNTAX, NINE_CLASSES, COUNTED):

            def broken_copy(folder: Path, tail: str = tail) -> Path:
                package = copy(folder)
                with (package / "serving.py").open("a") as serving:
                    serving.write(tail)
                return package

            patch.setattr(packaging, "serving_code", broken_copy)
            with runs.tracked_run(client, experiment, None, {}) as run_id:
                packaging.log_model(run_id, keras_path, "shipped-cnn", example, {})
    rng = np.random.default_rng(0)
    test = rng.integers(0, 256, (40, 28, 28), dtype=np.uint8)
    dataset = Dataset(test, np.arange(40) % 10, test, np.arange(40) % 10, "tiny", "t")
    ref = save_dataset(dataset, root / "datasets")
    return client, str(keras_path), ref


def test_the_gate_checks_each_version_with_the_code_shipped_with_it(shipped):
    client, keras_path, ref = shipped
    tracking_store.connect(client.tracking_uri)
    paths = len(sys.path)
    started = time.monotonic()
    good = check_candidate.fn("shipped-cnn", "1", keras_path, ref, seed=0)
    print(f"served-model check in a fresh process: {time.monotonic() - started:.1f} s")
    assert good.serving_difference <= gate.SERVING_TOLERANCE
    assert good.serving_agreement == 1.0

    with pytest.raises(ServedModelError) as failed:
        check_candidate.fn("shipped-cnn", "2", keras_path, ref, seed=0)
    message = str(failed.value)
    assert "models:/shipped-cnn/2 fails as a fresh process loads it" in message
    assert "SyntaxError" in message and "mnist_pipeline/serving.py" in message

    with pytest.raises(ServedModelError) as failed:
        check_candidate.fn("shipped-cnn", "3", keras_path, ref, seed=0)
    assert str(failed.value) == (
        "models:/shipped-cnn/3 answers 40 image(s) with shape (40, 9) as a fresh "
        "process loads it; its signature says (40, 10)."
    )
    assert len(sys.path) == paths  # nothing loaded here: nothing left on it


def checkers() -> set[int]:
    """The live checker processes of this one: its ``python -P -c`` children."""
    found = set()
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.NoSuchProcess):
            alive = child.status() != psutil.STATUS_ZOMBIE
            if alive and child.cmdline()[1:3] == ["-P", "-c"]:
                found.add(child.pid)
    return found


def wait_for_exit(pid: int, timeout: float = 30) -> None:
    """Until ``pid`` is a zombie (this process has not reaped it) or gone."""
    deadline = time.monotonic() + timeout
    with contextlib.suppress(psutil.NoSuchProcess):
        while psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline, f"{pid} still runs"
            time.sleep(0.05)


def test_one_checker_answers_every_version_shipping_the_same_code(
    shipped, trained_registry
):
    """Kept per shipped code's bytes; one dead or late is not asked again."""
    client = shipped[0]
    images = as_model_input(trained_registry.sample.x_test[:8])
    packaging.stop_checkers()
    assert checkers() == set()
    tracking_store.connect(client.tracking_uri)
    untrained = packaging.predict_in_fresh_process("models:/shipped-cnn/1", images)
    (first,) = checkers()

    # The same code in another store: the same process, the other store's model,
    # three threads at once taking turns.
    tracking_store.connect(trained_registry.uri)
    uri = "models:/mnist-cnn/1"
    expected = packaging.load_pyfunc(uri).predict(images)
    with ThreadPoolExecutor(3) as pool:
        answers = list(
            pool.map(lambda _: packaging.predict_in_fresh_process(uri, images), "abc")
        )
    for answer in answers:
        np.testing.assert_allclose(answer, expected, atol=1e-6)
    assert not np.allclose(answers[0], untrained)
    assert checkers() == {first}

    # Other shipped code (nine classes): another process, kept as it answered.
    tracking_store.connect(client.tracking_uri)
    with pytest.raises(ServedModelError, match=r"with shape \(8, 9\)"):
        packaging.predict_in_fresh_process("models:/shipped-cnn/3", images)
    (nine,) = checkers() - {first}
    again = packaging.predict_in_fresh_process("models:/shipped-cnn/1", images)
    np.testing.assert_allclose(again, untrained, atol=1e-6)  # ten classes: first's
    assert checkers() == {first, nine}

    # Killed while idle: a new process answers the next request.
    os.kill(first, signal.SIGKILL)
    wait_for_exit(first)
    again = packaging.predict_in_fresh_process("models:/shipped-cnn/1", images)
    np.testing.assert_allclose(again, untrained, atol=1e-6)
    (third,) = checkers() - {nine}
    assert third != first

    # No answer in time: a plain TimeoutError (Prefect retries it, the gate
    # records no error against the version) and the process is gone.
    with pytest.raises(TimeoutError) as late:
        packaging.predict_in_fresh_process("models:/shipped-cnn/1", images, 0.01)
    assert not isinstance(late.value, ServedModelError)
    assert str(late.value) == (
        "models:/shipped-cnn/1 gave no answer within 0.01 s as a fresh process loads it"
    )
    assert checkers() == {nine}


def kept_checker(model_uri: str, store: str) -> packaging._Checker:
    """The checker kept (started if need be, asked nothing) for ``model_uri``."""
    return packaging._checker(packaging._checker_key(model_uri, store))


def test_a_checker_interrupted_or_out_of_step_is_not_asked_again(
    shipped, trained_registry, monkeypatch
):
    """A cancelled request's answer is never read as the next request's."""
    client = shipped[0]
    tracking_store.connect(client.tracking_uri)
    images = as_model_input(trained_registry.sample.x_test[:8])
    uri = "models:/shipped-cnn/1"
    expected = packaging.load_pyfunc(uri).predict(images)
    packaging.predict_in_fresh_process(uri, images[:2])  # a kept checker, warm
    warm = kept_checker(uri, client.tracking_uri)

    # Cancelled (as Prefect's task timeout does) after the request was taken,
    # before its answer was read: that checker is gone, the next answers right.
    real_next = packaging._Checker._next

    def cancelled_at_the_answer(checker, ident, deadline):
        taken = real_next(checker, ident, deadline)
        monkeypatch.setattr(packaging._Checker, "_next", cancelled)
        return taken

    def cancelled(checker, ident, deadline):
        raise asyncio.CancelledError

    monkeypatch.setattr(packaging._Checker, "_next", cancelled_at_the_answer)
    with pytest.raises(asyncio.CancelledError):
        packaging.predict_in_fresh_process(uri, images[2:])
    monkeypatch.setattr(packaging._Checker, "_next", real_next)
    assert warm.closed
    wait_for_exit(warm.process.pid)
    answer = packaging.predict_in_fresh_process(uri, images)
    np.testing.assert_allclose(answer, expected, atol=1e-6)

    # A line about another request (out of step): that checker is not believed
    # nor kept; a new one reports the version's own error.
    planted = kept_checker("models:/shipped-cnn/2", client.tracking_uri)
    planted.answers.put(json.dumps({"id": "an earlier request"}) + "\n")
    with pytest.raises(ServedModelError, match="SyntaxError"):
        packaging.predict_in_fresh_process("models:/shipped-cnn/2", images)
    assert planted.closed
    wait_for_exit(planted.process.pid)


def test_a_busy_checker_does_not_hold_a_request_up(shipped, monkeypatch):
    """Another request's checker answers after CHECKER_BUSY_WAIT, not at timeout."""
    client = shipped[0]
    tracking_store.connect(client.tracking_uri)
    uri = "models:/shipped-cnn/2"  # fails on import: no TensorFlow loaded
    busy = kept_checker(uri, client.tracking_uri)
    monkeypatch.setattr(packaging, "CHECKER_BUSY_WAIT", 0.2)
    started = time.monotonic()
    with busy.lock, pytest.raises(ServedModelError, match="SyntaxError"):
        packaging.predict_in_fresh_process(uri, np.zeros((2, 28, 28)), timeout=120)
    print(f"answered beside a busy checker in {time.monotonic() - started:.1f} s")
    assert time.monotonic() - started < 60
    assert not busy.closed and busy.answered == 0  # kept, not asked
    assert busy.process.pid in checkers()
    with busy.lock:
        packaging._discard(packaging._checker_key(uri, client.tracking_uri), busy)


def test_a_relative_sqlite_store_is_read_in_the_callers_folder(
    shipped, trained_registry, monkeypatch
):
    """``sqlite:///mlflow.db`` means the working folder's store, for one checker."""
    client = shipped[0]
    images = as_model_input(trained_registry.sample.x_test[:8])
    tracking_store.connect(trained_registry.uri)
    expected = packaging.load_pyfunc("models:/mnist-cnn/1").predict(images)
    tracking_store.connect(client.tracking_uri)
    untrained = packaging.load_pyfunc("models:/shipped-cnn/1").predict(images)
    checker = kept_checker("models:/shipped-cnn/1", client.tracking_uri)
    answered = checker.answered

    mlflow.set_tracking_uri("sqlite:///mlflow.db")
    for store, uri, answer in (
        (client.tracking_uri, "models:/shipped-cnn/1", untrained),
        (trained_registry.uri, "models:/mnist-cnn/1", expected),
    ):
        monkeypatch.chdir(Path(store.removeprefix("sqlite:///")).parent)
        got = packaging.predict_in_fresh_process(uri, images)
        np.testing.assert_allclose(got, answer, atol=1e-6)
    assert checker.answered == answered + 2  # the same kept checker: both
    assert checker.process.pid in checkers()


def test_a_checker_imports_each_versions_code_again(shipped, monkeypatch, tmp_path):
    """Even with its download folder under a PYTHONPATH folder."""
    client = shipped[0]
    tracking_store.connect(client.tracking_uri)
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))  # where MLflow downloads
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    uri = "models:/shipped-cnn/4"
    checker = kept_checker(uri, client.tracking_uri)
    for imports in (1, 2):
        images = np.zeros((2, 28, 28), np.float32)
        answer = packaging.predict_in_fresh_process(uri, images)
        np.testing.assert_array_equal(answer, np.full((2, 10), imports))
    assert checker.answered == 2
    with checker.lock:
        packaging._discard(packaging._checker_key(uri, client.tracking_uri), checker)


def test_an_idle_checker_exits_and_is_replaced(monkeypatch):
    monkeypatch.setattr(packaging, "CHECKER_IDLE_EXIT", 1)
    idle = packaging._checker("an idle key")
    assert idle.process.wait(timeout=120) == 0
    again = packaging._checker("an idle key")
    assert again is not idle and again.process.poll() is None
    with again.lock:
        packaging._discard("an idle key", again)


def test_a_version_that_cannot_be_read_is_reported_by_a_fresh_process(
    shipped, monkeypatch, tmp_path
):
    """An odd MLmodel or a removed working folder: the error a fresh process meets."""
    client = shipped[0]
    tracking_store.connect(client.tracking_uri)
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "MLmodel").write_text("flavors: {python_function: [\n")
    client.create_registered_model("odd-cnn")
    client.create_model_version("odd-cnn", str(odd))
    assert packaging._checker_key("models:/odd-cnn/1", client.tracking_uri) is None
    with pytest.raises(ServedModelError) as failed:
        packaging.predict_in_fresh_process("models:/odd-cnn/1", np.zeros((2, 28, 28)))
    assert "models:/odd-cnn/1 fails as a fresh process loads it" in str(failed.value)
    assert "yaml" in str(failed.value).lower()

    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()  # a process started here fails at its first relative path
    with pytest.raises(ServedModelError, match="FileNotFoundError"):
        packaging.predict_in_fresh_process(
            "models:/shipped-cnn/2", np.zeros((2, 28, 28))
        )


def test_a_checker_serves_only_the_same_shipped_code_and_environment(
    shipped, monkeypatch, tmp_path
):
    """Which checker process may answer a version (no process is started here)."""
    client = shipped[0]
    store = client.tracking_uri

    def key(version: str) -> str | None:
        return packaging._checker_key(f"models:/shipped-cnn/{version}", store)

    good = key("1")
    assert good is not None and key("1") == good
    assert len({good, key("2"), key("3")}) == 3  # the broken copies: their own
    assert key("99") is None  # unreadable: a process of its own reports why
    # Keras reads only keras.json from its home: an empty one means its defaults.
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty"))
    assert key("1") == good
    custom = tmp_path / "custom"
    custom.mkdir()
    (custom / "keras.json").write_text(json.dumps({"floatx": "float64"}))
    monkeypatch.setenv("KERAS_HOME", str(custom))
    assert key("1") != good
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty"))
    monkeypatch.setenv("MNIST_PIPELINE_PROBE", "1")  # any other variable counts
    assert key("1") != good
