"""The model server driven as ASGI calls (no network): request bounds, the
version named in every answer, and how a served model follows its alias."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import struct
import threading
import time
import tracemalloc
import zlib
from types import SimpleNamespace

import numpy as np
import pytest
from mlflow.exceptions import MlflowException
from PIL import Image

from mnist_pipeline import photoset
from mnist_pipeline.model_server import (
    DISCARD_AT_MOST,
    PICTURE_SIDE,
    BoundedScoring,
    CandidateRefused,
    ModelFollower,
    ServedModel,
    check_candidate,
    followed_alias,
    is_loopback,
    load_pyfunc,
    score_image,
    shrink_picture,
)
from mnist_pipeline.photos import normalise_photo

LIMIT = 100


def answer(status=200, body='{"predictions": []}', mimetype="application/json"):
    return SimpleNamespace(status=status, response=body, mimetype=mimetype)


def served(version="7", model=None, schema=None) -> ServedModel:
    return ServedModel(model, version, schema, "2026-12-06T00:00:00Z")


def call(
    app,
    body_parts,
    *,
    path="/invocations",
    length=None,
    pause=0.0,
    kind=b"application/json",
    method="POST",
):
    """Run one request through ``app``: status, headers and body of its answer."""
    headers = [(b"content-type", kind)]
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    scope = {"type": "http", "method": method, "path": path, "headers": headers}
    parts = list(body_parts)
    received = []

    async def receive():
        if not parts:
            await asyncio.sleep(3600)  # as a server does once the body is read
        await asyncio.sleep(pause)
        chunk = parts.pop(0)
        received.append(chunk)
        return {"type": "http.request", "body": chunk, "more_body": bool(parts)}

    sent = []

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    start, body = sent
    return start["status"], dict(start["headers"]), body["body"], received


def bounded(score=None, fallback=None, timeout=5.0, follower=None) -> BoundedScoring:
    return BoundedScoring(
        {"/invocations": score or (lambda served, body, kind: answer())},
        fallback,
        LIMIT,
        timeout,
        follower or ModelFollower(served()),
    )


def test_a_declared_body_over_the_limit_is_refused_unparsed():
    scored = []
    app = bounded(score=lambda served, body, kind: scored.append(body))
    status, headers, body, received = call(app, [b"x" * 60, b"x" * 41], length=101)
    assert status == 413 and scored == []
    # What was sent is read and dropped, so that a client that sends it all
    # before reading gets this answer rather than a reset connection.
    assert len(received) == 2
    message = json.loads(body)["message"]
    assert "(101 bytes) exceeds this server's limit of 100 bytes" in message
    assert "max_body_bytes" in message and "mnist-pipeline predict" in message
    assert headers[b"content-length"] == str(len(body)).encode()


def test_a_huge_declared_body_is_answered_without_reading_it():
    status, _, _, received = call(bounded(), [b"x"], length=DISCARD_AT_MOST + 1)
    assert status == 413 and received == []


def test_an_undeclared_body_is_refused_once_it_grows_past_the_limit():
    scored = []
    app = bounded(score=lambda served, body, kind: scored.append(body))
    status, _, body, received = call(app, [b"x" * 60, b"x" * 60, b"x" * 60])
    assert status == 413 and scored == [] and len(received) == 3
    assert "more than 100 bytes" in json.loads(body)["message"]


def test_an_accepted_body_reaches_mlflow_whole_and_its_answer_comes_back():
    seen = []

    def score(served, body, content_type):
        seen.append((served.version, body, content_type))
        return answer(201, "done", "text/plain")

    status, headers, body, _ = call(bounded(score), [b"ab", b"cd"], length=4)
    assert seen == [("7", b"abcd", "application/json")]
    assert (status, headers[b"content-type"], body) == (201, b"text/plain", b"done")


def test_mlflow_errors_keep_their_status_and_message():
    def score(served, body, content_type):
        raise MlflowException.invalid_parameter_value("holds 1,001 images")

    status, _, body, _ = call(bounded(score), [b"{}"], length=2)
    assert status == 400
    assert json.loads(body)["message"] == "holds 1,001 images"


def test_a_slow_body_gets_408_and_a_slow_answer_504():
    status, _, body, _ = call(bounded(timeout=0.1), [b"{}"], pause=0.5)
    assert (
        status == 408 and "did not arrive within 0.1 s" in json.loads(body)["message"]
    )

    def slow(served, body, content_type):
        time.sleep(0.5)
        return answer()

    status, _, body, _ = call(bounded(slow, timeout=0.1), [b"{}"], length=2)
    assert status == 504 and "No answer within 0.1 s" in json.loads(body)["message"]


def test_every_answer_names_the_version_that_made_it():
    def refuse(served, body, content_type):
        raise MlflowException.invalid_parameter_value("no")

    cases = {
        200: (bounded(), [b"{}"], 2),
        400: (bounded(refuse), [b"{}"], 2),
        413: (bounded(), [b"x" * 101], 101),
    }
    for status, (app, parts, length) in cases.items():
        got, headers, _, _ = call(app, parts, length=length)
        assert got == status and headers[b"x-model-version"] == b"7"
    got, headers, _, _ = call(bounded(timeout=0.1), [b"{}"], pause=0.5)
    assert got == 408 and headers[b"x-model-version"] == b"7"
    # A model from a path or a run has no registered version to name.
    got, headers, _, _ = call(bounded(follower=ModelFollower(served(None))), [b"{}"])
    assert got == 200 and b"x-model-version" not in headers


@pytest.mark.parametrize("path", ["/ping", "/version"])
def test_other_paths_go_to_mlflow_app(path):
    async def fallback(scope, receive, send):
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": scope["path"].encode()})

    status, _, body, _ = call(bounded(fallback=fallback), [b""], path=path)
    assert (status, body) == (299, path.encode())


# -- following the alias -------------------------------------------------------------


class Registry:
    """An alias that the test moves, and versions that load or fail."""

    def __init__(self, alias="1", broken=(), step="load"):
        self.alias, self.broken, self.loads = alias, set(broken), []
        self.step = step  # where a broken version fails

    def poll(self):
        return self.alias

    def load(self, version, schema):
        self.loads.append(version)
        if version in self.broken:
            raise CandidateRefused(f"{self.step}: v{version} is broken")
        return served(version, model=f"model {version}", schema=schema)


def follower_of(registry, **options) -> ModelFollower:
    return ModelFollower(
        served("1", model="model 1", schema="schema"),
        poll=registry.poll,
        load=registry.load,
        interval=0.5,
        uri="models:/m@champion",
        alias="champion",
        **options,
    )


def test_a_request_finishes_on_the_version_it_started_with():
    registry = Registry()
    follower = follower_of(registry)
    started, release, seen = threading.Event(), threading.Event(), []

    def score(served, body, content_type):
        seen.append(served.model)
        started.set()
        release.wait(5)
        seen.append(served.model)
        return answer()

    app = bounded(score, follower=follower)
    results = []
    request = threading.Thread(target=lambda: results.append(call(app, [b"{}"])))
    request.start()
    assert started.wait(5)
    registry.alias = "2"
    assert follower.poll_once()  # swapped while the request is in flight
    assert follower.current.version == "2" and follower.current.schema == "schema"
    release.set()
    request.join(5)
    ((status, headers, _, _),) = results
    assert status == 200 and headers[b"x-model-version"] == b"1"
    assert seen == ["model 1", "model 1"]
    _, headers, _, _ = call(app, [b"{}"])  # the next request: the new version
    assert headers[b"x-model-version"] == b"2" and seen[-1] == "model 2"


def test_a_failed_version_is_never_served_logged_once_and_the_next_one_taken(
    caplog,
):
    registry = Registry(broken={"3"})
    follower = follower_of(registry)
    registry.alias = "3"
    with caplog.at_level(logging.INFO, logger="uvicorn.error"):
        for _ in range(5):
            assert not follower.poll_once()
    assert registry.loads == ["3"]  # not loaded again at every poll
    refusals = [r for r in caplog.records if "is not served" in r.getMessage()]
    assert len(refusals) == 1
    assert "v3 of models:/m@champion is not served: load: v3 is broken. v1 keeps" in (
        refusals[0].getMessage()
    )
    status = follower.status()
    assert status["served_version"] == "1" and status["alias_version"] == "3"
    assert status["last_failure"]["version"] == "3"
    assert status["last_failure"]["reason"] == "load: v3 is broken"
    registry.alias = "4"
    assert follower.poll_once() and follower.current.version == "4"
    assert follower.status()["served_version"] == "4"


def test_a_failed_download_is_tried_again_after_a_while_and_logged_once(caplog):
    now = [0.0]
    registry = Registry(alias="3", broken={"3"}, step="download")
    follower = follower_of(registry, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="uvicorn.error"):
        follower.poll_once()
        now[0] = 59.0
        follower.poll_once()
        now[0] = 61.0
        follower.poll_once()  # the same failure again: not logged again
        assert registry.loads == ["3", "3"]
        registry.broken.clear()  # e.g. its files came back
        now[0] = 200.0
        assert follower.poll_once() and follower.current.version == "3"
    assert sum("is not served" in r.getMessage() for r in caplog.records) == 1


def test_a_version_that_failed_to_load_waits_for_the_alias_to_move():
    now = [0.0]
    registry = Registry(alias="3", broken={"3"})  # fails to load or its check
    follower = follower_of(registry, clock=lambda: now[0])
    follower.poll_once()
    now[0] = 3600.0
    follower.poll_once()
    assert registry.loads == ["3"]  # the same model would fail the same way
    registry.alias = "1"  # rolled back: v1 serves still
    follower.poll_once()
    registry.broken.clear()
    registry.alias = "3"  # moved to v3 again: tried again
    assert follower.poll_once() and follower.current.version == "3"
    assert registry.loads == ["3", "3"]


def test_registry_errors_are_logged_and_the_served_version_stays(monkeypatch, caplog):
    from mlflow import MlflowClient

    from mnist_pipeline import registry

    # A real client of a tracking server that is down (nothing listens on port 9).
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    client = MlflowClient(tracking_uri="http://reader:pw@127.0.0.1:9")
    down = [True]
    moved = Registry(alias="2")

    def poll():
        return registry.alias_version(client, "m", "champion") if down[0] else "2"

    follower = ModelFollower(
        served("1", schema="s"), poll=poll, load=moved.load, interval=0.5, uri="u"
    )
    with caplog.at_level(logging.INFO, logger="uvicorn.error"):
        for _ in range(3):
            assert not follower.poll_once()
        error = follower.status()["registry_error"]
        assert "reader:REDACTED@127.0.0.1:9" in error and ":pw@" not in error
        assert follower.current.version == "1"
        down[0] = False
        assert follower.poll_once() and follower.status()["registry_error"] is None
    messages = [r.getMessage() for r in caplog.records]
    assert sum("registry did not answer" in m for m in messages) == 1
    assert not any(":pw@" in m for m in messages)
    assert sum("registry answers again" in m for m in messages) == 1


def test_the_status_endpoint_says_what_serves_and_what_failed():
    registry = Registry(alias="5", broken={"5"})
    follower = follower_of(registry)
    follower.poll_once()
    status, headers, body, _ = call(
        bounded(follower=follower), [b""], path="/model-status", method="GET"
    )
    assert status == 200 and headers[b"content-type"] == b"application/json"
    answered = json.loads(body)
    assert answered["served_version"] == "1" and answered["alias_version"] == "5"
    assert answered["loaded_at"] == "2026-12-06T00:00:00Z"
    assert answered["watch_interval_s"] == 0.5 and answered["following"] is True
    assert answered["alias"] == "champion"
    assert answered["last_failure"]["version"] == "5"
    assert answered["last_failure"]["at"].endswith("Z")
    assert answered["worker_pid"] == os.getpid()


def test_a_fixed_version_or_a_path_is_not_followed():
    assert followed_alias("models:/mnist-cnn@champion") == ("mnist-cnn", "champion")
    assert followed_alias("models:/mnist-cnn/3") is None
    assert followed_alias("/models/mnist") is None
    fixed = ModelFollower(served("3"), uri="models:/mnist-cnn/3")
    assert not fixed.following
    assert fixed.status()["watch_interval_s"] is None
    assert fixed.status()["alias_version"] is None


def test_only_loopback_addresses_count_as_private():
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        assert is_loopback(host)
    for host in ("0.0.0.0", "::", "192.168.1.5", "10.0.0.1", "model-host"):
        assert not is_loopback(host)


# -- the candidate check, with real logged models -------------------------------------

_MODEL_CODE = """
import numpy as np
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel


