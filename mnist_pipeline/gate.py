"""Promotion gate: decide whether a candidate model may become ``@champion``.

Like TFX's Evaluator "blessing" plus an InfraValidator: a candidate must clear an
absolute accuracy floor, must not regress against the current champion scored on
the same test split, must stay accurate on shifted and noisy images, and must
predict identically when loaded back from the registry.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from mnist_pipeline.config import TrainConfig

#: Accuracy floors by dataset: the notebook's settings score 0.956-0.977 on the
#: 4,000-image sample and about 0.99 on full MNIST.
SAMPLE_MIN_ACCURACY = 0.94
FULL_MIN_ACCURACY = 0.98
SHIFT_PIXELS = 2
NOISE_SIGMA = 25.0  # on the 0..255 pixel scale: mild


@dataclass(frozen=True)
class Thresholds:
    """What a candidate must reach; see :class:`~mnist_pipeline.config.TrainConfig`."""

    min_accuracy: float
    max_accuracy_drop: float = 0.002
    max_recall_drop: float = 0.02
    min_robust_accuracy: float = 0.80


@dataclass(frozen=True)
class Scores:
    """A model's accuracy and worst per-class recall on one test split."""

    accuracy: float
    min_class_recall: float


@dataclass(frozen=True)
class Check:
    """One gate check: its name, whether it passed, and the figures compared."""

    name: str
    passed: bool
    value: float
    threshold: float
    detail: str


@dataclass(frozen=True)
class Decision:
    """The gate's verdict with every check that led to it."""

    promote: bool
    checks: list[Check] = field(default_factory=list)
    figures: dict[str, float] = field(default_factory=dict)

    @property
    def reasons(self) -> list[str]:
        """Why the candidate failed (empty when promoted)."""
        return [c.detail for c in self.checks if not c.passed]

    def as_dict(self) -> dict:
        """Plain data for logging."""
        return {
            "promote": self.promote,
            "checks": [asdict(c) for c in self.checks],
            "figures": dict(self.figures),
        }


def default_min_accuracy(dataset_name: str) -> float:
    """The accuracy floor for a dataset: lower for the small bundled sample."""
    return (
        SAMPLE_MIN_ACCURACY
        if dataset_name.startswith("mnist-sample")
        else FULL_MIN_ACCURACY
    )


def thresholds_for(config: TrainConfig, dataset_name: str) -> Thresholds:
    """The gate's thresholds from a training config, the floor by dataset if unset."""
    floor = config.min_accuracy
    return Thresholds(
        min_accuracy=default_min_accuracy(dataset_name) if floor is None else floor,
        max_accuracy_drop=config.max_accuracy_drop,
        max_recall_drop=config.max_recall_drop,
        min_robust_accuracy=config.min_robust_accuracy,
    )


def perturbations(images: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """The test images shifted by 2 pixels in each direction, and with mild noise."""
    shifted = {
        "shift_right": shift(images, dx=SHIFT_PIXELS),
        "shift_left": shift(images, dx=-SHIFT_PIXELS),
        "shift_down": shift(images, dy=SHIFT_PIXELS),
        "shift_up": shift(images, dy=-SHIFT_PIXELS),
    }
    noise = np.random.default_rng(seed).normal(0.0, NOISE_SIGMA, images.shape)
    noisy = np.clip(images.astype(np.float32) + noise, 0, 255).astype(np.uint8)
    return shifted | {"noise": noisy}


def shift(images: np.ndarray, dx: int = 0, dy: int = 0) -> np.ndarray:
    """Move every (N, 28, 28) image by (dx, dy) pixels, filling with black."""
    out = np.zeros_like(images)
    h, w = images.shape[1:3]
    src_y, dst_y = (
        slice(max(-dy, 0), h - max(dy, 0)),
        slice(max(dy, 0), h - max(-dy, 0)),
    )
    src_x, dst_x = (
        slice(max(-dx, 0), w - max(dx, 0)),
        slice(max(dx, 0), w - max(-dx, 0)),
    )
    out[:, dst_y, dst_x] = images[:, src_y, src_x]
    return out


def decide(
    candidate: Scores,
    champion: Scores | None,
    robust_accuracy: dict[str, float],
    serving_agreement: float,
    thresholds: Thresholds,
) -> Decision:
    """Apply every check; promote only when all pass.

    Args:
        candidate: the candidate's scores on this run's test split.
        champion: the current champion's scores on the same split, or None when
            there is no champion yet (the regression checks are then skipped).
        robust_accuracy: the candidate's accuracy on each perturbed test set.
        serving_agreement: share of test images where the model loaded back from
            the registry predicts the same class as the in-memory model.
        thresholds: the floors and tolerances.
    """
    checks = [
        _at_least(
            "accuracy_floor",
            candidate.accuracy,
            thresholds.min_accuracy,
            "test accuracy",
        ),
        _at_least(
            "robustness",
            float(np.mean(list(robust_accuracy.values()))),
            thresholds.min_robust_accuracy,
            "mean accuracy on shifted and noisy test images",
        ),
        _at_least(
            "serving_smoke_test", serving_agreement, 1.0, "registry/in-memory agreement"
        ),
    ]
    if champion is not None:
        checks += [
            _at_least(
                "no_accuracy_regression",
                candidate.accuracy,
                champion.accuracy - thresholds.max_accuracy_drop,
                "test accuracy",
                f"champion's {champion.accuracy:.4f} - allowed drop "
                f"{thresholds.max_accuracy_drop:.4f}",
            ),
            _at_least(
                "no_recall_regression",
                candidate.min_class_recall,
                champion.min_class_recall - thresholds.max_recall_drop,
                "worst class recall",
                f"champion's {champion.min_class_recall:.4f} - allowed drop "
                f"{thresholds.max_recall_drop:.4f}",
            ),
        ]
    figures = {
        "candidate_accuracy": candidate.accuracy,
        "candidate_min_class_recall": candidate.min_class_recall,
        "serving_agreement": serving_agreement,
        **{f"robust_{name}": value for name, value in robust_accuracy.items()},
    }
    if champion is not None:
        figures["champion_accuracy"] = champion.accuracy
        figures["champion_min_class_recall"] = champion.min_class_recall
    return Decision(
        promote=all(c.passed for c in checks), checks=checks, figures=figures
    )


def _at_least(
    name: str, value: float, threshold: float, what: str, basis: str = ""
) -> Check:
    passed = value >= threshold - 1e-12
    relation = ">=" if passed else "<"
    detail = f"{what} {value:.4f} {relation} required {threshold:.4f}"
    return Check(
        name=name,
        passed=passed,
        value=float(value),
        threshold=float(threshold),
        detail=f"{detail} ({basis})" if basis else detail,
    )
