"""Photos stage: a photograph or scan of one digit, as MNIST's own digits were made.

MNIST's digits were size-normalised to fit a 20x20 box keeping their aspect
ratio (anti-aliased, hence grey edges), then placed in a 28x28 image with their
centre of mass at its centre. :func:`normalise_photo` does the same to a picture
of any size, colour and polarity: EXIF orientation, alpha, background
subtraction, crop to the ink, fit, centring. Its ``"resize"`` mode keeps the
reference notebook's conversion (grayscale, resize the whole picture, invert a
light background) for comparison.
"""

from __future__ import annotations

import itertools
from typing import Literal, get_args

import numpy as np
from PIL import Image, ImageOps
from scipy import ndimage

from mnist_pipeline.errors import DigitImageError

Normalisation = Literal["mnist", "resize"]
NORMALISATIONS: tuple[str, ...] = get_args(Normalisation)

SIZE = 28
BOX = 20
#: Where MNIST puts the centre of mass (row, column): the mean over the sample's
#: 1,000 test digits is (14.01, 13.98) with a spread of 0.3 pixels.
CENTRE = (14.0, 14.0)
#: Larger pictures are reduced to this longest side first: a digit photographed
#: at any resolution keeps strokes several pixels wide, and filters stay fast.
WORKING_SIDE = 512
#: Weakest ink-to-paper contrast read as ink (share of the 0..255 range).
MIN_CONTRAST = 0.08
#: Specks smaller than this share of the largest ink blob are dirt, not strokes.
SPECK_SHARE = 0.08
#: Groups of blobs at least this share of the largest group's extent are digits.
DIGIT_SIZE_SHARE = 0.5


def normalise_photo(image: Image.Image, mode: Normalisation = "mnist") -> np.ndarray:
    """A picture of one digit as a 28x28 uint8 MNIST image (light digit on black).

    Args:
        image: a photo, scan or drawing of one digit: any size, mode and
            polarity, with or without alpha and EXIF orientation.
        mode: ``"mnist"`` (default) rebuilds MNIST's own normalisation;
            ``"resize"`` is the reference notebook's plain resize.

    Raises:
        DigitImageError: ``"mnist"`` mode found no ink, or several digits.
        ValueError: ``mode`` is not one of :data:`NORMALISATIONS`.
    """
    if mode == "resize":
        return resize_like_notebook(image)
    if mode != "mnist":
        raise ValueError(f"mode must be one of {NORMALISATIONS}, not {mode!r}")
    ink = ink_image(image)
    mask = digit_mask(ink)
    return fit_like_mnist(ink, mask)


def resize_like_notebook(image: Image.Image) -> np.ndarray:
    """The reference notebook's conversion: grayscale, resize to 28x28, invert.

    It inverts when the border is light, and composites transparency on white
    (so a white stroke on a transparent canvas disappears): kept as it was, for
    comparison with :func:`normalise_photo`.
    """
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        background = Image.new("RGBA", image.size, "white")
        image = Image.alpha_composite(background, image.convert("RGBA"))
    gray = image.convert("L")
    pixels = np.asarray(gray, dtype=np.float32)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    small = np.asarray(
        gray.resize((SIZE, SIZE), Image.Resampling.LANCZOS), dtype=np.uint8
    )
    return 255 - small if border.mean() > 127 else small


def ink_image(image: Image.Image) -> np.ndarray:
    """How much ink each pixel holds, 0 (paper) to about 1, paper's shading removed.

    Upright (EXIF), reduced to :data:`WORKING_SIDE`, ink made bright whatever its
    colour, then the paper's own brightness (uneven light, shadows) estimated by a
    morphological opening wider than any stroke and subtracted (a white top-hat).
    """
    image = ImageOps.exif_transpose(image)
    ink = _ink_layer(image)
    if max(ink.shape) > WORKING_SIDE:
        scale = WORKING_SIDE / max(ink.shape)
        height, width = ink.shape
        ink = _resize(
            ink, (max(1, round(width * scale)), max(1, round(height * scale)))
        )
    if min(ink.shape) >= 2 * SIZE:
        ink = ndimage.median_filter(ink, size=3)  # sensor noise and JPEG specks
    width = min(max(15, round(max(ink.shape) / 2)), *ink.shape)
    return np.clip(ndimage.white_tophat(ink, size=(width, width)), 0.0, None)


def _ink_layer(image: Image.Image) -> np.ndarray:
    """Ink as bright values in 0..1: from alpha on a transparent canvas, else grey."""
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0
        alpha = rgba[..., 3]
        if np.median(_border(alpha)) < 0.5:
            # A transparent canvas is background; the strokes are what is opaque,
            # whichever colour they were drawn in.
            return alpha
        white = Image.new("RGBA", image.size, "white")
        image = Image.alpha_composite(white, image.convert("RGBA"))
    gray = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    paper = float(np.median(_border(gray)))
    darkest, lightest = np.percentile(gray, [1, 99])
    return 1.0 - gray if paper - darkest > lightest - paper else gray


