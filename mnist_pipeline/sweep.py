"""Sweep logic: read a grid, check a trial against its data, pick and tabulate.

Plain functions: the sweep flow runs them, the tests call them directly.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ValidationError

from mnist_pipeline.config import SWEPT_FIELDS, SweepConfig, SweepGrid, TrialParams
from mnist_pipeline.errors import SweepError

TrialStatus = Literal["FINISHED", "FAILED"]
#: Tag of a sweep trial's run: its index in the grid.
TRIAL_TAG = "sweep.trial"


class TrialResult(BaseModel):
    """How one trial went, as the trials table and the flow's result show it.

    ``started`` and ``finished`` are the trial's MLflow run's own start and end
    (seconds since the epoch), so overlapping trials ran at the same time.
    """

    index: int
    params: TrialParams
    status: TrialStatus
    run_id: str | None = None
    val_accuracy: float | None = None
    val_loss: float | None = None
    model_path: str | None = None
    history: dict[str, list[float]] = {}
    started: float | None = None
    finished: float | None = None
    worker: str | None = None
    error: str | None = None


def load_grid(path: Path) -> SweepGrid:
    """Read a YAML grid file (one list of values per swept setting).

    Raises:
        SweepError: the file is missing, not YAML, or not a valid grid.
    """
    try:
        values = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SweepError(f"Cannot read the grid file {path}: {exc}") from exc
    if not isinstance(values, dict):
        raise SweepError(
            f"The grid file {path} must map settings to lists of values, e.g. "
            "'learning_rate: [0.01, 0.001]'; it may set "
            f"{', '.join(SWEPT_FIELDS)}."
        )
    try:
        return SweepGrid(**values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'grid'}: {e['msg']}"
            for e in exc.errors()
        )
        raise SweepError(f"The grid file {path} is invalid: {problems}.") from exc


def check_trial(params: TrialParams, train_images: int) -> None:
    """A trial's own check against the data it trains on (known only then).

    Raises:
        SweepError: the batch is larger than the training split, so every epoch
            would be one partial batch and the batch size would mean nothing.
    """
    if params.batch_size > train_images:
        raise SweepError(
            f"Batch size {params.batch_size} is larger than the {train_images} "
            "training images, so every epoch would be one partial batch; use at "
            f"most {train_images} or train on more data."
        )


def sweep_identity(config: SweepConfig) -> dict[str, object]:
    """What decides a sweep's outcome, beside the data and the code version.

    Every trial's training settings, as its own training key holds them (its
    grid values, the augmentation strengths when it augments, the split and
    the seed): a sweep whose trials would train differently sweeps again.
    """
    training = config.training
    return {
        "trials": [
            trial.training_params(training.validation_split, training.seed)
            for trial in config.trials()
        ]
    }


def best_trial(results: Sequence[TrialResult]) -> TrialResult:
    """The finished trial with the highest validation accuracy.

    Ties go to the lower validation loss, then to the earlier trial. The test
    split plays no part: it only scores the winner.

    Raises:
        SweepError: no trial finished.
    """
    finished = [r for r in results if r.status == "FINISHED"]
    if not finished:
        reasons = "; ".join(f"trial {r.index}: {r.error}" for r in results)
        raise SweepError(f"All {len(results)} trials failed: {reasons}")
    return max(finished, key=lambda r: (r.val_accuracy, -(r.val_loss or 0.0), -r.index))


def max_concurrency(results: Sequence[TrialResult]) -> int:
    """The largest number of trials whose recorded run times overlapped."""
    events = []
    for r in results:
        if r.started is not None and r.finished is not None:
            events += [(r.started, 1), (r.finished, -1)]
    running = peak = 0
    # At equal times an end sorts before a start: touching is not overlapping.
    for _, change in sorted(events):
        running += change
        peak = max(peak, running)
    return peak


def trial_tags(index: int, worker: str | None = None) -> dict[str, str]:
    """The tags that mark a run as trial ``index`` of a sweep."""
    tags = {TRIAL_TAG: str(index)}
    return tags | ({"sweep.worker": worker} if worker else {})


def trial_name(index: int, params: TrialParams) -> str:
    """The MLflow run name of a trial."""
    return f"trial-{index} ({params.label()})"


def trials_summary(
    results: Sequence[TrialResult], best_index: int | None
) -> tuple[dict[str, str], dict[str, float]]:
    """The sweep run's tags and metrics: trials, failures, overlap, the best one."""
    failed = sum(r.status == "FAILED" for r in results)
    tags = {"sweep.trials": str(len(results)), "sweep.failed_trials": str(failed)}
    metrics = {
        "trials": len(results),
        "failed_trials": failed,
        "max_concurrent_trials": max_concurrency(results),
    }
    if best_index is not None:
        best = next(r for r in results if r.index == best_index)
        tags |= {"sweep.best_trial": str(best_index), "sweep.best_run_id": best.run_id}
        metrics["best_val_accuracy"] = best.val_accuracy
    return tags, metrics


