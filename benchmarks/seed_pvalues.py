"""Seed noise against McNemar's test: ``python -m benchmarks.seed_pvalues``.

Trains the notebook's model on the bundled sample as ``mnist-pipeline train
--data sample --seed S`` does (TrainConfig's defaults; the train task's body:
the resumable checkpoint's callbacks around ``train_model``, the model saved
and loaded back, ``evaluate_model`` on the 1,000 test images), for seeds
0-4 with 10 epochs and for seed 0 with 1 and 2 epochs. Each training runs in a
fresh process, as a flow run does, and leaves its test-set probabilities in
``/tmp/seed_pvalues/seed{S}-epochs{E}.npy``: a second invocation retrains
nothing (``--retrain`` does).

For every ordered pair (candidate A, champion B) on the same test images:
c = images only A got right, b = images only B got right, and McNemar's exact
one-sided p-value that A is better, as the promotion gate computes it
(``gate.paired_test``: ``binomtest(c, b + c, 0.5, "greater")``, 1 when
b + c = 0), against the gate's default ``max_p_value``. Writes
``benchmarks/results/seed_pvalues.md``. About 3 minutes on 2 cores when nothing
is cached.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).with_name("results")
CACHE = Path("/tmp/seed_pvalues")
SEEDS = (0, 1, 2, 3, 4)
#: Seed 0 trained shorter: champions a 10-epoch candidate should clearly beat.
SHORT_EPOCHS = (1, 2)


@dataclass(frozen=True)
class Trained:
    """One training's test-set outcome."""

    seed: int
    epochs: int
    correct: np.ndarray  # bool per test image

    @property
    def label(self) -> str:
        return f"seed {self.seed}, {self.epochs} ep"

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean())


def cache_path(seed: int, epochs: int) -> Path:
    """Where one training's test-set probabilities are kept."""
    return CACHE / f"seed{seed}-epochs{epochs}.npy"


def train_one(seed: int, epochs: int) -> None:
    """Train as the flow's train task does; save the test probabilities."""
    from mnist_pipeline.runtime import configure_environment, quiet_tensorflow_import

    configure_environment()  # before TensorFlow loads, as the CLI does
    quiet_tensorflow_import()

    import logging
    import tempfile

    import keras

    from mnist_pipeline.checkpoint import fit_resumably
    from mnist_pipeline.config import TrainConfig
    from mnist_pipeline.data import load_sample
    from mnist_pipeline.evaluate import evaluate_model
    from mnist_pipeline.preprocess import preprocess
    from mnist_pipeline.train import EpochLogger, train_model

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logger = logging.getLogger("seed_pvalues")
    config = TrainConfig(data="sample", seed=seed, epochs=epochs)
    prepared = preprocess(load_sample(), config.validation_split, config.seed)
    with tempfile.TemporaryDirectory() as workdir:

        def fit(first: list[keras.callbacks.Callback], initial_epoch: int):
            return train_model(
                prepared,
                epochs=config.epochs,
                batch_size=config.batch_size,
                learning_rate=config.learning_rate,
                seed=config.seed,
                callbacks=[*first, EpochLogger(logger, len(prepared.x_train))],
                initial_epoch=initial_epoch,
                augmentation=config.augmentation(),
            )

        model, _ = fit_resumably(Path(workdir) / "checkpoint", "seed-pvalues", fit)
        saved = Path(workdir) / "model.keras"
        model.save(saved)
        loaded = keras.saving.load_model(saved)
    evaluation = evaluate_model(loaded, prepared.x_test, prepared.y_test)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(cache_path(seed, epochs), evaluation.probabilities)
    logger.info(
        "seed %d, %d epochs: test accuracy %.4f", seed, epochs, evaluation.accuracy
    )


def ensure_trained(runs: list[tuple[int, int]], retrain: bool) -> dict[str, float]:
    """Train every run not cached yet, each in a fresh process.

    Returns each run's wall seconds (imports included), as recorded in the
    cache when it was trained.
    """
    record = CACHE / "seconds.json"
    seconds = json.loads(record.read_text()) if record.exists() else {}
    for seed, epochs in runs:
        if cache_path(seed, epochs).exists() and not retrain:
            continue
        started = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "benchmarks.seed_pvalues",
                "--train-one",
                str(seed),
                str(epochs),
            ],
            check=True,
        )
        seconds[f"seed{seed}-epochs{epochs}"] = time.perf_counter() - started
        record.write_text(json.dumps(seconds, indent=1))
    return {f"seed{s}-epochs{e}": seconds.get(f"seed{s}-epochs{e}") for s, e in runs}


def load_trained(seed: int, epochs: int, labels: np.ndarray) -> Trained:
    """A cached training's per-image correctness on the test split."""
    probabilities = np.load(cache_path(seed, epochs))
    return Trained(seed, epochs, probabilities.argmax(axis=1) == labels)


