"""Validate stage: pandera schemas over compact tables, never a 784-column frame.

Each split is summarised into four small frames, each checked by one schema:

* ``split``: one row per split (counts, image shape, dtypes);
* ``images``: one row per image (its min and max pixel, non-finite pixels);
* ``labels``: one row per label (its value);
* ``classes``: one row per class (its count and share of the split).

All checks run lazily so one report names every failure, with its split.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaErrors

from mnist_pipeline.data import Dataset
from mnist_pipeline.errors import DataValidationError

IMAGE_SIZE = 28
NUM_CLASSES = 10
_EXAMPLES = 3
_NON_EMPTY = "at least one image"
_SAME_COUNT = "as many labels as images"
_SHAPE = "images 28x28 with one channel"
_IMAGE_DTYPE = "images of dtype uint8"
_LABEL_DTYPE = "labels of an integer dtype"
_LABEL_RANK = "labels in a 1-D array"


@dataclass(frozen=True)
class ValidationReport:
    """What validation saw: image counts and class counts per split."""

    counts: dict[str, int]
    class_counts: dict[str, list[int]]


def validate_dataset(
    dataset: Dataset, num_classes: int = NUM_CLASSES, min_class_share: float = 0.05
) -> ValidationReport:
    """Check both splits and raise one error naming every failed check.

    Raises:
        DataValidationError: any check failed in any split.
    """
    failures: list[str] = []
    class_counts: dict[str, list[int]] = {}
    splits = {
        "train": (dataset.x_train, dataset.y_train),
        "test": (dataset.x_test, dataset.y_test),
    }
    for split, (images, labels) in splits.items():
        failures += _check(split_schema(), split_table(images, labels), split)
        failures += _check(image_schema(), image_table(images), split)
        labels_frame = label_table(labels)
        failures += _check(label_schema(num_classes), labels_frame, split)
        classes = class_table(labels_frame, num_classes)
        failures += _check(class_schema(min_class_share), classes, split)
        class_counts[split] = classes["count"].astype(int).tolist()
    if failures:
        raise DataValidationError(dataset.source, failures)
    return ValidationReport(
        counts={split: int(np.shape(y)[0]) for split, (_, y) in splits.items()},
        class_counts=class_counts,
    )


def split_table(images: np.ndarray, labels: np.ndarray) -> pd.DataFrame:
    """One row describing a split's arrays."""
    return pd.DataFrame(
        {
            "n_images": [int(images.shape[0]) if images.ndim else 0],
            "n_labels": [int(labels.shape[0]) if labels.ndim else 0],
            "image_shape": ["x".join(map(str, images.shape[1:]))],
            "image_dtype": [images.dtype.name],
            "label_dtype": [labels.dtype.name],
            "label_rank": [labels.ndim],
        }
    )


def split_schema() -> pa.DataFrameSchema:
    """Shape, dtype and count rules for a split (the notebook's asserts)."""
    return pa.DataFrameSchema(
        {
            "n_images": pa.Column(int, pa.Check.gt(0, error=_NON_EMPTY)),
            "n_labels": pa.Column(int),
            "image_shape": pa.Column(
                str,
                pa.Check.isin(["28x28", "28x28x1"], error=_SHAPE),
            ),
            "image_dtype": pa.Column(str, pa.Check.eq("uint8", error=_IMAGE_DTYPE)),
            "label_dtype": pa.Column(
                str,
                pa.Check(
                    lambda s: s.map(lambda d: np.dtype(d).kind in "iu"),
                    error=_LABEL_DTYPE,
                ),
            ),
            "label_rank": pa.Column(int, pa.Check.eq(1, error=_LABEL_RANK)),
        },
        checks=pa.Check(lambda df: df["n_images"] == df["n_labels"], error=_SAME_COUNT),
    )


def image_table(images: np.ndarray) -> pd.DataFrame:
    """One row per image: its smallest and largest pixel, non-finite pixels."""
    if images.ndim < 2 or images.shape[0] == 0 or images.dtype.kind not in "iufb":
        return pd.DataFrame(
            {"pixel_min": [], "pixel_max": [], "non_finite": []}, dtype=float
        )
    flat = images.reshape(images.shape[0], -1)
    if flat.dtype.kind == "f":
        non_finite = (~np.isfinite(flat)).sum(axis=1)
        pixel_min, pixel_max = np.nanmin(flat, axis=1), np.nanmax(flat, axis=1)
    else:
        non_finite = np.zeros(len(flat), dtype=np.int64)
        pixel_min, pixel_max = flat.min(axis=1), flat.max(axis=1)
    return pd.DataFrame(
        {
            "pixel_min": pixel_min.astype(float),
            "pixel_max": pixel_max.astype(float),
            "non_finite": non_finite.astype(float),
        }
    )


