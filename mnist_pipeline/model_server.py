"""The HTTP model server: a registered version behind MLflow's scoring protocol,
following its alias.

``mnist-pipeline serve-model`` resolves the model URI (an alias becomes a
version, announced), downloads that version once, and starts uvicorn workers
that each load it. Given an alias (``models:/mnist-cnn@champion``, the default),
every worker then follows it (:class:`ModelFollower`): every ``watch_interval``
seconds it asks the registry which version the alias names; when that changes,
a background thread downloads and loads the new version and checks it
(:func:`check_candidate`: its input signature is the served one, and it answers
its own logged input example with finite probabilities that sum to 1) before it
takes traffic by a single reference assignment. A request takes the version
current when it starts and finishes on it; none waits for a load. A version that
fails is never served: the old one stays, the reason is logged once and shown at
``GET /model-status``. A fixed version (``models:/name/3``) or a path is served
as it is.

``POST /invocations`` is answered by MLflow's own scoring function
(``mlflow.pyfunc.scoring_server.invocations``: the request formats, answers and
errors of ``mlflow models serve``), called from a small ASGI app,
:class:`BoundedScoring`, that first bounds the request: a body larger than the
limit is refused (HTTP 413) from its ``Content-Length`` header before a byte of
it is read, or as soon as a body without one grows past it; reading and
answering together get ``request_timeout`` seconds (HTTP 408 while the body
arrives, 504 after). The pyfunc refuses more images than the limit (HTTP 400).
Every refusal names its limit and points to batch predict. Every answer of both
paths names the version that made it (header ``X-Model-Version``).
``POST /predict-image`` takes one encoded picture (PNG or JPEG body,
``Content-Type: image/...``) under the same bounds: a picture of more than
``max_image_pixels`` is refused from its header, the rest are reduced in Pillow
(:func:`shrink_picture`) a few at a time per worker, normalised as batch predict
normalises a folder's pictures (:func:`~mnist_pipeline.photos.normalise_photo`)
and answered with the predicted digit and the ten probabilities; a picture
showing no ink or several digits is refused (HTTP 422) with the reason.
``/ping``, ``/health`` and ``/version`` go to MLflow's FastAPI app
(``scoring_server.init``) unchanged; ``/invocations`` bypasses it because its
middleware stack cost about as much CPU per one-image request as the model.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import io
import ipaddress
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, MutableMapping
from dataclasses import asdict, dataclass
from types import SimpleNamespace
from typing import Any

from mlflow.exceptions import MlflowException

from mnist_pipeline.config import ServeConfig
from mnist_pipeline.redact import redact_text, redact_url

#: Environment variable that hands each worker process its settings (JSON).
SETTINGS_VARIABLE = "MNIST_MODEL_SERVER"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: The most bytes of a refused body read (and dropped) before answering.
DISCARD_AT_MOST = 256 * 2**20
IMAGE_PATH = "/predict-image"
STATUS_PATH = "/model-status"
#: The answer header naming the registered version that made the answer.
VERSION_HEADER = "X-Model-Version"
#: Pictures are reduced to this longest side in Pillow, before any array of
#: them exists (``normalise_photo`` then works at half of it).
PICTURE_SIDE = 1024
#: A version whose download failed is tried again after this many seconds while
#: the alias still names it (a network blip is not final); the same failure is
#: not logged again. One that failed to load or its check is not tried again
#: until the alias moves away and back.
RETRY_FAILED_AFTER = 60.0

_BATCH_ADVICE = (
    "Send fewer images per request, or score a large batch with "
    "`mnist-pipeline predict --input FILE --output predictions.csv`."
)
_log = logging.getLogger("uvicorn.error")


@dataclass(frozen=True)
class WorkerSettings:
    """What each worker needs to build its app: the model, the alias, the bounds."""

    model_path: str
    model_uri: str  # redacted: for logs and the status
    model_name: str | None
    version: str | None
    alias: str | None  # followed when set
    watch_interval: float
    tracking_uri: str
    work_dir: str
    max_images_per_request: int
    max_body_bytes: int
    request_timeout: int
    max_image_pixels: int
    image_decodes: int


# -- the served model and how it follows the alias ----------------------------------


@dataclass(frozen=True)
class ServedModel:
    """One loaded version, never changed once built.

    A request takes the one current when it starts and finishes on it,
    whatever is swapped in meanwhile.
    """

    model: Any
    version: str | None
    schema: Any
    loaded_at: str
    load_seconds: float = 0.0


@dataclass(frozen=True)
class Failure:
    """A version that was not served: why, and since when."""

    version: str
    reason: str
    at: str


class CandidateRefused(Exception):
    """A version failed to download, load or pass :func:`check_candidate`."""


class ModelFollower:
    """Holds the served model and swaps in the version an alias moves to.

    Args:
        served: the version served first.
        poll: the version the alias names now (None: the alias is not set);
            raises :class:`MlflowException` when the registry does not answer.
            None: the URI names a fixed version, nothing is followed.
        load: a :class:`ServedModel` of a version, given the served input
            schema; raises when the version cannot be served.
        interval: seconds between polls (0: no following).
        uri: the model URI (redacted), for logs and the status.
        alias: the alias followed, for the status.
    """

    def __init__(
        self,
        served: ServedModel,
        *,
        poll: Callable[[], str | None] | None = None,
        load: Callable[[str, Any], ServedModel] | None = None,
        interval: float = 0.0,
        uri: str = "",
        alias: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.current = served
        self.alias_version: str | None = served.version
        self.last_failure: Failure | None = None
        self.registry_error: str | None = None
        self.last_checked_at: str | None = None
        self.interval, self.uri, self.alias = interval, uri, alias
        self._poll, self._load, self._clock = poll, load, clock
        self._failed_at = 0.0
        self._refused_until_moved: str | None = None
        self._unset_logged = False
        self._stop = threading.Event()

    @property
    def following(self) -> bool:
        return self._poll is not None and self._load is not None and self.interval > 0

    def poll_once(self) -> bool:
        """Ask the registry once; load, check and swap in a new version.

        Returns:
            Whether another version now serves.
        """
        try:
            target = self._poll()
        except MlflowException as exc:
            self._registry_failed(exc)
            return False
        self._registry_answered(target)
        failure = self.last_failure
        if failure is not None and failure.version != target:
            self._refused_until_moved = None  # the alias moved away from it
        if target is None or target == self.current.version:
            return False
        if failure is not None and failure.version == target:
            # A version that did not load or failed its check fails the same
            # way again: it waits for the alias to move. A cut download may
            # not be final: tried again after a while.
            if self._refused_until_moved == target:
                return False
            if self._clock() - self._failed_at < RETRY_FAILED_AFTER:
                return False
        try:
            candidate = self._load(target, self.current.schema)
        except Exception as exc:
            # Whatever stops a candidate (files gone, a model that does not
            # load, a failed check, a bug in its code) keeps the served one:
            # the candidate is never served and the reason is reported.
            self._refuse(target, exc)
            return False
        previous = self.current
        self.current = candidate  # the swap: one reference assignment
        _log.info(
            "Worker %d: now serving v%s (%s moved from v%s; loaded and checked in "
            "%.1f s).",
            os.getpid(),
            candidate.version,
            self.uri,
            previous.version,
            candidate.load_seconds,
        )
        del previous
        gc.collect()  # Keras models hold reference cycles: free the old one now
        return True

    def _registry_failed(self, exc: MlflowException) -> None:
        reason = _describe(exc)
        if reason != self.registry_error:
            _log.warning(
                "Worker %d: the registry did not answer for %s (%s); v%s keeps "
                "serving.",
                os.getpid(),
                self.uri,
                reason,
                self.current.version,
            )
        self.registry_error = reason

    def _registry_answered(self, target: str | None) -> None:
        if self.registry_error is not None:
            _log.info("Worker %d: the registry answers again.", os.getpid())
        self.registry_error = None
        self.alias_version = target
        self.last_checked_at = _now()
        if target is None and not self._unset_logged:
            _log.warning(
                "Worker %d: %s names no version (alias removed); v%s keeps serving.",
                os.getpid(),
                self.uri,
                self.current.version,
            )
        self._unset_logged = target is None

    def _refuse(self, version: str, exc: Exception) -> None:
        reason = _describe(exc)
        self._failed_at = self._clock()
        if not reason.startswith("download:"):
            self._refused_until_moved = version
        known = self.last_failure
        if known is not None and (known.version, known.reason) == (version, reason):
            return
        self.last_failure = Failure(version, reason, _now())
        _log.error(
            "Worker %d: v%s of %s is not served: %s. v%s keeps serving.",
            os.getpid(),
            version,
            self.uri,
            reason,
            self.current.version,
        )

    def start(self) -> None:
        """Poll every ``interval`` seconds in a daemon thread (when following)."""
        if self.following:
            threading.Thread(
                target=self._run, name="model-follower", daemon=True
            ).start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll_once()
            except Exception as exc:
                # A bug here must not end the following silently: say it, and
                # go on with the version that serves.
                _log.exception("Worker %d: following %s failed", os.getpid(), self.uri)
                self.registry_error = _describe(exc)

    def status(self) -> dict[str, Any]:
        """What ``GET /model-status`` answers (JSON)."""
        served = self.current
        failure = self.last_failure
        return {
            "model_uri": self.uri,
            "served_version": served.version,
            "loaded_at": served.loaded_at,
            "load_seconds": round(served.load_seconds, 3),
            "alias": self.alias,
            "alias_version": self.alias_version if self.alias else None,
            "following": self.following,
            "watch_interval_s": self.interval if self.following else None,
            "last_checked_at": self.last_checked_at,
            "last_failure": asdict(failure) if failure else None,
            "registry_error": self.registry_error,
            "worker_pid": os.getpid(),
        }


def check_candidate(
    model: Any, served_schema: Any, served_outputs: Any | None = None
) -> None:
    """Refuse a loaded version that must not take traffic.

    It must take the served input signature (and declare the served output
    signature, when given) and answer its own logged input example with one
    row per image of as many non-negative, finite probabilities as its output
    signature declares, summing to 1.

    Raises:
        CandidateRefused: with the reason.
    """
    import numpy as np

    schema = model.metadata.get_input_schema()
    if schema != served_schema:
        raise CandidateRefused(
            f"its input signature {schema} is not the served one {served_schema}"
        )
    outputs = model.metadata.get_output_schema()
    if served_outputs is not None and outputs != served_outputs:
        raise CandidateRefused(
            f"its output signature {outputs} is not the served one {served_outputs}"
        )
    example = model.input_example
    if example is None:
        raise CandidateRefused("it was logged without an input example to check")
    answer = np.asarray(model.predict(example), dtype=np.float64)
    rows = len(example)
    width = _declared_width(outputs)
    if (
        answer.ndim != 2
        or answer.shape[0] != rows
        or width not in (None, answer.shape[1])
    ):
        raise CandidateRefused(
            f"its answer to its {rows}-image input example has shape {answer.shape}"
            + (f", not ({rows}, {width})" if width else "")
        )
    if not np.isfinite(answer).all():
        raise CandidateRefused(
            "its answer to its input example holds values that are not finite"
        )
    if (answer < 0).any():
        raise CandidateRefused(
            "its answer to its input example holds negative probabilities"
        )
    sums = answer.sum(axis=1)
    if not np.allclose(sums, 1.0, atol=1e-3):
        raise CandidateRefused(
            f"its probabilities for its input example sum to {sums.tolist()}, not 1"
        )


def _declared_width(outputs: Any | None) -> int | None:
    """The number of columns an output signature declares (a tensor's last
    dimension); None when it declares none."""
    specs = getattr(outputs, "inputs", None) or []
    shape = getattr(specs[0], "shape", None) if len(specs) == 1 else None
    return int(shape[-1]) if shape and shape[-1] > 0 else None


def load_version(
    name: str,
    version: str,
    work_dir: str,
    served_schema: Any,
    served_outputs: Any | None = None,
):
    """Download, load, check and warm up one registered version.

    Raises:
        CandidateRefused: naming the step that failed and why.
    """
    import mlflow.artifacts

    started = time.perf_counter()
    # One folder name per worker and version: a reason that names a file names
    # the same one when the version is tried again (and is not logged again).
    folder = os.path.join(work_dir, f"v{version}-worker-{os.getpid()}")
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    try:
        with _step("download"):
            path = mlflow.artifacts.download_artifacts(
                f"models:/{name}/{version}", dst_path=folder
            )
            if not os.path.exists(os.path.join(path, "MLmodel")):
                # MLflow downloads nothing, and says so only at INFO.
                raise CandidateRefused("its model files are missing (no MLmodel)")
        with _step("load"):
            model = load_pyfunc(path)
        with _step("check"):
            check_candidate(model, served_schema, served_outputs)
            warm_up(model)
    finally:
        # The loaded model holds what it needs in memory.
        shutil.rmtree(folder, ignore_errors=True)
    return ServedModel(
        model, version, served_schema, _now(), time.perf_counter() - started
    )


def load_pyfunc(path: str):
    """``mlflow.pyfunc.load_model(path)``, leaving ``sys.path`` as it was.

    MLflow prepends each version's ``code/`` folder to ``sys.path``; this
    process imported ``mnist_pipeline`` already, so the folder is never read,
    and ``sys.path`` would otherwise grow with every swap.
    """
    import mlflow.pyfunc

    before = list(sys.path)
    try:
        return mlflow.pyfunc.load_model(path)
    finally:
        sys.path[:] = before


def warm_up(model: Any) -> None:
    """Trace the model's function before it serves (one and two images:
    TensorFlow then settles on a shape that fits every batch), rather than in
    the first requests, which took ~0.2 s longer."""
    import numpy as np

    for count in (1, 2):
        model.predict(np.zeros((count, 28, 28), np.float32))


@contextlib.contextmanager
def _step(name: str) -> Iterator[None]:
    try:
        yield
    except CandidateRefused as exc:
        raise CandidateRefused(f"{name}: {exc}") from exc
    except Exception as exc:
        # Any error of a candidate becomes its reason for not being served.
        raise CandidateRefused(f"{name}: {_describe(exc)}") from exc


def _describe(exc: BaseException, limit: int = 500) -> str:
    """One line for logs and the status: the error, URLs' credentials masked."""
    text = str(exc)
    if not isinstance(exc, CandidateRefused):
        text = f"{type(exc).__name__}: {text}"
    text = redact_text(" ".join(text.split()))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# -- the bounded ASGI app ----------------------------------------------------------

