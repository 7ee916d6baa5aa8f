"""Drift stage: how a batch of images compares with what the model was made for.

At training time :func:`reference_profile` describes the test split as the model
sees it (28x28 uint8 images, light digit on black, after any photo
normalisation): per-image features, the pixel-intensity histogram and the
model's own outputs. :func:`compare` puts a batch's :func:`batch_profile` beside
it, feature by feature, with established tests (population stability index,
Jensen-Shannon distance, Kolmogorov-Smirnov, chi-square), and flags each image
that lies outside the reference's range. Profiles and reports are pydantic
models: plain JSON, never pickle.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict
from scipy import stats
from scipy.spatial.distance import jensenshannon

from mnist_pipeline.config import DriftConfig

if TYPE_CHECKING:  # the caller's client: drift itself imports no MLflow
    from mlflow import MlflowClient

#: Features of each image, in the order reports list them.
IMAGE_FEATURES = (
    "mean_intensity",
    "ink_share",
    "border_intensity",
    "box_height",
    "box_width",
    "centre_row",
    "centre_col",
)
#: Features of the model's output for each image.
OUTPUT_FEATURES = ("confidence", "entropy")
#: A pixel at least this bright is ink (for the ink share and the bounding box).
INK_LEVEL = 128
#: The frame whose brightness is ``border_intensity``: MNIST keeps it black.
BORDER = 2
#: Bins of the pixel-intensity histogram (8 grey levels each).
PIXEL_BINS = 32
NUM_CLASSES = 10
#: Batches up to this size get exact Kolmogorov-Smirnov p-values.
SMALL_BATCH = 50

Kind = Literal["per-image", "pixels", "classes"]


class Profile(BaseModel):
    """What a set of images looked like to the model: data, serialisable to JSON.

    Attributes:
        images: how many images were described.
        features: per-image values of every feature in :data:`IMAGE_FEATURES`
            and :data:`OUTPUT_FEATURES` (a reference keeps a seeded sample of
            at most ``max_values`` images; a batch keeps all).
        means: each feature's mean over all the images.
        pixel_shares: share of all pixels in each of :data:`PIXEL_BINS` bins.
        class_shares: share of images predicted as each class.
    """

    model_config = ConfigDict(frozen=True)

    images: int
    features: dict[str, list[float]]
    means: dict[str, float]
    pixel_shares: list[float]
    class_shares: list[float]


class FeatureDrift(BaseModel):
    """One feature of a batch against the reference: figures and verdict."""

    name: str
    kind: Kind
    batch_mean: float | None
    reference_mean: float | None
    psi: float
    js_distance: float
    ks_statistic: float | None
    p_value: float | None
    drifted: bool
    reason: str


class DriftReport(BaseModel):
    """A batch's drift verdict, every feature's figures and per-image flags.

    Attributes:
        ood_images: images of the whole batch flagged out of distribution.
        out_of_distribution: the flag of each image whose values the batch's
            profile keeps (every image, or a long streamed batch's sample).
        ood_reasons: the features that flagged each of those images.
    """

    images: int
    drift_detected: bool
    drifting: list[str]
    features: list[FeatureDrift]
    ood_images: int
    out_of_distribution: list[bool]
    ood_reasons: list[list[str]]
    thresholds: DriftConfig

    @property
    def ood_share(self) -> float:
        """Share of the batch's images flagged out of distribution."""
        return self.ood_images / self.images if self.images else 0.0

    def metrics(self) -> dict[str, float]:
        """Flat figures for MLflow: ``drift_detected`` (1 or 0) and per feature."""
        figures: dict[str, float] = {
            "drift_detected": float(self.drift_detected),
            "drift_features": float(len(self.drifting)),
            "ood_share": self.ood_share,
        }
        for f in self.features:
            figures[f"drift_{f.name}_psi"] = f.psi
            figures[f"drift_{f.name}_js"] = f.js_distance
            if f.ks_statistic is not None:
                figures[f"drift_{f.name}_ks"] = f.ks_statistic
        return figures


def image_features(images: np.ndarray) -> dict[str, np.ndarray]:
    """Per-image features of (N, 28, 28) uint8 images, each an (N,) float array.

    ``centre_row``/``centre_col`` are the intensity-weighted centre of mass
    (row and column index); a blank image counts as centred in its frame.
    """
    pixels = images.astype(np.float64)
    ink = images >= INK_LEVEL
    size = images.shape[1]
    frame = np.ones(images.shape[1:], bool)
    frame[BORDER:-BORDER, BORDER:-BORDER] = False
    total = pixels.sum(axis=(1, 2))
    index = np.arange(size, dtype=np.float64)
    middle = (size - 1) / 2
    safe = np.where(total > 0, total, 1.0)
    row = np.where(total > 0, (pixels.sum(axis=2) @ index) / safe, middle)
    col = np.where(total > 0, (pixels.sum(axis=1) @ index) / safe, middle)
    return {
        "mean_intensity": pixels.mean(axis=(1, 2)) / 255.0,
        "ink_share": ink.mean(axis=(1, 2)),
        "border_intensity": pixels[:, frame].mean(axis=1) / 255.0,
        "box_height": _extent(ink.any(axis=2)),
        "box_width": _extent(ink.any(axis=1)),
        "centre_row": row,
        "centre_col": col,
    }


def _extent(any_ink: np.ndarray) -> np.ndarray:
    """Rows (or columns) from the first to the last with ink; 0 without ink."""
    size = any_ink.shape[1]
    first = np.argmax(any_ink, axis=1)
    last = size - 1 - np.argmax(any_ink[:, ::-1], axis=1)
    return np.where(any_ink.any(axis=1), last - first + 1, 0).astype(np.float64)


def output_features(probabilities: np.ndarray) -> dict[str, np.ndarray]:
    """The model's confidence (top probability) and entropy (0..1, base 10)."""
    p = np.clip(probabilities.astype(np.float64), 1e-12, 1.0)
    entropy = -(p * np.log(p)).sum(axis=1) / np.log(p.shape[1])
    return {
        "confidence": probabilities.max(axis=1).astype(np.float64),
        "entropy": entropy,
    }


def reference_profile(
    images: np.ndarray,
    probabilities: np.ndarray,
    *,
    max_values: int = 2000,
    seed: int = 0,
) -> Profile:
    """The profile a model version's batches are compared with (its test split).

    Args:
        images: (N, 28, 28) uint8, as the model sees them.
        probabilities: (N, 10), the model's outputs for them.
        max_values: per-image values kept (a seeded sample of the images);
            means and histograms use every image.
        seed: which images the sample keeps.
    """
    return _profile(images, probabilities, max_values=max_values, seed=seed)


def reference_profile_json(
    client: MlflowClient, model_name: str, version: str
) -> str | None:
    """The reference profile (JSON) logged with a version's run; None without one.

    Versions registered before drift monitoring have none: the run's
    ``reference/`` folder is listed first, so only absence means None.
    """
    from mnist_pipeline.runs import artifact_text

    run_id = client.get_model_version(model_name, version).run_id
    return artifact_text(client, run_id, "reference/profile.json")


def batch_profile(images: np.ndarray, probabilities: np.ndarray) -> Profile:
    """A batch's profile, every image's values kept (for per-image flags)."""
    return _profile(images, probabilities, max_values=None, seed=0)


def _profile(
    images: np.ndarray, probabilities: np.ndarray, *, max_values: int | None, seed: int
) -> Profile:
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected (N, 28, 28) uint8 images, got {images.shape}")
    if probabilities.shape != (len(images), NUM_CLASSES):
        raise ValueError(
            f"expected ({len(images)}, {NUM_CLASSES}) probabilities, "
            f"got {probabilities.shape}"
        )
    values = image_features(images) | output_features(probabilities)
    keep = np.arange(len(images))
    if max_values is not None and len(images) > max_values:
        keep = np.sort(
            np.random.default_rng(seed).choice(len(images), max_values, replace=False)
        )
    counts = np.bincount(
        images.reshape(-1) // (256 // PIXEL_BINS), minlength=PIXEL_BINS
    )
    classes = np.bincount(probabilities.argmax(axis=1), minlength=NUM_CLASSES)
    return Profile(
        images=len(images),
        features={name: v[keep].tolist() for name, v in values.items()},
        means={name: float(v.mean()) for name, v in values.items()},
        pixel_shares=(counts / max(counts.sum(), 1)).tolist(),
        class_shares=(classes / max(len(images), 1)).tolist(),
    )


def compare(
    batch: Profile,
    reference: Profile,
    thresholds: DriftConfig | None = None,
    *,
    ood_images: int | None = None,
) -> DriftReport:
    """Each feature of ``batch`` against ``reference``; per-image flags; verdict.

    A per-image feature (and the model's confidence and entropy) drifts when
    the Kolmogorov-Smirnov test finds the change significant (p below
    ``ks_alpha`` split over the ten tests, Bonferroni) *and* its population
    stability index on the reference's quantile bins reaches
    ``psi_threshold``: significance alone flags tiny shifts in large batches,
    PSI alone flags noise in small ones. The pixel
    histogram drifts when its Jensen-Shannon distance reaches
    ``js_threshold`` (pixels of one image are not independent, so no p-value)
    in batches of at least ``min_histogram_images``; the predicted-class
    shares when a chi-square test is significant and their PSI reaches
    ``psi_threshold``.

    ``ood_images`` is the count of flagged images when ``batch`` keeps the
    values of only a sample of them (:class:`BatchMonitor` counts every image
    as it arrives); by default the flags of ``batch``'s values are counted.
    """
    thresholds = thresholds or DriftConfig()
    # One batch runs one test per feature: Bonferroni keeps the chance of a
    # false alarm on an unchanged batch at ks_alpha overall, not per feature.
    tested = len(IMAGE_FEATURES) + len(OUTPUT_FEATURES) + 1
    level = thresholds.ks_alpha / tested
    features = [
        _numeric(name, batch, reference, thresholds, level)
        for name in (*IMAGE_FEATURES, *OUTPUT_FEATURES)
    ]
    features += [
        _pixels(batch, reference, thresholds),
        _classes(batch, reference, thresholds, level),
    ]
    drifting = [f.name for f in features if f.drifted]
    flags, reasons = _out_of_distribution(batch, reference, thresholds.ood_quantile)
    return DriftReport(
        images=batch.images,
        drift_detected=bool(drifting),
        drifting=drifting,
        features=features,
        ood_images=sum(flags) if ood_images is None else ood_images,
        out_of_distribution=flags,
        ood_reasons=reasons,
        thresholds=thresholds,
    )


def _numeric(
    name: str, batch: Profile, reference: Profile, thresholds: DriftConfig, level: float
) -> FeatureDrift:
    ours = np.asarray(batch.features[name])
    theirs = np.asarray(reference.features[name])
    edges = quantile_edges(theirs, thresholds.bins)
    ours_shares, theirs_shares = (_shares(v, edges) for v in (ours, theirs))
    psi = population_stability_index(ours_shares, theirs_shares)
    # Exact p-values for small batches; the asymptotic ones are accurate above.
    method = "exact" if len(ours) <= SMALL_BATCH else "asymp"
    test = stats.ks_2samp(ours, theirs, method=method)
    drifted = bool(test.pvalue < level and psi >= thresholds.psi_threshold)
    return FeatureDrift(
        name=name,
        kind="per-image",
        batch_mean=batch.means[name],
        reference_mean=reference.means[name],
        psi=psi,
        js_distance=float(jensenshannon(ours_shares, theirs_shares, base=2)),
        ks_statistic=float(test.statistic),
        p_value=float(test.pvalue),
        drifted=drifted,
        reason=_reason(psi, float(test.pvalue), thresholds.psi_threshold, level),
    )


def _pixels(
    batch: Profile, reference: Profile, thresholds: DriftConfig
) -> FeatureDrift:
    ours, theirs = (
        _smooth(np.asarray(p)) for p in (batch.pixel_shares, reference.pixel_shares)
    )
    distance = float(jensenshannon(ours, theirs, base=2))
    judged = batch.images >= thresholds.min_histogram_images
    drifted = judged and distance >= thresholds.js_threshold
    relation = ">=" if distance >= thresholds.js_threshold else "<"
    reason = f"JS distance {distance:.3f} {relation} {thresholds.js_threshold:g}"
    if not judged:
        reason += (
            f"; not judged: {batch.images} image(s), fewer than "
            f"{thresholds.min_histogram_images}"
        )
    return FeatureDrift(
        name="pixel_histogram",
        kind="pixels",
        batch_mean=None,
        reference_mean=None,
        psi=population_stability_index(ours, theirs),
        js_distance=distance,
        ks_statistic=None,
        p_value=None,
        drifted=drifted,
        reason=reason,
    )


def _classes(
    batch: Profile, reference: Profile, thresholds: DriftConfig, level: float
) -> FeatureDrift:
    counts = np.rint(np.asarray(batch.class_shares) * batch.images)
    theirs = _smooth(np.asarray(reference.class_shares), reference.images)
    ours = _smooth(np.asarray(batch.class_shares), batch.images)
    psi = population_stability_index(ours, theirs)
    p_value = float(stats.chisquare(counts, theirs * counts.sum()).pvalue)
    drifted = bool(p_value < level and psi >= thresholds.psi_threshold)
    return FeatureDrift(
        name="predicted_class",
        kind="classes",
        batch_mean=None,
        reference_mean=None,
        psi=psi,
        js_distance=float(jensenshannon(ours, theirs, base=2)),
        ks_statistic=None,
        p_value=p_value,
        drifted=drifted,
        reason=_reason(psi, p_value, thresholds.psi_threshold, level),
    )


def _reason(psi: float, p_value: float, psi_threshold: float, level: float) -> str:
    """The two figures a verdict rests on, each against its threshold."""
    large = ">=" if psi >= psi_threshold else "<"
    significant = "<" if p_value < level else ">="
    return (
        f"PSI {psi:.3f} {large} {psi_threshold:g}, "
        f"p {p_value:.2g} {significant} {level:.2g}"
    )


def quantile_edges(reference: np.ndarray, bins: int) -> np.ndarray:
    """Inner bin edges: the reference's quantiles, plus its minimum and maximum.

    Values below the reference's minimum or above its maximum get bins of their
    own, so a feature the reference never varied (MNIST's black border) still
    shows a batch that leaves it.
    """
    inner = np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1])
    low, high = reference.min(), reference.max()
    return np.unique(np.concatenate([[low], inner, [np.nextafter(high, np.inf)]]))


