"""Serving and batch-inference benchmarks: what users of the model meet.

Serving: one registered model (``benchmarks.registry``) served three ways, one
server at a time, over loopback, with 1-image requests from ``benchmarks.load``
(bounded in count and time) at concurrency 1 and 8:

- ``before``: ``mlflow models serve --workers 1`` with the wrapper as it was
  (``keras.Model.predict`` per call), the command README gave;
- ``mlflow_workers_2``: ``mlflow models serve --workers 2`` with today's wrapper;
- ``after``: ``mnist-pipeline serve-model`` as documented (two workers).

``before`` and ``after`` also get one 20,000-image request (about 53 MB of
JSON): the seconds until its answer and the CPU seconds it cost the server.
``after`` also gets one 208 KB PNG declaring 7000x7000 RGBA pixels on
``/predict-image`` (seconds, server CPU, the largest rise of a worker's peak
resident memory), and the alias moves: the same 8-client load for
:data:`FOLLOW_SECONDS` without and with two moves of ``@champion`` (to a copy
of the served version and back, by ``registry.move_champion``) at
:data:`MOVES_AT`, with the server's default watch interval; p50/p99, errors,
and the seconds from each move to the first answer from the new version (a
probe request on a new connection every 20 ms reads ``X-Model-Version``).

Batch: ``mnist-pipeline predict`` on a ``.npz`` of 20,000 and of 200,000 images
(the sample's test images repeated), alternated: images/s (as the run logs it)
and the peak resident memory of the process.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from benchmarks.load import run_load, timed_post
from benchmarks.procs import run, tree_cpu_s
from mnist_pipeline.data import load_sample

BIN = Path(sys.executable).parent
OVER_LIMIT_IMAGES = 20_000
BATCH_SIZES = (20_000, 200_000)
#: Per load run: at most this many requests and seconds.
LOAD_REQUESTS = 4000
LOAD_SECONDS = 8.0
#: The runs without and with alias moves: seconds each, and when the moves are.
FOLLOW_SECONDS = 16.0
MOVES_AT = (3.0, 10.0)


def serving_sides() -> dict[str, dict]:
    """How each side is started: label and command."""
    mlflow = [sys.executable, "-m", "mlflow", "models", "serve", "--env-manager"]
    mlflow += ["local", "--host", "127.0.0.1"]
    return {
        "before": {
            "label": "`mlflow models serve --workers 1`, wrapper calling "
            "`keras.Model.predict`",
            "command": [*mlflow, "-m", "models:/bench@before", "--workers", "1"],
            "workers": 1,
        },
        "mlflow_workers_2": {
            "label": "`mlflow models serve --workers 2`, today's wrapper",
            "command": [*mlflow, "-m", "models:/bench@champion", "--workers", "2"],
            "workers": 2,
        },
        "after": {
            "label": "`mnist-pipeline serve-model` (2 workers)",
            "command": [
                sys.executable,
                "-m",
                "mnist_pipeline.cli",
                "serve-model",
                "--model",
                "models:/bench@champion",
            ],
            "workers": 2,
        },
    }


def serving(rounds: int, folder: Path, env: dict[str, str], log) -> dict:
    """Every side ``rounds`` times, the order reversed every other round."""
    sides = serving_sides()
    one = json.dumps({"inputs": load_sample().x_test[:1].tolist()}).encode()
    images = np.resize(load_sample().x_test, (OVER_LIMIT_IMAGES, 28, 28))
    big = json.dumps({"inputs": images.tolist()}).encode()
    env = env | {"PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}"}
    out = {
        name: {"label": side["label"], "c1": [], "c8": [], "over_limit": []}
        for name, side in sides.items()
    }
    out["after"] |= {"huge_picture": [], "follow": []}
    picture = huge_picture()
    copy = _copy_of_champion(env)
    names = list(sides)
    for index in range(rounds):
        for name in names if index % 2 == 0 else names[::-1]:
            log(f"serving: {name}, round {index + 1}/{rounds}")
            with _server(sides[name], folder / f"{name}-{index}.log", env) as server:
                url, pid = server
                run_load(url, one, concurrency=1, requests=30, seconds=10)  # warm
                for concurrency in (1, 8):
                    load = run_load(
                        url,
                        one,
                        concurrency=concurrency,
                        requests=LOAD_REQUESTS,
                        seconds=LOAD_SECONDS,
                    )
                    out[name][f"c{concurrency}"].append(load.summary())
                    log(f"  c={concurrency}: {load.requests_per_s:.0f} req/s")
                if name != "mlflow_workers_2":
                    out[name]["over_limit"].append(_over_limit(url, pid, big))
                if name == "after":
                    out[name]["huge_picture"].append(_huge_picture(url, pid, picture))
                    follow = _alias_moves(url, one, env, copy)
                    out[name]["follow"].append(follow)
                    moved = follow["moved"]
                    log(
                        f"  alias moves: p99 {follow['still']['p99_ms']:.1f} -> "
                        f"{moved['p99_ms']:.1f} ms, errors {moved['errors']}, "
                        f"to the new version {moved['to_new_version_s']} s"
                    )
    return {
        "over_limit_bytes": len(big),
        "huge_picture_bytes": len(picture),
        "sides": out,
    }


def huge_picture() -> bytes:
    """A PNG of 7000x7000 transparent RGBA pixels: about 208 KB."""
    from PIL import Image

    encoded = io.BytesIO()
    Image.new("RGBA", (7000, 7000), (255, 255, 255, 0)).save(encoded, format="PNG")
    return encoded.getvalue()


def _huge_picture(url: str, pid: int, body: bytes) -> dict:
    """POST the picture; the largest rise of a worker's peak resident memory."""
    workers = _workers(pid)
    before = {}
    for worker in workers:
        Path(f"/proc/{worker}/clear_refs").write_text("5")  # peak := now
        before[worker] = _status_mb(worker, "VmRSS")
    cpu = tree_cpu_s(pid)
    started = time.perf_counter()
    status, _ = _post(url.replace("/invocations", "/predict-image"), body, "image/png")
    seconds = time.perf_counter() - started
    time.sleep(0.5)
    return {
        "status": status,
        "seconds": seconds,
        "server_cpu_s": tree_cpu_s(pid) - cpu,
        "peak_rise_mb": max(_status_mb(w, "VmHWM") - before[w] for w in workers),
    }


