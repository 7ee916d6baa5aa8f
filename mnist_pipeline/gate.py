"""Promotion gate: decide whether a candidate model may become ``@champion``.

Like TFX's Evaluator "blessing" plus an InfraValidator: a candidate must clear an
absolute accuracy floor, stay accurate on shifted and noisy images, predict the
same when loaded back from the registry and, when there is a champion, be
**better** than it on the same test images: more of them right (by more than
``min_accuracy_gain``), by more than chance explains (McNemar's exact test on
the images only one of the two got right, p <= ``max_p_value``), and its worst
class recall no more than ``max_recall_drop`` lower. An equal candidate, or one
luckier by a few images, leaves the champion where it is: a nightly on
unchanged data never moves the alias, and a retrain with a new seed rarely
does (at most ``max_p_value`` of the time).

A release that must go out without being better (a fix shipped with the model,
retrained on the same data) passes the same floors with ``release_reason``
set: instead of better, it must not be significantly worse.

Everything here is plain computation on arrays and figures;
:mod:`mnist_pipeline.promotion` reads the champion's figures from the registry,
and the tasks in ``tasks/gate.py`` load the models and call both.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy.stats import binomtest

from mnist_pipeline.config import TrainConfig

#: Accuracy floors by dataset: the notebook's settings score 0.956-0.977 on the
#: 4,000-image sample and about 0.99 on full MNIST.
SAMPLE_MIN_ACCURACY = 0.94
FULL_MIN_ACCURACY = 0.98
SHIFT_PIXELS = 2
NOISE_SIGMA = 25.0  # on the 0..255 pixel scale: mild
#: Largest difference allowed between a class probability of the model loaded
#: back from the registry and of the trained model in memory. The two predict in
#: different batch compositions, where float32 kernels round differently (about
#: 1e-7 here); a wrong wrapper, scaling or model differs by far more.
SERVING_TOLERANCE = 1e-4
#: Where a run keeps its model's answer for every test image (the paired test's
#: record of a version).
PREDICTIONS_ARTIFACT = "evaluation/test_predictions.json"

Predict = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Thresholds:
    """What a candidate must reach; see :class:`~mnist_pipeline.config.TrainConfig`."""

    min_accuracy: float
    min_accuracy_gain: float
    max_recall_drop: float
    min_robust_accuracy: float
    max_p_value: float = 0.05


@dataclass(frozen=True)
class Scores:
    """How many test images a model got right, and its worst per-class recall.

    ``right`` says which: one boolean per test image, in the split's order, for
    the paired test. None where only the counts are known.
    """

    correct: int
    total: int
    min_class_recall: float
    right: np.ndarray | None = field(default=None, compare=False, repr=False)

    @property
    def accuracy(self) -> float:
        """Share of test images classified correctly."""
        return self.correct / self.total

    def describe(self) -> str:
        """E.g. ``0.9720 (972/1000)``."""
        return f"{self.accuracy:.4f} ({self.correct}/{self.total})"


@dataclass(frozen=True)
class PairedTest:
    """McNemar's exact test of a candidate against the champion on the same images.

    Only the images exactly one of the two got right tell them apart: ``c`` the
    candidate's, ``b`` the champion's. If neither were better, each of those
    b + c images would be a coin flip; ``p_value`` is the chance of c or more
    heads (one-sided), i.e. of a gain this large by luck alone.
    """

    c: int
    b: int
    p_value: float
    #: Test images compared (for the words; 0 when not known).
    total: int = 0

    @property
    def gain(self) -> int:
        """Images the candidate gets right beyond the champion (negative: fewer)."""
        return self.c - self.b

    @property
    def p_worse(self) -> float:
        """The same test the other way: the chance of b or more by luck."""
        return mcnemar_p(self.b, self.c)

    def describe(self, total: int | None = None, limit: float | None = None) -> str:
        """E.g. ``better by 6 images of 1,000 (c=14, b=8), p = 0.14``."""
        return f"{self.counts(total)}, p = {format_p(self.p_value, limit)}"

    def counts(self, total: int | None = None) -> str:
        """E.g. ``better by 6 images of 1,000 (c=14, b=8)``."""
        total = self.total if total is None else total
        if self.gain > 0:
            change = f"better by {self.gain} image{_s(self.gain)}"
        elif self.gain < 0:
            change = f"worse by {-self.gain} image{_s(-self.gain)}"
        else:
            change = "as many images right"
        return f"{change} of {total:,} (c={self.c}, b={self.b})"


def format_p(p: float, limit: float | None = None) -> str:
    """Two significant digits, more where two would read as ``limit`` itself
    (0.0503 is not "0.05 > 0.05")."""
    text = f"{p:.2g}"
    if limit is not None and p != limit and float(text) == limit:
        text = f"{p:.4g}"
    return text


def mcnemar_p(c: int, b: int) -> float:
    """One-sided exact McNemar p: the chance of ``c`` or more of ``b + c`` by luck."""
    if b + c == 0:
        return 1.0
    return float(binomtest(c, b + c, 0.5, alternative="greater").pvalue)


def paired_test(candidate_right: np.ndarray, champion_right: np.ndarray) -> PairedTest:
    """Count the images only one model got right; test the candidate's gain."""
    candidate_right = np.asarray(candidate_right, dtype=bool)
    champion_right = np.asarray(champion_right, dtype=bool)
    if candidate_right.shape != champion_right.shape:
        raise ValueError(
            f"the candidate was scored on {candidate_right.size} images, the "
            f"champion on {champion_right.size}: not the same split"
        )
    c = int((candidate_right & ~champion_right).sum())
    b = int((champion_right & ~candidate_right).sum())
    return PairedTest(c=c, b=b, p_value=mcnemar_p(c, b), total=candidate_right.size)