def image_schema() -> pa.DataFrameSchema:
    """Per-image pixel rules."""
    return pa.DataFrameSchema(
        {
            "pixel_min": pa.Column(
                float, pa.Check.ge(0, error="pixels >= 0"), nullable=True
            ),
            "pixel_max": pa.Column(
                float, pa.Check.le(255, error="pixels <= 255"), nullable=True
            ),
            "non_finite": pa.Column(
                float, pa.Check.eq(0, error="no NaN or infinite pixels")
            ),
        }
    )


def label_table(labels: np.ndarray) -> pd.DataFrame:
    """One row per label; non-numeric labels become NaN and fail the checks."""
    values = np.ravel(labels) if labels.ndim == 1 else np.array([], dtype=float)
    if values.dtype.kind not in "iufb":
        values = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy()
    return pd.DataFrame({"label": values.astype(float)})


def label_schema(num_classes: int) -> pa.DataFrameSchema:
    """Per-label rules: an integer class id within range."""
    top = num_classes - 1
    return pa.DataFrameSchema(
        {
            "label": pa.Column(
                float,
                [
                    pa.Check.in_range(0, top, error=f"labels within 0..{top}"),
                    pa.Check(lambda s: s == np.floor(s), error="labels whole numbers"),
                ],
            )
        }
    )


def class_table(labels: pd.DataFrame, num_classes: int) -> pd.DataFrame:
    """One row per class: how many labels name it and their share of the split."""
    valid = labels["label"].to_numpy()
    valid = valid[np.isfinite(valid) & (valid >= 0) & (valid < num_classes)]
    counts = np.bincount(valid.astype(np.int64), minlength=num_classes)
    total = max(len(labels), 1)
    return pd.DataFrame(
        {"count": counts.astype(float), "share": counts / total},
        index=pd.RangeIndex(num_classes, name="class"),
    )


def class_schema(min_share: float) -> pa.DataFrameSchema:
    """Per-class rules: every class present, none rarer than ``min_share``."""
    return pa.DataFrameSchema(
        {
            "count": pa.Column(float, pa.Check.gt(0, error="every class present")),
            "share": pa.Column(
                float,
                pa.Check.ge(
                    min_share, error=f"every class >= {min_share:.1%} of split"
                ),
            ),
        }
    )


def _check(schema: pa.DataFrameSchema, frame: pd.DataFrame, split: str) -> list[str]:
    try:
        schema.validate(frame, lazy=True)
    except SchemaErrors as exc:
        return _describe(exc.failure_cases, frame, split)
    return []


def _describe(cases: pd.DataFrame, frame: pd.DataFrame, split: str) -> list[str]:
    """Turn pandera's failure cases into one line per failed check."""
    messages = []
    for check, group in cases.groupby("check", sort=False):
        if frame.index.name == "class":
            detail = "class " + ", ".join(str(i) for i in group["index"])
        elif "n_images" in frame.columns:  # the one-row split table
            detail = _split_detail(str(check), frame.iloc[0])
        else:
            shown = [
                f"{_fmt(case)} at #{index}"
                for case, index in zip(
                    group["failure_case"][:_EXAMPLES],
                    group["index"][:_EXAMPLES],
                    strict=True,
                )
            ]
            detail = f"{len(group)} of {len(frame)} failed, e.g. {', '.join(shown)}"
        messages.append(f"{split}: {check}: {detail}")
    return messages


def _split_detail(check: str, row: pd.Series) -> str:
    shown = {
        _SAME_COUNT: f"{row['n_images']} images, {row['n_labels']} labels",
        _SHAPE: f"image shape ({row['image_shape']})",
        _IMAGE_DTYPE: f"dtype {row['image_dtype']}",
        _LABEL_DTYPE: f"dtype {row['label_dtype']}",
        _LABEL_RANK: f"rank {row['label_rank']}",
    }
    return shown.get(check, f"{row['n_images']} images")


def _fmt(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
