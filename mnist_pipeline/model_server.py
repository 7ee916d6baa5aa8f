"""The HTTP model server: one registered version behind MLflow's scoring protocol.

``mnist-pipeline serve-model`` resolves the model URI once (an alias becomes a
version, announced), downloads that version once, and starts uvicorn workers
that each load it. ``POST /invocations`` is answered by MLflow's own scoring
function (``mlflow.pyfunc.scoring_server.invocations``: the request formats,
answers and errors of ``mlflow models serve``), called from a small ASGI app,
:class:`BoundedScoring`, that first bounds the request: a body larger than the
limit is refused (HTTP 413) from its ``Content-Length`` header before a byte of
it is read, or as soon as a body without one grows past it; reading and
answering together get ``request_timeout`` seconds (HTTP 408 while the body
arrives, 504 after). The pyfunc refuses more images than the limit (HTTP 400).
Every refusal names its limit and points to batch predict.
``POST /predict-image`` takes one encoded picture (PNG or JPEG body,
``Content-Type: image/...``) under the same bounds: it is normalised as batch
predict normalises a folder's pictures
(:func:`~mnist_pipeline.photos.normalise_photo`) and answered with the
predicted digit and the ten probabilities; a picture showing no ink or several
digits is refused (HTTP 422) with the reason. ``/ping``,
``/health`` and ``/version`` go to MLflow's FastAPI app
(``scoring_server.init``) unchanged; ``/invocations`` bypasses it because its
middleware stack cost about as much CPU per one-image request as the model.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import socket
import tempfile
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import asdict, dataclass
from typing import Any

from mlflow.exceptions import MlflowException

from mnist_pipeline.config import ServeConfig

#: Environment variable that hands each worker process its settings (JSON).
SETTINGS_VARIABLE = "MNIST_MODEL_SERVER"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: The most bytes of a refused body read (and dropped) before answering.
DISCARD_AT_MOST = 256 * 2**20
#: Largest picture decoded for /predict-image (pixels): a small compressed
#: body can declare a huge image; it is refused from its header, undecoded.
MAX_IMAGE_PIXELS = 50_000_000
IMAGE_PATH = "/predict-image"

_BATCH_ADVICE = (
    "Send fewer images per request, or score a large batch with "
    "`mnist-pipeline predict --input FILE --output predictions.csv`."
)


@dataclass(frozen=True)
class WorkerSettings:
    """What each worker needs to build its app: a local model and the bounds."""

    model_path: str
    max_images_per_request: int
    max_body_bytes: int
    request_timeout: int


class _Refused(Exception):
    """A request refused before the model saw it: HTTP status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class BoundedScoring:
    """ASGI app: bounded ``POST /invocations`` and ``POST /predict-image``.

    Other requests go to ``fallback``.

    Args:
        score: MLflow's scoring function for one request body and content type,
            returning its ``InvocationsResponse``; it runs in a thread.
        fallback: the app answering every other path (MLflow's).
        max_bytes: the largest body accepted.
        timeout: seconds for reading the body and answering.
        score_image: answers ``/predict-image`` the same way (see
            :func:`score_image`); without it that path goes to ``fallback``.
    """

    def __init__(
        self,
        score: Callable[[bytes, str], Any],
        fallback: ASGIApp,
        max_bytes: int,
        timeout: float,
        score_image: Callable[[bytes, str], Any] | None = None,
    ) -> None:
        self.routes = {"/invocations": score}
        if score_image is not None:
            self.routes[IMAGE_PATH] = score_image
        self.fallback = fallback
        self.max_bytes = max_bytes
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        score = self.routes.get(scope.get("path", ""))
        if scope["type"] != "http" or score is None or scope["method"] != "POST":
            await self.fallback(scope, receive, send)
            return
        reading = True
        try:
            async with asyncio.timeout(self.timeout):
                body = await self._read(scope, receive)
                if body is None:  # the client went away
                    return
                reading = False
                content_type = _header(scope, b"content-type") or ""
                answer = await asyncio.to_thread(score, body, content_type)
        except _Refused as refused:
            await self._discard(scope, receive)
            await _respond(send, refused.status, _error(refused.status, str(refused)))
        except MlflowException as exc:
            await _respond(send, exc.get_http_status_code(), exc.serialize_as_json())
        except TimeoutError:
            status = 408 if reading else 504
            what = "The request body did not arrive" if reading else "No answer"
            message = f"{what} within {self.timeout:g} s (request_timeout)."
            await _respond(send, status, _error(status, message))
        else:
            await _respond(send, answer.status, answer.response, answer.mimetype)

    async def _read(self, scope: Scope, receive: Receive) -> bytes | None:
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit():
            self._check_size(int(declared), f"{int(declared):,} bytes")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            self._check_size(size, f"more than {self.max_bytes:,} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _discard(self, scope: Scope, receive: Receive) -> None:
        """Read and drop the rest of a refused body, within bounds.

        A client that sends its whole body before reading the answer, on a
        connection it asked to close (``urllib`` does), otherwise met a reset
        connection instead of the 413: the server closed with unread data.
        Dropping bytes costs no parsing; bodies declared larger than
        :data:`DISCARD_AT_MOST` are answered at once all the same.
        """
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit():
            if int(declared) > DISCARD_AT_MOST:
                return
        dropped = 0
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.timeout):
                while dropped <= DISCARD_AT_MOST:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return
                    dropped += len(message.get("body", b""))
                    if not message.get("more_body", False):
                        return

    def _check_size(self, size: int, described: str) -> None:
        if size > self.max_bytes:
            raise _Refused(
                413,
                f"The request body ({described}) exceeds this server's limit of "
                f"{self.max_bytes:,} bytes (max_body_bytes). {_BATCH_ADVICE}",
            )


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


