"""Photo sets for measuring: digits rendered as users photograph and send them.

Two sources of strokes, both available offline:

- :func:`uci_strokes`: real handwritten digits that are **not** MNIST's:
  scikit-learn's bundled copy of the test set of the UCI "Optical Recognition
  of Handwritten Digits" data (1,797 digits by 13 writers, cut from NIST forms;
  each an 8x8 grid counting the ink pixels of a 32x32 bitmap), smoothed back
  up to strokes.
- :func:`mnist_strokes`: MNIST digits (the sample's *test* images), enlarged.

:func:`render_photo` puts strokes on a picture the way a phone or a scanner
would: dark ink on light, tinted paper with uneven light and sensor noise, the
digit off-centre with margins, any size, slightly blurred; saved as PNG or JPEG,
some with EXIF rotation, some as RGBA drawings on a transparent canvas, some
as chalk (light on dark).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image
from scipy import ndimage

#: How each photo is made; photo ``i`` of a set gets ``STYLES[i % len(STYLES)]``.
STYLES = ("paper", "jpeg", "exif-rotated", "rgba-dark", "rgba-white", "chalk")
#: EXIF orientation -> how the pixels are stored so that a viewer shows them upright.
_STORED_AS = {
    3: Image.Transpose.ROTATE_180,
    6: Image.Transpose.ROTATE_90,
    8: Image.Transpose.ROTATE_270,
}


@dataclass(frozen=True)
class PhotoRecord:
    """One photo of a set: its file name, the digit it shows, how it was made."""

    file: str
    label: int
    style: str


def uci_strokes() -> tuple[list[np.ndarray], np.ndarray]:
    """scikit-learn's bundled UCI handwritten digits as 64x48 stroke images (0..1).

    The 8x8 counts (0..16 ink pixels per 4x4 block) are interpolated with a
    cubic spline and sharpened back into strokes of about the original width.
    NIST's preprocessing stretched every digit to fill its square bitmap; the
    strokes are returned 48 pixels wide (a handwritten digit's usual 3:4).
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    strokes = []
    for counts in digits.images:
        density = ndimage.zoom(counts / 16.0, (8, 6), order=3, mode="nearest")
        strokes.append(np.clip((density - 0.35) / 0.25, 0.0, 1.0).astype(np.float32))
    return strokes, digits.target.astype(np.int64)


def mnist_strokes(images: np.ndarray) -> list[np.ndarray]:
    """MNIST images (N, 28, 28) uint8 as 112x112 stroke images (0..1)."""
    return [
        np.clip(ndimage.zoom(image / 255.0, 4, order=3), 0.0, 1.0).astype(np.float32)
        for image in images
    ]


def render_photo(
    strokes: np.ndarray, style: str, rng: np.random.Generator
) -> tuple[bytes, str]:
    """One digit's strokes as an encoded picture file; returns (bytes, suffix).

    Args:
        strokes: ink amount per pixel, 0..1, the digit anywhere inside.
        style: one of :data:`STYLES`.
        rng: where the picture's size, placement, paper and noise come from.
    """
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, not {style!r}")
    ink = _place(strokes, rng)
    if style.startswith("rgba"):
        colour = (20, 20, 30) if style == "rgba-dark" else (255, 255, 255)
        pixels = np.empty((*ink.shape, 4), np.uint8)
        pixels[..., :3] = colour
        pixels[..., 3] = np.rint(ink * 255)
        return _encode(Image.fromarray(pixels, mode="RGBA"), "PNG"), ".png"
    photo = Image.fromarray(_photograph(ink, rng, chalk=style == "chalk"), mode="RGB")
    if style in {"paper", "chalk"}:
        return _encode(photo, "PNG"), ".png"
    quality = int(rng.integers(55, 92))
    if style == "jpeg":
        return _encode(photo, "JPEG", quality=quality), ".jpg"
    orientation = int(rng.choice(list(_STORED_AS)))
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    stored = photo.transpose(_STORED_AS[orientation])
    return _encode(stored, "JPEG", quality=quality, exif=exif), ".jpg"


def _place(strokes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The strokes scaled and put off-centre on a canvas of a random size."""
    height = int(rng.integers(96, 481))
    width = int(round(height * rng.uniform(0.7, 1.4)))
    rows, cols = (
        np.flatnonzero(strokes.max(1) > 0.05),
        np.flatnonzero(strokes.max(0) > 0.05),
    )
    digit = strokes[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    tall = int(round(height * rng.uniform(0.35, 0.7)))
    wide = max(2, min(width - 4, int(round(tall * digit.shape[1] / digit.shape[0]))))
    image = Image.fromarray(digit, mode="F").resize(
        (wide, tall), Image.Resampling.BICUBIC
    )
    canvas = np.zeros((height, width), np.float32)
    top = int(rng.integers(2, height - tall - 1))
    left = int(rng.integers(2, width - wide - 1))
    canvas[top : top + tall, left : left + wide] = np.clip(np.asarray(image), 0, 1)
    return canvas


def _photograph(
    ink: np.ndarray, rng: np.random.Generator, *, chalk: bool
) -> np.ndarray:
    """Ink on paper (or chalk on a board) under uneven light, blurred and noisy."""
    height, width = ink.shape
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(angle) * xx + np.sin(angle) * yy
    light = 1.0 - rng.uniform(0.05, 0.3) * (ramp - ramp.min()) / np.ptp(ramp)
    if chalk:
        paper = rng.uniform(0.1, 0.3) * np.array([0.9, 1.0, 0.95])
        pen = rng.uniform(0.8, 0.95) * np.ones(3)
    else:
        paper = rng.uniform(0.75, 0.96) * np.array([1.0, rng.uniform(0.95, 1), 0.9])
        pen = rng.uniform(0.05, 0.3) * np.array([0.8, 0.8, rng.uniform(1.0, 1.6)])
    sigma = rng.uniform(0.3, 1.2) * max(height, width) / 200
    ink = ndimage.gaussian_filter(ink, sigma) * rng.uniform(0.8, 1.0)
    colour = paper * (1 - ink[..., None]) + pen * ink[..., None]
    colour = colour * light[..., None]
    colour = colour + rng.normal(0, rng.uniform(0.01, 0.05), colour.shape)
    return np.rint(np.clip(colour, 0, 1) * 255).astype(np.uint8)


def _encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def write_photo_set(
    folder: Path,
    strokes: Sequence[np.ndarray],
    labels: Sequence[int],
    *,
    seed: int = 0,
    prefix: str = "digit",
) -> list[PhotoRecord]:
    """Render every digit as a picture file in ``folder``, plus ``labels.csv``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    records = []
    for index, (digit, label) in enumerate(zip(strokes, labels, strict=True)):
        style = STYLES[index % len(STYLES)]
        data, suffix = render_photo(digit, style, rng)
        name = f"{prefix}-{index:04d}-{style}{suffix}"
        (folder / name).write_bytes(data)
        records.append(PhotoRecord(name, int(label), style))
    with (folder / "labels.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "label", "style"])
        writer.writerows((r.file, r.label, r.style) for r in records)
    return records


def read_photo_set(folder: Path) -> list[PhotoRecord]:
    """The records of a set written by :func:`write_photo_set`."""
    with (folder / "labels.csv").open(newline="") as handle:
        return [
            PhotoRecord(row["file"], int(row["label"]), row["style"])
            for row in csv.DictReader(handle)
        ]
