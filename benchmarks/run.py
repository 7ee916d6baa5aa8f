"""Run every benchmark in one invocation and write JSON plus a markdown table.

Every comparison alternates its two sides (A B, B A, ...) in fresh processes on
the same machine, so a slow minute of a shared machine hits both; results are
medians, and ratios are taken within the invocation only.

1. Training throughput: the pipeline's training stage (``benchmarks.stage``) vs
   the notebook script (``benchmarks.baseline``) on the same 60,000 images.
2. End to end: ``mnist-pipeline train --data sample`` (with Prefect's temporary
   server, and with a running one) vs the notebook script on the sample (load,
   scale, fit, evaluate): wall time, peak memory, accuracy.
3. Validation of 70,000 images: the pipeline's stage vs plain numpy asserts.
4. Re-run: the same run twice (on the sample, and for one epoch on 70,000
   images) against a running Prefect server; the second skips load, validate,
   plot and preprocess through Prefect's cache.
5. Serving (``benchmarks.serving``): 1-image requests over loopback at
   concurrency 1 and 8 against the model served as before and as documented
   now, and the cost of one over-limit request.
6. Batch predict: ``mnist-pipeline predict`` on 20,000 and 200,000 images.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from benchmarks import report, serving
from benchmarks.procs import Measured, run
from mnist_pipeline.config import KERAS_MNIST_SHA256
from mnist_pipeline.data import keras_cache_dir, load_sample, source_fingerprint
from mnist_pipeline.runtime import ENVIRONMENT_DEFAULTS

REPO = Path(__file__).resolve().parents[1]
TRAIN_IMAGES = 60_000
DATA_STAGES = ("load", "validate", "plot", "preprocess")


@dataclass(frozen=True)
class Plan:
    """How much of each benchmark to run."""

    name: str
    throughput_runs: int  # per side
    throughput_epochs: int
    control: bool  # also run the baseline with the pipeline's TensorFlow settings
    e2e_seeds: tuple[int, ...]
    validation_runs: int
    serving_rounds: int
    batch_runs: int


FULL = Plan("full", 3, 4, True, (0, 1, 2), 5, 2, 2)
QUICK = Plan("quick", 1, 2, False, (0,), 2, 1, 1)
#: The benchmarks ``--only`` can pick, in the order they run.
SECTIONS = ("validation", "end_to_end", "throughput", "serving", "batch")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--quick", action="store_true", help="one run per side, 2 epochs (~10 min)"
    )
    parser.add_argument("--epochs", type=int, help="throughput epochs per run")
    parser.add_argument(
        "--out", type=Path, default=REPO / "benchmarks" / "results", help="folder"
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=SECTIONS,
        help="run only these benchmarks (results go to <plan>-<names>.json/.md)",
    )
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.epochs:
        plan = Plan(**(vars(plan) | {"throughput_epochs": args.epochs}))
    chosen = [name for name in SECTIONS if not args.only or name in args.only]

    results: dict = {"plan": vars(plan), "machine": machine()}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mnist-bench-") as tmp:
        folder = Path(tmp)
        if "validation" in chosen:
            results["validation"] = validation(plan)
        if "end_to_end" in chosen:
            results["end_to_end"], results["rerun"] = end_to_end(plan, folder / "e2e")
        if "throughput" in chosen:
            results["throughput"] = throughput(plan, folder / "throughput")
        if {"serving", "batch"} & set(chosen):
            env = inference_registry(folder / "inference")
        if "serving" in chosen:
            results["serving"] = serving.serving(
                plan.serving_rounds, folder / "inference", env, log
            )
        if "batch" in chosen:
            results["batch"] = serving.batch(
                plan.batch_runs, folder / "inference", env, log
            )
    results["machine"]["load_average_end"] = os.getloadavg()
    results["minutes"] = (time.perf_counter() - started) / 60

    name = plan.name if not args.only else "-".join([plan.name, *chosen])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    table = report.markdown(results)
    (args.out / f"{name}.md").write_text(table)
    print(table)


# -- environment ---------------------------------------------------------------


def machine() -> dict:
    """What ran the benchmark: CPU, cores, load, versions, commit, date."""
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    packages = ("tensorflow-cpu", "tensorflow", "keras", "prefect", "mlflow", "numpy")
    return {
        "cpu": model.group(1) if model else platform.processor(),
        "cores": os.cpu_count(),
        "load_average_start": os.getloadavg(),
        "python": platform.python_version(),
        "packages": {p: _version(p) for p in packages if _version(p)},
        "commit": commit,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without Prefect, MLflow and TensorFlow settings.

    Each side then sets up its own world: the pipeline's entry points apply
    :data:`ENVIRONMENT_DEFAULTS`, the baseline runs on TensorFlow's defaults.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_", "MLFLOW_", "TF_"))
    }
    return env | {"PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"} | extra


def tensorflow_defaults() -> dict[str, str]:
    """The TensorFlow settings the pipeline's entry points apply."""
    return {k: v for k, v in ENVIRONMENT_DEFAULTS.items() if k.startswith("TF_")}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def alternate(runs: int, sides: dict[str, Callable[[int], Measured]]) -> dict:
    """Run every side ``runs`` times, rotating which goes first."""
    names = list(sides)
    measured: dict[str, list[Measured]] = {name: [] for name in names}
    for index in range(runs):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            log(f"{name} run {index + 1}/{runs}")
            measured[name].append(sides[name](index))
            log(f"  {measured[name][-1].wall_s:.1f} s")
    return measured