#: MLflow's error codes for the refusals made here (their JSON shape is MLflow's).
_ERROR_CODES = {413: "REQUEST_LIMIT_EXCEEDED", 504: "DEADLINE_EXCEEDED"}


def _error(status: int, message: str) -> str:
    code = _ERROR_CODES.get(status, "BAD_REQUEST")
    return json.dumps({"error_code": code, "message": message})


async def _respond(
    send: Send, status: int, body: str, media_type: str = "application/json"
) -> None:
    data = body.encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", media_type.encode()),
                (b"content-length", str(len(data)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


@dataclass(frozen=True)
class ImageAnswer:
    """An answer shaped as MLflow's ``InvocationsResponse`` (status, JSON body)."""

    status: int
    response: str
    mimetype: str = "application/json"


def score_image(
    body: bytes, content_type: str, predict: Callable[[Any], Any]
) -> ImageAnswer:
    """One encoded picture of a digit, normalised and predicted.

    Args:
        body: the PNG or JPEG file's bytes.
        content_type: the request's; ``image/...`` is required.
        predict: class probabilities (N, 10) for the signature's (N, 28, 28).

    Returns:
        200 with ``predicted_class`` and ``probabilities``; 415 for a body that
        is not declared as an image, 400 for one that cannot be decoded, 413
        for one declaring more than :data:`MAX_IMAGE_PIXELS` pixels, 422 with
        ``reason`` ("no ink", "several digits") for a picture that does not
        show one digit.
    """
    import numpy as np
    from PIL import Image

    from mnist_pipeline.errors import DigitImageError
    from mnist_pipeline.photos import normalise_photo
    from mnist_pipeline.predict import UNREADABLE_IMAGE
    from mnist_pipeline.serving import as_model_input

    if not content_type.lower().startswith("image/"):
        message = (
            "Send the picture's bytes with Content-Type image/png or image/jpeg, "
            f"not {content_type or 'none'!r}."
        )
        return ImageAnswer(415, _error(415, message))
    try:
        with Image.open(io.BytesIO(body)) as image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                message = (
                    f"The picture is {image.width}x{image.height} pixels; this server "
                    f"decodes at most {MAX_IMAGE_PIXELS:,} pixels. Send a smaller one."
                )
                return ImageAnswer(413, _error(413, message))
            digit = normalise_photo(image)
    except DigitImageError as exc:
        refused = {"error_code": "INVALID_PARAMETER_VALUE", "reason": exc.reason}
        return ImageAnswer(422, json.dumps(refused | {"message": str(exc)}))
    except UNREADABLE_IMAGE as exc:
        message = f"The body is not a readable PNG or JPEG picture: {exc}"
        return ImageAnswer(400, _error(400, message))
    probabilities = np.asarray(predict(as_model_input(digit[None])))[0]
    answer = {
        "predicted_class": int(probabilities.argmax()),
        "probabilities": [float(p) for p in probabilities],
    }
    return ImageAnswer(200, json.dumps(answer))


def create_app() -> ASGIApp:
    """uvicorn's factory: each worker loads the model and builds its app, at start."""
    import mlflow.pyfunc
    import numpy as np
    from mlflow.pyfunc import scoring_server

    from mnist_pipeline.serving import MAX_IMAGES_VARIABLE

    settings = WorkerSettings(**json.loads(os.environ[SETTINGS_VARIABLE]))
    os.environ[MAX_IMAGES_VARIABLE] = str(settings.max_images_per_request)
    model = mlflow.pyfunc.load_model(settings.model_path)
    schema = model.metadata.get_input_schema()
    # Trace the model's function now (one and two images: TensorFlow then
    # settles on a shape that fits every batch) rather than in the first
    # requests, which took ~0.2 s longer.
    for count in (1, 2):
        model.predict(np.zeros((count, 28, 28), np.float32))

    def score(body: bytes, content_type: str):
        return scoring_server.invocations(body, content_type, model, schema)

    def score_picture(body: bytes, content_type: str) -> ImageAnswer:
        return score_image(body, content_type, model.predict)

    return BoundedScoring(
        score,
        scoring_server.init(model),
        settings.max_body_bytes,
        settings.request_timeout,
        score_image=score_picture,
    )


def serve(config: ServeConfig, announce: Callable[[str], None] = print) -> None:
    """Resolve and download the model once, then run the workers until stopped.

    Args:
        announce: called with one line saying what is served where, before the
            workers start.

    Raises:
        RegistryError: the URI names a registered model without that version or
            alias.
    """
    import mlflow.artifacts

    from mnist_pipeline import registry, tracking_store

    client = tracking_store.connect()
    name, version = registry.resolve_model_uri(client, config.model_uri)
    pinned = f"models:/{name}/{version}" if version else config.model_uri
    with tempfile.TemporaryDirectory(prefix="mnist-serve-") as folder:
        path = mlflow.artifacts.download_artifacts(pinned, dst_path=folder)
        settings = WorkerSettings(
            model_path=path,
            max_images_per_request=config.max_images_per_request,
            max_body_bytes=config.body_limit(),
            request_timeout=config.request_timeout,
        )
        os.environ[SETTINGS_VARIABLE] = json.dumps(asdict(settings))
        announce(
            f"Serving {pinned} ({config.model_uri}) at "
            f"http://{config.host}:{config.port}/invocations (arrays) and "
            f"{IMAGE_PATH} (one PNG/JPEG picture) with "
            f"{config.workers} worker(s): at most "
            f"{settings.max_images_per_request:,} image(s) and "
            f"{settings.max_body_bytes:,} bytes per request, "
            f"{settings.request_timeout} s per request."
        )
        _run_workers(config)


def _run_workers(config: ServeConfig) -> None:
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    server = uvicorn.Config(
        f"{__name__}:create_app",
        factory=True,
        host=config.host,
        port=config.port,
        workers=config.workers,
        limit_concurrency=config.limit_concurrency,
        timeout_keep_alive=config.keep_alive_timeout,
        access_log=config.access_log,
    )
    if server.workers == 1:
        uvicorn.Server(server).run()
        return
    # uvicorn binds the workers' shared socket without IPPROTO_TCP, and asyncio
    # turns Nagle's algorithm off only on sockets that say TCP: every answer on
    # a keep-alive connection then waited ~40 ms for the client's delayed ACK
    # (uvicorn issue 3149; `mlflow models serve --workers 2` has it too).
    bound = server.bind_socket()
    listener = socket.socket(
        bound.family, bound.type, socket.IPPROTO_TCP, fileno=bound.detach()
    )
    Multiprocess(server, sockets=[listener]).run()
