"""What a training is, and where it came from: its key, code version and source.

A training is identified by its **key**: the dataset digest, the settings that
decide what training computes, and the **code version**, a digest of the code
and libraries that compute it (the model and training modules, the installed
TensorFlow, Keras, NumPy and scikit-learn, Python's version and TensorFlow's
oneDNN switch). Two runs with one key train the same model, so a second one
has nothing to add: the registry is searched for the key before training.

The **source** (git commit, package version, lock-file digest) is recorded for
tracing a version back to its code; it is not part of the key, so a change to
the README or to the gate does not retrain anything.
"""

from __future__ import annotations

import getpass
import hashlib
import importlib.util
import json
import os
import platform
import subprocess
from collections.abc import Mapping
from functools import cache
from importlib import metadata
from pathlib import Path

#: Modules whose code decides what training computes.
TRAINING_CODE = (
    "mnist_pipeline.model",
    "mnist_pipeline.train",
    "mnist_pipeline.preprocess",
    "mnist_pipeline.distribute",
)
#: Libraries whose versions decide what training computes (first one installed).
TRAINING_LIBRARIES = (
    ("tensorflow-cpu", "tensorflow"),
    ("keras",),
    ("numpy",),
    ("scikit-learn",),
)
#: The version tags holding :func:`training_key` of the version's training, and
#: of the sweep that found it.
TRAINING_KEY_TAG = "training_key"
SWEEP_KEY_TAG = "sweep_key"
PACKAGE = "mnist-pipeline"
LOCK_FILE = "requirements.lock"
_REPO = Path(__file__).resolve().parents[1]


def current_user() -> str:
    """The account this process runs as ("unknown" where the system has no name
    for it, e.g. a container's numeric user)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


@cache
def code_version() -> str:
    """A 12-hex-digit digest of the training code and the libraries it runs on."""
    parts = {
        "code": {name: _source_digest(name) for name in TRAINING_CODE},
        "libraries": [_installed(names) for names in TRAINING_LIBRARIES],
        "python": ".".join(platform.python_version_tuple()[:2]),
        "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", ""),
    }
    return _digest(parts)[:12]


def training_key(
    params: Mapping[str, object], dataset_digest: str, code: str | None = None
) -> str:
    """Identify a training: same data, settings and code version, same key."""
    blob = {
        "params": dict(params),
        "data": dataset_digest,
        "code": code or code_version(),
    }
    return _digest(blob)[:16]


@cache
def source() -> dict[str, str]:
    """Where the running code came from: package version, git commit, lock digest.

    ``git_commit`` is empty outside a git checkout; a ``+dirty`` suffix says the
    checkout had uncommitted changes to tracked files.
    """
    try:
        version = metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        version = "not installed"
    lock = _REPO / LOCK_FILE
    return {
        "package_version": version,
        "git_commit": _git_commit(_REPO),
        "lock_digest": _file_digest(lock)[:12] if lock.is_file() else "",
    }


def _git_commit(folder: Path) -> str:
    try:
        commit = _git(folder, "rev-parse", "HEAD")
        dirty = _git(folder, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return ""
    return f"{commit}+dirty" if dirty else commit


def _git(folder: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", "-C", str(folder), *args],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    return result.stdout.strip()


def _installed(names: tuple[str, ...]) -> str:
    for name in names:
        try:
            return f"{name}=={metadata.version(name)}"
        except metadata.PackageNotFoundError:
            continue
    return f"{names[0]} missing"


def _source_digest(module: str) -> str:
    # Read, not imported: a run that finds its training done never loads TensorFlow.
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(module)
    return _file_digest(Path(spec.origin))


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()
