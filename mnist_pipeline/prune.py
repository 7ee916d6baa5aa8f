"""What a year of nights leaves in the work folder, and what may go.

Every file here can be made again from its source (datasets, prepared arrays,
plots) or is a copy of what the registry keeps (a version's Keras model is also
in MLflow's artifact store). A plan lists what may be removed:

* ``models/<run id>/`` of runs whose version is not ``@champion``,
  ``@challenger`` or one of the last K versions, and of runs that registered
  nothing (failed or killed), once older than the age limit;
* checkpoints of trainings that are not running (their lock is free) and older
  than the age limit;
* stage-cache records older than the age limit, then the datasets, prepared
  arrays and plots that no remaining record points to, once as old.

Nothing is removed unless the plan is applied.
"""

from __future__ import annotations

import fcntl
import json
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Removal:
    """One file or folder the plan removes, and why."""

    path: Path
    reason: str
    size: int


def plan_prune(
    workdir: Path,
    *,
    keep_runs: set[str],
    registered_runs: set[str],
    older_than_days: float,
    now: float | None = None,
) -> list[Removal]:
    """Everything under ``workdir`` that may go, oldest rules first.

    Args:
        workdir: the pipeline's work folder.
        keep_runs: run ids whose models stay (champion, challenger, last K).
        registered_runs: run ids of every registered version.
        older_than_days: files younger than this stay whatever they are.
        now: the current time (seconds since the epoch); ``time.time()``.
    """
    cutoff = (time.time() if now is None else now) - older_than_days * 86400
    removals = list(_models(workdir, keep_runs, registered_runs, cutoff))
    removals += _checkpoints(workdir, cutoff)
    records, stale = _cache(workdir, cutoff)
    removals += stale
    removals += _unreferenced(workdir, _referenced(records), cutoff)
    return removals


def apply_prune(removals: Iterable[Removal]) -> int:
    """Remove what the plan lists; return the bytes freed."""
    freed = 0
    for removal in removals:
        if removal.path.is_dir():
            shutil.rmtree(removal.path, ignore_errors=True)
        else:
            removal.path.unlink(missing_ok=True)
        freed += removal.size
    return freed


def _models(
    workdir: Path, keep: set[str], registered: set[str], cutoff: float
) -> Iterator[Removal]:
    for folder in _children(workdir / "models"):
        run_id = folder.name
        if run_id in keep or _newest(folder) > cutoff:
            continue
        reason = (
            "model of a version that is not @champion, @challenger or recent"
            if run_id in registered
            else "model of a run that registered no version"
        )
        yield Removal(folder, reason, _size(folder))


def _checkpoints(workdir: Path, cutoff: float) -> Iterator[Removal]:
    for path in _children(workdir / "checkpoints"):
        if _newest(path) > cutoff or _locked(path):
            continue
        yield Removal(path, "checkpoint of a training that is not running", _size(path))


def _cache(workdir: Path, cutoff: float) -> tuple[list[Path], list[Removal]]:
    """The cache records that stay, and the old ones that go."""
    keep, stale = [], []
    for record in _children(workdir / "cache"):
        if record.stat().st_mtime > cutoff:
            keep.append(record)
        else:
            stale.append(Removal(record, "old stage-cache record", _size(record)))
    return keep, stale


def _referenced(records: list[Path]) -> set[Path]:
    """Files the remaining cache records point to (read as data, never run)."""
    paths: set[Path] = set()
    for record in records:
        try:
            envelope = json.loads(record.read_bytes())
            payload = json.loads(envelope["result"])
        except (ValueError, KeyError, TypeError):
            continue  # unreadable: the cache drops it itself
        paths |= {Path(p).resolve() for p in _strings(payload)}
    return paths


def _unreferenced(
    workdir: Path, referenced: set[Path], cutoff: float
) -> Iterator[Removal]:
    for folder in ("datasets", "prepared", "plots"):
        for path in _children(workdir / folder):
            inside = {p for p in referenced if p.is_relative_to(path.resolve())}
            if path.resolve() in referenced or inside or _newest(path) > cutoff:
                continue
            yield Removal(path, f"{folder} no cache record uses", _size(path))


def _strings(value: object) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _locked(path: Path) -> bool:
    """Whether a live run holds the checkpoint's lock (or claim) file."""
    lock = path / "lock" if path.is_dir() else path
    if not lock.exists():
        return False
    with lock.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


def _children(folder: Path) -> list[Path]:
    return sorted(folder.iterdir()) if folder.is_dir() else []


def _newest(path: Path) -> float:
    if path.is_file():
        return path.stat().st_mtime
    times = [p.stat().st_mtime for p in path.rglob("*") if p.is_file()]
    return max(times, default=path.stat().st_mtime)


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