def _workers(pid: int) -> list[int]:
    children = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += (task / "children").read_text().split()
    return [int(child) for child in children]


def _status_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _copy_of_champion(env: dict[str, str]) -> str:
    """A new version of ``bench`` from the champion's own files: the alias can
    move to it and back without changing the answers."""
    from mnist_pipeline import registry, tracking_store

    # MLflow's registry looks the source up through the global tracking URI.
    client = tracking_store.connect(env["MLFLOW_TRACKING_URI"])
    champion = registry.alias_version(client, "bench", "champion")
    served = client.get_model_version("bench", champion)
    return str(
        client.create_model_version("bench", served.source, served.run_id).version
    )


def _alias_moves(url: str, body: bytes, env: dict[str, str], copy: str) -> dict:
    """The same 8-client load without, then with, two moves of ``@champion``."""
    from mlflow import MlflowClient

    from mnist_pipeline import registry

    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    first = registry.alias_version(client, "bench", "champion")
    out = {}
    for label, targets in (("still", ()), ("moved", (copy, first))):
        stop, answers, moves = threading.Event(), [], []
        probe = threading.Thread(target=_probe, args=(url, body, stop, answers))

        def move(targets=targets, moves=moves, started=None) -> None:
            for at, version in zip(MOVES_AT, targets, strict=False):
                time.sleep(max(0.0, started + at - time.monotonic()))
                moves.append((time.monotonic(), version))
                registry.move_champion(
                    client, "bench", version, by="benchmark", reason="serving bench"
                )

        started = time.monotonic()
        mover = threading.Thread(target=move, kwargs={"started": started})
        probe.start()
        mover.start()
        load = run_load(
            url, body, concurrency=8, requests=10**6, seconds=FOLLOW_SECONDS
        )
        mover.join()
        stop.set()
        probe.join()
        out[label] = load.summary() | {
            "probe_errors": sum(1 for _, status, _ in answers if status != 200),
            "to_new_version_s": [
                _first_answer(answers, at, version) for at, version in moves
            ],
        }
    out["moved"]["watch_interval_s"] = _watch_interval(url)
    return out