def _s(n: int) -> str:
    return "" if n == 1 else "s"


@dataclass(frozen=True)
class CandidateChecks:
    """What the gate measured on the candidate alone (no champion needed)."""

    robust_accuracy: dict[str, float]
    serving_difference: float
    serving_agreement: float


@dataclass(frozen=True)
class Check:
    """One gate check: its name, whether it passed, and the figures compared."""

    name: str
    passed: bool
    value: float
    relation: str  # what passing means: value >=, > or <= threshold
    threshold: float
    detail: str


@dataclass(frozen=True)
class Decision:
    """The gate's verdict with every check that led to it."""

    promote: bool
    checks: list[Check] = field(default_factory=list)
    figures: dict[str, float] = field(default_factory=dict)
    #: The paired test against the champion; None without a champion.
    paired: PairedTest | None = None
    #: Why a candidate that need not be better is released (empty: it must be).
    release_reason: str = ""

    @property
    def reasons(self) -> list[str]:
        """Why the candidate failed (empty when promoted)."""
        return [c.detail for c in self.checks if not c.passed]

    @property
    def lacks_evidence(self) -> bool:
        """Kept only because its gain could be luck: every other check passed."""
        failed = {c.name for c in self.checks if not c.passed}
        return failed == {"significant_improvement"}

    def as_dict(self) -> dict:
        """Plain data for logging."""
        return {
            "promote": self.promote,
            "checks": [asdict(c) for c in self.checks],
            "figures": dict(self.figures),
            "paired_test": asdict(self.paired) if self.paired else None,
            "release_reason": self.release_reason,
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
        min_accuracy_gain=config.min_accuracy_gain,
        max_recall_drop=config.max_recall_drop,
        min_robust_accuracy=config.min_robust_accuracy,
        max_p_value=config.max_p_value,
    )


def threshold_params(config: TrainConfig, dataset_name: str) -> dict[str, float]:
    """The gate's settings as a run's params: the values applied, the floor resolved.

    A config that leaves ``min_accuracy`` unset gets the dataset's floor; the
    params say that number, not ``None``.
    """
    return asdict(thresholds_for(config, dataset_name))


def scores(probabilities: np.ndarray, labels: np.ndarray) -> Scores:
    """Correct count and worst class recall of predicted class probabilities."""
    predicted = probabilities.argmax(axis=1)
    return scores_of(predicted, labels, probabilities.shape[1])


def scores_of(predicted: np.ndarray, labels: np.ndarray, classes: int = 10) -> Scores:
    """Correct count, worst class recall and per-image rightness of predicted labels."""
    recalls = [
        float((predicted[labels == c] == c).mean())
        for c in range(classes)
        if (labels == c).any()
    ]
    right = np.asarray(predicted) == np.asarray(labels)
    return Scores(
        correct=int(right.sum()),
        total=len(labels),
        min_class_recall=min(recalls),
        right=right,
    )


def predictions_record(
    test_digest: str, labels: np.ndarray, predicted: np.ndarray
) -> dict[str, object]:
    """A model's predicted class for every test image, kept with its run."""
    return {
        "test_digest": test_digest,
        "labels": [int(v) for v in labels],
        "predicted": [int(v) for v in predicted],
    }