#: What a route does with a request: the served model, the body, its type.
Route = Callable[[ServedModel, bytes, str], Any]


class _Refused(Exception):
    """A request refused before the model saw it: HTTP status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class BoundedScoring:
    """ASGI app: bounded ``POST /invocations`` and ``POST /predict-image``, and
    ``GET /model-status``.

    Other requests go to ``fallback``.

    Args:
        routes: per path, the function answering a POST with the served model,
            the body and its content type, returning an answer shaped as
            MLflow's ``InvocationsResponse``; it runs in a thread.
        fallback: the app answering every other path (MLflow's).
        max_bytes: the largest body accepted.
        timeout: seconds for reading the body and answering.
        follower: holds the served model (read once per request) and the status.
    """

    def __init__(
        self,
        routes: Mapping[str, Route],
        fallback: ASGIApp,
        max_bytes: int,
        timeout: float,
        follower: ModelFollower,
    ) -> None:
        self.routes = dict(routes)
        self.fallback = fallback
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.follower = follower

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and path == STATUS_PATH:
            if scope["method"] == "GET":
                await _respond(send, 200, json.dumps(self.follower.status()))
            else:
                await _respond(send, 405, _error(405, f"{path} answers GET only."))
            return
        score = self.routes.get(path)
        if scope["type"] != "http" or score is None or scope["method"] != "POST":
            await self.fallback(scope, receive, send)
            return
        served = self.follower.current  # this request's version, whatever swaps
        named = _version_headers(served)
        reading = True
        try:
            async with asyncio.timeout(self.timeout):
                body = await self._read(scope, receive)
                if body is None:  # the client went away
                    return
                reading = False
                content_type = _header(scope, b"content-type") or ""
                answer = await asyncio.to_thread(score, served, body, content_type)
        except _Refused as refused:
            await self._discard(scope, receive)
            message = _error(refused.status, str(refused))
            await _respond(send, refused.status, message, headers=named)
        except MlflowException as exc:
            status = exc.get_http_status_code()
            await _respond(send, status, exc.serialize_as_json(), headers=named)
        except TimeoutError:
            status = 408 if reading else 504
            what = "The request body did not arrive" if reading else "No answer"
            message = f"{what} within {self.timeout:g} s (request_timeout)."
            await _respond(send, status, _error(status, message), headers=named)
        else:
            await _respond(send, answer.status, answer.response, answer.mimetype, named)

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


def _version_headers(served: ServedModel) -> list[tuple[bytes, bytes]]:
    if served.version is None:  # a path or a run: no registered version
        return []
    return [(VERSION_HEADER.lower().encode(), served.version.encode("latin-1"))]


#: MLflow's error codes for the refusals made here (their JSON shape is MLflow's).
_ERROR_CODES = {
    405: "BAD_REQUEST",
    413: "REQUEST_LIMIT_EXCEEDED",
    503: "TEMPORARILY_UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def _error(status: int, message: str) -> str:
    code = _ERROR_CODES.get(status, "BAD_REQUEST")
    return json.dumps({"error_code": code, "message": message})


async def _respond(
    send: Send,
    status: int,
    body: str,
    media_type: str = "application/json",
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    data = body.encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", media_type.encode()),
                (b"content-length", str(len(data)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


# -- /predict-image -----------------------------------------------------------------


@dataclass(frozen=True)
class ImageAnswer:
    """An answer shaped as MLflow's ``InvocationsResponse`` (status, JSON body)."""

    status: int
    response: str
    mimetype: str = "application/json"


def score_image(
    body: bytes,
    content_type: str,
    predict: Callable[[Any], Any],
    max_pixels: int,
    slots: threading.Semaphore | None = None,
    wait: float | None = None,
) -> ImageAnswer:
    """One encoded picture of a digit, normalised and predicted.

    Args:
        body: the PNG or JPEG file's bytes.
        content_type: the request's; ``image/...`` is required.
        predict: class probabilities (N, 10) for the signature's (N, 28, 28).
        max_pixels: larger pictures (width x height) are refused undecoded.
        slots: decoding waits for one (at most ``wait`` seconds), so that a
            worker decodes only so many pictures at once.

    Returns:
        200 with ``predicted_class`` and ``probabilities``; 415 for a body that
        is not declared as an image, 400 for one that cannot be decoded, 413
        for one declaring more than ``max_pixels`` pixels, 422 with ``reason``
        ("no ink", "several digits") for a picture that does not show one
        digit, 503 when no decoding slot came free within ``wait``.
    """
    import numpy as np

    from mnist_pipeline.serving import as_model_input

    if not content_type.lower().startswith("image/"):
        message = (
            "Send the picture's bytes with Content-Type image/png or image/jpeg, "
            f"not {content_type or 'none'!r}."
        )
        return ImageAnswer(415, _error(415, message))
    if slots is not None and not slots.acquire(timeout=wait):
        message = "Too many pictures are being decoded; try again."
        return ImageAnswer(503, _error(503, message))
    try:
        digit = _decode_digit(body, max_pixels)
    finally:
        if slots is not None:
            slots.release()
    if isinstance(digit, ImageAnswer):
        return digit
    probabilities = np.asarray(predict(as_model_input(digit[None])))[0]
    answer = {
        "predicted_class": int(probabilities.argmax()),
        "probabilities": [float(p) for p in probabilities],
    }
    return ImageAnswer(200, json.dumps(answer))


def _decode_digit(body: bytes, max_pixels: int):
    """The 28x28 digit of a picture, or the refusal to answer."""
    from PIL import Image

    from mnist_pipeline.errors import DigitImageError
    from mnist_pipeline.photos import normalise_photo
    from mnist_pipeline.predict import UNREADABLE_IMAGE

    try:
        with Image.open(io.BytesIO(body)) as image:
            if image.width * image.height > max_pixels:
                message = (
                    f"The picture is {image.width}x{image.height} pixels; this "
                    f"server decodes at most {max_pixels:,} pixels "
                    "(max_image_pixels). Send a smaller one."
                )
                return ImageAnswer(413, _error(413, message))
            return normalise_photo(shrink_picture(image))
    except DigitImageError as exc:
        refused = {"error_code": "INVALID_PARAMETER_VALUE", "reason": exc.reason}
        return ImageAnswer(422, json.dumps(refused | {"message": str(exc)}))
    except UNREADABLE_IMAGE as exc:
        message = f"The body is not a readable PNG or JPEG picture: {exc}"
        return ImageAnswer(400, _error(400, message))


def shrink_picture(image, side: int = PICTURE_SIDE):
    """``image`` with its longer side at most ``side`` pixels, EXIF kept.

    Reduced by Pillow before any array of it exists: a JPEG is decoded at 1/2
    to 1/8 of its size where that is enough (``thumbnail`` drafts it), and the
    float arrays of ``normalise_photo`` are made of the small picture.
    Palette and 1-bit pictures become grey or RGBA first (Pillow would shrink
    them by dropping pixels, breaking thin strokes).
    """
    if max(image.size) <= side:
        return image
    if image.mode in ("1", "P", "PA"):
        alpha = image.mode == "PA" or "transparency" in image.info
        image = image.convert("RGBA" if alpha else "L")
    image.thumbnail((side, side))
    return image


# -- the workers ---------------------------------------------------------------------


def create_app() -> ASGIApp:
    """uvicorn's factory: each worker loads the model, follows its alias, and
    builds its app, at start."""
    import mlflow
    from mlflow.pyfunc import scoring_server

    from mnist_pipeline.serving import MAX_IMAGES_VARIABLE

    settings = WorkerSettings(**json.loads(os.environ[SETTINGS_VARIABLE]))
    os.environ[MAX_IMAGES_VARIABLE] = str(settings.max_images_per_request)
    mlflow.set_tracking_uri(settings.tracking_uri)
    _freeze_imports()
    started = time.perf_counter()
    model = load_pyfunc(settings.model_path)
    warm_up(model)
    schema = model.metadata.get_input_schema()
    served = ServedModel(
        model, settings.version, schema, _now(), time.perf_counter() - started
    )
    follower = _follower(settings, served)
    if follower.following:
        follower.poll_once()  # a worker (re)started late serves what the alias names
        follower.start()
    decodes = threading.BoundedSemaphore(settings.image_decodes)

    def invocations(served: ServedModel, body: bytes, content_type: str):
        return scoring_server.invocations(
            body, content_type, served.model, served.schema
        )

    def picture(served: ServedModel, body: bytes, content_type: str):
        return score_image(
            body,
            content_type,
            served.model.predict,
            settings.max_image_pixels,
            decodes,
            settings.request_timeout,
        )

    # MLflow's app answers /ping, /health and /version; it reads only the
    # model's metadata, and a stand-in keeps it from holding the first model
    # (and its memory) for the worker's life after a swap.
    fallback = scoring_server.init(SimpleNamespace(metadata=model.metadata))
    del model
    return BoundedScoring(
        {"/invocations": invocations, IMAGE_PATH: picture},
        fallback,
        settings.max_body_bytes,
        settings.request_timeout,
        follower,
    )


def _freeze_imports() -> None:
    """Leave the ~600,000 objects of the imports out of every garbage collection.

    A full collection walked them all (1.1-1.3 s here, holding the GIL): the
    one that frees a swapped-out model, and every automatic one, stalled all
    requests of the worker that long. The models are loaded after this, so
    their reference cycles are still collected (~20 ms per swap). TensorFlow's
    warning that each newly loaded model "triggered tf.function retracing" is
    dropped: tracing a new version is expected.
    """
    import importlib

    from mnist_pipeline.runtime import DropRetracingNotice

    importlib.import_module("keras")
    logging.getLogger("tensorflow").addFilter(DropRetracingNotice())
    gc.collect()
    gc.freeze()


def _follower(settings: WorkerSettings, served: ServedModel) -> ModelFollower:
    if settings.alias is None or settings.model_name is None:
        return ModelFollower(served, uri=settings.model_uri)
    from mlflow import MlflowClient

    from mnist_pipeline import registry

    client = MlflowClient(tracking_uri=settings.tracking_uri)
    name, alias = settings.model_name, settings.alias
    # Every version must answer as the first one does (a swap must not change
    # what clients get back).
    outputs = served.model.metadata.get_output_schema()
    return ModelFollower(
        served,
        poll=lambda: registry.alias_version(client, name, alias),
        load=lambda version, schema: load_version(
            name, version, settings.work_dir, schema, outputs
        ),
        interval=settings.watch_interval,
        uri=settings.model_uri,
        alias=alias,
    )


def followed_alias(uri: str) -> tuple[str, str] | None:
    """``(name, alias)`` of a ``models:/name@alias`` URI; None for any other."""
    if not uri.startswith("models:/") or "@" not in uri:
        return None
    name, alias = uri.removeprefix("models:/").split("@", 1)
    return name, alias


def serve(config: ServeConfig, announce: Callable[[str], None] = print) -> None:
    """Resolve and download the model, then run the workers until stopped.

    Args:
        announce: called with one line saying what is served where, before the
            workers start (and a warning line first when the address is not
            loopback).

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
        start = os.path.join(folder, "start")
        os.mkdir(start)
        path = mlflow.artifacts.download_artifacts(pinned, dst_path=start)
        settings = worker_settings(
            config, path, (name, version), client.tracking_uri, folder
        )
        os.environ[SETTINGS_VARIABLE] = json.dumps(asdict(settings))
        for line in announcement(config, pinned, settings):
            announce(line)
        _run_workers(config)


def worker_settings(
    config: ServeConfig,
    path: str,
    resolved: tuple[str | None, str | None],
    tracking_uri: str,
    work_dir: str,
) -> WorkerSettings:
    """The workers' settings: the downloaded version at ``path``, ``resolved`` as
    ``(name, version)``, the alias to follow, the bounds."""
    name, version = resolved
    followed = followed_alias(config.model_uri) if config.watch_interval else None
    return WorkerSettings(
        model_path=path,
        model_uri=redact_url(config.model_uri),
        model_name=name,
        version=version,
        alias=followed[1] if followed else None,
        watch_interval=config.watch_interval,
        tracking_uri=tracking_uri,
        work_dir=work_dir,
        max_images_per_request=config.max_images_per_request,
        max_body_bytes=config.body_limit(),
        request_timeout=config.request_timeout,
        max_image_pixels=config.max_image_pixels,
        image_decodes=config.image_decodes,
    )


def announcement(
    config: ServeConfig, pinned: str, settings: WorkerSettings
) -> list[str]:
    """What ``serve-model`` says before its workers start: a warning when the
    address is not loopback, then what is served where (credentials masked)."""
    lines = []
    if not is_loopback(config.host):
        lines.append(
            f"WARNING: listening on {config.host}, not a loopback address: this "
            "server has no authentication, anyone who can reach it can use the "
            "model. Put an authenticating proxy in front (docs/security.md)."
        )
    watching = (
        f", followed: checked every {settings.watch_interval:g} s"
        if settings.alias
        else ""
    )
    lines.append(
        f"Serving {redact_url(pinned)} ({redact_url(config.model_uri)}{watching}) "
        f"at http://{config.host}:{config.port}/invocations (arrays) and "
        f"{IMAGE_PATH} (one PNG/JPEG picture) with {config.workers} worker(s): "
        f"at most {settings.max_images_per_request:,} image(s) and "
        f"{settings.max_body_bytes:,} bytes per request, "
        f"{settings.request_timeout} s per request. Status: {STATUS_PATH}."
    )
    return lines


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name: it may resolve to anything
        return False


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
