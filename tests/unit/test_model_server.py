"""The model server's request bounds, driven as ASGI calls (no network)."""

from __future__ import annotations

import asyncio
import io
import json
from types import SimpleNamespace

import numpy as np
import pytest
from mlflow.exceptions import MlflowException
from PIL import Image

from mnist_pipeline import photoset
from mnist_pipeline.model_server import DISCARD_AT_MOST, BoundedScoring, score_image

LIMIT = 100


def answer(status=200, body='{"predictions": []}', mimetype="application/json"):
    return SimpleNamespace(status=status, response=body, mimetype=mimetype)


def call(
    app,
    body_parts,
    *,
    path="/invocations",
    length=None,
    pause=0.0,
    kind=b"application/json",
):
    """Run one request through ``app``: status, headers and body of its answer."""
    headers = [(b"content-type", kind)]
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    scope = {"type": "http", "method": "POST", "path": path, "headers": headers}
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


def bounded(score=None, fallback=None, timeout=5.0) -> BoundedScoring:
    return BoundedScoring(
        score or (lambda body, kind: answer()), fallback, LIMIT, timeout
    )


def test_a_declared_body_over_the_limit_is_refused_unparsed():
    scored = []
    app = bounded(score=lambda body, kind: scored.append(body))
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
    app = bounded(score=lambda body, kind: scored.append(body))
    status, _, body, received = call(app, [b"x" * 60, b"x" * 60, b"x" * 60])
    assert status == 413 and scored == [] and len(received) == 3
    assert "more than 100 bytes" in json.loads(body)["message"]


def test_an_accepted_body_reaches_mlflow_whole_and_its_answer_comes_back():
    seen = []

    def score(body, content_type):
        seen.append((body, content_type))
        return answer(201, "done", "text/plain")

    status, headers, body, _ = call(bounded(score), [b"ab", b"cd"], length=4)
    assert seen == [(b"abcd", "application/json")]
    assert (status, headers[b"content-type"], body) == (201, b"text/plain", b"done")


def test_mlflow_errors_keep_their_status_and_message():
    def score(body, content_type):
        raise MlflowException.invalid_parameter_value("holds 1,001 images")

    status, _, body, _ = call(bounded(score), [b"{}"], length=2)
    assert status == 400
    assert json.loads(body)["message"] == "holds 1,001 images"


def test_a_slow_body_gets_408_and_a_slow_answer_504():
    status, _, body, _ = call(bounded(timeout=0.1), [b"{}"], pause=0.5)
    assert (
        status == 408 and "did not arrive within 0.1 s" in json.loads(body)["message"]
    )

    def slow(body, content_type):
        import time

        time.sleep(0.5)
        return answer()

    status, _, body, _ = call(bounded(slow, timeout=0.1), [b"{}"], length=2)
    assert status == 504 and "No answer within 0.1 s" in json.loads(body)["message"]


@pytest.mark.parametrize("path", ["/ping", "/version"])
def test_other_paths_go_to_mlflow_app(path):
    async def fallback(scope, receive, send):
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": scope["path"].encode()})

    status, _, body, _ = call(bounded(fallback=fallback), [b""], path=path)
    assert (status, body) == (299, path.encode())


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def picture_model(images):
    """A stand-in model: class 3, sure of it; records what it was given."""
    picture_model.seen = np.asarray(images)
    return np.eye(10, dtype=np.float32)[[3] * len(images)]


def image_app(max_bytes=LIMIT):
    return BoundedScoring(
        lambda body, kind: answer(),
        None,
        max_bytes,
        5.0,
        score_image=lambda body, kind: score_image(body, kind, picture_model),
    )


def test_a_photo_is_normalised_predicted_and_answered_as_json(tmp_path):
    strokes, labels = photoset.uci_strokes()
    (record,) = photoset.write_photo_set(tmp_path, strokes[:1], labels[:1], seed=2)
    body = (tmp_path / record.file).read_bytes()
    status, _, answer_body, _ = call(
        image_app(len(body)), [body], path="/predict-image", kind=b"image/png"
    )
    assert status == 200
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