def recorded_right(record: Mapping[str, object], test_digest: str) -> np.ndarray | None:
    """Which test images a recorded model got right; None for other images."""
    if record.get("test_digest") != test_digest:
        return None
    labels = np.asarray(record.get("labels", []))
    predicted = np.asarray(record.get("predicted", []))
    if labels.size == 0 or labels.shape != predicted.shape:
        return None
    return predicted == labels


def measure_candidate(
    in_memory: Predict,
    served: Predict,
    images: np.ndarray,
    labels: np.ndarray,
    seed: int,
) -> CandidateChecks:
    """Score robustness and compare the served model with the in-memory one.

    Args:
        in_memory: class probabilities of the trained model for uint8 images.
        served: the same from the version loaded back from the registry.
        images: the test split, uint8 (N, 28, 28).
        labels: its integer labels.
        seed: seeds the noise perturbation.
    """
    variants = perturbations(images, seed)
    # One call over clean and perturbed copies: one batch pipeline, not six.
    predicted = in_memory(np.concatenate([images, *variants.values()]))
    clean, *perturbed = np.split(predicted, len(variants) + 1)
    robust = {
        name: float((part.argmax(axis=1) == labels).mean())
        for name, part in zip(variants, perturbed, strict=True)
    }
    served_probabilities = served(images)
    return CandidateChecks(
        robust_accuracy=robust,
        serving_difference=float(np.abs(served_probabilities - clean).max()),
        serving_agreement=float(
            (served_probabilities.argmax(axis=1) == clean.argmax(axis=1)).mean()
        ),
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
    checks: CandidateChecks,
    champion: Scores | None,
    thresholds: Thresholds,
    release_reason: str = "",
) -> Decision:
    """Apply every check; promote only when all pass.

    Args:
        candidate: the candidate's scores on its test split.
        checks: the candidate's robustness and serving figures.
        champion: the current champion's scores on the same test images, or None
            when there is no champion yet (the comparisons are then skipped).
            With ``right`` on both, the paired test is run; it must be, unless
            ``thresholds.max_p_value`` is 1 (the test off).
        thresholds: the floors and margins.
        release_reason: set, the candidate need not be better: it must not be
            significantly worse (every other check still applies).
    """
    gate_checks = [
        _at_least(
            "accuracy_floor",
            candidate.accuracy,
            thresholds.min_accuracy,
            "test accuracy",
        ),
        _at_least(
            "robustness",
            float(np.mean(list(checks.robust_accuracy.values()))),
            thresholds.min_robust_accuracy,
            "mean accuracy on shifted and noisy test images",
        ),
        _at_most(
            "serving_smoke_test",
            checks.serving_difference,
            SERVING_TOLERANCE,
            "largest registry/in-memory probability difference",
        ),
    ]
    figures = {
        "candidate_accuracy": candidate.accuracy,
        "candidate_min_class_recall": candidate.min_class_recall,
        "serving_max_difference": checks.serving_difference,
        "serving_agreement": checks.serving_agreement,
        **{f"robust_{name}": value for name, value in checks.robust_accuracy.items()},
    }
    paired = None
    if champion is not None:
        paired = _paired(candidate, champion, thresholds.max_p_value)
        gate_checks += _comparison(
            candidate, champion, paired, thresholds, release_reason
        )
        figures["champion_accuracy"] = champion.accuracy
        figures["champion_min_class_recall"] = champion.min_class_recall
        if paired is not None:
            figures |= {"c": paired.c, "b": paired.b, "p_value": paired.p_value}
    return Decision(
        promote=all(c.passed for c in gate_checks),
        checks=gate_checks,
        figures=figures,
        paired=paired,
        release_reason=release_reason if champion is not None else "",
    )


def _paired(candidate: Scores, champion: Scores, max_p: float) -> PairedTest | None:
    if candidate.total != champion.total:
        raise ValueError(
            f"the champion was scored on {champion.total} test images, the "
            f"candidate on {candidate.total}: not the same split"
        )
    if candidate.right is None or champion.right is None:
        if max_p < 1:
            raise ValueError("the paired test needs which images each model got right")
        return None
    return paired_test(candidate.right, champion.right)