def _shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    counts = np.bincount(
        np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1
    )
    return _smooth(counts / max(len(values), 1), len(values))


def _smooth(shares: np.ndarray, count: int = 10_000) -> np.ndarray:
    """Shares with half an observation added to every bin (no empty bins)."""
    return (shares * count + 0.5) / (count + 0.5 * len(shares))


def population_stability_index(ours: np.ndarray, theirs: np.ndarray) -> float:
    """PSI: sum of (ours - theirs) * ln(ours / theirs) over bins of positive shares."""
    return float(np.sum((ours - theirs) * np.log(ours / theirs)))


def _out_of_distribution(
    batch: Profile, reference: Profile, quantile: float
) -> tuple[list[bool], list[list[str]]]:
    """Per image: the features outside the reference's central range.

    Image features count on both sides of ``[quantile, 1 - quantile]``; the
    model's confidence only below it and its entropy only above.
    """
    reasons: list[list[str]] = [[] for _ in range(batch.images)]
    for name in (*IMAGE_FEATURES, *OUTPUT_FEATURES):
        theirs = np.asarray(reference.features[name])
        low, high = np.quantile(theirs, [quantile, 1 - quantile])
        ours = np.asarray(batch.features[name])
        below = ours < low if name != "entropy" else np.zeros(len(ours), bool)
        above = ours > high if name != "confidence" else np.zeros(len(ours), bool)
        for index in np.flatnonzero(below | above):
            reasons[index].append(name)
    return [bool(r) for r in reasons], reasons