def trial_rows(
    results: Sequence[TrialResult], best_index: int | None = None
) -> list[dict[str, object]]:
    """One row per trial for the MLflow and Prefect tables, in trial order."""
    rows = []
    for r in sorted(results, key=lambda r: r.index):
        p = r.params
        seconds = (
            round(r.finished - r.started, 1)
            if r.started is not None and r.finished is not None
            else None
        )
        rows.append(
            {
                "trial": r.index,
                "best": r.index == best_index,
                "status": r.status,
                "learning_rate": p.learning_rate,
                "batch_size": p.batch_size,
                "dropout": p.dropout,
                "conv_filters": f"{p.conv_filters[0]}/{p.conv_filters[1]}",
                "epochs": p.epochs,
                "augmentation": p.augmentation.label() if p.augmentation else None,
                "val_accuracy": _rounded(r.val_accuracy),
                "val_loss": _rounded(r.val_loss),
                "seconds": seconds,
                "started": _iso(r.started),
                "finished": _iso(r.finished),
                "worker": r.worker,
                "run_id": r.run_id,
                "error": r.error,
            }
        )
    return rows


def format_table(rows: Sequence[dict[str, object]], columns: Sequence[str]) -> str:
    """Rows as a plain aligned text table (for the terminal)."""
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = [columns, *cells]
    return "\n".join(
        "  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def local_cluster_kwargs(
    workers: int | None, cores: int, prefect_api_url: str
) -> dict[str, object]:
    """How the sweep starts its local Dask cluster (``LocalCluster`` arguments).

    Args:
        workers: worker processes (default: one per core).
        cores: cores this process may use; the workers share them.
        prefect_api_url: the flow's own Prefect server, even a temporary one:
            without it every worker would start a temporary server of its own.
    """
    workers = workers or cores
    return {
        "n_workers": workers,
        "threads_per_worker": 1,  # one trial at a time per worker process
        "processes": True,
        # Any free port (never a clash at :8787), on loopback only: the
        # dashboard has no authentication (docs/security.md).
        "dashboard_address": "127.0.0.1:0",
        "env": {
            "PREFECT_API_URL": prefect_api_url,
            "DASK_LOGGING__DISTRIBUTED": "warning",
            # The workers share the cores instead of each using them all.
            "TF_NUM_INTRAOP_THREADS": str(max(1, cores // workers)),
        },
    }


def check_scheduler(address: str, timeout: float = 10.0) -> None:
    """Fail fast, with advice, when no Dask scheduler listens at ``address``.

    Raises:
        SweepError: the address is malformed or nothing answers there.
    """
    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host = port = None
    if not host or not port:
        raise SweepError(
            f"--dask-address {address!r} is not a scheduler address such as "
            "tcp://10.0.0.5:8786."
        )
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return
    except OSError as exc:
        raise SweepError(
            f"No Dask scheduler answers at {address} ({exc}). Start one "
            "(`dask scheduler`, plus `dask worker ADDRESS` on each machine), or "
            "leave out --dask-address to run the trials on a local cluster."
        ) from exc


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _iso(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    millis = int(seconds * 1000)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(millis // 1000))
    return f"{stamp}.{millis % 1000:03d}Z"


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "*" if value else ""
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