def _probe(url: str, body: bytes, stop: threading.Event, answers: list) -> None:
    """One request on a new connection every 20 ms: (time, status, version)."""
    while not stop.is_set():
        status, version = _post(url, body, "application/json")
        answers.append((time.monotonic(), status, version))
        stop.wait(0.02)


def _first_answer(answers: list, at: float, version: str) -> float | None:
    later = [t for t, status, v in answers if t > at and v == version]
    return min(later) - at if later else None


def _post(url: str, body: bytes, kind: str) -> tuple[int, str | None]:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        connection.request("POST", parts.path, body, {"Content-Type": kind})
        answer = connection.getresponse()
        answer.read()
        return answer.status, answer.getheader("X-Model-Version")
    finally:
        connection.close()


def _watch_interval(url: str) -> float | None:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        connection.request("GET", "/model-status")
        return json.load(connection.getresponse())["watch_interval_s"]
    finally:
        connection.close()


def _over_limit(url: str, pid: int, body: bytes) -> dict:
    before = tree_cpu_s(pid)
    status, seconds, _ = timed_post(url, body, timeout=300)
    time.sleep(0.5)  # let a refused body's last bytes be read and dropped
    return {
        "status": status,
        "seconds": seconds,
        "server_cpu_s": tree_cpu_s(pid) - before,
    }


@contextmanager
def _server(side: dict, log: Path, env: dict[str, str]) -> Iterator[tuple[str, int]]:
    with socket_port() as port:
        command = [*side["command"], "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as output:
        process = subprocess.Popen(
            command,
            env=env,
            cwd=log.parent,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_ready(log, side["workers"], process)
        yield f"{url}/invocations", process.pid
    finally:
        for signum, grace in ((signal.SIGINT, 30), (signal.SIGKILL, 30)):
            try:
                os.killpg(process.pid, signum)
                process.wait(grace)
                break
            except (ProcessLookupError, subprocess.TimeoutExpired):
                continue


@contextmanager
def socket_port() -> Iterator[int]:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        yield probe.getsockname()[1]


def _wait_ready(log: Path, workers: int, process, seconds: float = 240) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited:\n{log.read_text()[-3000:]}")
        # Each worker says so once it has loaded the model.
        if log.read_text(errors="replace").count("startup complete") >= workers:
            return
        time.sleep(0.5)
    raise RuntimeError(f"server not ready after {seconds:.0f} s:\n{log.read_text()}")


# -- batch inference ------------------------------------------------------------


def batch(runs: int, folder: Path, env: dict[str, str], log) -> dict:
    """``mnist-pipeline predict`` on each size, ``runs`` times, alternated."""
    sample = load_sample().x_test
    inputs = {}
    for size in BATCH_SIZES:
        inputs[size] = folder / f"batch-{size}.npz"
        np.savez(inputs[size], images=np.resize(sample, (size, 28, 28)))
    env = env | {"PREFECT_HOME": str(folder / "prefect-home")}
    out = {
        str(size): {"images_per_s": [], "peak_rss_mb": [], "wall_s": []}
        for size in BATCH_SIZES
    }
    for index in range(runs):
        for size in BATCH_SIZES if index % 2 == 0 else BATCH_SIZES[::-1]:
            log(f"batch predict: {size:,} images, run {index + 1}/{runs}")
            command = [sys.executable, "-m", "mnist_pipeline.cli", "predict"]
            command += ["--model", "models:/bench@champion", "--input"]
            command += [str(inputs[size]), "--output", str(folder / f"out-{size}.csv")]
            measured = run(command, env=env, cwd=folder)
            speed = re.search(r"\(([0-9.]+) images/s\)", measured.output)
            if speed is None:
                raise RuntimeError(f"no images/s in the output:\n{measured.tail()}")
            side = out[str(size)]
            side["images_per_s"].append(float(speed.group(1)))
            side["peak_rss_mb"].append(measured.peak_rss_mb)
            side["wall_s"].append(measured.wall_s)
            log(
                f"  {float(speed.group(1)):.0f} images/s, {measured.peak_rss_mb:.0f} MB"
            )
    return {"sizes": out}