def median(values) -> float:
    return float(statistics.median(values))


# -- 1. training throughput ------------------------------------------------------


def training_set(folder: Path) -> tuple[Path, str]:
    """60,000 training images: full MNIST if Keras has it, else the sample repeated."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "train.npz"
    if source_fingerprint("auto", sha256=KERAS_MNIST_SHA256) is not None:
        with np.load(keras_cache_dir() / "mnist.npz") as npz:
            x, y, what = npz["x_train"], npz["y_train"], "full MNIST training set"
    else:
        sample = load_sample()
        x = np.resize(sample.x_train, (TRAIN_IMAGES, 28, 28))
        y = np.resize(sample.y_train, TRAIN_IMAGES)
        what = "the sample's 4,000 training images repeated to 60,000"
    np.savez(path, x_train=x, y_train=y)
    return path, what


def throughput(plan: Plan, folder: Path) -> dict:
    data, what = training_set(folder)
    args = ["--data", str(data), "--epochs", str(plan.throughput_epochs)]

    def worker(module: str, env: dict[str, str]) -> Callable[[int], Measured]:
        command = [sys.executable, "-m", module, *args]
        return lambda _: run(command, env=env, cwd=REPO)

    sides = {
        "pipeline": worker("benchmarks.stage", clean_env()),
        "baseline": worker("benchmarks.baseline", clean_env()),
    }
    if plan.control:
        control_env = clean_env(**tensorflow_defaults())
        sides["baseline_tf_settings"] = worker("benchmarks.baseline", control_env)
    measured = alternate(plan.throughput_runs, sides)

    def speeds(runs: list[Measured]) -> list[float]:
        """Per run: median images/s over the epochs after the first."""
        out = []
        for result in (m.result() for m in runs):
            later = result["epoch_seconds"][1:] or result["epoch_seconds"]
            out.append(median(result["train_images"] / s for s in later))
        return out

    sides_out = {
        name: {
            "images_per_s": speeds(runs),
            "median_images_per_s": median(speeds(runs)),
            "epoch_seconds": [m.result()["epoch_seconds"] for m in runs],
            "train_images": runs[0].result()["train_images"],
        }
        for name, runs in measured.items()
    }
    pipeline, baseline = sides_out["pipeline"], sides_out["baseline"]
    paired = [
        a / b
        for a, b in zip(pipeline["images_per_s"], baseline["images_per_s"], strict=True)
    ]
    return {
        "data": what,
        "epochs_per_run": plan.throughput_epochs,
        "sides": sides_out,
        "ratio": pipeline["median_images_per_s"] / baseline["median_images_per_s"],
        "paired_ratios": paired,
        "tensorflow_settings": tensorflow_defaults(),
    }


# -- 2. end to end -----------------------------------------------------------------


def pipeline_command(
    workdir: Path,
    seed: int,
    data: str = "sample",
    epochs: int = 10,
    retrain: bool = True,
) -> list[str]:
    """``mnist-pipeline train`` as a user types it, in a fresh process.

    With ``retrain`` (the default here) it trains even when the MLflow store
    already holds a version of the same training: the pairs share one store.
    """
    return [
        sys.executable,
        "-m",
        "mnist_pipeline.cli",
        "train",
        "--data",
        data,
        "--epochs",
        str(epochs),
        "--seed",
        str(seed),
        "--workdir",
        str(workdir),
        "--experiment",
        "benchmark",
        *(["--retrain"] if retrain else []),
    ]


def test_accuracy(measured: Measured) -> float:
    found = re.search(r"^Test accuracy: ([0-9.]+)$", measured.output, re.MULTILINE)
    if found:
        return float(found.group(1))
    return measured.result()["test_accuracy"]


def end_to_end(plan: Plan, folder: Path) -> tuple[dict, dict]:
    """The pipeline (temporary, then running Prefect server) vs the baseline.

    Returns the end-to-end results and the re-run results (which need the
    running server to read each stage's state and timing).
    """
    folder.mkdir(parents=True)
    # The folder a user runs in: MLflow's database and Prefect's home live here.
    temporary = clean_env(PREFECT_HOME=str(folder / "prefect-home"))
    log("pipeline: first run in a new folder (creates the MLflow and Prefect DBs)")
    first = run(pipeline_command(folder / "work-first", 0), env=temporary, cwd=folder)
    log(f"  {first.wall_s:.1f} s")

    seeds = plan.e2e_seeds
    with prefect_server(folder / "server-home") as api:
        running = clean_env(
            PREFECT_API_URL=api, PREFECT_HOME=str(folder / "client-home")
        )

        def pipeline(env: dict[str, str], name: str) -> Callable[[int], Measured]:
            return lambda i: run(
                pipeline_command(folder / f"work-{name}-{i}", seeds[i]),
                env=env,
                cwd=folder,
            )

        sides = {
            "pipeline": pipeline(temporary, "temporary"),
            "baseline": lambda i: run(
                [sys.executable, "-m", "benchmarks.baseline", "--seed", str(seeds[i])],
                env=clean_env(),
                cwd=folder,
            ),
            "pipeline_running_server": pipeline(running, "running"),
        }
        measured = alternate(len(seeds), sides)
        rerun = {
            "sample": cached_rerun(folder / "rerun-sample", running, api),
            "70k": cached_rerun(
                folder / "rerun-70k", running, api, data=dataset_70k(folder), epochs=1
            ),
        }
    out = {"seeds": list(seeds), "first_run_in_new_folder": _summary([first])}
    for name, runs in measured.items():
        out[name] = _summary(runs) | {"test_accuracy": [test_accuracy(m) for m in runs]}
    baseline = out["baseline"]
    for name in ("pipeline", "pipeline_running_server"):
        side = out[name]
        side["overhead_s"] = side["median_wall_s"] - baseline["median_wall_s"]
        for key in ("peak_rss_mb", "peak_tree_rss_mb"):
            side[f"{key}_ratio"] = side[f"median_{key}"] / baseline[f"median_{key}"]
    return out, rerun


def dataset_70k(folder: Path) -> str:
    """A .npz of 60,000 training and 10,000 test images (the sample repeated)."""
    sample = load_sample()
    path = folder / "sample-70k.npz"
    np.savez(
        path,
        x_train=np.resize(sample.x_train, (60_000, 28, 28)),
        y_train=np.resize(sample.y_train, 60_000),
        x_test=np.resize(sample.x_test, (10_000, 28, 28)),
        y_test=np.resize(sample.y_test, 10_000),
    )
    return str(path)


def cached_rerun(
    folder: Path, env: dict[str, str], api: str, data: str = "sample", epochs: int = 10
) -> dict:
    """The same run three times.

    The second (``--retrain``) should find the data stages cached and train
    again; the third (an unchanged night, no ``--retrain``) should train and
    register nothing.
    """
    folder.mkdir(parents=True)
    runs = []
    for label, retrain in (("first", True), ("second", True), ("unchanged", False)):
        log(f"re-run on {Path(data).name}: {label} of three identical runs")
        command = pipeline_command(
            folder / "work", 0, data=data, epochs=epochs, retrain=retrain
        )
        runs.append(run(command, env=env, cwd=folder))
        log(f"  {runs[-1].wall_s:.1f} s")
    if "Already trained:" not in runs[2].output:
        tail = runs[2].output[-2000:]
        raise RuntimeError(f"the unchanged run trained again:\n{tail}")
    flow_runs = _api(api, "flow_runs/filter", {"sort": "START_TIME_ASC"})
    first, second = (_flow_timings(api, flow) for flow in flow_runs[-3:-1])
    return {
        "data": Path(data).name,
        "epochs": epochs,
        "first": first | _summary(runs[:1]),
        "second": second | _summary(runs[1:2]),
        "unchanged": _summary(runs[2:]),
        "saved_before_training_s": first["before_training_s"]
        - second["before_training_s"],
        "saved_wall_s": runs[0].wall_s - runs[1].wall_s,
        "unchanged_wall_s": runs[2].wall_s,
    }


def _summary(runs: list[Measured]) -> dict:
    return {
        "wall_s": [m.wall_s for m in runs],
        "median_wall_s": median(m.wall_s for m in runs),
        "peak_rss_mb": [m.peak_rss_mb for m in runs],
        "median_peak_rss_mb": median(m.peak_rss_mb for m in runs),
        "peak_tree_rss_mb": [m.peak_tree_rss_mb for m in runs],
        "median_peak_tree_rss_mb": median(m.peak_tree_rss_mb for m in runs),
    }


# -- 3. validation -----------------------------------------------------------------


def validation(plan: Plan) -> dict:
    sides = {
        mode: lambda _, mode=mode: run(
            [sys.executable, "-m", "benchmarks.validation", "--mode", mode],
            env=clean_env(),
            cwd=REPO,
        )
        for mode in ("pipeline", "numpy")
    }
    measured = alternate(plan.validation_runs, sides)
    out = {"images": 70_000}
    for name, runs in measured.items():
        results = [m.result() for m in runs]
        out[name] = {
            "seconds": [r["seconds"] for r in results],
            "median_seconds": median(r["seconds"] for r in results),
            "extra_mb": [r["extra_mb"] for r in results],
            "median_extra_mb": median(r["extra_mb"] for r in results),
        }
    return out


# -- 5, 6. serving and batch inference ----------------------------------------------


def inference_registry(folder: Path) -> dict[str, str]:
    """A registry holding the served models; the environment that points to it."""
    folder.mkdir(parents=True)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    log("registering the served models")
    command = [sys.executable, "-m", "benchmarks.registry", "--uri", uri]
    run([*command, "--folder", str(folder)], env=clean_env(), cwd=folder)
    return clean_env(MLFLOW_TRACKING_URI=uri)


# -- Prefect server and API ------------------------------------------------------


def _flow_timings(api: str, flow: dict) -> dict:
    tasks = _api(api, "task_runs/filter", {"flow_runs": {"id": {"any_": [flow["id"]]}}})
    by_stage = {t["name"].rsplit("-", 1)[0]: t for t in tasks}
    started = _time(flow["start_time"])
    return {
        "stages": {
            stage: {
                "state": by_stage[stage]["state"]["name"],
                "run_time_s": by_stage[stage]["total_run_time"],
            }
            for stage in DATA_STAGES
        },
        "before_training_s": _time(by_stage["train"]["start_time"]) - started,
    }


def _time(stamp: str) -> float:
    return datetime.datetime.fromisoformat(stamp).timestamp()


def _api(api: str, path: str, body: dict) -> list[dict]:
    request = urllib.request.Request(
        f"{api}/{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


@contextmanager
def prefect_server(home: Path) -> Iterator[str]:
    """A Prefect server of its own, on a free port, for as long as the block."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log("starting a Prefect server")
    env = clean_env(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_ENABLED="false",
    )
    command = [sys.executable, "-m", "prefect", "server", "start"]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    server = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        api = f"http://127.0.0.1:{port}/api"
        _wait_for(f"{api}/health", seconds=180)
        yield api
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)


def _wait_for(url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer within {seconds:.0f} s.")
