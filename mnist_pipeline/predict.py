"""Batch inference stage logic: read images of any common layout, write a CSV.

Inputs become what the registered model's signature takes: uint8 images of
shape (N, 28, 28), white digit on black, pixel values 0..255.
"""

from __future__ import annotations

import csv
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mnist_pipeline.data import read_idx
from mnist_pipeline.errors import DataLoadError, PredictionInputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
NPZ_KEYS = ("images", "x_test", "x")


@dataclass(frozen=True)
class PredictionInput:
    """Images ready for the model and what identifies each one in the output."""

    images: np.ndarray
    ids: list[str]
    id_column: str
    source: str


def check_input(spec: str) -> None:
    """Fail fast when the prediction input path does not exist."""
    if not Path(spec).exists():
        raise PredictionInputError(f"Prediction input '{spec}' does not exist.")


def load_inputs(path: Path) -> PredictionInput:
    """Read a ``.npz``, an IDX image file or a folder of PNG/JPEG images.

    Raises:
        PredictionInputError: the path is missing, unreadable or of a wrong layout.
    """
    check_input(str(path))
    if path.is_dir():
        return _load_folder(path)
    if path.suffix == ".npz":
        images = _load_npz(path)
    elif "idx" in path.name:
        try:
            images = read_idx(path, expected_rank=3)
        except DataLoadError as exc:
            raise PredictionInputError(str(exc)) from exc
    else:
        raise PredictionInputError(
            f"Prediction input '{path}' is not a .npz, an IDX image file (name "
            "containing 'idx') or a folder of .png/.jpg images."
        )
    images = as_model_images(images, str(path))
    ids = [str(i) for i in range(len(images))]
    return PredictionInput(images, ids, id_column="index", source=str(path))


def _load_npz(path: Path) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = [k for k in NPZ_KEYS if k in npz.files]
            if not keys and len(npz.files) == 1:
                keys = list(npz.files)
            if not keys:
                raise PredictionInputError(
                    f"{path} holds {', '.join(npz.files) or 'no arrays'}; expected one "
                    f"array or one named {', '.join(NPZ_KEYS)}."
                )
            return npz[keys[0]]
    except PredictionInputError:
        raise
    except ValueError as exc:
        raise PredictionInputError(
            f"{path} needs pickle to load (refused) or is not a .npz file: {exc}."
        ) from exc
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise PredictionInputError(
            f"{path} is not a readable .npz file: {exc}."
        ) from exc


def as_model_images(images: np.ndarray, source: str) -> np.ndarray:
    """Coerce an image array to uint8 (N, 28, 28) with values 0..255.

    Accepts (N, 28, 28), (N, 28, 28, 1) or (N, 784); uint8, or floats either
    already scaled to 0..1 or on the 0..255 scale.
    """
    if images.ndim == 2 and images.shape[1] == 784:
        images = images.reshape(-1, 28, 28)
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim != 3 or images.shape[1:] != (28, 28) or len(images) == 0:
        raise PredictionInputError(
            f"{source}: expected images of shape (N, 28, 28), (N, 28, 28, 1) or "
            f"(N, 784) with N > 0, got {images.shape}."
        )
    if images.dtype == np.uint8:
        return images
    if images.dtype.kind not in "iuf":
        raise PredictionInputError(f"{source}: images of dtype {images.dtype}.")
    values = images.astype(np.float64)
    if not np.isfinite(values).all() or values.min() < 0 or values.max() > 255:
        raise PredictionInputError(
            f"{source}: pixel values must be finite and within 0..1 or 0..255."
        )
    if images.dtype.kind == "f" and values.max() <= 1.0:
        values = values * 255.0
    return np.rint(values).astype(np.uint8)


def _load_folder(folder: Path) -> PredictionInput:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise PredictionInputError(f"Folder {folder} holds no .png or .jpg images.")
    images, failures = [], []
    for file in files:
        try:
            with Image.open(file) as image:
                images.append(to_mnist_image(image))
        except (UnidentifiedImageError, OSError) as exc:
            failures.append(f"{file.name} ({exc})")
    if failures:
        listed = "; ".join(failures)
        raise PredictionInputError(
            f"{len(failures)} image(s) in {folder} cannot be read: {listed}."
        )
    return PredictionInput(
        np.stack(images), [f.name for f in files], id_column="file", source=str(folder)
    )


def to_mnist_image(image: Image.Image) -> np.ndarray:
    """A photo or scan of a digit as MNIST sees one: 28x28 grey, light on dark.

    As the reference notebook treated a photo: grayscale, resize to 28x28, and
    invert when the background is light (MNIST digits are white on black).
    """
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        background = Image.new("RGBA", image.size, "white")
        image = Image.alpha_composite(background, image.convert("RGBA"))
    gray = image.convert("L")
    pixels = np.asarray(gray, dtype=np.float32)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    small = np.asarray(gray.resize((28, 28), Image.Resampling.LANCZOS), dtype=np.uint8)
    return 255 - small if border.mean() > 127 else small


def write_predictions(
    path: Path, inputs: PredictionInput, probabilities: np.ndarray
) -> Path:
    """One CSV row per image: its id, the predicted class and ten probabilities."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = [inputs.id_column, "predicted_class"] + [
        f"prob_{c}" for c in range(probabilities.shape[1])
    ]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for ident, row in zip(inputs.ids, probabilities, strict=True):
            writer.writerow([ident, int(row.argmax()), *(f"{p:.6f}" for p in row)])
    return path