def digit_mask(ink: np.ndarray) -> np.ndarray:
    """The pixels of the one digit in ``ink``: its strokes, without specks.

    Raises:
        DigitImageError: no stroke stands out from the paper, or the ink falls
            into several digit-sized groups side by side (digits that touch,
            or stand one above the other, are taken as one).
    """
    noise = float(np.median(ink))
    peak = float(ink.max())
    if peak < max(MIN_CONTRAST, 4 * noise):
        raise DigitImageError(
            "no ink",
            f"nothing stands out from the background (strongest contrast "
            f"{peak:.0%} of full scale; at least {max(MIN_CONTRAST, 4 * noise):.0%} "
            "needed)",
        )
    strokes = ink > max(noise * 3, 0.3 * peak)
    labels, count = ndimage.label(strokes, structure=np.ones((3, 3)))
    sizes = ndimage.sum_labels(strokes, labels, index=np.arange(1, count + 1))
    kept = [i + 1 for i, size in enumerate(sizes) if size >= SPECK_SHARE * sizes.max()]
    boxes = {i: box for i, box in enumerate(ndimage.find_objects(labels), 1)}
    groups = _digit_groups([boxes[i] for i in kept], kept)
    if len(groups) > 1:
        raise DigitImageError(
            "several digits",
            f"the ink forms {len(groups)} separate digit-sized groups; send one "
            "digit per image",
        )
    return np.isin(labels, groups[0])


def _digit_groups(boxes: list[tuple[slice, slice]], ids: list[int]) -> list[list[int]]:
    """Blobs grouped into digits; digit-sized groups only, largest first.

    A digit written in several strokes (the bar of a 5 or a 7, a 4's two
    strokes) has blobs that touch or share columns; digits written side by side
    do not. Groups much smaller than the largest are smudges and are dropped.
    """
    groups = [[i] for i in ids]
    spans = list(boxes)
    merged = True
    while merged:
        merged = False
        pairs = itertools.combinations(range(len(groups)), 2)
        for a, b in pairs:
            if _same_digit(spans[a], spans[b]):
                groups[a] += groups.pop(b)
                spans[a] = _union(spans[a], spans.pop(b))
                merged = True
                break
    extents = [max(s[0].stop - s[0].start, s[1].stop - s[1].start) for s in spans]
    largest = max(extents)
    order = sorted(range(len(groups)), key=lambda g: -extents[g])
    return [groups[g] for g in order if extents[g] >= DIGIT_SIZE_SHARE * largest]


def _same_digit(a: tuple[slice, slice], b: tuple[slice, slice]) -> bool:
    """Boxes that touch, or share at least a third of the narrower one's columns."""
    rows = min(a[0].stop, b[0].stop) - max(a[0].start, b[0].start)
    cols = min(a[1].stop, b[1].stop) - max(a[1].start, b[1].start)
    narrower = min(a[1].stop - a[1].start, b[1].stop - b[1].start)
    return (rows >= 0 and cols >= 0) or cols >= narrower / 3


def _union(a: tuple[slice, slice], b: tuple[slice, slice]) -> tuple[slice, slice]:
    rows, cols = (
        slice(min(x.start, y.start), max(x.stop, y.stop))
        for x, y in zip(a, b, strict=True)
    )
    return rows, cols


def fit_like_mnist(ink: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Crop to the digit, fit it into 20x20 keeping its aspect, centre its mass."""
    near = ndimage.binary_dilation(mask, iterations=2)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    crop = np.where(near, ink, 0.0)[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    strong = float(np.percentile(ink[mask], 90))
    crop = np.clip(crop / strong, 0.0, 1.0)
    height, width = crop.shape
    scale = BOX / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    digit = np.clip(_resize(crop, size), 0.0, 1.0)
    canvas = np.zeros((SIZE, SIZE), np.float32)
    centre = ndimage.center_of_mass(digit)
    top, left = (
        int(np.clip(round(target - mass), 0, SIZE - extent))
        for target, mass, extent in zip(CENTRE, centre, digit.shape, strict=True)
    )
    canvas[top : top + digit.shape[0], left : left + digit.shape[1]] = digit
    return np.rint(canvas * 255).astype(np.uint8)


def _resize(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resample a float image to ``size`` (width, height), anti-aliased."""
    image = Image.fromarray(values.astype(np.float32), mode="F")
    return np.asarray(image.resize(size, Image.Resampling.LANCZOS), dtype=np.float32)


def _border(values: np.ndarray) -> np.ndarray:
    return np.concatenate([values[0], values[-1], values[:, 0], values[:, -1]])
