"""Batch inference stage logic: stream images of any common layout into a CSV.

Inputs become what the registered model's signature takes: uint8 images of
shape (N, 28, 28), white digit on black, pixel values 0..255. They are read and
predicted a chunk at a time and the CSV is written as it goes, so memory does
not grow with the number of images: a ``.npz`` array is read from its archive
member row by row (compressed or not), an IDX file from its byte stream, a
folder one file at a time (only the sorted file names are held). Whatever makes
the whole input unusable (a missing path, a wrong layout, out-of-range values)
is found before the first prediction. A folder's pictures are normalised the
way MNIST's digits were made (:func:`~mnist_pipeline.photos.normalise_photo`);
a file that cannot be read, or shows no ink or several digits, is reported with
its reason and skipped.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import os
import struct
import time
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image

from mnist_pipeline.errors import DigitImageError, PredictionInputError
from mnist_pipeline.photos import Normalisation, normalise_photo

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
NPZ_KEYS = ("images", "x_test", "x")
#: Files of a folder that cannot be scored. Pillow raises OSError (its
#: UnidentifiedImageError included) for unreadable and truncated files,
#: DecompressionBombError for images too large to decode safely, and SyntaxError
#: for some corrupt PNG chunks.
UNREADABLE_IMAGE = (OSError, SyntaxError, Image.DecompressionBombError)
_IMAGE_BYTES = 28 * 28
#: Rows per block of the pass that finds a float array's value range.
_SCAN_ROWS = 2048


@dataclass(frozen=True)
class Chunk:
    """Consecutive images ready for the model, their ids, and what was skipped.

    Attributes:
        failures: (file name, reason) of each file between these images that
            could not be read or shows no single digit.
    """

    images: np.ndarray
    ids: list[str]
    failures: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class PredictionSource:
    """An input opened for reading in chunks.

    Attributes:
        count: the images (the image files, for a folder) it holds.
        read: yields :class:`Chunk` objects of at most the given number of items.
    """

    source: str
    id_column: str
    count: int
    read: Callable[[int], Iterator[Chunk]]

    def chunks(self, size: int) -> Iterator[Chunk]:
        """The input in chunks of at most ``size`` images (or files)."""
        return self.read(size)


@dataclass
class BatchSummary:
    """What a batch prediction produced, for the log and the MLflow run."""

    images: int = 0
    failed: int = 0
    seconds: float = 0.0
    confidence_sum: float = 0.0
    class_counts: list[int] = field(default_factory=lambda: [0] * 10)
    errors_path: Path | None = None

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def metrics(self) -> dict[str, float]:
        """Counts, mean confidence, throughput and predictions per class."""
        return {
            "images": self.images,
            "failed_images": self.failed,
            "mean_confidence": self.confidence_sum / self.images if self.images else 0,
            "seconds": self.seconds,
            "images_per_second": self.images_per_second,
            **{f"predicted_class_{c}": n for c, n in enumerate(self.class_counts)},
        }


def check_input(spec: str) -> None:
    """Fail fast when the prediction input path does not exist."""
    if not Path(spec).exists():
        raise PredictionInputError(f"Prediction input '{spec}' does not exist.")


def open_input(path: Path, preprocessing: Normalisation = "mnist") -> PredictionSource:
    """Open a ``.npz``, an IDX image file or a folder of PNG/JPEG images.

    Args:
        preprocessing: how a folder's pictures become MNIST images
            (:func:`~mnist_pipeline.photos.normalise_photo`'s mode); arrays are
            MNIST images already and are read as they are.

    Raises:
        PredictionInputError: the path is missing, unreadable or of a wrong layout.
    """
    check_input(str(path))
    if path.is_dir():
        return _open_folder(path, preprocessing)
    if path.suffix == ".npz":
        return _open_npz(path)
    if "idx" in path.name:
        return _open_idx(path)
    raise PredictionInputError(
        f"Prediction input '{path}' is not a .npz, an IDX image file (name "
        "containing 'idx') or a folder of .png/.jpg images."
    )


# -- arrays: .npz and IDX -------------------------------------------------------


def _open_npz(path: Path) -> PredictionSource:
    key = _npz_key(path)
    with _npz_member(path, key) as member:
        shape, fortran_order, dtype = _npy_header(member, path)
    if dtype.hasobject:
        raise PredictionInputError(
            f"{path} needs pickle to load (refused): array '{key}' holds objects."
        )
    count = _check_layout(shape, str(path))

    def rows(size: int) -> Iterator[np.ndarray]:
        if fortran_order:  # column-major: rows are not contiguous; read it whole
            with np.load(path, allow_pickle=False) as npz:
                yield from _slices(npz[key], size)
            return
        with _npz_member(path, key) as member:
            _npy_header(member, path)
            yield from _read_rows(member, dtype, shape, size, str(path))

    return _array_source(path, count, dtype, rows)


def _npz_key(path: Path) -> str:
    try:
        with np.load(path, allow_pickle=False) as npz:
            files = list(npz.files)
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error) as exc:
        raise PredictionInputError(
            f"{path} is not a readable .npz file: {exc}."
        ) from exc
    keys = [k for k in NPZ_KEYS if k in files]
    if not keys and len(files) == 1:
        keys = files
    if not keys:
        raise PredictionInputError(
            f"{path} holds {', '.join(files) or 'no arrays'}; expected one "
            f"array or one named {', '.join(NPZ_KEYS)}."
        )
    return keys[0]


@contextlib.contextmanager
def _npz_member(path: Path, key: str) -> Iterator[IO[bytes]]:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            # np.load names an array by its member without ".npy" when it has one.
            name = f"{key}.npy" if f"{key}.npy" in names else key
            with archive.open(name) as member:
                yield member
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise PredictionInputError(
            f"{path} is not a readable .npz file: {exc}."
        ) from exc


def _npy_header(member: IO[bytes], path: Path) -> tuple[tuple, bool, np.dtype]:
    fmt = np.lib.format
    try:
        version = fmt.read_magic(member)
        if version == (1, 0):
            return fmt.read_array_header_1_0(member)
        return fmt.read_array_header_2_0(member)
    except ValueError as exc:
        raise PredictionInputError(
            f"{path} needs pickle to load (refused) or is not a .npz file: {exc}."
        ) from exc


_IDX_UBYTE_RANK_3 = 0x00000803


def _open_idx(path: Path) -> PredictionSource:
    with _idx_stream(path) as stream:
        count, _ = _idx_header(stream, path)
        if path.suffix == ".gz":  # no size to compare with: count the bytes
            held = sum(len(block) for block in iter(lambda: stream.read(1 << 20), b""))
        else:
            held = path.stat().st_size - 16
    if held != count * _IMAGE_BYTES:
        raise PredictionInputError(
            f"{path} header declares shape ({count}, 28, 28) ({count * _IMAGE_BYTES} "
            f"bytes of data) but the file holds {held} (truncated or padded)."
        )
    shape = (count, 28, 28)
    _check_layout(shape, str(path))

    def rows(size: int) -> Iterator[np.ndarray]:
        with _idx_stream(path) as stream:
            _idx_header(stream, path)
            yield from _read_rows(stream, np.dtype(np.uint8), shape, size, str(path))

    return _array_source(path, count, np.dtype(np.uint8), rows)


@contextlib.contextmanager
def _idx_stream(path: Path) -> Iterator[IO[bytes]]:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as stream:
            yield stream
    except (OSError, EOFError, zlib.error) as exc:
        raise PredictionInputError(
            f"{path} cannot be read (corrupted gzip?): {exc}."
        ) from exc


def _idx_header(stream: IO[bytes], path: Path) -> tuple[int, tuple[int, int]]:
    head = stream.read(16)
    magic = int.from_bytes(head[:4], "big") if len(head) >= 4 else None
    if magic != _IDX_UBYTE_RANK_3:
        shown = f"0x{magic:08X}" if magic is not None else "missing"
        raise PredictionInputError(
            f"{path} has magic number {shown}; expected 0x{_IDX_UBYTE_RANK_3:08X} "
            "(an IDX image file: unsigned bytes, rank 3)."
        )
    if len(head) < 16:
        raise PredictionInputError(f"{path} ends inside its header (truncated).")
    count, rows, columns = struct.unpack(">3I", head[4:16])
    if (rows, columns) != (28, 28):
        raise PredictionInputError(
            f"{path}: expected 28x28 images, the header declares {rows}x{columns}."
        )
    return count, (rows, columns)


def _read_rows(
    stream: IO[bytes], dtype: np.dtype, shape: tuple, size: int, source: str
) -> Iterator[np.ndarray]:
    """``shape[0]`` rows of ``shape[1:]`` read from ``stream``, ``size`` at a time."""
    row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
    left = shape[0]
    while left:
        count = min(size, left)
        data = stream.read(count * row_bytes)
        if len(data) != count * row_bytes:
            raise PredictionInputError(f"{source} ends early (truncated).")
        yield np.frombuffer(data, dtype=dtype).reshape(count, *shape[1:])
        left -= count


def _slices(array: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(array), size):
        yield array[start : start + size]


def _array_source(
    path: Path,
    count: int,
    dtype: np.dtype,
    rows: Callable[[int], Iterator[np.ndarray]],
) -> PredictionSource:
    """Chunks of images from ``rows``, their pixel scale decided over all of them."""
    source = str(path)
    # Floats on 0..1 or on 0..255 are told apart by the largest value of the
    # whole array, so a chunk of dark images is scaled like every other: one
    # pass over the values first (uint8 needs none).
    scale = _pixel_scale(dtype, rows(_SCAN_ROWS), source)

    def chunks(size: int) -> Iterator[Chunk]:
        start = 0
        for block in rows(size):
            images = _to_uint8(block.reshape(-1, 28, 28), scale)
            yield Chunk(images, [str(i) for i in range(start, start + len(images))])
            start += len(images)

    return PredictionSource(source, "index", count, chunks)


def _check_layout(shape: tuple, source: str) -> int:
    """The number of images of an array of ``shape``; refuse other layouts."""
    layouts = ((28, 28), (28, 28, 1), (784,))
    if len(shape) < 2 or tuple(shape[1:]) not in layouts or shape[0] == 0:
        raise PredictionInputError(
            f"{source}: expected images of shape (N, 28, 28), (N, 28, 28, 1) or "
            f"(N, 784) with N > 0, got {tuple(shape)}."
        )
    return int(shape[0])


def _pixel_scale(
    dtype: np.dtype, blocks: Iterable[np.ndarray], source: str
) -> float | None:
    """None for uint8; else the factor to 0..255 (255 for floats within 0..1).

    Raises:
        PredictionInputError: values not finite or outside 0..255, or no numbers.
    """
    if dtype == np.uint8:
        return None
    if dtype.kind not in "iuf":
        raise PredictionInputError(f"{source}: images of dtype {dtype}.")
    low, high = np.inf, -np.inf
    for block in blocks:
        if not np.isfinite(block).all():
            low = -np.inf
            break
        low, high = min(low, float(block.min())), max(high, float(block.max()))
    if low < 0 or high > 255:
        raise PredictionInputError(
            f"{source}: pixel values must be finite and within 0..1 or 0..255."
        )
    return 255.0 if dtype.kind == "f" and high <= 1.0 else 1.0


def _to_uint8(images: np.ndarray, scale: float | None) -> np.ndarray:
    if scale is None:
        return images
    values = images.astype(np.float64)
    if scale != 1.0:
        values = values * scale
    return np.rint(values).astype(np.uint8)


# -- folders of images ------------------------------------------------------------


def _open_folder(folder: Path, preprocessing: Normalisation) -> PredictionSource:
    with os.scandir(folder) as entries:
        names = sorted(
            entry.name
            for entry in entries
            if os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES
        )
    if not names:
        raise PredictionInputError(f"Folder {folder} holds no .png or .jpg images.")

    def chunks(size: int) -> Iterator[Chunk]:
        for start in range(0, len(names), size):
            yield _read_images(folder, names[start : start + size], preprocessing)

    return PredictionSource(str(folder), "file", len(names), chunks)


def _read_images(folder: Path, names: list[str], preprocessing: Normalisation) -> Chunk:
    """The chunk's pictures normalised; unreadable or refused files reported."""
    images, ids, failures = [], [], []
    for name in names:
        try:
            with Image.open(folder / name) as image:
                images.append(normalise_photo(image, preprocessing))
            ids.append(name)
        except DigitImageError as exc:  # "no ink", "several digits": the reason
            failures.append((name, str(exc)))
        except UNREADABLE_IMAGE as exc:
            failures.append((name, f"{type(exc).__name__}: {exc}"))
    stacked = np.stack(images) if images else np.zeros((0, 28, 28), np.uint8)
    return Chunk(stacked, ids, failures)


# -- predicting and writing -------------------------------------------------------


def predict_to_csv(
    source: PredictionSource,
    predict: Callable[[np.ndarray], np.ndarray],
    path: Path,
    chunk_size: int,
    on_progress: Callable[[int, BatchSummary], None] | None = None,
    flag: Callable[[np.ndarray, np.ndarray], list[bool]] | None = None,
) -> BatchSummary:
    """Predict ``source`` a chunk at a time into the CSV at ``path``.

    The CSV has one row per scored image, in input order: its id, the predicted
    class and the ten probabilities. It is written beside ``path`` and moved
    there once complete, so a failed run leaves no partial file. Files that
    could not be read or show no single digit are listed in
    ``<path stem>.errors.csv`` (file, error).

    Args:
        predict: class probabilities (N, 10) for uint8 images (N, 28, 28).
        on_progress: called after each chunk with the items done so far (images
            and skipped files) and the running summary.
        flag: given a chunk's images and probabilities, whether each image is
            out of distribution (e.g. :meth:`~mnist_pipeline.drift.BatchMonitor.add`);
            the CSV then has an ``out_of_distribution`` column (1 or 0).

    Raises:
        PredictionInputError: the input is unusable, or no file of a folder
            could be read.
    """
    summary, failures = BatchSummary(), []
    started = time.perf_counter()
    with _Atomic(path) as rows:
        rows.writerow(_header(source.id_column, flagged=flag is not None))
        for chunk in source.chunks(chunk_size):
            failures += chunk.failures
            summary.failed += len(chunk.failures)
            if len(chunk.images):
                probabilities = predict(chunk.images)
                flags = flag(chunk.images, probabilities) if flag else None
                _write_rows(rows, chunk.ids, probabilities, summary, flags)
            summary.seconds = time.perf_counter() - started
            if on_progress is not None:
                on_progress(summary.images + summary.failed, summary)
        if not summary.images:
            raise PredictionInputError(
                f"None of the {summary.failed} image(s) in {source.source} can be "
                f"read: {_listed(failures)}."
            )
    summary.errors_path = write_errors(errors_path(path), failures)
    return summary


def errors_path(path: Path) -> Path:
    """Where the files skipped (unreadable or refused) are listed, beside the CSV."""
    return path.with_name(f"{path.stem}.errors.csv")


def write_errors(path: Path, failures: list[tuple[str, str]]) -> Path | None:
    """List ``failures`` at ``path`` (none: remove an earlier list); return it."""
    if not failures:
        path.unlink(missing_ok=True)
        return None
    with _Atomic(path) as rows:
        rows.writerow(["file", "error"])
        rows.writerows(failures)
    return path


def _listed(failures: list[tuple[str, str]], at_most: int = 5) -> str:
    shown = "; ".join(f"{name} ({reason})" for name, reason in failures[:at_most])
    more = len(failures) - at_most
    return shown + (f"; and {more} more" if more > 0 else "")


def _header(id_column: str, flagged: bool = False) -> list[str]:
    probabilities = [f"prob_{c}" for c in range(10)]
    flags = ["out_of_distribution"] if flagged else []
    return [id_column, "predicted_class", *probabilities, *flags]


def _write_rows(
    rows,
    ids: list[str],
    probabilities: np.ndarray,
    summary,
    flags: list[bool] | None = None,
) -> None:
    predicted = probabilities.argmax(axis=1)
    extra = [[int(f)] for f in flags] if flags is not None else [[]] * len(ids)
    for ident, klass, row, more in zip(
        ids, predicted, probabilities, extra, strict=True
    ):
        rows.writerow([ident, int(klass), *(f"{p:.6f}" for p in row), *more])
    summary.images += len(ids)
    summary.confidence_sum += float(probabilities.max(axis=1).sum())
    counts = np.bincount(predicted, minlength=10)
    summary.class_counts = [
        int(n)
        for n in np.add(summary.class_counts, counts[: len(summary.class_counts)])
    ]


class _Atomic:
    """A CSV writer on ``path``'s ``.partial`` sibling, moved to ``path`` on success."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.partial = path.with_name(f"{path.name}.partial")

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = self.partial.open("w", newline="")
        return csv.writer(self.handle)

    def __exit__(self, kind, error, traceback) -> None:
        self.handle.close()
        if kind is None:
            os.replace(self.partial, self.path)
        else:
            self.partial.unlink(missing_ok=True)
