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

Batch: ``mnist-pipeline predict`` on a ``.npz`` of 20,000 and of 200,000 images
(the sample's test images repeated), alternated: images/s (as the run logs it)
and the peak resident memory of the process.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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
    return {"over_limit_bytes": len(big), "sides": out}


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
