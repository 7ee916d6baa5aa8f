"""What the drift check flags: ``python -m benchmarks.drift``.

Trains the notebook's model on the sample (seed 0), takes its reference profile
on the 1,000 test images, and compares batches with it: random batches of the
sample's own training images (how often an unchanged batch raises a false
alarm, by batch size), broken batches (inverted, heavily noised, blank, shifted)
and the photo sets of benchmarks/photos.py normalised both ways. Writes
``benchmarks/results/drift.json`` and ``drift.md``. About 3 minutes on 2 cores.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from benchmarks.photos import photo_sets

RESULTS = Path(__file__).with_name("results")
SIZES = (5, 20, 50, 200, 1000)
REPEATS = 40


def main() -> None:
    from mnist_pipeline.runtime import configure_environment

    configure_environment()
    from mnist_pipeline import drift, gate
    from mnist_pipeline.data import load_sample
    from mnist_pipeline.preprocess import preprocess
    from mnist_pipeline.train import train_model

    sample = load_sample()
    model, _ = train_model(
        preprocess(sample, 0.1, 0),
        epochs=10,
        batch_size=400,
        learning_rate=0.01,
        seed=0,
    )

    def probabilities(images: np.ndarray) -> np.ndarray:
        return model.predict(images[..., None].astype("float32") / 255, verbose=0)

    reference = drift.reference_profile(sample.x_test, probabilities(sample.x_test))

    def check(images: np.ndarray) -> drift.DriftReport:
        batch = drift.batch_profile(images, probabilities(images))
        return drift.compare(batch, reference)

    rng = np.random.default_rng(0)
    own = {}
    for size in SIZES:
        reports = [
            check(sample.x_train[rng.choice(len(sample.x_train), size, replace=False)])
            for _ in range(REPEATS)
        ]
        own[size] = {
            "false_alarms": sum(r.drift_detected for r in reports),
            "ood_share": float(np.mean([r.ood_share for r in reports])),
        }
    test = sample.x_test
    noise = rng.normal(0, 80, test.shape)
    broken = {
        "inverted (1,000)": 255 - test,
        "inverted (20)": 255 - test[:20],
        "noise σ=80 (1,000)": np.clip(test + noise, 0, 255).astype(np.uint8),
        "noise σ=80 (20)": np.clip(test[:20] + noise[:20], 0, 255).astype(np.uint8),
        "blank (1,000)": np.zeros_like(test),
        "blank (5)": np.zeros_like(test[:5]),
        "shifted 2 px right (1,000)": gate.shift(test, dx=2),
        "only 7s (the sample's 400 training 7s)": sample.x_train[sample.y_train == 7],
    }
    for name, photo_set in photo_sets(sample).items():
        for mode, images in photo_set["images"].items():
            broken[f"{name} photos, {mode} ({len(images):,})"] = images
    verdicts = {}
    for name, images in broken.items():
        report = check(images)
        verdicts[name] = {"drifting": report.drifting, "ood_share": report.ood_share}
    RESULTS.mkdir(exist_ok=True)
    result = {"unchanged_batches": own, "repeats": REPEATS, "batches": verdicts}
    (RESULTS / "drift.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"Random batches of the sample's own training images, {REPEATS} per size:",
        "",
        "| Batch size | False alarms | Images flagged out of distribution |",
        "|---:|---:|---:|",
    ]
    lines += [
        f"| {size} | {v['false_alarms']} of {REPEATS} | {v['ood_share']:.1%} |"
        for size, v in own.items()
    ]
    lines += [
        "",
        "| Batch | Drifting features | Out of distribution |",
        "|---|---|---:|",
    ]
    lines += [
        f"| {name} | {', '.join(v['drifting']) or 'none'} | {v['ood_share']:.1%} |"
        for name, v in verdicts.items()
    ]
    text = "\n".join(lines) + "\n"
    (RESULTS / "drift.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