def drift_event(
    report: DriftReport, model_name: str, model_version: str
) -> Mapping[str, object]:
    """The event a drifting batch sends: its name, resource and payload (plain data).

    The resource is the model version (``mnist.model.<name>.<version>``), so an
    automation can react to drift of one model or of any.
    """
    return {
        "event": "mnist.drift.detected",
        "resource": {
            "prefect.resource.id": f"mnist.model.{model_name}.{model_version}",
            "prefect.resource.name": f"{model_name} v{model_version}",
            "mnist.model.name": model_name,
            "mnist.model.version": str(model_version),
        },
        "payload": {
            "drifting_features": report.drifting,
            "images": report.images,
            "ood_share": round(report.ood_share, 4),
            "psi": {f.name: round(f.psi, 4) for f in report.features if f.drifted},
        },
    }


#: Per-image values a streamed batch keeps for its tests (a uniform sample of
#: the batch beyond that): 9 floats an image, about 7 MB at most.
BATCH_VALUES = 100_000


class BatchMonitor:
    """A batch's profile built chunk by chunk, each chunk's images flagged at once.

    Means, the pixel histogram, the class shares and the out-of-distribution
    count (``ood_images``) count every image; the per-image values the tests
    need are kept for at most ``max_values`` images, a uniform sample (random
    keys, the smallest kept), so memory stays flat however long the batch.
    """

    def __init__(
        self,
        reference: Profile,
        thresholds: DriftConfig | None = None,
        *,
        max_values: int = BATCH_VALUES,
        seed: int = 0,
    ) -> None:
        self.reference = reference
        self.thresholds = thresholds or DriftConfig()
        self.max_values = max_values
        self._rng = np.random.default_rng(seed)
        self._names = (*IMAGE_FEATURES, *OUTPUT_FEATURES)
        self._keys = np.zeros(0)
        self._values = np.zeros((0, len(self._names)))
        self._sums = np.zeros(len(self._names))
        self._pixels = np.zeros(PIXEL_BINS, np.int64)
        self._classes = np.zeros(NUM_CLASSES, np.int64)
        self.images = 0
        self.ood_images = 0
        quantile = self.thresholds.ood_quantile
        bounds = np.array(
            [
                np.quantile(reference.features[name], [quantile, 1 - quantile])
                for name in self._names
            ]
        )
        self._low, self._high = bounds[:, 0], bounds[:, 1]
        # Confidence is out of range only below, entropy only above.
        self._low[self._names.index("entropy")] = -np.inf
        self._high[self._names.index("confidence")] = np.inf

    def add(self, images: np.ndarray, probabilities: np.ndarray) -> list[bool]:
        """Count a chunk in; whether each of its images is out of distribution."""
        features = image_features(images) | output_features(probabilities)
        values = np.column_stack([features[name] for name in self._names])
        self._sums += values.sum(axis=0)
        self._pixels += np.bincount(
            images.reshape(-1) // (256 // PIXEL_BINS), minlength=PIXEL_BINS
        )
        self._classes += np.bincount(
            probabilities.argmax(axis=1), minlength=NUM_CLASSES
        )
        self.images += len(images)
        self._keys = np.concatenate([self._keys, self._rng.random(len(images))])
        self._values = np.concatenate([self._values, values])
        if len(self._keys) > self.max_values:
            keep = np.sort(
                np.argpartition(self._keys, self.max_values)[: self.max_values]
            )
            self._keys, self._values = self._keys[keep], self._values[keep]
        # As _out_of_distribution, on arrays: no profile per chunk. Counted
        # here: the report's own flags cover only the kept sample.
        flags = ((values < self._low) | (values > self._high)).any(axis=1)
        self.ood_images += int(flags.sum())
        return flags.tolist()

    def profile(self) -> Profile:
        """The batch so far, as :func:`batch_profile` describes it."""
        count = max(self.images, 1)
        return Profile(
            images=self.images,
            features={
                n: self._values[:, i].tolist() for i, n in enumerate(self._names)
            },
            means={
                n: float(s / count)
                for n, s in zip(self._names, self._sums, strict=True)
            },
            pixel_shares=(self._pixels / max(self._pixels.sum(), 1)).tolist(),
            class_shares=(self._classes / count).tolist(),
        )

    def report(self) -> DriftReport:
        """The batch so far against the reference (:func:`compare`)."""
        return compare(
            self.profile(),
            self.reference,
            self.thresholds,
            ood_images=self.ood_images,
        )