def pair_row(candidate: Trained, champion: Trained, alpha: float) -> tuple[str, float]:
    """One table row for a candidate against a champion, and its p-value."""
    from mnist_pipeline.gate import paired_test

    test = paired_test(candidate.correct, champion.correct)
    row = (
        f"| {candidate.label} | {champion.label} | {candidate.accuracy:.4f} | "
        f"{champion.accuracy:.4f} | {test.c} | {test.b} | {test.p_value:.3g} | "
        f"{'yes' if test.gain > 0 else 'no'} | "
        f"{'yes' if test.gain > 0 and test.p_value <= alpha else 'no'} |"
    )
    return row, test.p_value


def report(
    seeded: list[Trained], short: list[Trained], ten: Trained, alpha: float
) -> str:
    """The markdown tables: every ordered pair of seeds, then 10 epochs vs fewer."""
    from mnist_pipeline.gate import paired_test

    header = [
        "| Candidate (A) | Champion (B) | Acc. A | Acc. B | c (only A right) | "
        "b (only B right) | one-sided p | old rule promotes | "
        f"p ≤ {alpha} promotes |",
        "|---|---|---:|---:|---:|---:|---:|---|---|",
    ]
    rows, ps = [], []
    for candidate, champion in itertools.permutations(seeded, 2):
        row, p = pair_row(candidate, champion, alpha)
        rows.append(row)
        ps.append(p)
    pairs = [
        paired_test(a.correct, b.correct) for a, b in itertools.combinations(seeded, 2)
    ]
    old = sum(test.gain != 0 for test in pairs)
    new = sum(min(test.p_value, test.p_worse) <= alpha for test in pairs)
    clear = [pair_row(ten, champion, alpha) for champion in short]
    accuracies = ", ".join(f"{t.seed}: {t.accuracy:.4f}" for t in seeded)
    lines = [
        "# Seed noise against McNemar's exact test",
        "",
        f"Test accuracy on the sample's 1,000 test images, by seed (10 epochs): "
        f"{accuracies}.",
        "",
        "Every ordered pair of seeds, the first as candidate, the second as "
        "champion. c and b count the test images only one of the two got right; "
        "p is the gate's `paired_test` (McNemar's exact one-sided test: "
        '`scipy.stats.binomtest(c, b + c, 0.5, alternative="greater").pvalue`, '
        "1 when b + c = 0). The old rule promotes on one more image right "
        f"(`min_accuracy_gain` 0); the new one also needs p ≤ {alpha:g} "
        "(`max_p_value`'s default).",
        "",
        *header,
        *rows,
        "",
        f"Of the {len(pairs)} unordered pairs of seeds, the old rule would promote "
        f"one model over the other in **{old}**; the test at p ≤ {alpha} in "
        f"**{new}**. Smallest one-sided p between seeds: {min(ps):.3g} "
        f"(largest: {max(ps):.3g}).",
        "",
        "A clearly better candidate: seed 0 trained 10 epochs against seed 0 "
        "trained shorter as champion.",
        "",
        *header,
        *(row for row, _ in clear),
        "",
    ]
    return "\n".join(lines)


def cpu_model() -> str:
    """The CPU's model name as Linux reports it."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--retrain", action="store_true", help="ignore the cache")
    parser.add_argument(
        "--train-one",
        nargs=2,
        type=int,
        metavar=("SEED", "EPOCHS"),
        help=argparse.SUPPRESS,
    )
    args = parser.parse_args()
    if args.train_one:
        train_one(*args.train_one)
        return
    started = datetime.datetime.now(datetime.UTC)
    runs = [(seed, 10) for seed in SEEDS] + [(0, e) for e in SHORT_EPOCHS]
    seconds = ensure_trained(runs, args.retrain)

    from mnist_pipeline.config import TrainConfig
    from mnist_pipeline.data import load_sample

    labels = load_sample().y_test
    seeded = [load_trained(seed, 10, labels) for seed in SEEDS]
    short = [load_trained(0, e, labels) for e in SHORT_EPOCHS]
    text = report(seeded, short, seeded[0], TrainConfig().max_p_value)
    trained = ", ".join(
        f"{k} {'?' if v is None else f'{v:.0f}'} s" for k, v in seconds.items()
    )
    commit = subprocess.run(
        ["git", "describe", "--always", "--dirty"],
        check=False,
        capture_output=True,
        text=True,
    ).stdout.strip()
    text += (
        f"\nCommand: `.venv/bin/python -m benchmarks.seed_pvalues` (trainings cached "
        f"in `{CACHE}`; `--retrain` trains again). Date: "
        f"{started.isoformat(timespec='seconds')}; commit {commit}. Machine: "
        f"{cpu_model()}, {os.cpu_count()} CPU cores, no GPU, shared with other "
        f"work; Python {platform.python_version()}. Wall s per training (a fresh "
        f"process, imports included): {trained}.\n"
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "seed_pvalues.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