def _comparison(
    candidate: Scores,
    champion: Scores,
    paired: PairedTest | None,
    thresholds: Thresholds,
    release_reason: str,
) -> list[Check]:
    """Better (and significantly so), or for a release not significantly worse;
    and no worse worst-class recall."""
    if release_reason:
        compared = [_not_worse(candidate, champion, paired, thresholds.max_p_value)]
    else:
        compared = [_better(candidate, champion, thresholds.min_accuracy_gain)]
        if compared[0].passed and paired is not None:
            compared.append(_significant(paired, candidate.total, thresholds))
    return compared + [
        _at_least(
            "no_recall_regression",
            candidate.min_class_recall,
            champion.min_class_recall - thresholds.max_recall_drop,
            "worst class recall",
            f"champion's {champion.min_class_recall:.4f} - allowed drop "
            f"{thresholds.max_recall_drop:.4f}",
        )
    ]


def _better(candidate: Scores, champion: Scores, gain: float) -> Check:
    """More test images right than the champion, by more than ``gain``."""
    required = champion.accuracy + gain
    passed = candidate.correct - champion.correct > gain * candidate.total + 1e-9
    relation = ">" if passed else "<="
    return Check(
        name="better_than_champion",
        passed=passed,
        value=candidate.accuracy,
        relation=">",
        threshold=required,
        detail=f"test accuracy {candidate.describe()} {relation} champion's "
        f"{champion.describe()}" + (f" + required gain {gain:.4f}" if gain else ""),
    )


def _significant(paired: PairedTest, total: int, thresholds: Thresholds) -> Check:
    """The gain is more than luck: McNemar's p at most ``max_p_value``."""
    limit = thresholds.max_p_value
    passed = paired.p_value <= limit
    if limit >= 1:
        verdict = "(the paired test is off: max_p_value 1)"
    elif passed:
        verdict = f"<= {limit:g}: a significant improvement"
    else:
        verdict = f"> {limit:g}: not a significant improvement"
    return Check(
        name="significant_improvement",
        passed=passed,
        value=paired.p_value,
        relation="<=",
        threshold=limit,
        detail=f"{paired.describe(total, limit if limit < 1 else None)} {verdict}",
    )


def _not_worse(
    candidate: Scores, champion: Scores, paired: PairedTest | None, max_p: float
) -> Check:
    """A release: no significant evidence that the candidate is worse.

    With the paired test off (``max_p`` 1), not one image fewer right.
    """
    if paired is None or max_p >= 1:
        passed = candidate.correct >= champion.correct
        return Check(
            name="not_worse_than_champion",
            passed=passed,
            value=candidate.accuracy,
            relation=">=",
            threshold=champion.accuracy,
            detail=f"test accuracy {candidate.describe()} "
            f"{'>=' if passed else '<'} champion's {champion.describe()}",
        )
    p_worse = paired.p_worse
    passed = p_worse > max_p
    shown = format_p(p_worse, max_p)
    verdict = (
        f"no evidence that it is worse (p of a loss this large = {shown} > {max_p:g})"
        if passed
        else f"significantly worse (p of a loss this large = {shown} <= {max_p:g})"
    )
    return Check(
        name="not_worse_than_champion",
        passed=passed,
        value=p_worse,
        relation=">",
        threshold=max_p,
        detail=f"{paired.counts(candidate.total)}: {verdict}",
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
        relation=">=",
        threshold=float(threshold),
        detail=f"{detail} ({basis})" if basis else detail,
    )


def _at_most(name: str, value: float, threshold: float, what: str) -> Check:
    passed = value <= threshold
    relation = "<=" if passed else ">"
    return Check(
        name=name,
        passed=passed,
        value=float(value),
        relation="<=",
        threshold=float(threshold),
        detail=f"{what} {value:.2g} {relation} allowed {threshold:.0e}",
    )


def score_tags(scores: Scores) -> dict[str, str]:
    """A version's scores as registry tags, exact enough to compare later."""
    return {
        "test_accuracy": f"{scores.accuracy:.4f}",
        "test_correct": f"{scores.correct}/{scores.total}",
        "test_min_class_recall": f"{scores.min_class_recall:.6f}",
    }


def recorded_scores(tags: Mapping[str, str], test_digest: str) -> Scores | None:
    """A version's recorded scores, when they were measured on ``test_digest``.

    None when the version was tested on other images, or recorded no scores
    (older versions): it must then be scored again.
    """
    if tags.get("test_digest") != test_digest:
        return None
    try:
        correct, total = (int(n) for n in tags["test_correct"].split("/"))
        recall = float(tags["test_min_class_recall"])
    except (KeyError, ValueError):
        return None
    return Scores(correct=correct, total=total, min_class_recall=recall)