class Answer(PythonModel):
    def predict(self, context, model_input, params=None):
        rows = len(model_input)
        return np.full((rows, {columns}), {value}, np.float32)


set_model(Answer())
"""


def save_tiny_model(
    folder, value: str, width: int = 28, code_paths=None, columns: int = 10
) -> str:
    """A real pyfunc model answering ``value`` for every class (``columns`` of
    them, declaring 10); its path."""
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    name = f"{value}-{width}-{bool(code_paths)}".replace(".", "_")
    if columns != 10 or not name.replace("-", "").replace("_", "").isalnum():
        name = f"model{abs(hash((value, width, columns))) % 10**8}"
    code = folder / f"{name}.py"
    code.write_text(_MODEL_CODE.format(value=value, columns=columns))
    path = folder / name
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 28, width))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 10))]),
    )
    mlflow.pyfunc.save_model(
        path,
        python_model=str(code),
        signature=signature,
        input_example=np.zeros((2, 28, width), np.float32),
        pip_requirements=["mlflow"],
        code_paths=code_paths,
    )
    return str(path)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, str]:
    """Saved models: ``good`` (0.1 per class), ``nan``, ``other`` input shape,
    ``half`` (probabilities summing to 0.5)."""
    folder = tmp_path_factory.mktemp("tiny")
    return {
        "good": save_tiny_model(folder, "0.1"),
        "nan": save_tiny_model(folder, "np.nan"),
        "other": save_tiny_model(folder, "0.1", width=27),
        "half": save_tiny_model(folder, "0.05"),
        "nine": save_tiny_model(folder, "1 / 9", columns=9),
        "negative": save_tiny_model(folder, "np.r_[np.full(9, 0.2), -0.8]"),
        "with_code": save_tiny_model(
            folder, "0.1", code_paths=[str(folder / "0_1-28-False.py")]
        ),
    }


def test_check_candidate_takes_a_good_model_and_says_why_it_refuses(tiny_models):
    good = load_pyfunc(tiny_models["good"])
    schema = good.metadata.get_input_schema()
    check_candidate(good, schema)
    refusals = {
        "nan": "values that are not finite",
        "other": r"input signature .*-1, 28, 27.* is not the served one",
        "half": r"sum to \[0.5\d*, 0.5\d*\], not 1",
        "nine": r"shape \(2, 9\), not \(2, 10\)",
        "negative": "negative probabilities",
    }
    for name, reason in refusals.items():
        with pytest.raises(CandidateRefused, match=reason):
            check_candidate(load_pyfunc(tiny_models[name]), schema)
    no_example = load_pyfunc(tiny_models["good"])
    no_example.input_example = None
    with pytest.raises(CandidateRefused, match="without an input example"):
        check_candidate(no_example, schema)


def test_loading_a_model_leaves_sys_path_as_it_was(tiny_models):
    import sys

    import mlflow

    before = list(sys.path)
    for _ in range(3):
        load_pyfunc(tiny_models["with_code"])  # MLflow puts its code/ on sys.path
    assert sys.path == before
    mlflow.pyfunc.load_model(tiny_models["with_code"])
    assert len(sys.path) == len(before) + 1  # which is what load_pyfunc undoes
    sys.path[:] = before


# -- /predict-image -----------------------------------------------------------------


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def picture_model(images):
    """A stand-in model: class 3, sure of it; records what it was given."""
    picture_model.seen = np.asarray(images)
    return np.eye(10, dtype=np.float32)[[3] * len(images)]


def image_app(max_bytes=LIMIT, max_pixels=12_000_000):
    def picture(served, body, kind):
        return score_image(body, kind, picture_model, max_pixels)

    return BoundedScoring(
        {"/predict-image": picture}, None, max_bytes, 5.0, ModelFollower(served())
    )


@pytest.fixture(scope="module")
def strokes():
    """A few of the UCI digits as strokes (making all 1,797 takes seconds)."""
    strokes, labels = photoset.uci_strokes()
    return strokes[:5], labels[:5]


def test_a_photo_is_normalised_predicted_and_answered_as_json(tmp_path, strokes):
    strokes, labels = strokes
    (record,) = photoset.write_photo_set(tmp_path, strokes[:1], labels[:1], seed=2)
    body = (tmp_path / record.file).read_bytes()
    status, headers, answer_body, _ = call(
        image_app(len(body)), [body], path="/predict-image", kind=b"image/png"
    )
    assert status == 200 and headers[b"x-model-version"] == b"7"
    answered = json.loads(answer_body)
    assert answered["predicted_class"] == 3 and len(answered["probabilities"]) == 10
    seen = picture_model.seen
    assert seen.shape == (1, 28, 28) and seen.max() == 255  # normalised, not scaled


@pytest.mark.parametrize(
    ("body", "kind", "status", "expected"),
    [
        (png(Image.new("L", (64, 64), 230)), b"image/png", 422, "no ink"),
        (b"\x89PNG not really", b"image/png", 400, "not a readable PNG or JPEG"),
        (png(Image.new("L", (8, 8))), b"application/json", 415, "Content-Type image"),
    ],
)
def test_refused_pictures_say_why(body, kind, status, expected):
    got, _, answer_body, _ = call(
        image_app(10_000), [body], path="/predict-image", kind=kind
    )
    answered = json.loads(answer_body)
    assert got == status and expected in answered["message"]
    if status == 422:
        assert answered["reason"] == "no ink"


def test_a_picture_over_the_body_limit_is_refused_unread():
    status, _, body, _ = call(
        image_app(), [b"x" * 200], path="/predict-image", length=200, kind=b"image/png"
    )
    assert status == 413 and "max_body_bytes" in json.loads(body)["message"]


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` RGBA pixels and holds none."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def test_a_picture_over_the_pixel_cap_is_refused_from_its_header():
    body = png_header_only(7000, 7000)  # no pixel data: decoding it would fail
    status, _, answer_body, _ = call(
        image_app(10_000), [body], path="/predict-image", kind=b"image/png"
    )
    message = json.loads(answer_body)["message"]
    assert status == 413
    assert "7000x7000 pixels; this server decodes at most 12,000,000" in message
    assert "max_image_pixels" in message


def big_photo(tmp_path, strokes, scale=8):
    strokes, labels = strokes
    (record,) = photoset.write_photo_set(tmp_path, strokes[:1], labels[:1], seed=3)
    with Image.open(tmp_path / record.file) as small:
        small.load()
    width, height = small.size
    return small.resize((width * scale, height * scale), Image.Resampling.BICUBIC)


def test_a_large_photo_is_shrunk_before_arrays_and_keeps_its_digit(tmp_path, strokes):
    big = big_photo(tmp_path, strokes)
    assert 8_000_000 < big.width * big.height < 12_000_000
    tracemalloc.start()
    try:
        shrunk = normalise_photo(shrink_picture(big.copy()))
        _, shrunk_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        whole = normalise_photo(big)
        _, whole_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The same digit: the same pixels but for anti-aliasing at the strokes' edges.
    assert np.abs(shrunk.astype(int) - whole.astype(int)).mean() < 4
    assert (shrunk > 127).sum() == pytest.approx((whole > 127).sum(), rel=0.1)
    # The arrays of a 10 MP picture (hundreds of MB of float32) are never made.
    assert shrunk_peak < 50e6 and 4 * shrunk_peak < whole_peak, whole_peak


def test_a_large_jpeg_is_decoded_small(tmp_path, strokes):
    big = big_photo(tmp_path, strokes)
    buffer = io.BytesIO()
    big.convert("RGB").save(buffer, format="JPEG", quality=90)
    with Image.open(buffer) as image:
        shrunk = shrink_picture(image)
        assert max(shrunk.size) <= PICTURE_SIDE
        # Drafted: decoded at a fraction of its size, not decoded whole then reduced.
        assert image.size != big.size
        digit = normalise_photo(shrunk)
    expected = normalise_photo(shrink_picture(big.copy()))
    assert np.abs(digit.astype(int) - expected.astype(int)).mean() < 6


def test_decodes_wait_for_a_slot_within_the_wait():
    body = png(big_photo_small())
    slots = threading.BoundedSemaphore(1)
    slots.acquire()
    refused = score_image(body, "image/png", picture_model, 10**7, slots, wait=0.2)
    assert refused.status == 503
    threading.Timer(0.3, slots.release).start()
    started = time.perf_counter()
    waited = score_image(body, "image/png", picture_model, 10**7, slots, wait=5)
    assert waited.status == 200 and time.perf_counter() - started >= 0.3
    assert slots.acquire(timeout=0)  # given back after the decode


def big_photo_small() -> Image.Image:
    image = Image.new("L", (60, 60), 240)
    image.paste(20, (25, 10, 33, 50))  # a dark stroke: a "1"
    return image


def test_the_announcement_warns_off_loopback_and_masks_credentials():
    from mnist_pipeline.config import ServeConfig
    from mnist_pipeline.model_server import announcement, worker_settings

    uri = "https://reader:s3cret@models.example.com/mnist?token=abc&x=1"
    config = ServeConfig(model_uri=uri, host="0.0.0.0", workers=1)
    settings = worker_settings(config, "/tmp/m", (None, None), "sqlite://", "/tmp")
    lines = announcement(config, uri, settings)
    assert "s3cret" not in "".join(lines) + settings.model_uri
    assert "abc" not in "".join(lines) + settings.model_uri
    assert settings.model_uri == (
        "https://reader:REDACTED@models.example.com/mnist?token=REDACTED&x=1"
    )
    warning, serving = lines
    assert warning.startswith("WARNING: listening on 0.0.0.0, not a loopback")
    assert "no authentication" in warning and "docs/security.md" in warning
    assert serving.startswith(f"Serving {settings.model_uri} ({settings.model_uri})")
    assert settings.alias is None  # a URL is served as it is, not followed

    local = ServeConfig(watch_interval=2)
    settings = worker_settings(local, "/m", ("mnist-cnn", "3"), "sqlite://", "/t")
    (line,) = announcement(local, "models:/mnist-cnn/3", settings)
    assert settings.alias == "champion" and settings.version == "3"
    assert line.startswith(
        "Serving models:/mnist-cnn/3 (models:/mnist-cnn@champion, followed: checked "
        "every 2 s) at http://127.0.0.1:5001/invocations"
    )
    unfollowed = ServeConfig(watch_interval=0)
    settings = worker_settings(unfollowed, "/m", ("mnist-cnn", "3"), "x", "/t")
    assert settings.alias is None
